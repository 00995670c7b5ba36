// The archival sweep (cron): with ARCHIVE_RAW_PAYLOADS=true, an archive job for every (project,
// month) at least ARCHIVE_LAG_MONTHS whole months old that still has payloads in ClickHouse.
import { inArray, isNotNull } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { clickhouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { withParked } from '../clickhouse/mutations';
import { getConfig } from '../config';
import { archiveChunks, projects } from '../db/schema';
import type { Env } from '../env';
import { startJob } from '../jobs/actions';
import { ERASURE_JOB_TYPES, failureHistory, HOLDING_STATES, monthJobs, MONTH_JOB_TYPES, SWEEP_BACKOFF_MAX_MS, sweepRetryAt, type MonthJob } from './listing';
import { monthOfYyyymm, sweepCutoffMs } from './month';

/** Archive jobs one sweep starts at most; the rest wait for the next sweep. */
export const SWEEP_MAX_STARTS = 10;
/** Archive jobs running at once (of any start) beyond which the sweep starts none. */
export const SWEEP_MAX_ACTIVE = 10;
/** The sweep's grouped query over event_payloads runs once an hour (at this minute), not every cron minute. */
export const SWEEP_MINUTE = 17;

export type SweepSkip = 'unknown_project' | 'restored' | 'job_active' | 'erasure_active' | 'import_active' | 'backing_off' | 'limit';

export interface SweepResult {
  enabled: boolean;
  /** (project, month) pairs due, oldest month first. */
  due: number;
  started: Array<{ projectId: string; month: string; id: string }>;
  skipped: Array<{ projectId: string; month: string; reason: SweepSkip; until?: string }>;
}

/** Whether the cron run at `nowMs` is the hourly one that sweeps. */
export const isSweepMinute = (nowMs: number) => new Date(nowMs).getUTCMinutes() === SWEEP_MINUTE;

const pairKey = (projectId: string, month: string) => `${projectId}\u0000${month}`;

/** (project, month) pairs with payloads older than the cutoff, by the UTC month of their event time. */
async function duePairs(env: Env, cutoffMs: number): Promise<Array<{ projectId: string; month: string }>> {
  if (cutoffMs <= 0) return [];
  // Times before 1970 wrap in a DateTime: the sweep leaves them to an archive by hand.
  const rows = await clickhouse(getConfig(env).clickhouse).query<{ project_id: string; ym: number }>(
    `SELECT project_id, toYYYYMM(toDateTime(intDiv(created_at_ms, 1000), 'UTC')) AS ym
       FROM ${withParked('event_payloads', 'project_id, created_at_ms', 'created_at <= toDateTime({toSec:Int64}) AND created_at_ms >= 0 AND created_at_ms < {cutoffMs:Int64}')} AS payloads
      GROUP BY project_id, ym
      ORDER BY ym, project_id
      LIMIT 5000`,
    { toSec: dateTimeBounds(0, cutoffMs).toSec, cutoffMs },
  );
  return rows.map((r) => ({ projectId: r.project_id, month: monthOfYyyymm(Number(r.ym)) }));
}

/** Which of `ids` name a project (D1 binds at most 100 values per statement). */
async function knownProjects(d1: D1Database, ids: readonly string[]): Promise<Array<{ id: string }>> {
  const db = drizzle(d1);
  const out: Array<{ id: string }> = [];
  for (let i = 0; i < ids.length; i += 90) out.push(...(await db.select({ id: projects.id }).from(projects).where(inArray(projects.id, ids.slice(i, i + 90))).all()));
  return out;
}

/**
 * Enqueues archive jobs for the due months, oldest first, at most SWEEP_MAX_STARTS per run. A month
 * is left alone while an archive or restore job holds it, while an erasure of or a legacy import into
 * its project runs,
 * once it was restored (an operator brought it back on purpose: only an archive by hand takes it
 * again), and for a while after a failed archive (1 h, doubling per failure in a row, up to a day).
 */
export async function sweepArchives(env: Env, nowMs: number): Promise<SweepResult> {
  const config = getConfig(env).archive;
  const result: SweepResult = { enabled: config.rawPayloads && Boolean((env as Partial<Env>).ARCHIVE), due: 0, started: [], skipped: [] };
  if (!result.enabled) return result;
  const pairs = await duePairs(env, sweepCutoffMs(nowMs, config.lagMonths));
  result.due = pairs.length;
  if (!pairs.length) return result;

  const db = drizzle(env.DB);
  const projectIds = [...new Set(pairs.map((p) => p.projectId))];
  const [known, restored, monthHistory, erasing, importing] = await Promise.all([
    knownProjects(env.DB, projectIds),
    db.selectDistinct({ projectId: archiveChunks.projectId, month: archiveChunks.month }).from(archiveChunks).where(isNotNull(archiveChunks.restoredAt)).all(),
    // Holding jobs, and those that ended recently enough to count toward a back-off.
    monthJobs(env.DB, { types: MONTH_JOB_TYPES, endedSince: nowMs - 2 * SWEEP_BACKOFF_MAX_MS }),
    monthJobs(env.DB, { types: ERASURE_JOB_TYPES, holdingOnly: true }),
    // A legacy import writes payloads into old months: archiving beside it could clear a payload
    // that a replayed import chunk then writes again, into a second chunk later.
    monthJobs(env.DB, { types: ['legacy_import'], holdingOnly: true }),
  ]);
  const knownIds = new Set(known.map((r) => r.id));
  const restoredPairs = new Set(restored.map((r) => pairKey(r.projectId, r.month)));
  const erasingProjects = new Set(erasing.map((j) => j.projectId));
  const importingProjects = new Set(importing.map((j) => j.projectId));
  const jobsOf = new Map<string, MonthJob[]>();
  for (const j of monthHistory) {
    if (j.month === null) continue;
    const k = pairKey(j.projectId, j.month);
    jobsOf.set(k, [...(jobsOf.get(k) ?? []), j]);
  }
  let active = monthHistory.filter((j) => j.type === 'archive' && HOLDING_STATES.includes(j.state)).length;

  for (const { projectId, month } of pairs) {
    const skip = (reason: SweepSkip, until?: number) => result.skipped.push({ projectId, month, reason, ...(until ? { until: new Date(until).toISOString() } : {}) });
    const k = pairKey(projectId, month);
    const history = jobsOf.get(k) ?? [];
    if (!knownIds.has(projectId)) skip('unknown_project');
    else if (restoredPairs.has(k)) skip('restored');
    else if (history.some((j) => HOLDING_STATES.includes(j.state))) skip('job_active');
    else if (erasingProjects.has(projectId)) skip('erasure_active');
    else if (importingProjects.has(projectId)) skip('import_active');
    else {
      const retryAt = sweepRetryAt(failureHistory(history.filter((j) => j.type === 'archive')));
      if (retryAt !== null && retryAt > nowMs) skip('backing_off', retryAt);
      else if (result.started.length >= SWEEP_MAX_STARTS || active >= SWEEP_MAX_ACTIVE) skip('limit');
      else {
        const job = await startJob(env, 'archive', { projectId, month, startedBy: 'sweep' });
        result.started.push({ projectId, month, id: job.id });
        active += 1;
      }
    }
  }
  return result;
}

/** The watchdog's hook: sweeps once an hour when ARCHIVE_RAW_PAYLOADS is on; null when it did not run. */
export async function maybeSweepArchives(env: Env, nowMs: number): Promise<SweepResult | null> {
  if (!isSweepMinute(nowMs) || !getConfig(env).archive.rawPayloads) return null;
  const result = await sweepArchives(env, nowMs);
  if (result.started.length || result.skipped.some((s) => s.reason === 'backing_off')) {
    console.log(JSON.stringify({ msg: 'archive sweep', due: result.due, started: result.started, backingOff: result.skipped.filter((s) => s.reason === 'backing_off') }));
  }
  return result;
}
