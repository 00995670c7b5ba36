// Archive crash safety through the job's test-only crash seam: a run cut short after the upload,
// after the manifest row, after verification or in the middle of the clear converges on re-run (by
// a new job, or by the engine's own retry); a damaged object fails the run and clears nothing.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { ARCHIVE_FAULT_POINTS } from '../src/archive/archive-job';
import type { ArchiveRow } from '../src/archive/chunk';
import { createProject } from './helpers';
import {
  archiveMonth,
  chunksOf,
  decodeRecorded,
  expectConverged,
  insertRows,
  makeRows,
  objectKeys,
  payloadsInClickHouse,
  runArchiveJob,
} from './archive-helpers';

const MONTH = '2026-05';
const ROWS = 7;
const CHUNK_ROWS = 3;

/** No payload gone from ClickHouse without a verified chunk that holds it, byte for byte. */
async function expectNothingLost(projectId: string, source: readonly ArchiveRow[]): Promise<void> {
  const left = await payloadsInClickHouse(projectId, MONTH);
  const held = new Map<string, ArchiveRow>();
  for (const c of await chunksOf(projectId, MONTH)) {
    if (c.verifiedAt === null) continue;
    for (const r of await decodeRecorded(c)) held.set(r.id, r);
  }
  for (const r of source) {
    if (left.has(r.id)) expect(left.get(r.id)).toBe(r.payload);
    else expect(held.get(r.id), `payload ${r.id} cleared without a verified chunk`).toEqual(r);
  }
}

async function seed(tag: string): Promise<{ projectId: string; rows: ArchiveRow[] }> {
  const p = await createProject(`crash-${tag}`);
  const rows = makeRows(`crash-${tag}`, ROWS, Date.parse('2026-05-04T10:00:00.000Z'), 600_000);
  await insertRows(p.id, rows);
  return { projectId: p.id, rows };
}

/** Chunk 2 of 3 (rows 4–6) is where each crash is injected. */
const chunk2 = (rows: readonly ArchiveRow[]) => rows.slice(CHUNK_ROWS, 2 * CHUNK_ROWS).map((r) => r.id);

async function expectFullyArchived(projectId: string, rows: readonly ArchiveRow[]) {
  const archived = await expectConverged(projectId, MONTH);
  expect(archived).toEqual(new Map(rows.map((r) => [r.id, r])));
  expect((await payloadsInClickHouse(projectId, MONTH)).size).toBe(0);
}

describe('archive crash safety', () => {
  for (const at of ARCHIVE_FAULT_POINTS) {
    it(`a run cut short ${at} converges on re-run, and a second re-run adds nothing`, async () => {
      const { projectId, rows } = await seed(`fail-${at}`);
      const crashed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at, chunk: 2, mode: 'fail' } });
      expect(crashed.state).toBe('failed');
      expect(crashed.error).toContain(`injected crash (test seam) ${at} of chunk 2`);
      expect(crashed.rowsProcessed).toBe(CHUNK_ROWS);

      // What the crash left: chunk 1 done; chunk 2 as far as the crash let it go.
      const chunks = await chunksOf(projectId, MONTH);
      const keys = await objectKeys(projectId, MONTH);
      const left = await payloadsInClickHouse(projectId, MONTH);
      expect(keys).toContain(`archives/${projectId}/${MONTH}/000002.jsonl.gz`);
      expect(chunks[0]).toMatchObject({ number: 1, verifiedAt: expect.any(Number), clearedAt: expect.any(Number) });
      const second = chunks[1];
      if (at === 'afterUpload') expect(second).toBeUndefined();
      else expect(second).toMatchObject({ number: 2, clearedAt: null, verifiedAt: at === 'afterManifest' ? null : expect.any(Number) });
      const chunk2Left = chunk2(rows).filter((id) => left.has(id)).length;
      expect(chunk2Left).toBe(at === 'midClear' ? 1 : 3);
      await expectNothingLost(projectId, rows);

      // Re-run: the orphan is removed or the recorded chunk finished, then the rest archived.
      const rerun = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
      expect(rerun.error).toBeNull();
      expect(rerun.state).toBe('succeeded');
      await expectFullyArchived(projectId, rows);
      const settled = await chunksOf(projectId, MONTH);
      // Chunk numbers only grow and no row is in two chunks (checked by expectConverged).
      expect(settled.map((c) => c.number)).toEqual([1, 2, 3]);
      if (at !== 'afterUpload') expect(settled[1]!.sha256).toBe(second!.sha256);
      expect(rerun.result).toMatchObject({ chunks: at === 'afterUpload' ? 2 : 1, state: 'archived', pendingRows: 0 });

      const twice = await archiveMonth(projectId, MONTH, { chunkRows: CHUNK_ROWS });
      expect(twice.result).toMatchObject({ chunks: 0, rows: 0, monthChunks: 3 });
      expect(await chunksOf(projectId, MONTH)).toEqual(settled);
      expect(await objectKeys(projectId, MONTH)).toEqual(settled.map((c) => c.key));
    });
  }

  it('the engine retries a chunk cut short at any point, and the same job converges', async () => {
    for (const at of ARCHIVE_FAULT_POINTS) {
      const { projectId, rows } = await seed(`retry-${at}`);
      const job = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at, mode: 'retry' } });
      expect([at, job.state, job.rowsProcessed]).toEqual([at, 'succeeded', ROWS]);
      await expectFullyArchived(projectId, rows);
      expect((await chunksOf(projectId, MONTH)).map((c) => c.number)).toEqual([1, 2, 3]);
    }
  });

  it('a chunk whose object was damaged before verification fails the run, naming it, and clears nothing of it', async () => {
    const { projectId, rows } = await seed('corrupt');
    const crashed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at: 'afterManifest', chunk: 1, mode: 'fail' } });
    expect(crashed.state).toBe('failed');
    const [row] = await chunksOf(projectId, MONTH);
    const obj = await env.ARCHIVE.get(row!.key);
    const bytes = new Uint8Array(await obj!.arrayBuffer());
    bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
    await env.ARCHIVE.put(row!.key, bytes);

    for (let i = 0; i < 2; i++) {
      const failed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
      expect(failed.state).toBe('failed');
      expect(failed.attempts).toBe(1);
      expect(failed.error).toContain(`archive chunk ${row!.key} failed verification`);
      expect(failed.error).toContain('sha256_mismatch');
      expect(failed.error).toContain('Nothing of it was cleared');
      // Nothing cleared, nothing more written.
      expect((await payloadsInClickHouse(projectId, MONTH)).size).toBe(ROWS);
      expect(await chunksOf(projectId, MONTH)).toEqual([row]);
      expect(await objectKeys(projectId, MONTH)).toEqual([row!.key]);
    }

    // The operator's way out: the never-verified chunk is discarded and its rows archived again.
    const repaired = await archiveMonth(projectId, MONTH, { chunkRows: CHUNK_ROWS, discardUnverified: true });
    expect(repaired.error).toBeNull();
    expect(repaired.state).toBe('succeeded');
    await expectFullyArchived(projectId, rows);
  });

  it('a damaged upload that was never recorded is an orphan: removed, and the run writes the chunk again', async () => {
    const { projectId, rows } = await seed('corrupt-orphan');
    await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at: 'afterUpload', chunk: 1, mode: 'fail' } });
    const key = `archives/${projectId}/${MONTH}/000001.jsonl.gz`;
    expect(await objectKeys(projectId, MONTH)).toEqual([key]);
    await env.ARCHIVE.put(key, new TextEncoder().encode('not a chunk'));
    const rerun = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
    expect(rerun.state).toBe('succeeded');
    await expectFullyArchived(projectId, rows);
  });

  it('a verified chunk whose object vanished fails the run loudly instead of writing its rows again', async () => {
    const { projectId, rows } = await seed('vanished');
    await archiveMonth(projectId, MONTH, { chunkRows: CHUNK_ROWS });
    const [first] = await chunksOf(projectId, MONTH);
    await env.ARCHIVE.delete(first!.key);
    // Its rows come back (a restore), so the run needs the chunk's ids.
    await insertRows(projectId, rows.slice(0, CHUNK_ROWS), false);
    const failed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
    expect(failed.state).toBe('failed');
    expect(failed.error).toContain(`archive chunk ${first!.key} was verified but its object is missing from R2`);
    expect((await chunksOf(projectId, MONTH)).map((c) => c.number)).toEqual([1, 2, 3]);
    expect((await payloadsInClickHouse(projectId, MONTH)).size).toBe(CHUNK_ROWS);
  });
});
