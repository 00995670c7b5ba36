// /admin/archives — archive a closed month of a project's raw payloads to R2 (a job), and list
// archived months with their state.
import { zValidator } from '@hono/zod-validator';
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { Hono } from 'hono';
import { z } from 'zod';
import { ArchiveParams } from '../archive/archive-job';
import { ERASURE_JOB_TYPES, listArchives, monthJobs, MONTH_JOB_TYPES } from '../archive/listing';
import { isValidMonth, manualArchiveRefusal } from '../archive/month';
import { requireAdmin, type AppEnv } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { startJob } from '../jobs/actions';
import { validationHook } from './validation';

/** The body of POST /admin/archives: the month is checked on its own, for its own error codes. */
export const ArchiveRequest = ArchiveParams.pick({ projectId: true, chunkRows: true, discardUnverified: true }).extend({ month: z.string() });

const ListQuery = z.object({ projectId: z.string().min(1).max(128).optional(), month: z.string().optional() });

const MONTH_REFUSALS = {
  invalid_month: 'month must be YYYY-MM',
  current_month: 'the current UTC month is still filling: only earlier months can be archived',
  future_month: 'a month after the current UTC month cannot be archived',
} as const;

function requireBucket(env: Env): void {
  if (!(env as Partial<Env>).ARCHIVE) throw new ApiError(503, 'archive_unavailable', 'no R2 bucket is bound (ARCHIVE): archives are unavailable');
}

export const adminArchivesRoute = new Hono<AppEnv>()
  .post('/admin/archives', requireAdmin, zValidator('json', ArchiveRequest, validationHook), async (c) => {
    const body = c.req.valid('json');
    requireBucket(c.env);
    const refusal = manualArchiveRefusal(body.month, Date.now());
    if (refusal) throw new ApiError(400, refusal, `${MONTH_REFUSALS[refusal]} (got ${JSON.stringify(body.month)})`, { month: body.month });
    const project = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
    if (!project) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    const [holding] = await monthJobs(c.env.DB, { types: MONTH_JOB_TYPES, projectId: body.projectId, month: body.month, holdingOnly: true });
    if (holding) {
      throw new ApiError(409, 'archive_already_active', `a ${holding.type} job of ${body.projectId} ${body.month} is already ${holding.state}`, { id: holding.id, type: holding.type, state: holding.state });
    }
    const [erasing] = await monthJobs(c.env.DB, { types: ERASURE_JOB_TYPES, projectId: body.projectId, holdingOnly: true });
    if (erasing) {
      throw new ApiError(409, 'erasure_active', `a ${erasing.type} job of this project is ${erasing.state}: archive once it has finished`, { id: erasing.id, type: erasing.type, state: erasing.state });
    }
    const job = await startJob(c.env, 'archive', {
      projectId: body.projectId,
      month: body.month,
      ...(body.chunkRows !== undefined ? { chunkRows: body.chunkRows } : {}),
      ...(body.discardUnverified ? { discardUnverified: true } : {}),
      startedBy: 'operator',
    });
    return c.json({ id: job.id, state: job.state }, 202);
  })
  .get('/admin/archives', requireAdmin, zValidator('query', ListQuery, validationHook), async (c) => {
    const q = c.req.valid('query');
    if (q.month !== undefined && !isValidMonth(q.month)) throw new ApiError(400, 'invalid_month', `${MONTH_REFUSALS.invalid_month} (got ${JSON.stringify(q.month)})`, { month: q.month });
    return c.json({ archives: await listArchives(c.env, q) });
  });
