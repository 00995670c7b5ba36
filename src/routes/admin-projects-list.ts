// Operator reads for the console (filled in by the console work).
import { router } from './openapi';

export const adminProjectsListRoute = router();
