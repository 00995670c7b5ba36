// /admin/archives — archive a closed month of a project's raw payloads to R2 (a job), and list
// archived months with their state.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { ArchiveParams, refuseSecondMonthWriter } from '../archive/archive-job';
import { listArchives, type ArchiveMonthView } from '../archive/listing';
import { isValidMonth, manualArchiveRefusal } from '../archive/month';
import { requireAdmin } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { startJob } from '../jobs/actions';
import { JOB_STATES } from '../jobs/states';
import { jobStarted, JobStarted, QUEUE_UNAVAILABLE } from './admin-backfills';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

/** The body of POST /admin/archives: the month is checked on its own, for its own error codes. */
export const ArchiveRequest = ArchiveParams.pick({ projectId: true, chunkRows: true, discardUnverified: true }).extend({ month: z.string().describe('YYYY-MM, before the current UTC month') });

const ListQuery = z.object({ projectId: z.string().min(1).max(128).optional(), month: z.string().optional().describe('YYYY-MM') });

const ArchiveMonth = z
  .object({
    projectId: z.string(),
    month: z.string(),
    state: z.enum(['archived', 'partial', 'restored']),
    chunks: z.number(),
    rows: z.number().describe("events in the month's chunks"),
    bytes: z.number().describe('raw (uncompressed JSON Lines) bytes of the chunks'),
    compressedBytes: z.number(),
    compressionRatio: z.number().nullable(),
    verifiedAt: z.string().nullable().describe('when the last of its chunks was proved against its object; null while any chunk is unverified'),
    restoredAt: z.string().nullable(),
    pendingRows: z.number().describe('payloads of the month still in ClickHouse'),
    lastJobId: z.string().nullable(),
    lastJobState: z.enum(JOB_STATES).nullable(),
    lastError: z.string().nullable(),
    sweepRetryAt: z.string().nullable().describe('when the sweep may archive the month again after failures'),
  })
  .openapi('ArchiveMonth') satisfies z.ZodType<ArchiveMonthView>;

const MONTH_REFUSALS = {
  invalid_month: 'month must be YYYY-MM',
  current_month: 'the current UTC month is still filling: only earlier months can be archived',
  future_month: 'a month after the current UTC month cannot be archived',
} as const;

const ARCHIVE_UNAVAILABLE = '`archive_unavailable`: no R2 bucket is bound';

function requireBucket(env: Env): void {
  if (!(env as Partial<Env>).ARCHIVE) throw new ApiError(503, 'archive_unavailable', 'no R2 bucket is bound (ARCHIVE): archives are unavailable');
}

const archive = createRoute({
  method: 'post',
  path: '/admin/archives',
  summary: "Archive a closed month of a project's raw payloads to R2",
  description: 'Starts an `archive` job; GET /admin/backfills/{id} follows it.',
  tags: ['archives'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: ArchiveRequest } } } },
  responses: {
    202: json(JobStarted, 'the archive job, enqueued'),
    ...errors(
      { 400: '`invalid_request`, `invalid_json`, `invalid_month`, `current_month`, `future_month`, `unknown_project`' },
      401,
      { 409: '`archive_already_active` (an archive or restore of the month is under way), `erasure_active`' },
      415,
      { 503: `${ADMIN_DISABLED}; ${ARCHIVE_UNAVAILABLE}; ${QUEUE_UNAVAILABLE}` },
    ),
  },
});

const list = createRoute({
  method: 'get',
  path: '/admin/archives',
  summary: 'Archived months with their state',
  tags: ['archives'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { query: ListQuery },
  responses: {
    200: json(z.object({ archives: z.array(ArchiveMonth) }), 'one entry per (project, month) that has chunks, newest month first per project'),
    ...errors({ 400: '`invalid_request`, `invalid_month`' }, 401, { 503: `${ADMIN_DISABLED}; \`storage_unavailable\`` }),
  },
});

export const adminArchivesRoute = router()
  .openapi(archive, async (c) => {
    const body = c.req.valid('json');
    requireBucket(c.env);
    const refusal = manualArchiveRefusal(body.month, Date.now());
    if (refusal) throw new ApiError(400, refusal, `${MONTH_REFUSALS[refusal]} (got ${JSON.stringify(body.month)})`, { month: body.month });
    const project = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
    if (!project) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    await refuseSecondMonthWriter(c.env, '', body);
    const job = await startJob(c.env, 'archive', {
      projectId: body.projectId,
      month: body.month,
      ...(body.chunkRows !== undefined ? { chunkRows: body.chunkRows } : {}),
      ...(body.discardUnverified ? { discardUnverified: true } : {}),
      startedBy: 'operator',
    });
    return c.json(jobStarted(job), 202);
  })
  .openapi(list, async (c) => {
    const q = c.req.valid('query');
    if (q.month !== undefined && !isValidMonth(q.month)) throw new ApiError(400, 'invalid_month', `${MONTH_REFUSALS.invalid_month} (got ${JSON.stringify(q.month)})`, { month: q.month });
    return c.json({ archives: await listArchives(c.env, q) }, 200);
  });
