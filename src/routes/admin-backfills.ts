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
import { applyAction, startJob } from '../jobs/actions';
import { ACTIVE } from '../jobs/states';
import { jobStore, toView } from '../jobs/store';
import { LegacyImportParams } from '../legacy/params';
import { validationHook } from './validation';

export const BackfillRequest = z.discriminatedUnion('type', [LegacyImportParams]);

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
    const active = await jobStore(c.env.DB).others('', body.type, { projectId: body.projectId, dataset: body.dataset }, [...ACTIVE, 'paused']);
    if (active.length) {
      throw new ApiError(409, 'import_already_active', `an import of ${body.dataset} into this project is already ${active[0]!.state}`, { id: active[0]!.id, state: active[0]!.state });
    }
    const job = await startJob(c.env, body.type, body);
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
