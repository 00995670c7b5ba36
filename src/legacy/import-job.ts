// The legacy_import job: plans over a max-key snapshot, then imports one keyset page per chunk.
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import type { ChunkOutcome, JobRunner } from '../jobs/runner';
import { jobStore } from '../jobs/store';
import { markInitialMigrationCompleted } from './datasets';
import { LegacyImportParams } from './params';
import { releaseHeldEvents } from './realtime';
import { planImport, readPage, withLegacyDb } from './source';
import { writeImportedChunk } from './store';
import { keyText, translateRow } from './translate';

export const legacyImportRunner: JobRunner = {
  pauseMs: (params) => LegacyImportParams.parse(params).pauseMs,

  async runChunk(env: Env, job): Promise<ChunkOutcome> {
    const p = LegacyImportParams.parse(job.params);
    return withLegacyDb(env.LEGACY_DB.connectionString, async (pg) => {
      let { maxKey, rowsTotal, rowsProcessed, verifyWrites } = job;
      if (rowsTotal === null) {
        // An earlier import into the same project may have written any of these rows.
        verifyWrites ||= (await jobStore(env.DB).others(job.id, 'legacy_import', { projectId: p.projectId, dataset: p.dataset })).length > 0;
        const plan = await planImport(pg, p.source, job.cursor);
        maxKey = plan.maxKey;
        rowsTotal = plan.rowsTotal;
        rowsProcessed = plan.rowsDone;
      }
      if (maxKey === null) return { cursor: job.cursor, maxKey, rowsTotal, rowsBefore: rowsProcessed, rows: 0, done: true, verifyWrites };
      const page = await readPage(pg, p.source, job.cursor, maxKey, p.chunkSize);
      const now = Date.now();
      const translated = page.map((row) => translateRow(p, row, now));
      await writeImportedChunk(clickhouse(getConfig(env).clickhouse), p.projectId, translated, verifyWrites);
      const last = page.at(-1);
      const cursor = last ? keyText(last[p.source.key]) : job.cursor;
      return {
        cursor,
        maxKey,
        rowsTotal,
        rowsBefore: rowsProcessed,
        rows: page.length,
        done: page.length < p.chunkSize || cursor === maxKey,
        verifyWrites,
      };
    });
  },

  /** The flag is the very last write of the import: everything it promises is in place. */
  async complete(env: Env, job) {
    const p = LegacyImportParams.parse(job.params);
    await markInitialMigrationCompleted(env.DB, p.dataset, Date.now());
  },

  /** Held realtime events flow now; the watchdog finishes the release if this one is cut short. */
  async afterSuccess(env: Env, job) {
    const p = LegacyImportParams.parse(job.params);
    await releaseHeldEvents(env, p.dataset);
  },
};
