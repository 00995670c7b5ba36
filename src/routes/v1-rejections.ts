// GET /v1/rejections — the project's tracker-app rows rejected for good (the apps were told "ok",
// so this, beside /admin/health, is where a project sees them).
import { Hono } from 'hono';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { projectRejections } from '../trackers/rejections';

export const v1RejectionsRoute = new Hono<AppEnv>().get('/v1/rejections', requireClient, readRateLimit, async (c) => {
  return c.json(await projectRejections(c.env.DB, c.get('project').projectId));
});
