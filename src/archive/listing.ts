// What operators see of archived months (GET /admin/archives), and the job history of a (project,
// month) that the archive job, the sweep and the listing all read: who is active, what failed last.
import { and, desc, gt, inArray, or, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { withParked } from '../clickhouse/mutations';
import { getConfig } from '../config';
import { jobs } from '../db/schema';
import type { Env } from '../env';
import { ACTIVE, type JobState } from '../jobs/states';
import { manifestStore, type ManifestRow } from './manifest';
import { monthBoundsMs, monthOfYyyymm } from './month';

export type ArchiveState = 'archived' | 'partial' | 'restored';

/** States in which a job still holds its (project, month): it may run again without a new start. */
export const HOLDING_STATES: readonly JobState[] = [...ACTIVE, 'paused'];

/** Job types that write or clear one (project, month)'s payloads and chunks: one at a time. */
export const MONTH_JOB_TYPES = ['archive', 'restore'] as const;
/** Job types that rewrite or delete a project's chunks: no archive runs beside them. */
export const ERASURE_JOB_TYPES = ['erasure', 'project_deletion'] as const;

/** The sweep waits this long after a failed archive of a month, doubling per failure in a row, up to a day. */
export const SWEEP_BACKOFF_MS = 60 * 60_000;
export const SWEEP_BACKOFF_MAX_MS = 24 * 60 * 60_000;

/**
 * A month's state from its manifest rows and the payloads of it still in ClickHouse (null: none
 * given, i.e. not known to be any). `restored`: a restore wrote every verified chunk back (an
 * unverified one was never cleared, so its payloads never left ClickHouse);
 * `archived`: every chunk verified and cleared, nothing left in ClickHouse; `partial`: anything
 * else (late data waiting, a chunk a cut-short run has not finished, or a restore cut short).
 */
export function archiveState(chunks: ReadonlyArray<Pick<ManifestRow, 'verifiedAt' | 'clearedAt' | 'restoredAt'>>, pendingRows: number): ArchiveState {
  const verified = chunks.filter((c) => c.verifiedAt !== null);
  if (verified.length > 0 && verified.every((c) => c.restoredAt !== null)) return 'restored';
  if (pendingRows === 0 && chunks.every((c) => c.verifiedAt !== null && c.clearedAt !== null)) return 'archived';
  return 'partial';
}

/** How long the sweep leaves a month alone after `failuresInARow` failed archive runs. */
export function sweepBackoffMs(failuresInARow: number): number {
  if (failuresInARow <= 0) return 0;
  return Math.min(SWEEP_BACKOFF_MAX_MS, SWEEP_BACKOFF_MS * 2 ** Math.min(failuresInARow - 1, 16));
}

export interface MonthJob {
  id: string;
  type: string;
  state: JobState;
  projectId: string;
  month: string | null;
  error: string | null;
  createdAt: number;
  endedAt: number | null;
}

const jobParam = (key: string) => sql<string | null>`json_extract(${jobs.params}, ${'$.' + key})`;

/**
 * Jobs of `types` (newest first) of a project (and month), or of every project: those still
 * holding their month, plus, when `endedSince` is given, those that ended after it.
 */
export async function monthJobs(
  d1: D1Database,
  filter: { types: readonly string[]; projectId?: string; month?: string; endedSince?: number; holdingOnly?: boolean; limit?: number },
): Promise<MonthJob[]> {
  const db = drizzle(d1);
  const states =
    filter.holdingOnly ? inArray(jobs.state, [...HOLDING_STATES]) : filter.endedSince !== undefined ? or(inArray(jobs.state, [...HOLDING_STATES]), gt(jobs.endedAt, filter.endedSince)) : undefined;
  const rows = await db
    .select({ id: jobs.id, type: jobs.type, state: jobs.state, projectId: jobParam('projectId'), month: jobParam('month'), error: jobs.error, createdAt: jobs.createdAt, endedAt: jobs.endedAt })
    .from(jobs)
    .where(
      and(
        inArray(jobs.type, [...filter.types]),
        ...(filter.projectId !== undefined ? [sql`${jobParam('projectId')} = ${filter.projectId}`] : []),
        ...(filter.month !== undefined ? [sql`${jobParam('month')} = ${filter.month}`] : []),
        ...(states ? [states] : []),
      ),
    )
    .orderBy(desc(jobs.createdAt), desc(jobs.id))
    .limit(filter.limit ?? 5000)
    .all();
  return rows.map((r) => ({ ...r, state: r.state as JobState, projectId: r.projectId ?? '', month: r.month ?? null }));
}

/** The failure story of one month's archive jobs (newest first): the last error, and when the sweep may try again. */
export function failureHistory(archiveJobsNewestFirst: readonly MonthJob[]): { lastError: string | null; failuresInARow: number; lastFailedAt: number | null } {
  let failuresInARow = 0;
  let lastError: string | null = null;
  let lastFailedAt: number | null = null;
  for (const j of archiveJobsNewestFirst) {
    if (HOLDING_STATES.includes(j.state)) continue;
    if (j.state === 'succeeded') break;
    // failed, or cancelled by an operator: either way the month is not done; a cancel has no error.
    failuresInARow += 1;
    if (lastFailedAt === null) lastFailedAt = j.endedAt ?? j.createdAt;
    lastError ??= j.error;
  }
  return { lastError, failuresInARow, lastFailedAt };
}

/** When the sweep may start an archive of the month again (ms), or null when it need not wait. */
export function sweepRetryAt(history: ReturnType<typeof failureHistory>): number | null {
  if (history.failuresInARow === 0 || history.lastFailedAt === null) return null;
  return history.lastFailedAt + sweepBackoffMs(history.failuresInARow);
}

const pairKey = (projectId: string, month: string) => `${projectId}\u0000${month}`;

/**
 * Payload rows (distinct ids) still in ClickHouse per (project, month) of the given projects, within
 * `[fromMonth, toMonth]`; the month is the UTC month of `created_at_ms` (not `toYYYYMM(created_at)`,
 * which is in the server's time zone).
 */
export async function pendingPayloads(ch: ClickHouse, projectIds: readonly string[], fromMonth: string, toMonth: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (!projectIds.length) return out;
  const startMs = monthBoundsMs(fromMonth).startMs;
  const endMs = monthBoundsMs(toMonth).endMs;
  const rows = await ch.query<{ project_id: string; ym: number; n: number }>(
    `SELECT project_id, toYYYYMM(toDateTime(intDiv(created_at_ms, 1000), 'UTC')) AS ym, uniqExact(id) AS n
       FROM ${withParked(
         'event_payloads',
         'project_id, created_at_ms, id',
         `project_id IN (SELECT value FROM projects)
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {startMs:Int64} AND created_at_ms < {endMs:Int64}`,
       )} AS payloads
      GROUP BY project_id, ym`,
    { ...dateTimeBounds(startMs, endMs - 1), startMs, endMs },
    { projects: projectIds },
  );
  for (const r of rows) out.set(pairKey(r.project_id, monthOfYyyymm(Number(r.ym))), Number(r.n));
  return out;
}

export interface ArchiveMonthView {
  projectId: string;
  month: string;
  state: ArchiveState;
  chunks: number;
  /** Events in the month's chunks. */
  rows: number;
  /** Raw (uncompressed JSON Lines) bytes of the chunks. */
  bytes: number;
  compressedBytes: number;
  /** bytes / compressedBytes, two decimals. */
  compressionRatio: number | null;
  /** When the last of its chunks was proved against its object; null while any chunk is unverified. */
  verifiedAt: string | null;
  /** When a restore last wrote chunks back; null unless `restored`. */
  restoredAt: string | null;
  /** Payloads of the month still in ClickHouse (late data for the next run, or restored rows). */
  pendingRows: number;
  lastJobId: string | null;
  lastJobState: JobState | null;
  /** The error of the latest failed (or cancelled) archive job, unless an archive succeeded since. */
  lastError: string | null;
  /** When the sweep may archive the month again after failures; null when it need not wait. */
  sweepRetryAt: string | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
const maxOf = (values: ReadonlyArray<number | null>) => values.reduce<number | null>((m, v) => (v === null ? m : m === null || v > m ? v : m), null);

/** One entry per (project, month) that has chunks, newest month first per project. */
export async function listArchives(env: Env, filter: { projectId?: string; month?: string } = {}): Promise<ArchiveMonthView[]> {
  const manifests = manifestStore(env.DB);
  const pairs = await manifests.months(filter);
  if (!pairs.length) return [];
  const projectIds = [...new Set(pairs.map((p) => p.projectId))];
  const months = pairs.map((p) => p.month).sort();
  const [chunksByProject, pending, history] = await Promise.all([
    Promise.all(projectIds.map(async (id) => [id, await manifests.list(id, filter.month)] as const)),
    pendingPayloads(clickhouse(getConfig(env).clickhouse), projectIds, months[0]!, months.at(-1)!),
    monthJobs(env.DB, { types: ['archive'], ...filter }),
  ]);
  const chunksOf = new Map<string, ManifestRow[]>();
  for (const [, rows] of chunksByProject) {
    for (const r of rows) {
      const k = pairKey(r.projectId, r.month);
      chunksOf.set(k, [...(chunksOf.get(k) ?? []), r]);
    }
  }
  const jobsOf = new Map<string, MonthJob[]>();
  for (const j of history) {
    if (j.month === null) continue;
    const k = pairKey(j.projectId, j.month);
    jobsOf.set(k, [...(jobsOf.get(k) ?? []), j]);
  }
  return pairs.map(({ projectId, month }) => {
    const k = pairKey(projectId, month);
    const chunks = chunksOf.get(k) ?? [];
    const pendingRows = pending.get(k) ?? 0;
    const state = archiveState(chunks, pendingRows);
    const bytes = chunks.reduce((s, c) => s + c.rawBytes, 0);
    const compressedBytes = chunks.reduce((s, c) => s + c.compressedBytes, 0);
    const monthJobsNewest = jobsOf.get(k) ?? [];
    const failures = failureHistory(monthJobsNewest);
    const allVerified = chunks.every((c) => c.verifiedAt !== null);
    return {
      projectId,
      month,
      state,
      chunks: chunks.length,
      rows: chunks.reduce((s, c) => s + c.rowCount, 0),
      bytes,
      compressedBytes,
      compressionRatio: compressedBytes > 0 ? Math.round((bytes / compressedBytes) * 100) / 100 : null,
      verifiedAt: allVerified ? iso(maxOf(chunks.map((c) => c.verifiedAt))) : null,
      restoredAt: state === 'restored' ? iso(maxOf(chunks.map((c) => c.restoredAt))) : null,
      pendingRows,
      lastJobId: monthJobsNewest[0]?.id ?? null,
      lastJobState: monthJobsNewest[0]?.state ?? null,
      lastError: failures.lastError,
      sweepRetryAt: iso(sweepRetryAt(failures)),
    };
  });
}
