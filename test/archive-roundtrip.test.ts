// One chain through the real jobs, as an operator would run them: archive a month with the archive
// job, read every payload lazily byte for byte, erase a device (its cached chunks purged, the others
// still readable), restore the month (equal again, now from ClickHouse), then delete the project
// (every cached chunk of it purged).
import { SELF } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveRow } from '../src/archive/chunk';
import { chunkCacheUrl } from '../src/archive/lazy-read';
import { toChunkManifest, type ManifestRow } from '../src/archive/manifest';
import { hash128, uuidv7At } from '../src/lib/ids';
import { admin, waitJob } from './backfill-helpers';
import { archiveMonth, chunksOf, decodeRecorded, expectConverged, insertRows, makeRows, objectKeys, oddPayload, payloadsInClickHouse } from './archive-helpers';
import { startErasure, waitFinished } from './erasure-fixtures';
import { createProject, type TestProject } from './helpers';

const MONTH = '2025-01';
const NEXT = '2025-02';

async function readPayload(p: TestProject, id: string): Promise<{ status: number; text: string; cache: string | null }> {
  const res = await SELF.fetch(`http://gw/v1/events/${id}/payload`, { headers: p.headers });
  return { status: res.status, text: await res.text(), cache: res.headers.get('x-driftline-archive-cache') };
}

/** The exact answer: the stored payload spliced in verbatim. */
const answer = (r: ArchiveRow, source: 'archive' | 'clickhouse') => `{"id":"${r.id}","payload":${r.payload},"source":"${source}"}`;

const isCached = async (row: ManifestRow) => (await caches.default.match(chunkCacheUrl(toChunkManifest(row)))) !== undefined;

describe('archive → lazy read → erasure → restore → project deletion, with the real jobs', () => {
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
    for (const r of [...rows, lastOfMonth]) {
      const got = await readPayload(p, r.id);
      expect(got.status, got.text).toBe(200);
      expect(got.text).toBe(answer(r, 'archive'));
    }
    const next = await readPayload(p, firstOfNext.id);
    expect(next.text).toBe(answer(firstOfNext, 'clickhouse'));
    // Every chunk was read once and is now cached under its manifest key.
    for (const c of chunks) expect(await isCached(c), `${c.key} cached`).toBe(true);
  });

  it('erasing a device purges the cached copies of the chunks that held it; the other devices still read the same', async () => {
    const erased = rows.filter((r) => r.deviceId === 'dev-0');
    const kept = [...rows.filter((r) => r.deviceId !== 'dev-0'), lastOfMonth];
    const held = new Set<string>();
    for (const c of chunks) if ((await decodeRecorded(c)).some((r) => r.deviceId === 'dev-0')) held.add(c.key);
    expect(held.size).toBe(chunks.length);

    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: 'dev-0' }));
    expect(job.state, job.error ?? '').toBe('succeeded');
    expect(job.result).toMatchObject({ r2: { chunksRewritten: chunks.length, objectsDeleted: chunks.length, rows: erased.length } });

    // The old objects are gone from R2 and from the cache: no copy of the device is left to serve.
    for (const c of chunks) expect(await isCached(c), `${c.key} purged from the cache`).toBe(false);
    const after = await chunksOf(p.id, MONTH);
    expect(after.filter((c) => held.has(c.key))).toEqual([]);
    expect(await objectKeys(p.id, MONTH)).toEqual(after.map((c) => c.key).sort());
    for (const c of after) expect((await decodeRecorded(c)).some((r) => r.deviceId === 'dev-0')).toBe(false);

    for (const r of erased) expect((await readPayload(p, r.id)).status).toBe(404);
    for (const r of kept) expect((await readPayload(p, r.id)).text).toBe(answer(r, 'archive'));
    chunks = after;
  });

  it('restore writes every remaining payload back byte for byte; the reads are equal again, now from ClickHouse', async () => {
    const kept = [...rows.filter((r) => r.deviceId !== 'dev-0'), lastOfMonth];
    const r = await admin('POST', '/admin/archives/restore', { projectId: p.id, month: MONTH, pauseMs: 0 });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const job = await waitJob(r.body.id, (j) => ['succeeded', 'failed', 'cancelled'].includes(j.state), 90_000);
    expect(job).toMatchObject({ type: 'restore', state: 'succeeded', rowsProcessed: kept.length });

    const back = await payloadsInClickHouse(p.id, MONTH);
    expect(new Map([...back].sort())).toEqual(new Map(kept.map((k) => [k.id, k.payload] as [string, string]).sort()));
    for (const k of kept) expect((await readPayload(p, k.id)).text).toBe(answer(k, 'clickhouse'));
    for (const k of rows.filter((x) => x.deviceId === 'dev-0')) expect((await readPayload(p, k.id)).status).toBe(404);
    // The chunks stay after a restore.
    expect((await chunksOf(p.id, MONTH)).every((c) => c.restoredAt !== null)).toBe(true);
  });

  it('deleting the project purges every cached chunk of it and every object', async () => {
    // After a restore reads come from ClickHouse, so the cache is filled under each chunk's key directly.
    for (const c of chunks) await caches.default.put(chunkCacheUrl(toChunkManifest(c)), new Response('cached chunk', { headers: { 'cache-control': 'max-age=600' } }));
    for (const c of chunks) expect(await isCached(c)).toBe(true);

    const del = await admin('DELETE', `/admin/projects/${p.id}`);
    expect(del.status, JSON.stringify(del.body)).toBe(202);
    const job = await waitFinished(del.body.id);
    expect(job.state, job.error ?? '').toBe('succeeded');
    for (const c of chunks) expect(await isCached(c), `${c.key} purged`).toBe(false);
    expect(await objectKeys(p.id)).toEqual([]);
  });
});
