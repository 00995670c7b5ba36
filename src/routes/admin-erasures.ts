// POST /admin/erasures (a device's or a profile's data) and DELETE /admin/projects/:id (a whole
// project): each starts a job (`erasure`, `project_deletion`) shown by GET /admin/backfills/:id.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { DeviceId, ProfileId, ProjectId } from '../erasure/params';
import { refuseProjectWriters, UNDER_WAY } from '../erasure/steps';
import { ApiError } from '../errors';
import { startExclusiveJob } from '../jobs/actions';
import { jobStore } from '../jobs/store';
import { jobStarted, JobStarted, QUEUE_UNAVAILABLE } from './admin-backfills';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

export const ErasureRequest = z
  .object({ projectId: ProjectId, deviceId: DeviceId.optional(), profileId: ProfileId.optional() })
  .strict()
  .refine((b) => (b.deviceId === undefined) !== (b.profileId === undefined), { message: 'give exactly one of deviceId and profileId' })
  .describe('the subject: exactly one of deviceId and profileId');

const ProjectParam = z.object({ id: ProjectId });

async function projectExists(env: Env, projectId: string): Promise<boolean> {
  return (await drizzle(env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, projectId)).get()) !== undefined;
}

const erase = createRoute({
  method: 'post',
  path: '/admin/erasures',
  summary: "Erase a device's or a profile's data from every store",
  description: 'Starts an `erasure` job; GET /admin/backfills/{id} follows it. Asking again for a subject whose erasure is under way answers that job.',
  tags: ['erasure'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: ErasureRequest } } } },
  responses: {
    202: json(JobStarted, 'the erasure job (the one under way, when asked twice)'),
    ...errors(
      { 400: '`invalid_request`, `invalid_json`, `unknown_project`' },
      401,
      { 409: '`project_deletion_active`, `archive_active`, `import_active` (a job that writes the project\'s rows is under way), `erasure_conflict`' },
      415,
      { 503: `${ADMIN_DISABLED}; ${QUEUE_UNAVAILABLE}` },
    ),
  },
});

const deleteProject = createRoute({
  method: 'delete',
  path: '/admin/projects/{id}',
  summary: 'Delete a project: its clients, events, payloads, archives and device state',
  description: 'Starts a `project_deletion` job; GET /admin/backfills/{id} follows it. Asking again while it is under way answers that job.',
  tags: ['erasure'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { params: ProjectParam },
  responses: {
    202: json(JobStarted, 'the deletion job (the one under way, when asked twice)'),
    ...errors(
      400,
      401,
      { 404: '`project_not_found`' },
      { 409: '`archive_active`, `import_active` (a job that writes the project\'s rows is under way), `deletion_conflict`' },
      { 503: `${ADMIN_DISABLED}; ${QUEUE_UNAVAILABLE}` },
    ),
  },
});

export const adminErasuresRoute = router()
  .openapi(erase, async (c) => {
    const body = c.req.valid('json');
    const params: Record<string, string> = body.deviceId !== undefined ? { projectId: body.projectId, deviceId: body.deviceId } : { projectId: body.projectId, profileId: body.profileId! };
    const store = jobStore(c.env.DB);
    // The same subject asked twice: the erasure under way is the answer.
    const [same] = await store.others('', 'erasure', params, UNDER_WAY);
    if (same) return c.json(jobStarted(same), 202);
    if (!(await projectExists(c.env, body.projectId))) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    const [deletion] = await store.others('', 'project_deletion', { projectId: body.projectId }, UNDER_WAY);
    if (deletion) throw new ApiError(409, 'project_deletion_active', `this project is being deleted (job ${deletion.id})`, { id: deletion.id, state: deletion.state });
    await refuseProjectWriters(c.env, body.projectId);
    const job = (await startExclusiveJob(c.env, 'erasure', params, params, UNDER_WAY)) ?? (await store.others('', 'erasure', params, UNDER_WAY))[0];
    if (!job) throw new ApiError(409, 'erasure_conflict', 'another erasure of this subject started and ended meanwhile; ask again');
    return c.json(jobStarted(job), 202);
  })
  .openapi(deleteProject, async (c) => {
    const projectId = c.req.valid('param').id;
    const store = jobStore(c.env.DB);
    const match = { projectId };
    const [same] = await store.others('', 'project_deletion', match, UNDER_WAY);
    if (same) return c.json(jobStarted(same), 202);
    if (!(await projectExists(c.env, projectId))) throw new ApiError(404, 'project_not_found', `no project ${projectId}`);
    await refuseProjectWriters(c.env, projectId);
    const job = (await startExclusiveJob(c.env, 'project_deletion', match, match, UNDER_WAY)) ?? (await store.others('', 'project_deletion', match, UNDER_WAY))[0];
    if (!job) throw new ApiError(409, 'deletion_conflict', 'another deletion of this project started and ended meanwhile; ask again');
    return c.json(jobStarted(job), 202);
  });
