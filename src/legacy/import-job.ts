// The legacy_import job: plans over a max-key snapshot, then imports one keyset page per chunk.
import type pg from 'pg';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import type { ChunkOutcome, JobRunner } from '../jobs/runner';
import { startJob } from '../jobs/actions';
import { jobStore } from '../jobs/store';
import { markInitialMigrationCompleted } from './datasets';
import { LegacyImportParams } from './params';
import { releaseHeldEvents } from './realtime';
import { planImport, readPage, withLegacyDb } from './source';
import { writeImportedChunk } from './store';
import { keyText, translateRow, UnusableLegacyRow, type TranslatedRow } from './translate';

/** Pages per chunk: the next page is read from Postgres while the previous one goes to ClickHouse. */
const PAGES_PER_CHUNK = 2;

/** One chunk (`chunkSize` rows at most) as a short pipeline of keyset pages. */
async function importPages(pg: pg.Client, ch: ClickHouse, p: LegacyImportParams, from: string | null, maxKey: string, verify: boolean): Promise<{ cursor: string | null; rows: number; skipped: number }> {
  const pageSize = Math.ceil(p.chunkSize / PAGES_PER_CHUNK);
  let cursor = from;
  let rows = 0;
  let skipped = 0;
  let writing: Promise<unknown> | null = null;
  // A write's failure is kept, not left unhandled, and thrown once the write is awaited.
  const settle = async (w: Promise<unknown> | null) => {
    const err = await w;
    if (err) throw err;
  };
  while (rows < p.chunkSize) {
    const page = await readPage(pg, p.source, cursor, maxKey, Math.min(pageSize, p.chunkSize - rows));
    const now = Date.now();
    const translated: TranslatedRow[] = [];
    for (const row of page) {
      try {
        translated.push(translateRow(p, row, now));
      } catch (err) {
        // A row the source cannot supply (no device or time) is counted, never a reason to stop.
        if (!(err instanceof UnusableLegacyRow)) throw err;
        skipped += 1;
      }
    }
    await settle(writing);
    writing = writeImportedChunk(ch, p.projectId, translated, verify).then(() => null, (err: unknown) => err);
    rows += page.length;
    const last = page.at(-1);
    if (last) cursor = keyText(last[p.source.key]);
    if (page.length < pageSize || cursor === maxKey) break;
  }
  await settle(writing);
  return { cursor, rows, skipped };
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
  pauseMs: (params) => LegacyImportParams.parse(params).pauseMs,

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
      const { cursor, rows, skipped } = await importPages(pg, clickhouse(getConfig(env).clickhouse), p, job.cursor, maxKey, verifyWrites);
      return {
        cursor,
        maxKey,
        rowsTotal,
        rowsBefore: rowsProcessed,
        rows,
        skippedBefore: rowsSkipped,
        skipped,
        done: rows < p.chunkSize || cursor === maxKey,
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
      if (span) await startJob(env, 'fleet_recompute', { projectId: p.projectId, sinceMs: span.fromMs, untilMs: span.toMs + 1 });
    }
  },
};
