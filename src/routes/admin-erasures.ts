// POST /admin/erasures (a device's or a profile's data) and DELETE /admin/projects/:id (a whole
// project): each starts a job (`erasure`, `project_deletion`) shown by GET /admin/backfills/:id.
import { zValidator } from '@hono/zod-validator';
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { Hono } from 'hono';
import { z } from 'zod';
import { requireAdmin, type AppEnv } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { DeviceId, ProfileId, ProjectId } from '../erasure/params';
import { ApiError } from '../errors';
import { startExclusiveJob } from '../jobs/actions';
import { ACTIVE, type JobState } from '../jobs/states';
import { jobStore, type JobRow } from '../jobs/store';
import { validationHook } from './validation';

export const ErasureRequest = z
  .object({ projectId: ProjectId, deviceId: DeviceId.optional(), profileId: ProfileId.optional() })
  .strict()
  .refine((b) => (b.deviceId === undefined) !== (b.profileId === undefined), { message: 'give exactly one of deviceId and profileId' });

const ProjectParam = z.object({ id: ProjectId });

/** A job in one of these states is under way (a paused one resumes where it stopped). */
const UNDER_WAY: readonly JobState[] = [...ACTIVE, 'paused'];

async function projectExists(env: Env, projectId: string): Promise<boolean> {
  return (await drizzle(env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, projectId)).get()) !== undefined;
}

/**
 * Jobs that would write the project's rows behind an erasure: an archive or restore run could put
 * a subject's payloads into a new chunk after the rewrite, an import could bring its events back.
 */
async function refuseWriters(env: Env, projectId: string): Promise<void> {
  const store = jobStore(env.DB);
  for (const type of ['archive', 'restore']) {
    const [j] = await store.others('', type, { projectId }, UNDER_WAY);
    if (j) throw new ApiError(409, 'archive_active', `an ${type} job of this project is ${j.state}; erase once it has finished (or cancel it)`, { id: j.id, type, state: j.state });
  }
  const [imp] = await store.others('', 'legacy_import', { projectId }, UNDER_WAY);
  if (imp) throw new ApiError(409, 'import_active', `a legacy import into this project is ${imp.state}; erase once it has finished (or cancel it)`, { id: imp.id, state: imp.state });
}

const accepted = (job: JobRow) => ({ id: job.id, state: job.state });

export const adminErasuresRoute = new Hono<AppEnv>()
  .post('/admin/erasures', requireAdmin, zValidator('json', ErasureRequest, validationHook), async (c) => {
    const body = c.req.valid('json');
    const params: Record<string, string> = body.deviceId !== undefined ? { projectId: body.projectId, deviceId: body.deviceId } : { projectId: body.projectId, profileId: body.profileId! };
    const store = jobStore(c.env.DB);
    // The same subject asked twice: the erasure under way is the answer.
    const [same] = await store.others('', 'erasure', params, UNDER_WAY);
    if (same) return c.json(accepted(same), 202);
    if (!(await projectExists(c.env, body.projectId))) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    const [deletion] = await store.others('', 'project_deletion', { projectId: body.projectId }, UNDER_WAY);
    if (deletion) throw new ApiError(409, 'project_deletion_active', `this project is being deleted (job ${deletion.id})`, { id: deletion.id, state: deletion.state });
    await refuseWriters(c.env, body.projectId);
    const job = (await startExclusiveJob(c.env, 'erasure', params, params, UNDER_WAY)) ?? (await store.others('', 'erasure', params, UNDER_WAY))[0];
    if (!job) throw new ApiError(409, 'erasure_conflict', 'another erasure of this subject started and ended meanwhile; ask again');
    return c.json(accepted(job), 202);
  })
  .delete('/admin/projects/:id', requireAdmin, zValidator('param', ProjectParam, validationHook), async (c) => {
    const projectId = c.req.valid('param').id;
    const store = jobStore(c.env.DB);
    const match = { projectId };
    const [same] = await store.others('', 'project_deletion', match, UNDER_WAY);
    if (same) return c.json(accepted(same), 202);
    if (!(await projectExists(c.env, projectId))) throw new ApiError(404, 'project_not_found', `no project ${projectId}`);
    await refuseWriters(c.env, projectId);
    const job = (await startExclusiveJob(c.env, 'project_deletion', match, match, UNDER_WAY)) ?? (await store.others('', 'project_deletion', match, UNDER_WAY))[0];
    if (!job) throw new ApiError(409, 'deletion_conflict', 'another deletion of this project started and ended meanwhile; ask again');
    return c.json(accepted(job), 202);
  });
