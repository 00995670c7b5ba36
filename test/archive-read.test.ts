// GET /v1/events/:id/payload: a payload still in ClickHouse, or read lazily from the one archive
// chunk that holds it (one R2 object on a miss, none once cached), byte for byte, never another
// project's, and coded errors for a malformed id, an unknown event, a missing or corrupt chunk.
import { env, SELF } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeChunk, inflateChunk } from '../src/archive/chunk';
import { findEventInChunkText } from '../src/archive/lazy-read';
import { manifestStore } from '../src/archive/manifest';
import { putChunkCreateOnly } from '../src/archive/r2';
import { archiveMonth, corruptObject, monthEvents, payloadsInClickHouse, writeEvents, type ArchivedMonth, type FixtureEvent } from './archive-fixtures';
import { createProject, type TestProject } from './helpers';

const MONTH = '2025-03';
const LIVE_MONTH = '2025-04';

async function readPayload(p: TestProject, id: string) {
  const res = await SELF.fetch(`http://gw/v1/events/${id}/payload`, { headers: p.headers });
  const text = await res.text();
  return {
    status: res.status,
    text,
    body: JSON.parse(text) as { id?: string; payload?: unknown; source?: string; error?: { code: string; message: string } },
    bytesRead: res.headers.get('x-driftline-archive-bytes-read'),
    chunks: res.headers.get('x-driftline-archive-chunks'),
    cache: res.headers.get('x-driftline-archive-cache'),
  };
}

/** The exact response text: the stored payload spliced in verbatim. */
const expectedText = (id: string, payload: string, source: string) => `{"id":"${id}","payload":${payload},"source":"${source}"}`;

describe('lazy payload reads', () => {
  let p: TestProject;
  let other: TestProject;
  let archived: FixtureEvent[];
  let live: FixtureEvent[];
  let month: ArchivedMonth;

  beforeAll(async () => {
    p = await createProject('lazy-read');
    other = await createProject('lazy-read-other');
    archived = monthEvents(p.id, MONTH, 12);
    live = monthEvents(p.id, LIVE_MONTH, 3, { seed: 'live' });
    await writeEvents(p.id, [...archived, ...live]);
    month = await archiveMonth(p.id, MONTH, archived, { chunkRows: 5 });
  });

  it('the fixture left the month in three verified, cleared chunks and nothing of it in ClickHouse', async () => {
    expect(month.manifest.map((m) => [m.number, m.rowCount, m.verifiedAt !== null, m.clearedAt !== null])).toEqual([
      [1, 5, true, true],
      [2, 5, true, true],
      [3, 2, true, true],
    ]);
    expect((await payloadsInClickHouse(p.id, MONTH)).rows).toBe(0);
    expect((await payloadsInClickHouse(p.id, LIVE_MONTH)).rows).toBe(3);
  });

  it('reads every archived payload byte for byte: a chunk costs its compressed size once, then nothing while cached', async () => {
    for (const [index, chunk] of month.chunks.entries()) {
      const ids = new Set(archived.slice(index * 5, index * 5 + 5).map((e) => e.id));
      const events = archived.filter((e) => ids.has(e.id));
      for (const [i, e] of events.entries()) {
        const r = await readPayload(p, e.id);
        expect(r.status, r.text).toBe(200);
        expect(r.text).toBe(expectedText(e.id, e.payload, 'archive'));
        expect(r.body.payload).toEqual(JSON.parse(e.payload));
        if (i === 0) {
          expect(r.cache).toBe('miss');
          expect(Number(r.bytesRead)).toBe(chunk.manifest.compressedBytes);
        } else {
          expect(r.cache).toBe('hit');
          expect(r.bytesRead).toBe('0');
        }
      }
      // The stored chunk line carries the exact bytes too (not only what the route answers).
      const obj = await env.ARCHIVE.get(chunk.manifest.key);
      const text = await inflateChunk(await obj!.arrayBuffer(), { sha256Hex: chunk.manifest.sha256Hex });
      for (const e of events) expect(findEventInChunkText(text, e.id)!.payload).toBe(e.payload);
    }
    // Reading the first event again: still cached.
    const again = await readPayload(p, archived[0]!.id);
    expect([again.status, again.cache, again.bytesRead]).toEqual([200, 'hit', '0']);
  });

  it('a payload still in ClickHouse comes from there, with no archive read', async () => {
    for (const e of live) {
      const r = await readPayload(p, e.id);
      expect(r.status).toBe(200);
      expect(r.text).toBe(expectedText(e.id, e.payload, 'clickhouse'));
      expect([r.cache, r.bytesRead]).toEqual(['none', '0']);
    }
  });

  it('an uppercase id names the same event', async () => {
    const e = archived[3]!;
    const r = await readPayload(p, e.id.toUpperCase());
    expect(r.status).toBe(200);
    expect(r.text).toBe(expectedText(e.id, e.payload, 'archive'));
  });

  it("never serves another project's payload, archived or live", async () => {
    for (const e of [archived[0]!, archived[7]!, live[0]!]) {
      const r = await readPayload(other, e.id);
      expect(r.status).toBe(404);
      expect(r.body.error!.code).toBe('event_not_found');
      expect(r.text).not.toContain(e.payload);
    }
  });

  it('answers 400 for a malformed id, 404 for an unknown one, 401 without credentials', async () => {
    for (const bad of ['not-a-uuid', '123', `${archived[0]!.id}x`, 'zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz']) {
      const r = await readPayload(p, bad);
      expect(r.status, bad).toBe(400);
      expect(r.body.error!.code).toBe('invalid_request');
    }
    const unknown = monthEvents(p.id, MONTH, 1, { seed: 'never-written' })[0]!;
    const r = await readPayload(p, unknown.id);
    expect(r.status).toBe(404);
    expect(r.body.error!.code).toBe('event_not_found');
    // UUIDv7s whose time no stored event can have (the years 10332 and 2186): not found, never a 5xx.
    for (const far of ['f0000000-0000-7000-8000-000000000000', '0634d8f4-3400-7000-8000-000000000000']) {
      const r = await readPayload(p, far);
      expect([r.status, r.body.error?.code], far).toEqual([404, 'event_not_found']);
    }
    const anon = await SELF.fetch(`http://gw/v1/events/${archived[0]!.id}/payload`);
    expect(anon.status).toBe(401);
    expect(((await anon.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
  });

  it('an event whose payload exists nowhere is 404 payload_not_found', async () => {
    const orphan = monthEvents(p.id, '2025-05', 1, { seed: 'no-payload' });
    await writeEvents(p.id, orphan, { payloads: false });
    const r = await readPayload(p, orphan[0]!.id);
    expect(r.status).toBe(404);
    expect(r.body.error!.code).toBe('payload_not_found');
  });
});

describe('lazy payload reads of a month with late data', () => {
  it('reads only the chunks whose time range holds the event, cached ones first', async () => {
    const p = await createProject('lazy-read-late');
    const m = '2025-06';
    const DAY = 86_400_000;
    // The first run: two chunks, days 0–10 and 10–20 of the month.
    const first = monthEvents(p.id, m, 10, { spreadMs: 20 * DAY });
    await writeEvents(p.id, first);
    const run1 = await archiveMonth(p.id, m, first, { chunkRows: 5 });
    // Late data (a late import) inside the second chunk's time range: a third chunk overlapping it.
    const late = monthEvents(p.id, m, 4, { seed: 'late', offsetMs: 12 * DAY, spreadMs: 4 * DAY });
    await writeEvents(p.id, late);
    const run2 = await archiveMonth(p.id, m, late);
    const [c1, c2] = run1.chunks.map((c) => c.manifest);
    const c3 = run2.chunks[0]!.manifest;
    expect([c1!.number, c2!.number, c3.number]).toEqual([1, 2, 3]);
    expect(c3.firstCreatedAtMs).toBeGreaterThan(c2!.firstCreatedAtMs);
    expect(c3.lastCreatedAtMs).toBeLessThan(c2!.lastCreatedAtMs);

    // Cold: both overlapping chunks are candidates (the first is not): chunk 2, then chunk 3.
    const cold = await readPayload(p, late[1]!.id);
    expect(cold.text).toBe(expectedText(late[1]!.id, late[1]!.payload, 'archive'));
    expect([cold.cache, Number(cold.bytesRead), cold.chunks]).toEqual(['miss', c2!.compressedBytes + c3.compressedBytes, '2']);
    // Both are cached now: any event of either costs nothing.
    for (const e of [late[3]!, first[7]!]) {
      const warm = await readPayload(p, e.id);
      expect(warm.text).toBe(expectedText(e.id, e.payload, 'archive'));
      expect([warm.cache, warm.bytesRead]).toEqual(['hit', '0']);
    }
    // An event of the first chunk reads that chunk alone.
    const early = await readPayload(p, first[2]!.id);
    expect(early.text).toBe(expectedText(first[2]!.id, first[2]!.payload, 'archive'));
    expect([early.cache, Number(early.bytesRead), early.chunks]).toEqual(['miss', c1!.compressedBytes, '1']);
  });
});

describe('lazy payload reads of rows written by other means', () => {
  it('an id that is no UUIDv7 is found through the events table, archived or not', async () => {
    const p = await createProject('lazy-read-v4');
    const m = '2025-07';
    const rows = monthEvents(p.id, m, 3).map((e) => ({ ...e, id: crypto.randomUUID() }));
    rows.sort((a, b) => a.createdAtMs - b.createdAtMs);
    const live = monthEvents(p.id, '2025-08', 1, { seed: 'v4-live' }).map((e) => ({ ...e, id: crypto.randomUUID() }));
    await writeEvents(p.id, [...rows, ...live]);
    await archiveMonth(p.id, m, rows);
    for (const e of rows) {
      const r = await readPayload(p, e.id);
      expect(r.text).toBe(expectedText(e.id, e.payload, 'archive'));
    }
    const r = await readPayload(p, live[0]!.id);
    expect(r.text).toBe(expectedText(live[0]!.id, live[0]!.payload, 'clickhouse'));
    const unknown = await readPayload(p, crypto.randomUUID());
    expect([unknown.status, unknown.body.error?.code]).toEqual([404, 'event_not_found']);
  });
});

describe('lazy payload reads of a damaged archive', () => {
  it('a corrupt chunk is 500 archive_corrupt, a missing one 503 archive_unavailable with Retry-After', async () => {
    const p = await createProject('lazy-read-damaged');
    const corruptMonth = '2024-11';
    const missingMonth = '2024-12';
    const a = monthEvents(p.id, corruptMonth, 4);
    const b = monthEvents(p.id, missingMonth, 4);
    await writeEvents(p.id, [...a, ...b]);
    const archivedA = await archiveMonth(p.id, corruptMonth, a);
    await corruptObject(archivedA.chunks[0]!.manifest.key);
    const corrupt = await readPayload(p, a[1]!.id);
    expect(corrupt.status).toBe(500);
    expect(corrupt.body.error!.code).toBe('archive_corrupt');
    expect(corrupt.text).not.toContain(a[1]!.payload);

    const archivedB = await archiveMonth(p.id, missingMonth, b);
    await env.ARCHIVE.delete(archivedB.chunks[0]!.manifest.key);
    const res = await SELF.fetch(`http://gw/v1/events/${b[2]!.id}/payload`, { headers: p.headers });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('archive_unavailable');
  });

  it('only verified chunks are read: an unverified chunk is never served', async () => {
    const p = await createProject('lazy-read-unverified');
    const m = '2024-10';
    const rows = monthEvents(p.id, m, 3);
    await writeEvents(p.id, rows, { payloads: false });
    const encoded = await encodeChunk({ projectId: p.id, month: m, number: 1, rows: rows.map(({ name: _n, ...r }) => r) });
    expect(await putChunkCreateOnly(env.ARCHIVE, encoded)).toBe('created');
    await manifestStore(env.DB).insert(encoded.manifest, 'unverified-run', Date.now());
    const r = await readPayload(p, rows[0]!.id);
    expect(r.status).toBe(404);
    expect(r.body.error!.code).toBe('payload_not_found');
    expect([r.cache, r.bytesRead]).toEqual(['none', '0']);
  });
});
