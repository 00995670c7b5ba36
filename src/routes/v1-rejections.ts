// GET /v1/rejections — the project's tracker-app rows rejected for good (the apps were told "ok",
// so this, beside /admin/health, is where a project sees them).
import { readRateLimit, requireClient } from '../auth';
import { projectRejections } from '../trackers/rejections';
import { CLIENT_SECURITY, createRoute, errors, json, router, z } from './openapi';

const Rejections = z.object({
  rejectedRows: z.number().int().describe('rows rejected for good, over all sources'),
  sources: z.array(
    z.object({
      source: z.string().describe('`overland`, `owntracks` or `traccar`'),
      count: z.number().int(),
      lastReason: z.string().describe('`validation`, `too_old` or `unsupported`'),
      lastError: z.string().describe('what was wrong with the latest one'),
      lastAt: z.iso.datetime(),
    }),
  ).describe('per tracker source, the most recent first'),
});

const route = createRoute({
  method: 'get',
  path: '/v1/rejections',
  summary: "The project's tracker-app rows rejected for good",
  tags: ['trackers'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  responses: {
    200: json(Rejections, 'counts per tracker source'),
    ...errors({ 401: 'unauthorized: missing client headers, unknown client or wrong secret' }, { 429: "rate_limited: the project's read budget is spent; see Retry-After" }),
  },
});

export const v1RejectionsRoute = router().openapi(route, async (c) => {
  return c.json(await projectRejections(c.env.DB, c.get('project').projectId), 200);
});
