// GET /admin/console — the operator console page. Public: the page holds no data; everything it
// shows is read from the /admin routes with the token the operator enters.
import { consoleCsp, CONSOLE_HTML } from '../console/page';
import { createRoute, errors, router, z } from './openapi';

const consolePage = createRoute({
  method: 'get',
  path: '/admin/console',
  summary: 'The operator console (HTML)',
  description:
    'A single page with no data of its own: it asks for the admin token, keeps it in the tab (sessionStorage) and reads everything from the /admin routes with it. Served with a strict Content-Security-Policy (its inline script and style by hash, fetches to this origin only) and `Cache-Control: no-store`.',
  tags: ['admin'],
  security: [],
  responses: {
    200: { description: 'the console page', content: { 'text/html': { schema: z.string() } } },
    // Like every route, it can fail only by a fault of the gateway, in the one envelope.
    ...errors({ 500: 'internal: a fault of the gateway' }),
  },
});

export const adminConsoleRoute = router().openapi(consolePage, async (c) => {
  c.header('Content-Security-Policy', await consoleCsp());
  c.header('Cache-Control', 'no-store');
  c.header('X-Content-Type-Options', 'nosniff');
  c.header('Referrer-Policy', 'no-referrer');
  c.header('Cross-Origin-Opener-Policy', 'same-origin');
  return c.html(CONSOLE_HTML, 200);
});
