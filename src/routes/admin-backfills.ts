// /admin/backfills — start operator jobs, watch their progress, pause, resume, cancel, retry them.
import { zValidator } from '@hono/zod-validator';
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { Hono } from 'hono';
import { z } from 'zod';
import { requireAdmin, type AppEnv } from '../auth';
import { getConfig } from '../config';
import { projects } from '../db/schema';
import { ApiError } from '../errors';
import { applyAction, startExclusiveJob } from '../jobs/actions';
import { ACTIVE, type JobState } from '../jobs/states';
import { jobStore, toView, type JobRow } from '../jobs/store';
import { LegacyImportParams } from '../legacy/params';
import { validationHook } from './validation';

export const BackfillRequest = z.discriminatedUnion('type', [LegacyImportParams]);

/** An import of a (project, dataset) blocks another while it is in one of these states. */
const BLOCKING_IMPORT: readonly JobState[] = [...ACTIVE, 'paused'];

const IdParam = z.object({ id: z.string().min(1).max(64) });
const ActionParam = IdParam.extend({ action: z.enum(['pause', 'resume', 'cancel', 'retry']) });

export const adminBackfillsRoute = new Hono<AppEnv>()
  .post('/admin/backfills', requireAdmin, zValidator('json', BackfillRequest, validationHook), async (c) => {
    const body = c.req.valid('json');
    const enabled = getConfig(c.env).legacyDatasets;
    if (!enabled.includes(body.dataset)) {
      throw new ApiError(400, 'dataset_not_enabled', `dataset ${body.dataset} is not enabled for legacy import (LEGACY_DATASETS)`, { dataset: body.dataset, enabled });
    }
    const project = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
    if (!project) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    // Two imports of one dataset into one project at once would race each other's writes.
    const store = jobStore(c.env.DB);
    const match = { projectId: body.projectId, dataset: body.dataset };
    const alreadyActive = (active: JobRow | undefined) =>
      new ApiError(409, 'import_already_active', `an import of ${body.dataset} into this project is already ${active?.state ?? 'active'}`, active ? { id: active.id, state: active.state } : undefined);
    // Read first so the common refusal sends no message; the conditional write decides a race.
    const [active] = await store.others('', body.type, match, BLOCKING_IMPORT);
    if (active) throw alreadyActive(active);
    const job = await startExclusiveJob(c.env, body.type, body, match, BLOCKING_IMPORT);
    if (!job) throw alreadyActive((await store.others('', body.type, match, BLOCKING_IMPORT))[0]);
    return c.json({ id: job.id, state: job.state }, 202);
  })
  .get('/admin/backfills', requireAdmin, async (c) => {
    const rows = await jobStore(c.env.DB).list(200);
    return c.json({ backfills: rows.map(toView) });
  })
  .get('/admin/backfills/:id', requireAdmin, zValidator('param', IdParam, validationHook), async (c) => {
    const job = await jobStore(c.env.DB).get(c.req.valid('param').id);
    if (!job) throw new ApiError(404, 'job_not_found', `no backfill job ${c.req.valid('param').id}`);
    return c.json(toView(job));
  })
  .post('/admin/backfills/:id/:action', requireAdmin, zValidator('param', ActionParam, validationHook), async (c) => {
    const { id, action } = c.req.valid('param');
    return c.json(toView(await applyAction(c.env, id, action)));
  });
