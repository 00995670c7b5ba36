// One chain through the real jobs, as an operator would run them: archive a month with the archive
// job, read every payload lazily byte for byte (each chunk read from R2 once, then cached), restore
// the month, and read every payload again, equal, now from ClickHouse. (Erasure and project deletion
// purging cached chunks: test/erasure.test.ts and test/project-deletion.test.ts.)
import { SELF } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveRow } from '../src/archive/chunk';
import { chunkCacheUrl } from '../src/archive/lazy-read';
import { toChunkManifest, type ManifestRow } from '../src/archive/manifest';
import { hash128, uuidv7At } from '../src/lib/ids';
import { admin, waitJob } from './backfill-helpers';
import { archiveMonth, chunksOf, expectConverged, insertRows, makeRows, oddPayload, payloadsInClickHouse } from './archive-helpers';
import { createProject, type TestProject } from './helpers';

const MONTH = '2025-01';
const NEXT = '2025-02';

async function readPayload(p: TestProject, id: string): Promise<{ status: number; text: string; cache: string | null; bytesRead: number }> {
  const res = await SELF.fetch(`http://gw/v1/events/${id}/payload`, { headers: p.headers });
  return { status: res.status, text: await res.text(), cache: res.headers.get('x-driftline-archive-cache'), bytesRead: Number(res.headers.get('x-driftline-archive-bytes-read') ?? 0) };
}

/** The exact answer: the stored payload spliced in verbatim. */
const answer = (r: ArchiveRow, source: 'archive' | 'clickhouse') => `{"id":"${r.id}","payload":${r.payload},"source":"${source}"}`;

const isCached = async (row: ManifestRow) => (await caches.default.match(chunkCacheUrl(toChunkManifest(row)))) !== undefined;

describe('archive → lazy read → restore → equal again, with the real jobs', () => {
  let p: TestProject;
  let rows: ArchiveRow[];
  let lastOfMonth: ArchiveRow;
  let firstOfNext: ArchiveRow;
  let chunks: ManifestRow[];

  beforeAll(async () => {
    p = await createProject('roundtrip');
    rows = makeRows('roundtrip', 20, Date.UTC(2025, 0, 10, 12));
    // The month's last millisecond and the next month's first: each lands in its own month.
    const lastMs = Date.UTC(2025, 0, 31, 23, 59, 59, 999);
    const firstMs = Date.UTC(2025, 1, 1);
    lastOfMonth = { id: uuidv7At(lastMs, hash128('roundtrip:last')), deviceId: 'dev-1', createdAtMs: lastMs, receivedAtMs: lastMs + 1, payload: oddPayload(100, ', "edge":"last"') };
    firstOfNext = { id: uuidv7At(firstMs, hash128('roundtrip:first')), deviceId: 'dev-1', createdAtMs: firstMs, receivedAtMs: firstMs + 1, payload: oddPayload(101, ', "edge":"first"') };
    await insertRows(p.id, [...rows, lastOfMonth, firstOfNext]);
  });

  it('the archive job leaves January in verified, cleared chunks and February in ClickHouse', async () => {
    const job = await archiveMonth(p.id, MONTH, { chunkRows: 6 });
    expect(job).toMatchObject({ type: 'archive', state: 'succeeded', rowsProcessed: 21 });
    const archived = await expectConverged(p.id, MONTH);
    expect([...archived.keys()].sort()).toEqual([...rows, lastOfMonth].map((r) => r.id).sort());
    for (const r of [...rows, lastOfMonth]) expect(archived.get(r.id)).toEqual(r);
    chunks = await chunksOf(p.id, MONTH);
    expect(chunks.map((c) => c.rowCount)).toEqual([6, 6, 6, 3]);
    expect((await payloadsInClickHouse(p.id, MONTH)).size).toBe(0);
    expect([...(await payloadsInClickHouse(p.id, NEXT)).keys()]).toEqual([firstOfNext.id]);
    expect(await chunksOf(p.id, NEXT)).toEqual([]);
  });

  it('every archived payload reads back lazily byte for byte, and the month boundary holds', async () => {
    for (const c of chunks) expect(await isCached(c), `${c.key} not cached before any read`).toBe(false);
    let misses = 0;
    let bytesRead = 0;
    for (const r of [...rows, lastOfMonth]) {
      const got = await readPayload(p, r.id);
      expect(got.status, got.text).toBe(200);
      expect(got.text).toBe(answer(r, 'archive'));
      if (got.cache === 'miss') misses++;
      bytesRead += got.bytesRead;
    }
    // Each chunk was fetched from R2 exactly once, whole; every other read cost no R2 byte.
    expect(misses).toBe(chunks.length);
    expect(bytesRead).toBe(chunks.reduce((n, c) => n + c.compressedBytes, 0));
    const next = await readPayload(p, firstOfNext.id);
    expect(next.text).toBe(answer(firstOfNext, 'clickhouse'));
    // Every chunk was read once and is now cached under its manifest key.
    for (const c of chunks) expect(await isCached(c), `${c.key} cached`).toBe(true);
  });

  it('restore writes every payload back byte for byte; the reads are equal again, now from ClickHouse', async () => {
    const kept = [...rows, lastOfMonth];
    const r = await admin('POST', '/admin/archives/restore', { projectId: p.id, month: MONTH, pauseMs: 0 });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const job = await waitJob(r.body.id, (j) => ['succeeded', 'failed', 'cancelled'].includes(j.state), 90_000);
    expect(job).toMatchObject({ type: 'restore', state: 'succeeded', rowsProcessed: kept.length });

    const back = await payloadsInClickHouse(p.id, MONTH);
    expect(new Map([...back].sort())).toEqual(new Map(kept.map((k) => [k.id, k.payload] as [string, string]).sort()));
    for (const k of kept) expect((await readPayload(p, k.id)).text).toBe(answer(k, 'clickhouse'));
    // The chunks stay after a restore, every one marked; the listing says restored.
    expect((await chunksOf(p.id, MONTH)).every((c) => c.restoredAt !== null)).toBe(true);
    const listing = await admin('GET', `/admin/archives?projectId=${p.id}&month=${MONTH}`);
    expect(listing.body.archives).toEqual([expect.objectContaining({ state: 'restored', restoredAt: expect.any(String), pendingRows: kept.length })]);
  });
});
