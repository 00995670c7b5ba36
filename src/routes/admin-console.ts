// GET /admin/console — the operator console (filled in by the console work).
import { router } from './openapi';

export const adminConsoleRoute = router();
