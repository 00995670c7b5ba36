// /admin/backfills — start operator jobs, watch their progress, pause, resume, cancel, retry them.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { getConfig } from '../config';
import { projects } from '../db/schema';
import { ApiError } from '../errors';
import { applyAction, startExclusiveJob } from '../jobs/actions';
import { refuseConflictingRetry } from '../jobs/engine';
import { ACTIVE, JOB_STATES, type JobState } from '../jobs/states';
import { ThrottleViewSchema } from '../jobs/throttle';
import { jobStore, toView, type JobRow, type JobView } from '../jobs/store';
import { LegacyImportParams } from '../legacy/params';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

export const BackfillRequest = z.discriminatedUnion('type', [LegacyImportParams]);

/** A job as every admin route shows it, whatever its type. */
export const Job = z
  .object({
    id: z.string(),
    type: z.string().describe('legacy_import, archive, restore, erasure, project_deletion or fleet_recompute'),
    state: z.enum(JOB_STATES),
    rowsProcessed: z.number(),
    rowsTotal: z.number().nullable(),
    rowsSkipped: z.number().describe('source rows that could not become events (no key, device or time); counted in rowsProcessed too'),
    ratePerSec: z.number().nullable(),
    etaSec: z.number().nullable(),
    cursor: z.string().nullable(),
    attempts: z.number(),
    error: z.string().nullable(),
    result: z.unknown().describe('what a finished job did, by type; null until then'),
    createdAt: z.string(),
    startedAt: z.string().nullable(),
    endedAt: z.string().nullable(),
    lastUpdateAt: z.string(),
    throttle: ThrottleViewSchema.nullable(),
  })
  .openapi('Job') satisfies z.ZodType<JobView>;

/** The answer of a route that starts a job: follow it with GET /admin/backfills/{id}. */
export const JobStarted = z.object({ id: z.string(), state: z.enum(JOB_STATES) }).openapi('JobStarted');

/** The 503 of every route that starts a job, besides ADMIN_DISABLED. */
export const QUEUE_UNAVAILABLE = '`queue_unavailable`: the job queue refused the first message; nothing was started (Retry-After)';

/** A job row as JobStarted (D1 holds only states of JOB_STATES; the column is plain text). */
export const jobStarted = (job: JobRow) => ({ id: job.id, state: job.state as JobState });

/** An import of a (project, dataset) blocks another while it is in one of these states. */
const BLOCKING_IMPORT: readonly JobState[] = [...ACTIVE, 'paused'];

const IdParam = z.object({ id: z.string().min(1).max(64) });
const ActionParam = IdParam.extend({ action: z.enum(['pause', 'resume', 'cancel', 'retry']) });

const start = createRoute({
  method: 'post',
  path: '/admin/backfills',
  summary: 'Start a backfill job (legacy import)',
  tags: ['jobs'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: BackfillRequest } } } },
  responses: {
    202: json(JobStarted, 'the job, enqueued'),
    ...errors(
      { 400: '`invalid_request`, `invalid_json`, `dataset_not_enabled` (not in LEGACY_DATASETS), `unknown_project`' },
      401,
      { 409: '`import_already_active`: an import of this dataset into this project is under way or paused' },
      415,
      { 503: `${ADMIN_DISABLED}; ${QUEUE_UNAVAILABLE}; \`misconfigured\`` },
    ),
  },
});

const list = createRoute({
  method: 'get',
  path: '/admin/backfills',
  summary: 'The latest 200 jobs of every type',
  tags: ['jobs'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  responses: { 200: json(z.object({ backfills: z.array(Job) }), 'jobs, newest first'), ...errors(401, { 503: ADMIN_DISABLED }) },
});

const read = createRoute({
  method: 'get',
  path: '/admin/backfills/{id}',
  summary: 'One job with its progress',
  tags: ['jobs'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { params: IdParam },
  responses: { 200: json(Job, 'the job'), ...errors(400, 401, { 404: '`job_not_found`' }, { 503: ADMIN_DISABLED }) },
});

const act = createRoute({
  method: 'post',
  path: '/admin/backfills/{id}/{action}',
  summary: 'Pause, resume, cancel or retry a job',
  description: 'Pause and cancel of a running job are requests (`pausing`, `cancelling`) that its chunk honours when it commits.',
  tags: ['jobs'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { params: ActionParam },
  responses: {
    200: json(Job, 'the job after the transition'),
    ...errors(400, 401, { 404: '`job_not_found`' }, { 409: '`invalid_transition`: the job\'s state does not allow the action; on retry, what the job\'s start would answer beside a job started while it stood: `archive_already_active`, `erasure_active` (archive, restore), `archive_active`, `import_active`, `project_deletion_active` (erasure, project deletion), `erasure_conflict` (an erasure of the same subject), `import_already_active` (legacy import)' }, { 503: ADMIN_DISABLED }),
  },
});

export const adminBackfillsRoute = router()
  .openapi(start, async (c) => {
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
    return c.json(jobStarted(job), 202);
  })
  .openapi(list, async (c) => {
    const rows = await jobStore(c.env.DB).list(200);
    return c.json({ backfills: rows.map(toView) }, 200);
  })
  .openapi(read, async (c) => {
    const { id } = c.req.valid('param');
    const job = await jobStore(c.env.DB).get(id);
    if (!job) throw new ApiError(404, 'job_not_found', `no backfill job ${id}`);
    return c.json(toView(job), 200);
  })
  .openapi(act, async (c) => {
    const { id, action } = c.req.valid('param');
    if (action === 'retry') await refuseConflictingRetry(c.env, id);
    return c.json(toView(await applyAction(c.env, id, action)), 200);
  });
