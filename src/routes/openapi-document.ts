// GET /openapi.json (public): the OpenAPI 3.1 description of every route, generated from the zod
// schemas the routes validate with.
import type { OpenAPIHono } from '@hono/zod-openapi';
import type { AppEnv } from '../auth';
import { createRoute, errors, router, z } from './openapi';

const route = createRoute({
  method: 'get',
  path: '/openapi.json',
  summary: 'This API description (OpenAPI 3.1)',
  tags: ['meta'],
  responses: {
    200: { description: 'the OpenAPI 3.1 document', content: { 'application/json': { schema: z.record(z.string(), z.unknown()) } } },
    ...errors({ 500: '`internal`: a fault of the gateway' }),
  },
});

export function openapiRoute(app: OpenAPIHono<AppEnv>) {
  // Generated once per isolate, on first use; the server is whatever origin the client reached.
  let described: ReturnType<typeof app.getOpenAPI31Document> | undefined;
  return router().openapi(route, (c) => {
    described ??= app.getOpenAPI31Document({
      openapi: '3.1.0',
      info: {
        title: 'Driftline',
        version: '0.1.0',
        description: 'Edge ingestion gateway for offline-first devices: OpenPanel-compatible ingestion, per-device sessions, reads, fleet telemetry, tracker apps, and operator jobs.',
      },
    });
    return c.json({ ...described, servers: [{ url: new URL(c.req.url).origin }] }, 200);
  });
}
