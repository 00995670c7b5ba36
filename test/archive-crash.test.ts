// Archive crash safety through the job's test-only crash seam: a run cut short after the upload,
// after the manifest row, after verification or in the middle of the clear converges on re-run (by
// a new job, or by the engine's own retry); a damaged object fails the run and clears nothing.
// A job chunk writes several archive chunks and clears them with one delete at its end, so a crash
// may leave verified chunks not yet cleared: the re-run settles them.
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

/**
 * What a crash at chunk 2 leaves when all three chunks fit in one job chunk: chunk 1 verified but
 * not cleared (the one delete comes at the slice's end), chunk 2 as far as the crash let it go. A
 * crash mid-clear has all three verified and deleted the first half of the slice's rows (4 of 7 by
 * event time: chunk 1 and the first row of chunk 2).
 */
async function expectCrashLeft(at: (typeof ARCHIVE_FAULT_POINTS)[number], projectId: string, rows: readonly ArchiveRow[]) {
  const chunks = await chunksOf(projectId, MONTH);
  const keys = await objectKeys(projectId, MONTH);
  const left = await payloadsInClickHouse(projectId, MONTH);
  expect(keys).toContain(`archives/${projectId}/${MONTH}/000002.jsonl.gz`);
  expect(chunks[0]).toMatchObject({ number: 1, verifiedAt: expect.any(Number), clearedAt: null });
  const second = chunks[1];
  if (at === 'afterUpload') expect(second).toBeUndefined();
  else expect(second).toMatchObject({ number: 2, clearedAt: null, verifiedAt: at === 'afterManifest' ? null : expect.any(Number) });
  if (at === 'midClear') {
    expect(chunks.map((c) => [c.number, c.verifiedAt !== null, c.clearedAt])).toEqual([
      [1, true, null],
      [2, true, null],
      [3, true, null],
    ]);
    expect(new Set(left.keys())).toEqual(new Set(rows.slice(4).map((r) => r.id)));
  } else {
    expect(chunks).toHaveLength(at === 'afterUpload' ? 1 : 2);
    // Nothing cleared yet: the slice's delete never ran.
    expect(left.size).toBe(ROWS);
  }
  expect(chunk2(rows).filter((id) => left.has(id)).length).toBe(at === 'midClear' ? 2 : 3);
  await expectNothingLost(projectId, rows);
  return second;
}

async function expectFullyArchived(projectId: string, rows: readonly ArchiveRow[]) {
  const archived = await expectConverged(projectId, MONTH);
  expect(archived).toEqual(new Map(rows.map((r) => [r.id, r])));
  expect((await payloadsInClickHouse(projectId, MONTH)).size).toBe(0);
}

describe('archive crash safety', () => {
  // A crash in the middle of a partition drop has its own tests (archive-partition.test.ts).
  for (const at of ARCHIVE_FAULT_POINTS.filter((a) => a !== 'afterMove')) {
    it(`a run cut short ${at} converges on re-run, and a second re-run adds nothing`, async () => {
      const { projectId, rows } = await seed(`fail-${at}`);
      const crashed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at, chunk: 2, mode: 'fail' } });
      expect(crashed.state).toBe('failed');
      expect(crashed.error).toContain(`injected crash (test seam) ${at} of chunk 2`);
      // The crash came before the job chunk committed anything.
      expect(crashed.rowsProcessed).toBe(0);
      const second = await expectCrashLeft(at, projectId, rows);

      // Re-run: the orphan is removed or the recorded chunk finished, then the rest archived.
      const rerun = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
      expect(rerun.error).toBeNull();
      expect(rerun.state).toBe('succeeded');
      await expectFullyArchived(projectId, rows);
      const settled = await chunksOf(projectId, MONTH);
      // Chunk numbers only grow and no row is in two chunks (checked by expectConverged).
      expect(settled.map((c) => c.number)).toEqual([1, 2, 3]);
      if (at !== 'afterUpload') expect(settled[1]!.sha256).toBe(second!.sha256);
      // The re-run writes what the crashed run had not recorded: chunks 2 and 3, chunk 3, or nothing.
      expect(rerun.result).toMatchObject({ chunks: { afterUpload: 2, afterManifest: 1, afterVerify: 1, midClear: 0 }[at], state: 'archived', pendingRows: 0 });

      const twice = await archiveMonth(projectId, MONTH, { chunkRows: CHUNK_ROWS });
      expect(twice.result).toMatchObject({ chunks: 0, rows: 0, monthChunks: 3 });
      expect(await chunksOf(projectId, MONTH)).toEqual(settled);
      expect(await objectKeys(projectId, MONTH)).toEqual(settled.map((c) => c.key));
    });
  }

  it('a crash mid-clear in a later job chunk leaves the earlier job chunks cleared and committed, and converges', async () => {
    const { projectId, rows } = await seed('slices');
    // One archive chunk per job chunk: chunk 1 is cleared and committed before chunk 2 is written.
    const crashed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, sliceChunks: 1, faults: { at: 'midClear', chunk: 2, mode: 'fail' } });
    expect(crashed.state).toBe('failed');
    expect(crashed.error).toContain('injected crash (test seam) midClear of chunk 2');
    expect(crashed.rowsProcessed).toBe(CHUNK_ROWS);
    const chunks = await chunksOf(projectId, MONTH);
    expect(chunks.map((c) => [c.number, c.verifiedAt !== null, c.clearedAt !== null])).toEqual([
      [1, true, true],
      [2, true, false],
    ]);
    // Chunk 1 gone; of chunk 2 the first two rows deleted (the first half by time), one left; chunk 3 untouched.
    const left = await payloadsInClickHouse(projectId, MONTH);
    expect(new Set(left.keys())).toEqual(new Set([rows[5]!, rows[6]!].map((r) => r.id)));
    await expectNothingLost(projectId, rows);

    const rerun = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, sliceChunks: 2 });
    expect(rerun.state).toBe('succeeded');
    expect(rerun.result).toMatchObject({ chunks: 1, state: 'archived', pendingRows: 0 });
    await expectFullyArchived(projectId, rows);
    expect((await chunksOf(projectId, MONTH)).map((c) => c.number)).toEqual([1, 2, 3]);
  });

  it('the engine retries a chunk cut short at any point, and the same job converges', async () => {
    // A crash in the middle of a partition drop has its own tests (archive-partition.test.ts).
    for (const at of ARCHIVE_FAULT_POINTS.filter((a) => a !== 'afterMove')) {
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

  it('a damaged later chunk fails the run, naming it, and none of its rows is cleared; the chunks before it stay sound', async () => {
    const { projectId, rows } = await seed('corrupt-later');
    // Chunk 1 is verified; the run stops after chunk 2's manifest row, before chunk 2 is verified.
    const crashed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS, faults: { at: 'afterManifest', chunk: 2, mode: 'fail' } });
    expect(crashed.state).toBe('failed');
    const before = await chunksOf(projectId, MONTH);
    expect(before.map((c) => [c.number, c.verifiedAt !== null])).toEqual([
      [1, true],
      [2, false],
    ]);
    const second = before[1]!;
    const obj = await env.ARCHIVE.get(second.key);
    const bytes = new Uint8Array(await obj!.arrayBuffer());
    bytes[bytes.length - 12]! ^= 0x01;
    await env.ARCHIVE.put(second.key, bytes);

    for (let i = 0; i < 2; i++) {
      const failed = await runArchiveJob({ projectId, month: MONTH, chunkRows: CHUNK_ROWS });
      expect(failed.state).toBe('failed');
      expect(failed.error).toContain(`archive chunk ${second.key} failed verification`);
      expect(failed.error).toContain('sha256_mismatch');
      // Every row of the damaged chunk is still in ClickHouse, byte for byte; nothing is in a third chunk.
      const left = await payloadsInClickHouse(projectId, MONTH);
      for (const r of chunk2(rows).map((id) => rows.find((x) => x.id === id)!)) expect(left.get(r.id), `row ${r.id} of the damaged chunk`).toBe(r.payload);
      await expectNothingLost(projectId, rows);
      expect((await chunksOf(projectId, MONTH)).map((c) => c.number)).toEqual([1, 2]);
      expect(await objectKeys(projectId, MONTH)).toEqual(before.map((c) => c.key));
    }

    const repaired = await archiveMonth(projectId, MONTH, { chunkRows: CHUNK_ROWS, discardUnverified: true });
    expect(repaired.state, repaired.error ?? '').toBe('succeeded');
    await expectFullyArchived(projectId, rows);
    // Chunk numbers only grow: the discarded chunk 2 is not written again under its number.
    expect((await chunksOf(projectId, MONTH)).map((c) => c.number)).not.toContain(2);
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
