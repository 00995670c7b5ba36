// The legacy_import job: plans over a max-key snapshot, then imports keyset pages chunk by chunk, at
// the pace of its throttle (see jobs/throttle.ts) or a hand-set one.
import type pg from 'pg';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { ACTIVE } from '../jobs/states';
import type { ChunkOutcome, ChunkPace, JobRunner } from '../jobs/runner';
import { startJob } from '../jobs/actions';
import { jobStore } from '../jobs/store';
import { markInitialMigrationCompleted } from './datasets';
import { LegacyImportParams, pacing } from './params';
import { eventsProbe } from './probe';
import { releaseHeldEvents } from './realtime';
import { planImport, readPage, withLegacyDb } from './source';
import { ImportEncoder } from './encode';
import { writeImportedChunk } from './store';
import { keyText, UnusableLegacyRow } from './translate';

/** Pages per chunk at a fixed pace: the next page is read from Postgres while the previous one goes to ClickHouse. */
const PAGES_PER_CHUNK = 2;
/**
 * Rows translated (and encoded for ClickHouse) between two yields to the event loop while paced: a
 * request the isolate serves meanwhile waits about half a millisecond, not for a whole page.
 */
const PACED_TRANSLATE_ROWS = 100;

const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/**
 * One chunk (`chunkRows` rows at most) as a short pipeline of keyset pages. Paced, each page is one
 * step of the throttle's size, followed by its rest once written (when nothing is in flight), and
 * the chunk ends early when the pace says its time is up. `exhausted`: no rows are left.
 */
async function importPages(
  pg: pg.Client,
  ch: ClickHouse,
  p: LegacyImportParams,
  chunkRows: number,
  from: string | null,
  maxKey: string,
  verify: boolean,
  pace?: ChunkPace,
): Promise<{ cursor: string | null; rows: number; skipped: number; exhausted: boolean }> {
  const fixedPage = Math.ceil(chunkRows / PAGES_PER_CHUNK);
  let cursor = from;
  let rows = 0;
  let skipped = 0;
  let exhausted = false;
  let writing: Promise<unknown> | null = null;
  // A write's failure is kept, not left unhandled, and thrown once the write is awaited.
  const settle = async (w: Promise<unknown> | null) => {
    const err = await w;
    if (err) throw err;
  };
  while (rows < chunkRows) {
    const pageSize = Math.min(pace ? pace.stepRows() : fixedPage, chunkRows - rows);
    const page = await readPage(pg, p.source, cursor, maxKey, pageSize);
    const encoder = new ImportEncoder(p, Date.now());
    let pageSkipped = 0;
    for (const [i, row] of page.entries()) {
      if (pace && i > 0 && i % PACED_TRANSLATE_ROWS === 0) await yieldToEventLoop();
      try {
        encoder.add(row);
      } catch (err) {
        // A row the source cannot supply (no device or time) is counted, never a reason to stop.
        if (!(err instanceof UnusableLegacyRow)) throw err;
        pageSkipped += 1;
      }
    }
    if (writing) {
      await settle(writing);
      writing = null;
      // Time is up: this page was read but is not written; the next chunk reads it again.
      if (pace && !(await pace.rest())) return { cursor, rows, skipped, exhausted: false };
    }
    writing = writeImportedChunk(ch, p.projectId, encoder.finish(), verify).then(() => null, (err: unknown) => err);
    rows += page.length;
    skipped += pageSkipped;
    const last = page.at(-1);
    if (last) cursor = keyText(last[p.source.key]);
    if (page.length < pageSize || cursor === maxKey) {
      exhausted = true;
      break;
    }
  }
  await settle(writing);
  await pace?.rest();
  return { cursor, rows, skipped, exhausted };
}

/** The event times an import of this dataset brought into the project (null when none). */
async function importedSpan(ch: ClickHouse, p: LegacyImportParams): Promise<{ fromMs: number; toMs: number } | null> {
  const [row] = await ch.query<{ n: number | string; from_ms: number | string; to_ms: number | string }>(
    `SELECT count() AS n, min(created_at_ms) AS from_ms, max(created_at_ms) AS to_ms FROM legacy_id_map
      WHERE project_id = {p:String} AND dataset = {d:String}`,
    { p: p.projectId, d: p.dataset },
  );
  return row && Number(row.n) > 0 ? { fromMs: Number(row.from_ms), toMs: Number(row.to_ms) } : null;
}

export const legacyImportRunner: JobRunner = {
  pauseMs: (params) => pacing(LegacyImportParams.parse(params)).pauseMs,

  // Two imports of one dataset into one project at once would race each other's writes.
  async refuseRetry(env, job) {
    const p = LegacyImportParams.safeParse(job.params);
    if (!p.success) return;
    const [active] = await jobStore(env.DB).others(job.id, 'legacy_import', { projectId: p.data.projectId, dataset: p.data.dataset }, [...ACTIVE, 'paused']);
    if (active) throw new ApiError(409, 'import_already_active', `an import of ${p.data.dataset} into this project is ${active.state}: retry this one once it has ended`, { id: active.id, state: active.state });
  },

  throttle: {
    limits(params) {
      const p = LegacyImportParams.parse(params);
      const { chunkSize, pauseMs } = pacing(p);
      return p.throttle ? { maxStepRows: chunkSize, maxPauseMs: pauseMs } : null;
    },
    prepareProbe: (env, params) => eventsProbe(clickhouse(getConfig(env).clickhouse), LegacyImportParams.parse(params).projectId),
  },

  async runChunk(env: Env, job): Promise<ChunkOutcome> {
    const p = LegacyImportParams.parse(job.params);
    return withLegacyDb(env.LEGACY_DB.connectionString, async (pg) => {
      let { maxKey, rowsTotal, rowsProcessed, rowsSkipped, verifyWrites } = job;
      if (rowsTotal === null) {
        // An earlier import into the same project may have written any of these rows.
        verifyWrites ||= (await jobStore(env.DB).others(job.id, 'legacy_import', { projectId: p.projectId, dataset: p.dataset })).length > 0;
        const plan = await planImport(pg, p.source, job.cursor);
        maxKey = plan.maxKey;
        rowsTotal = plan.rowsTotal;
        rowsProcessed = plan.rowsDone;
        // At least what earlier runs counted up to the cursor (a retry keeps it): the plan sees
        // NULLs and empty devices, not a time that does not parse.
        rowsSkipped = Math.max(rowsSkipped, plan.rowsSkipped);
      }
      if (maxKey === null) return { cursor: job.cursor, maxKey, rowsTotal, rowsBefore: rowsProcessed, rows: 0, skippedBefore: rowsSkipped, skipped: 0, done: true, verifyWrites };
      const { cursor, rows, skipped, exhausted } = await importPages(pg, clickhouse(getConfig(env).clickhouse), p, pacing(p).chunkSize, job.cursor, maxKey, verifyWrites, job.pace);
      return {
        cursor,
        maxKey,
        rowsTotal,
        rowsBefore: rowsProcessed,
        rows,
        skippedBefore: rowsSkipped,
        skipped,
        done: exhausted,
        verifyWrites,
      };
    });
  },

  /** The flag is the very last write of the import: everything it promises is in place. */
  async complete(env: Env, job) {
    const p = LegacyImportParams.parse(job.params);
    await markInitialMigrationCompleted(env.DB, { projectId: p.projectId, dataset: p.dataset }, Date.now());
  },

  /** The project's held realtime events flow now; the watchdog finishes the release if this one is cut short. */
  async afterSuccess(env: Env, job) {
    const p = LegacyImportParams.parse(job.params);
    await releaseHeldEvents(env, { projectId: p.projectId, dataset: p.dataset });
    // Imported positions join tracks, trips and mileage: recompute the span they cover.
    if (p.source.name === 'position') {
      const span = await importedSpan(clickhouse(getConfig(env).clickhouse), p);
      if (span) await startJob(env, 'fleet_recompute', { projectId: p.projectId, sinceMs: span.fromMs, untilMs: span.toMs + 1, reason: 'import' });
    }
  },
};
