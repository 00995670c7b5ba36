// Archive jobs end to end on real ClickHouse, D1, R2 and Queues: months cut at UTC boundaries,
// chunks that decode to exactly the payloads they replaced, re-runs that add nothing, late data in
// a new chunk, restored months taken back without a second chunk, the listing, the sweep, bad input.
import { createExecutionContext, createScheduledController, env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { sweepArchives, maybeSweepArchives, SWEEP_MINUTE } from '../src/archive/sweep';
import { addMonths, monthOfMs } from '../src/archive/month';
import { manifestStore } from '../src/archive/manifest';
import { adoptEncodedChunk, encodeChunk, inflateChunk } from '../src/archive/chunk';
import { CHUNK_GZIP_LEVEL, gzippedAnswer } from '../src/archive/archive-job';
import { clickhouse } from '../src/clickhouse/client';
import { getConfig } from '../src/config';
import { readObject } from '../src/archive/r2';
import { sendChunk } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import worker, { app } from '../src/index';
import type { Env } from '../src/env';
import { ADMIN_TOKEN, ch, createProject } from './helpers';
import { admin, getJob, waitJob } from './backfill-helpers';
import {
  archiveMonth,
  chunksOf,
  decodeRecorded,
  expectConverged,
  insertRows,
  listArchives,
  makeRows,
  objectKeys,
  payloadsInClickHouse,
  postArchive,
  runArchiveJob,
} from './archive-helpers';
import { withMergesStopped } from './archive-fixtures';

type ArchiveRowLike = { id: string; deviceId: string; createdAtMs: number; receivedAtMs: number; payload: string };
const byId = <T extends { id: string }>(rows: readonly T[]) => new Map(rows.map((r) => [r.id, r]));

async function eventCount(projectId: string): Promise<number> {
  const [r] = await ch().query<{ n: number }>('SELECT uniqExact(id) AS n FROM events WHERE project_id = {p:String}', { p: projectId });
  return Number(r!.n);
}

describe('archive jobs', () => {
  it('cuts chunks where more events share one instant than a chunk holds, and where instants differ, each event once', async () => {
    const p = await createProject('archive-ties');
    const instant = Date.parse('2026-03-10T12:00:00.000Z');
    // Seven events at one millisecond, then four a second apart: chunks of 3 must cut inside the tie.
    const tied = makeRows('tie', 7, instant, 0);
    const after = makeRows('after', 4, instant + 1000);
    await insertRows(p.id, [...tied, ...after]);
    const job = await archiveMonth(p.id, '2026-03', { chunkRows: 3 });
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: 11 });
    const chunks = await chunksOf(p.id, '2026-03');
    expect(chunks.every((c) => c.rowCount <= 3)).toBe(true);
    const archived = await expectConverged(p.id, '2026-03');
    expect([...archived.keys()].sort()).toEqual([...tied, ...after].map((r) => r.id).sort());
    expect((await payloadsInClickHouse(p.id, '2026-03')).size).toBe(0);
  });

  it('archives an event stored twice (a copy not merged yet) once, when the bound of a chunk falls on a copy', async () => {
    const p = await createProject('archive-copies');
    // Ten events a second apart, every one written twice (two parts): a window of 5 rows is bounded
    // at the 5th stored row, a copy, so it holds three events (1–3, 4–6, 7–9, then 10), each once.
    // Merges stay stopped while the chunks are read, so the copies are there; a crash seam stops
    // the run after the last chunk is verified, before any clear (a clear is a mutation, which
    // needs merges), and a second run with merges back on finishes the month.
    const rows = makeRows('copy', 10, Date.parse('2026-03-12T08:00:00.000Z'));
    const crashed = await withMergesStopped('event_payloads', async () => {
      await insertRows(p.id, rows);
      await insertRows(p.id, rows, false);
      const [copies] = await ch().query<{ n: number }>('SELECT count() AS n FROM event_payloads WHERE project_id = {p:String}', { p: p.id });
      expect(Number(copies!.n)).toBe(20);
      return runArchiveJob({ projectId: p.id, month: '2026-03', chunkRows: 5, faults: { at: 'afterVerify', chunk: 4, mode: 'fail' } });
    });
    expect(crashed.state).toBe('failed');
    const chunks = await chunksOf(p.id, '2026-03');
    expect(chunks.map((c) => [c.number, c.rowCount, c.verifiedAt !== null, c.clearedAt])).toEqual([1, 2, 3, 4].map((n) => [n, n < 4 ? 3 : 1, true, null]));
    const lines = (await Promise.all(chunks.map(decodeRecorded))).flat();
    expect(lines).toHaveLength(10);
    expect(byId(lines)).toEqual(byId(rows));

    expect(await archiveMonth(p.id, '2026-03')).toMatchObject({ state: 'succeeded' });
    expect((await chunksOf(p.id, '2026-03')).length).toBe(4);
    expect(byId([...(await expectConverged(p.id, '2026-03')).values()])).toEqual(byId(rows));
    expect((await payloadsInClickHouse(p.id, '2026-03')).size).toBe(0);
  });

  it('puts each event in the chunk of its UTC month: 2026-01-31T23:59:59.999Z is January, 2026-02-01T00:00:00.000Z is February', async () => {
    const p = await createProject('archive-boundary');
    const lastJan = makeRows('jan-last', 1, Date.parse('2026-01-31T23:59:59.999Z'));
    const firstFeb = makeRows('feb-first', 1, Date.parse('2026-02-01T00:00:00.000Z'));
    const earlierJan = makeRows('jan', 2, Date.parse('2026-01-31T23:00:00.000Z'));
    const laterFeb = makeRows('feb', 2, Date.parse('2026-02-01T00:00:01.000Z'));
    await insertRows(p.id, [...lastJan, ...firstFeb, ...earlierJan, ...laterFeb]);

    const jan = await archiveMonth(p.id, '2026-01');
    expect(jan).toMatchObject({ state: 'succeeded', type: 'archive', rowsProcessed: 3, rowsTotal: 3, error: null });
    expect(jan.result).toMatchObject({ chunks: 1, rows: 3, monthChunks: 1, state: 'archived', pendingRows: 0 });
    const [janChunk] = await chunksOf(p.id, '2026-01');
    expect(janChunk!.key).toBe(`archives/${p.id}/2026-01/000001.jsonl.gz`);
    expect((await decodeRecorded(janChunk!)).map((r) => r.id)).toEqual([...earlierJan, ...lastJan].map((r) => r.id));
    expect(janChunk!.lastCreatedAtMs).toBe(Date.parse('2026-01-31T23:59:59.999Z'));
    // February is untouched until it is archived on its own.
    expect([...(await payloadsInClickHouse(p.id, '2026-02')).keys()].sort()).toEqual([...firstFeb, ...laterFeb].map((r) => r.id).sort());
    expect((await payloadsInClickHouse(p.id, '2026-01')).size).toBe(0);

    const feb = await archiveMonth(p.id, '2026-02');
    expect(feb.result).toMatchObject({ chunks: 1, rows: 3 });
    const [febChunk] = await chunksOf(p.id, '2026-02');
    expect((await decodeRecorded(febChunk!)).map((r) => r.id)).toEqual([...firstFeb, ...laterFeb].map((r) => r.id));
    expect(febChunk!.firstCreatedAtMs).toBe(Date.parse('2026-02-01T00:00:00.000Z'));
    await expectConverged(p.id, '2026-01');
    await expectConverged(p.id, '2026-02');
  });

  it('archives a month into verified chunks that decode to exactly its payloads; only that project and month leave ClickHouse; a second run adds nothing', async () => {
    const a = await createProject('archive-a');
    const b = await createProject('archive-b');
    const march = makeRows('a-mar', 7, Date.parse('2026-03-10T08:00:00.000Z'), 3_600_000);
    const orphanPayload = makeRows('a-mar-no-event', 1, Date.parse('2026-03-20T12:00:00.000Z'));
    const april = makeRows('a-apr', 2, Date.parse('2026-04-02T00:00:00.000Z'));
    const otherProject = makeRows('b-mar', 2, Date.parse('2026-03-10T08:00:00.000Z'));
    await insertRows(a.id, [...march, ...april]);
    await insertRows(a.id, orphanPayload, false);
    await insertRows(b.id, otherProject);
    const eventsBefore = await eventCount(a.id);

    const job = await archiveMonth(a.id, '2026-03', { chunkRows: 3 });
    expect(job.error).toBeNull();
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: 8, rowsTotal: 8 });
    const chunks = await chunksOf(a.id, '2026-03');
    expect(job.result).toEqual({
      projectId: a.id,
      month: '2026-03',
      chunks: 3,
      rows: 8,
      rawBytes: chunks.reduce((s, c) => s + c.rawBytes, 0),
      compressedBytes: chunks.reduce((s, c) => s + c.compressedBytes, 0),
      monthChunks: 3,
      state: 'archived',
      pendingRows: 0,
    });
    expect(chunks.map((c) => [c.number, c.rowCount, c.key])).toEqual([
      [1, 3, `archives/${a.id}/2026-03/000001.jsonl.gz`],
      [2, 3, `archives/${a.id}/2026-03/000002.jsonl.gz`],
      [3, 2, `archives/${a.id}/2026-03/000003.jsonl.gz`],
    ]);

    // Every archived line is its source row, the payload text byte for byte.
    const archived = await expectConverged(a.id, '2026-03');
    const expected = byId([...march, ...orphanPayload].map((r) => ({ ...r, deviceId: orphanPayload.includes(r) ? '' : r.deviceId })));
    expect(archived.size).toBe(expected.size);
    for (const [id, row] of expected) expect(archived.get(id)).toEqual(row);
    for (const c of chunks) {
      const rows = await decodeRecorded(c);
      expect(rows[0]!.createdAtMs).toBe(c.firstCreatedAtMs);
      expect(rows.at(-1)!.createdAtMs).toBe(c.lastCreatedAtMs);
    }

    // Only that project and month left ClickHouse; events stay.
    expect((await payloadsInClickHouse(a.id, '2026-03')).size).toBe(0);
    expect([...(await payloadsInClickHouse(a.id, '2026-04')).keys()].sort()).toEqual(april.map((r) => r.id).sort());
    expect(await payloadsInClickHouse(b.id, '2026-03')).toEqual(new Map(otherProject.map((r) => [r.id, r.payload])));
    expect(await eventCount(a.id)).toBe(eventsBefore);

    // Twice adds nothing: no chunk, no object, the same bytes.
    const keysBefore = await objectKeys(a.id);
    const again = await archiveMonth(a.id, '2026-03', { chunkRows: 3 });
    expect(again).toMatchObject({ state: 'succeeded', rowsProcessed: 0, rowsTotal: 0 });
    expect(again.result).toMatchObject({ chunks: 0, rows: 0, monthChunks: 3, state: 'archived' });
    expect(await objectKeys(a.id)).toEqual(keysBefore);
    expect((await chunksOf(a.id, '2026-03')).map((c) => c.sha256)).toEqual(chunks.map((c) => c.sha256));

    const list = await listArchives(`?projectId=${a.id}`);
    expect(list.status).toBe(200);
    const bytes = chunks.reduce((s, c) => s + c.rawBytes, 0);
    const compressedBytes = chunks.reduce((s, c) => s + c.compressedBytes, 0);
    expect(list.body).toEqual({
      archives: [
        {
          projectId: a.id,
          month: '2026-03',
          state: 'archived',
          chunks: 3,
          rows: 8,
          bytes,
          compressedBytes,
          compressionRatio: Math.round((bytes / compressedBytes) * 100) / 100,
          verifiedAt: new Date(Math.max(...chunks.map((c) => c.verifiedAt!))).toISOString(),
          restoredAt: null,
          pendingRows: 0,
          lastJobId: again.id,
          lastJobState: 'succeeded',
          lastError: null,
          sweepRetryAt: null,
        },
      ],
    });
    expect((await listArchives(`?projectId=${a.id}&month=2026-04`)).body).toEqual({ archives: [] });
  });

  it('late data for an archived month goes into a new chunk numbered next; the old chunk is untouched; partial → archived', async () => {
    const p = await createProject('archive-late');
    const june = makeRows('jun', 4, Date.parse('2026-06-05T00:00:00.000Z'), 86_400_000);
    await insertRows(p.id, june);
    await archiveMonth(p.id, '2026-06', { chunkRows: 10 });
    const [first] = await chunksOf(p.id, '2026-06');
    const firstBytes = new Uint8Array(await (await env.ARCHIVE.get(first!.key))!.arrayBuffer());

    // A late import lands between the archived rows' times.
    const late = makeRows('jun-late', 2, Date.parse('2026-06-06T12:00:00.000Z'), 1000);
    await insertRows(p.id, late);
    const partial = await listArchives(`?projectId=${p.id}&month=2026-06`);
    expect(partial.body.archives).toEqual([expect.objectContaining({ state: 'partial', chunks: 1, rows: 4, pendingRows: 2 })]);

    const job = await archiveMonth(p.id, '2026-06', { chunkRows: 10 });
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: 2, rowsTotal: 2 });
    expect(job.result).toMatchObject({ chunks: 1, rows: 2, monthChunks: 2, state: 'archived' });
    const chunks = await chunksOf(p.id, '2026-06');
    expect(chunks.map((c) => c.number)).toEqual([1, 2]);
    expect(chunks[0]).toEqual(first);
    expect(new Uint8Array(await (await env.ARCHIVE.get(first!.key))!.arrayBuffer())).toEqual(firstBytes);
    expect((await decodeRecorded(chunks[1]!)).map((r) => r.id)).toEqual(late.map((r) => r.id));
    const archived = await expectConverged(p.id, '2026-06');
    expect(archived.size).toBe(6);
    expect((await listArchives(`?projectId=${p.id}&month=2026-06`)).body.archives).toEqual([expect.objectContaining({ state: 'archived', chunks: 2, rows: 6, pendingRows: 0 })]);
  });

  it('a restored month archived again is cleared from its own verified chunks: no second chunk, restored → archived', async () => {
    const p = await createProject('archive-restored');
    const rows = makeRows('aug', 5, Date.parse('2026-08-03T00:00:00.000Z'), 60_000);
    await insertRows(p.id, rows);
    await archiveMonth(p.id, '2026-08', { chunkRows: 2 });
    const chunks = await chunksOf(p.id, '2026-08');
    expect(chunks).toHaveLength(3);

    // What a restore leaves: the payloads back in ClickHouse, chunk 1 and 2 marked restored; chunk 3's
    // rows written back by a restore cut short before it marked the chunk.
    await insertRows(p.id, rows, false);
    const manifests = manifestStore(env.DB);
    await manifests.markRestored(p.id, '2026-08', 1, Date.now());
    await manifests.markRestored(p.id, '2026-08', 2, Date.now());
    // Not every chunk is marked: the month is not shown restored, and the console offers Restore again.
    expect((await listArchives(`?projectId=${p.id}&month=2026-08`)).body.archives).toEqual([expect.objectContaining({ state: 'partial', pendingRows: 5, restoredAt: null })]);

    const job = await archiveMonth(p.id, '2026-08', { chunkRows: 2 });
    expect(job.error).toBeNull();
    expect(job.result).toMatchObject({ chunks: 0, rows: 0, monthChunks: 3, state: 'archived', pendingRows: 0 });
    const after = await chunksOf(p.id, '2026-08');
    expect(after.map((c) => [c.number, c.sha256, c.restoredAt])).toEqual(chunks.map((c) => [c.number, c.sha256, null]));
    expect((await expectConverged(p.id, '2026-08')).size).toBe(5);
    expect((await listArchives(`?projectId=${p.id}&month=2026-08`)).body.archives).toEqual([expect.objectContaining({ state: 'archived', restoredAt: null })]);
  });

  it('of two archive jobs of one month the newer fails at once and touches nothing; the older archives it', async () => {
    const p = await createProject('archive-two');
    const rows = makeRows('two', 3, Date.parse('2026-09-01T00:00:00.000Z'));
    await insertRows(p.id, rows);
    // The older job's row is written; its first message is still on the way.
    const older = await jobStore(env.DB).create(crypto.randomUUID(), 'archive', { projectId: p.id, month: '2026-09' }, Date.now() - 1000);
    const newer = await runArchiveJob({ projectId: p.id, month: '2026-09' });
    expect(newer.state).toBe('failed');
    expect(newer.error).toContain(`another archive job (${older.id}, enqueued) holds ${p.id} 2026-09`);
    expect(await chunksOf(p.id, '2026-09')).toEqual([]);
    expect(await objectKeys(p.id)).toEqual([]);
    expect((await payloadsInClickHouse(p.id, '2026-09')).size).toBe(3);

    await sendChunk(env, older.id, older.leaseVersion);
    expect(await waitJob(older.id, (j) => j.state === 'succeeded' || j.state === 'failed')).toMatchObject({ state: 'succeeded', rowsProcessed: 3 });
    expect((await expectConverged(p.id, '2026-09')).size).toBe(3);
  });

  it('a month with no payloads archives to nothing', async () => {
    const p = await createProject('archive-empty');
    const job = await archiveMonth(p.id, '2025-11');
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: 0, rowsTotal: 0 });
    expect(job.result).toMatchObject({ chunks: 0, rows: 0, rawBytes: 0, compressedBytes: 0, monthChunks: 0 });
    expect(await objectKeys(p.id)).toEqual([]);
    expect((await listArchives(`?projectId=${p.id}`)).body).toEqual({ archives: [] });
  });

  it('writes every device id exactly, as JSON any reader takes, whatever characters it holds', async () => {
    // ClickHouse writes the chunk lines: quotes, backslashes and control characters must come out
    // escaped, and the rest as UTF-8, or an erasure by device would miss the rows.
    const p = await createProject('archive-device-text');
    const devices = ['say "hi"', 'back\\slash\\', 'tab\there', 'line\nfeed\r', 'ctl\u0000\u0001\u001f\u007f', 'é 😀 日本', '\u2028sep', "quote'single"];
    const rows = makeRows('devtext', devices.length, Date.parse('2026-03-05T10:00:00.000Z')).map((r, i) => ({ ...r, deviceId: devices[i]! }));
    await insertRows(p.id, rows);
    // A payload whose event row is missing is archived without a device.
    const [orphan] = makeRows('devtext-orphan', 1, Date.parse('2026-03-05T11:00:00.000Z'));
    await insertRows(p.id, [orphan!], false);
    expect(await archiveMonth(p.id, '2026-03')).toMatchObject({ state: 'succeeded', rowsProcessed: devices.length + 1 });
    const archived = await expectConverged(p.id, '2026-03');
    expect(byId([...archived.values()])).toEqual(byId([...rows, { ...orphan!, deviceId: '' }]));
    // Each line is plain JSON to any reader, with the same device and payload.
    const [chunk] = await chunksOf(p.id, '2026-03');
    const text = await inflateChunk((await readObject(env.ARCHIVE, chunk!.key))!, { sha256Hex: chunk!.sha256 });
    const lines = text.trimEnd().split('\n').map((l) => JSON.parse(l) as { id: string; deviceId: string; payload: unknown });
    expect(new Map(lines.map((l) => [l.id, l.deviceId]))).toEqual(new Map([...rows, { ...orphan!, deviceId: '' }].map((r) => [r.id, r.deviceId])));
    expect(lines.every((l) => JSON.stringify(l.payload) === JSON.stringify(JSON.parse(archived.get(l.id)!.payload)))).toBe(true);
  });

  it('gzips a chunk in the Worker when ClickHouse answers uncompressed (a proxy before it, say): the same chunk either way', async () => {
    // A chunk's lines read back through ClickHouse the way the job reads a window: as raw text.
    const rows = makeRows('identity', 5, Date.parse('2026-03-06T10:00:00.000Z'));
    const { manifest, body } = await encodeChunk({ projectId: 'p-identity', month: '2026-03', number: 1, rows });
    const text = await inflateChunk(body, manifest);
    const sql = "SELECT line FROM (SELECT arrayJoin(splitByChar('\\n', {text:String})) AS line) WHERE line != ''";
    const direct = ch();
    const behindProxy = clickhouse({ ...getConfig(env).clickhouse, url: env.TEST_CLICKHOUSE_IDENTITY_URL });
    const compressed = await direct.queryGzip(sql, { text }, CHUNK_GZIP_LEVEL);
    const plain = await behindProxy.queryGzip(sql, { text }, CHUNK_GZIP_LEVEL);
    expect(compressed.gzipped).toBe(true);
    expect(plain.gzipped).toBe(false);
    expect(new TextDecoder().decode(plain.bytes)).toBe(text);
    for (const client of [direct, behindProxy]) {
      const adopted = await adoptEncodedChunk({ projectId: 'p-identity', month: '2026-03', number: 1, body: await gzippedAnswer(client, sql, { text }, CHUNK_GZIP_LEVEL) });
      expect(adopted!.rows).toEqual(rows);
      expect(adopted!.manifest).toMatchObject({ rowCount: 5, rawBytes: manifest.rawBytes, idsChecksumHex: manifest.idsChecksumHex });
    }
  });

  it('refuses a month it cannot archive exactly: nothing left in R2, recorded or cleared, the reason in the job', async () => {
    const cases: Array<[string, (r: ArchiveRowLike) => ArchiveRowLike, RegExp]> = [
      ['payload not JSON', (r) => ({ ...r, payload: '{"a":1' }), /cannot be written \(invalid_payload\)/],
      // Its line splits in two, and the first half is no chunk line.
      ['payload over two lines', (r) => ({ ...r, payload: '{\n"a":1}' }), /cannot be written \(malformed_line\)/],
      ['receipt time no DateTime holds', (r) => ({ ...r, receivedAtMs: 5_000_000_000_000 }), /cannot be written \(malformed_line\)/],
    ];
    for (const [label, spoil, reason] of cases) {
      const p = await createProject(`archive-refuse-${label}`);
      const rows = makeRows(`refuse-${label}`, 5, Date.parse('2026-03-07T10:00:00.000Z'));
      rows[2] = spoil(rows[2]!) as (typeof rows)[number];
      await insertRows(p.id, rows);
      const job = await archiveMonth(p.id, '2026-03');
      expect(job.state, label).toBe('failed');
      expect(job.error, label).toMatch(reason);
      expect(await objectKeys(p.id), label).toEqual([]);
      expect(await chunksOf(p.id, '2026-03'), label).toEqual([]);
      expect((await payloadsInClickHouse(p.id, '2026-03')).size, label).toBe(5);
    }
  });

  it('refuses bad input with coded errors', async () => {
    const p = await createProject('archive-input');
    const current = monthOfMs(Date.now());
    const cases: Array<[unknown, number, string]> = [
      [{ projectId: p.id, month: '2026-13' }, 400, 'invalid_month'],
      [{ projectId: p.id, month: 'March' }, 400, 'invalid_month'],
      [{ projectId: p.id, month: '2026-3' }, 400, 'invalid_month'],
      [{ projectId: p.id, month: current }, 400, 'current_month'],
      [{ projectId: p.id, month: addMonths(current, 1) }, 400, 'future_month'],
      [{ projectId: 'no-such-project', month: '2026-01' }, 400, 'unknown_project'],
      [{ month: '2026-01' }, 400, 'invalid_request'],
      [{ projectId: p.id, month: 202601 }, 400, 'invalid_request'],
      [{ projectId: p.id, month: '2026-01', chunkRows: 0 }, 400, 'invalid_request'],
    ];
    for (const [body, status, code] of cases) {
      const r = await postArchive(body);
      expect([JSON.stringify(body), r.status, r.body.error?.code]).toEqual([JSON.stringify(body), status, code]);
    }

    const malformed = await SELF.fetch('http://gw/admin/archives', { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: '{"projectId":' });
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    for (const authorization of [undefined, 'Bearer wrong-token']) {
      const r = await SELF.fetch('http://gw/admin/archives', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
        body: JSON.stringify({ projectId: p.id, month: '2026-01' }),
      });
      expect(r.status).toBe(401);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
      const list = await SELF.fetch('http://gw/admin/archives', { headers: authorization ? { authorization } : {} });
      expect(list.status).toBe(401);
    }
    const badList = await listArchives('?month=2026-1');
    expect([badList.status, badList.body.error.code]).toEqual([400, 'invalid_month']);

    // One job per month: a restore (or archive) job holding it refuses a second start.
    const store = jobStore(env.DB);
    const restore = await store.create(crypto.randomUUID(), 'restore', { projectId: p.id, month: '2026-01' }, Date.now());
    const busy = await postArchive({ projectId: p.id, month: '2026-01' });
    expect(busy.status).toBe(409);
    expect(busy.body.error).toMatchObject({ code: 'archive_already_active', details: { id: restore.id, type: 'restore', state: 'enqueued' } });
    // Another month of the project is free.
    const other = await postArchive({ projectId: p.id, month: '2025-12' });
    expect(other.status).toBe(202);
    await waitJob(other.body.id, (j) => j.state === 'succeeded');
    expect((await admin('POST', `/admin/backfills/${restore.id}/cancel`)).body.state).toBe('cancelled');

    // No archive beside an erasure of the project.
    const erasure = await store.create(crypto.randomUUID(), 'erasure', { projectId: p.id, deviceId: 'dev-1' }, Date.now());
    const erasing = await postArchive({ projectId: p.id, month: '2026-01' });
    expect(erasing.status).toBe(409);
    expect(erasing.body.error).toMatchObject({ code: 'erasure_active', details: { id: erasure.id } });
    expect((await admin('POST', `/admin/backfills/${erasure.id}/cancel`)).body.state).toBe('cancelled');

    // Without an R2 bucket bound, archives are unavailable (not a 500).
    const unbound = await app.fetch(
      new Request('http://gw/admin/archives', { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ projectId: p.id, month: '2026-01' }) }),
      { ...env, ARCHIVE: undefined } as unknown as Env,
    );
    expect(unbound.status).toBe(503);
    expect(((await unbound.json()) as { error: { code: string } }).error.code).toBe('archive_unavailable');
  });
});

describe('the archive sweep', () => {
  it('enqueues the months at least ARCHIVE_LAG_MONTHS old that hold payloads, skips restored and failing months, and does nothing when off', async () => {
    // The sweeps run at a chosen instant mid-month: an hour after it (the back-off) is the same month
    // whenever the suite runs, so a run near the end of a month sees the same due months.
    const current = monthOfMs(Date.now());
    const now = Date.parse(`${current}-15T12:00:00.000Z`);
    const due = addMonths(current, -3);
    const inLag = addMonths(current, -2);
    const recent = addMonths(current, -1);
    const p = await createProject('sweep');
    const start = (month: string) => Date.parse(`${month}-02T00:00:00.000Z`);
    await insertRows(p.id, [...makeRows('due', 3, start(due)), ...makeRows('lag', 2, start(inLag)), ...makeRows('recent', 2, start(recent))]);

    // A month whose archive keeps failing: the sweep backs off and says until when.
    const failing = await createProject('sweep-failing');
    await insertRows(failing.id, makeRows('fail', 2, start(due)));
    const failed = await runArchiveJob({ projectId: failing.id, month: due, faults: { at: 'afterManifest', mode: 'fail' } });
    expect(failed.state).toBe('failed');
    // Its end, put ten minutes before the sweeps' instant: it backs off until 50 minutes after it.
    await env.DB.prepare('UPDATE jobs SET ended_at = ? WHERE id = ?').bind(now - 600_000, failed.id).run();
    // A restored month stays in ClickHouse until an operator archives it by hand.
    const restored = await createProject('sweep-restored');
    const restoredRows = makeRows('restored', 2, start(due));
    await insertRows(restored.id, restoredRows);
    await archiveMonth(restored.id, due);
    await insertRows(restored.id, restoredRows, false);
    await manifestStore(env.DB).markRestored(restored.id, due, 1, Date.now());
    // A project a legacy import is writing into (a job row, paused so no chunk runs).
    const importing = await createProject('sweep-importing');
    await insertRows(importing.id, makeRows('importing', 2, start(due)));
    const importJob = await jobStore(env.DB).create(crypto.randomUUID(), 'legacy_import', { projectId: importing.id, dataset: 'citylens' }, Date.now());
    expect(await jobStore(env.DB).transition(importJob.id, 'enqueued', 'paused', Date.now())).not.toBeNull();

    const off = await sweepArchives({ ...env, ARCHIVE_RAW_PAYLOADS: 'false' }, now);
    expect(off).toEqual({ enabled: false, due: 0, started: [], skipped: [] });
    const on = { ...env, ARCHIVE_RAW_PAYLOADS: 'true' } as Env;
    // The cron sweeps once an hour, not every minute.
    const minute = (m: number) => {
      const d = new Date(now);
      d.setUTCMinutes(m, 0, 0);
      return d.getTime();
    };
    expect(await maybeSweepArchives(on, minute((SWEEP_MINUTE + 1) % 60))).toBeNull();

    const swept = await sweepArchives(on, now);
    expect(swept.enabled).toBe(true);
    const mine = (r: { projectId: string }) => [p.id, failing.id, restored.id, importing.id].includes(r.projectId);
    expect(swept.started.filter(mine).map((s) => [s.projectId, s.month])).toEqual([[p.id, due]]);
    const failedEnd = Date.parse((await getJob(failed.id)).endedAt!);
    expect(swept.skipped.filter(mine)).toEqual(
      expect.arrayContaining([
        { projectId: failing.id, month: due, reason: 'backing_off', until: new Date(failedEnd + 3_600_000).toISOString() },
        { projectId: restored.id, month: due, reason: 'restored' },
        { projectId: importing.id, month: due, reason: 'import_active' },
      ]),
    );
    expect(swept.skipped.filter(mine)).toHaveLength(3);
    // The failing month shows why and when the sweep tries again.
    expect((await listArchives(`?projectId=${failing.id}`)).body.archives).toEqual([
      expect.objectContaining({ month: due, state: 'partial', lastJobId: failed.id, lastJobState: 'failed', lastError: expect.stringMatching(/injected crash/), sweepRetryAt: new Date(failedEnd + 3_600_000).toISOString() }),
    ]);

    // A second sweep right away starts nothing twice; an hour later the failing month is tried again.
    const again = await sweepArchives(on, now);
    expect(again.started.filter(mine)).toEqual([]);
    const later = await sweepArchives(on, failedEnd + 3_600_001);
    expect(later.started.filter(mine).map((s) => [s.projectId, s.month])).toEqual([[failing.id, due]]);

    const finished = (j: { state: string }) => ['succeeded', 'failed', 'cancelled'].includes(j.state);
    for (const s of [...swept.started, ...again.started, ...later.started]) await waitJob(s.id, finished, 90_000);
    expect((await getJob(swept.started.find((s) => s.projectId === p.id)!.id)).state).toBe('succeeded');
    expect((await payloadsInClickHouse(p.id, due)).size).toBe(0);
    expect((await payloadsInClickHouse(p.id, inLag)).size).toBe(2);
    expect((await payloadsInClickHouse(p.id, recent)).size).toBe(2);
    expect((await payloadsInClickHouse(restored.id, due)).size).toBe(2);
    // The retried month converged over what the failed run left (an unverified chunk).
    expect((await listArchives(`?projectId=${failing.id}`)).body.archives).toEqual([expect.objectContaining({ state: 'archived', lastError: null, sweepRetryAt: null })]);
  });
});

describe('the archive sweep through the Cron handler', () => {
  it('archives the months ARCHIVE_LAG_MONTHS allows: 3 takes none of three recent months, 1 takes two, 0 the third', async () => {
    const current = monthOfMs(Date.now());
    // The sweep minute of an hour mid-month, whenever the suite runs.
    const at = Date.parse(`${current}-15T12:${String(SWEEP_MINUTE).padStart(2, '0')}:00.000Z`);
    const months = [addMonths(current, -3), addMonths(current, -2), addMonths(current, -1)];
    const q = await createProject('sweep-lag');
    await insertRows(q.id, months.flatMap((m, i) => makeRows(`lag-${i}`, 2, Date.parse(`${m}-02T00:00:00.000Z`))));
    const left = async () => Promise.all(months.map(async (m) => (await payloadsInClickHouse(q.id, m)).size));
    const cron = async (lag: string) => {
      await worker.scheduled!(createScheduledController({ scheduledTime: at, cron: '* * * * *' }), { ...env, ARCHIVE_RAW_PAYLOADS: 'true', ARCHIVE_LAG_MONTHS: lag } as Env, createExecutionContext());
      // Every archive job of the project the sweeps started so far, run to its end.
      const { results } = await env.DB.prepare("SELECT id, json_extract(params, '$.month') AS month FROM jobs WHERE type = 'archive' AND json_extract(params, '$.projectId') = ?")
        .bind(q.id)
        .all<{ id: string; month: string }>();
      for (const j of results) expect((await waitJob(j.id, (v) => ['succeeded', 'failed', 'cancelled'].includes(v.state), 90_000)).state).toBe('succeeded');
      return results.map((j) => j.month).sort();
    };

    expect(await cron('3')).toEqual([]);
    expect(await left()).toEqual([2, 2, 2]);
    expect(await cron('1')).toEqual(months.slice(0, 2));
    expect(await left()).toEqual([0, 0, 2]);
    expect(await cron('0')).toEqual(months);
    expect(await left()).toEqual([0, 0, 0]);
    for (const m of months) await expectConverged(q.id, m);
  });
});
