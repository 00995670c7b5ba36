// POST /admin/archives/restore — start a job that writes a (project, month)'s archived payloads back to ClickHouse.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { manualArchiveRefusal } from '../archive/month';
import { refuseSecondMonthWriter } from '../archive/archive-job';
import { RESTORE_JOB, RestoreParams, restorableChunks } from '../archive/restore-job';
import { projects } from '../db/schema';
import { ApiError } from '../errors';
import { startJob } from '../jobs/actions';
import { jobStarted, JobStarted, QUEUE_UNAVAILABLE } from './admin-backfills';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

/** The month is checked by manualArchiveRefusal, which names what is wrong with it. */
const RestoreRequest = RestoreParams.extend({ month: z.string().describe('YYYY-MM, an archived month') });

const REFUSALS = {
  invalid_month: 'is not a month (YYYY-MM)',
  current_month: 'is the current UTC month, which is never archived',
  future_month: 'is in the future',
} as const;

const route = createRoute({
  method: 'post',
  path: '/admin/archives/restore',
  summary: "Write a month's archived payloads back to ClickHouse",
  description: 'Starts a `restore` job; GET /admin/backfills/{id} follows it.',
  tags: ['archives'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: RestoreRequest } } } },
  responses: {
    202: json(JobStarted, 'the restore job, enqueued'),
    ...errors(
      { 400: '`invalid_request`, `invalid_json`, `invalid_month`, `current_month`, `future_month`, `unknown_project`' },
      401,
      { 409: '`archive_already_active` (an archive or restore of the month is under way), `erasure_active`, `nothing_to_restore`' },
      415,
      { 503: `${ADMIN_DISABLED}; \`archive_unavailable\`: no R2 bucket is bound; ${QUEUE_UNAVAILABLE}` },
    ),
  },
});

export const adminArchivesRestoreRoute = router().openapi(route, async (c) => {
  const body = c.req.valid('json');
  const refusal = manualArchiveRefusal(body.month, Date.now());
  if (refusal) throw new ApiError(400, refusal, `month ${JSON.stringify(body.month)} ${REFUSALS[refusal]}`, { month: body.month });
  if (!c.env.ARCHIVE) throw new ApiError(503, 'archive_unavailable', 'no R2 bucket is bound as ARCHIVE');
  const project = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
  if (!project) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);

  // An archive run clears what a restore writes back, and an erasure rewrites chunks: one writer at a time.
  await refuseSecondMonthWriter(c.env, '', body);
  const chunks = await restorableChunks(c.env, body.projectId, body.month);
  if (chunks.length === 0) {
    throw new ApiError(409, 'nothing_to_restore', `${body.month} of this project has no archived chunks`, { projectId: body.projectId, month: body.month });
  }
  const job = await startJob(c.env, RESTORE_JOB, RestoreParams.parse(body));
  return c.json(jobStarted(job), 202);
});
