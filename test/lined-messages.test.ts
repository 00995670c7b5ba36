// Lined ingest messages: a device object's chunk goes to the queue one entry per line, and the
// consumer cuts each entry's ClickHouse lines out of its text instead of parsing and encoding it.
import { env, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import { OutboxStore } from '../src/device/outbox-store';
import type { MetaStore } from '../src/device/schema';
import { addSubjects, Forgotten, noSubjects } from '../src/erasure/tombstones';
import { packDeviceEvents } from '../src/device/packed';
import { deviceStub, toDeviceEvent } from '../src/ingest/accept';
import { NO_GEO, normalizeEvent } from '../src/ingest/normalize';
import { decodeIngestBody, decodeMessage, expandMessage, LINED_ENTRIES, linesOfPieces, type EventRow, type IngestMessage, type PayloadRow } from '../src/pipeline/messages';
import { writeRows } from '../src/pipeline/writer';
import { ch, createProject, postBatch, trackEvent, waitUntil } from './helpers';

/**
 * What a device object hands its queue, as raw bodies (nothing reaches the real queue); while
 * `fail.now` is set, a send throws once it got there.
 */
async function captureSends(stub: DurableObjectStub<DeviceObject>, fail = { now: false }): Promise<string[]> {
  const sent: string[] = [];
  await runInDurableObject(stub, (o: DeviceObject) => {
    const self = o as unknown as { env: typeof env };
    const queue = {
      send: () => Promise.reject(new Error('unused')),
      sendBatch: async (messages: Array<{ body: unknown }>) => {
        for (const m of messages) sent.push(m.body as string);
        if (fail.now) throw new Error('the send reached the queue, its answer was lost');
      },
    };
    self.env = { ...self.env, INGEST_QUEUE: queue as unknown as typeof env.INGEST_QUEUE };
  });
  return sent;
}

/** The rows ClickHouse holds for a project, as the writer's rows (what the tests compare). */
async function storedRows(projectId: string) {
  const events = await ch().query<Record<string, unknown>>(
    `SELECT toString(id) AS id, project_id, device_id, session_id, profile_id, type, name, toString(created_at_ms) AS created_at_ms,
            toString(received_at_ms) AS received_at_ms, properties, ref_id FROM events WHERE project_id = {p:String} ORDER BY id`,
    { p: projectId },
  );
  const payloads = await ch().query<Record<string, unknown>>('SELECT toString(id) AS id, payload FROM event_payloads WHERE project_id = {p:String} ORDER BY id', { p: projectId });
  return { events, payloads };
}

const asStored = (rows: { events: EventRow[]; payloads: PayloadRow[] }) => ({
  events: [...rows.events]
    .sort((a, b) => (a.id < b.id ? -1 : 1))
    .map((e) => ({ id: e.id, project_id: e.project_id, device_id: e.device_id, session_id: e.session_id, profile_id: e.profile_id, type: e.type, name: e.name, created_at_ms: String(e.created_at_ms), received_at_ms: String(e.received_at_ms), properties: e.properties, ref_id: e.ref_id })),
  payloads: [...rows.payloads].sort((a, b) => (a.id < b.id ? -1 : 1)).map((p) => ({ id: p.id, payload: p.payload })),
});

/** The rows a message's lines stand for, parsed, beside the rows of the message parsed whole. */
function bothWays(body: string, syncedAtMs: number) {
  const read = decodeIngestBody(body);
  if (!read.pieces) throw new Error('not a lined message');
  const lines = linesOfPieces(read, read.pieces, syncedAtMs);
  const whole = expandMessage(decodeMessage(body), syncedAtMs);
  return { read, lines, whole, fromLines: { events: lines.events.map((l) => JSON.parse(l.line) as unknown), payloads: lines.payloads.map((l) => JSON.parse(l.line) as unknown) } };
}

// Names and properties JSON escapes, or that look like the keys the reader looks for.
const awkward = [
  'plain',
  'quote " and backslash \\ and slash /',
  'line\nfeed and tab\t',
  'unicode é ü 漢字 🚗',
  ',"r":{',
  '},"p":"',
  '"created_at_ms":1,',
  'control \u0001\u001f',
];

describe('lined ingest messages', () => {
  it('carry a call as lines whose rows are exactly the rows of the message parsed whole', async () => {
    const p = await createProject();
    const deviceId = 'lined-1';
    const stub = deviceStub(env, p.id, deviceId);
    const sent = await captureSends(stub);
    const t0 = Date.now() - 60_000;
    const events: unknown[] = awkward.flatMap((text, i) => [
      trackEvent(text, { __deviceId: deviceId, __timestamp: t0 + i * 10, note: text, nested: { [text]: [text, i, null, true] } }),
      trackEvent('position', { __deviceId: deviceId, __timestamp: t0 + i * 10 + 5, lat: 52.5 + i / 100, lon: 13.4, speed: 30 }),
    ]);
    events.push({ type: 'track', payload: { name: 'with profile', profileId: 'prof "1"', properties: { __deviceId: deviceId, __timestamp: t0 + 500 } } });
    events.push({ type: 'identify', payload: { profileId: 'prof-2', properties: { __deviceId: deviceId, __timestamp: t0 + 600 } } });
    const res = await postBatch(p, { events });
    expect(res.status).toBe(202);
    const answer = (await res.json()) as { accepted: number; rejected: unknown[] };
    expect(answer.rejected).toEqual([]);
    await waitUntil(async () => sent.length, (n) => n >= 1);

    const synced = Date.now();
    let rows = 0;
    for (const body of sent) {
      expect(body).toContain(LINED_ENTRIES);
      const { read, lines, whole, fromLines } = bothWays(body, synced);
      // Every entry was read from its text: no line is an object's re-encoding (the layout the
      // reader takes as it is starts each events line with the session).
      for (const l of lines.events) expect(l.line.startsWith('{"session_id":')).toBe(true);
      expect(fromLines.events).toEqual(whole.events);
      expect(fromLines.payloads).toEqual(whole.payloads);
      expect(lines.events.map((l) => [l.id, l.project_id, l.device_id, l.created_at_ms])).toEqual(whole.events.map((e) => [e.id, e.project_id, e.device_id, e.created_at_ms]));
      // The header: the entries' profiles and the span of their positions.
      expect([...read.lined!.prs].sort()).toEqual([...new Set(whole.events.map((e) => e.profile_id).filter(Boolean))].sort());
      const positions = whole.events.filter((e) => e.type === 'track' && e.name === 'position').map((e) => e.created_at_ms);
      expect(read.lined!.pos).toEqual(positions.length ? [Math.min(...positions), Math.max(...positions)] : null);
      const subjects = addSubjects(noSubjects(), read);
      expect([...subjects.profiles].sort()).toEqual(['prof "1"', 'prof-2']);
      expect([...subjects.devices]).toEqual([deviceId]);
      rows += whole.events.length;
    }
    expect(rows).toBe(answer.accepted);

    // Written from their lines, ClickHouse holds exactly the rows of the messages parsed whole,
    // and the writer reports the span of the positions the headers gave.
    const written = await writeRows(ch(), sent.map(decodeIngestBody), synced, false);
    const whole = sent.map((b) => expandMessage(decodeMessage(b), synced));
    expect(await storedRows(p.id)).toEqual(asStored({ events: whole.flatMap((w) => w.events), payloads: whole.flatMap((w) => w.payloads) }));
    const positions = whole.flatMap((w) => w.events).filter((e) => e.name === 'position').map((e) => e.created_at_ms);
    expect(written.positions).toEqual([{ projectId: p.id, deviceId, fromMs: Math.min(...positions), toMs: Math.max(...positions) }]);
  });

  it('send the same rows as the stored chunk sent the earlier way, sessions merged since resolved', async () => {
    const p = await createProject();
    const deviceId = 'lined-merge';
    const stub = deviceStub(env, p.id, deviceId);
    const fail = { now: true };
    const sent = await captureSends(stub, fail);
    const t0 = Date.now() - 3 * 3600_000;
    const post = async (minutes: number[]) => {
      const res = await postBatch(p, { events: minutes.map((m) => trackEvent(`at ${m}`, { __deviceId: deviceId, __timestamp: t0 + m * 60_000, q: 'a "quoted" value' })) });
      expect(res.status).toBe(202);
    };
    // Two sessions (50 minutes apart), sent and lost; then an event between them merges them.
    await post([0, 50]);
    await waitUntil(async () => sent.length, (n) => n === 1);
    await post([25]);
    // The back-off alarm sends both chunks from memory, lined, the first one's entries now in the
    // surviving session; lost again.
    await runDurableObjectAlarm(stub);
    const lined = sent.slice(1);
    expect(lined.length).toBeGreaterThan(0);
    for (const b of lined) expect(b).toContain(LINED_ENTRIES);
    // A new life holds nothing in memory: it sends the stored chunks the earlier way, with aliases.
    await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { sql: SqlStorage; meta: MetaStore; stores: { outbox: OutboxStore } };
      self.stores.outbox = new OutboxStore(self.sql, self.meta);
    });
    fail.now = false;
    const before = sent.length;
    await runDurableObjectAlarm(stub);
    const earlier = sent.slice(before);
    expect(earlier.length).toBeGreaterThan(0);
    for (const b of earlier) expect(b).not.toContain(LINED_ENTRIES);

    const synced = Date.now();
    const rowsOf = (bodies: string[]) => {
      const events: EventRow[] = [];
      const payloads: PayloadRow[] = [];
      for (const b of bodies) {
        const read = decodeIngestBody(b);
        const cut = read.pieces ? linesOfPieces(read, read.pieces, synced) : null;
        const rows = cut
          ? { events: cut.events.map((l) => JSON.parse(l.line) as EventRow), payloads: cut.payloads.map((l) => JSON.parse(l.line) as PayloadRow) }
          : expandMessage(read, synced);
        events.push(...rows.events);
        payloads.push(...rows.payloads);
      }
      return asStored({ events, payloads });
    };
    const fromLined = rowsOf(lined);
    expect(fromLined.events).toHaveLength(3);
    expect(fromLined).toEqual(rowsOf(earlier));
    expect(new Set(fromLined.events.map((e) => e.session_id)).size).toBe(1);
  });

  it('go out only for calls packed as rows of their own fields: other calls send their chunk the earlier way', async () => {
    const p = await createProject();
    const deviceId = 'lined-own';
    const stub = deviceStub(env, p.id, deviceId);
    const sent = await captureSends(stub);
    const t0 = Date.now() - 60_000;
    // One receipt time for all, as one request has: the call's base then holds every shared field.
    const receivedAtMs = Date.now();
    const events = [0, 1, 2].map((i) => {
      const r = normalizeEvent(trackEvent(`e${i}`, { __deviceId: deviceId, __timestamp: t0 + i }), { receivedAtMs, ip: '203.0.113.9', userAgent: 'test', geo: NO_GEO }, i);
      if (!r.ok) throw new Error(r.rejection.error);
      return toDeviceEvent(p.id, deviceId, r.event);
    });
    const [packed] = packDeviceEvents(events.slice(0, 2));
    expect(packed!.own).toBe(true);
    // The same call without the mark (as a caller from before it would send): not lined.
    const { own: _, ...unmarked } = packed!;
    await stub.ingest({ projectId: p.id, deviceId, gapMs: 30 * 60_000, events: unmarked });
    await waitUntil(async () => sent.length, (n) => n === 1);
    expect(sent[0]).not.toContain(LINED_ENTRIES);
    expect(decodeIngestBody(sent[0]!).entries).toHaveLength(2);
    // The events as objects (the oldest form): not lined either.
    await stub.ingest({ projectId: p.id, deviceId, gapMs: 30 * 60_000, events: [events[2]!] });
    await waitUntil(async () => sent.length, (n) => n === 2);
    expect(sent[1]).not.toContain(LINED_ENTRIES);
  });

  it('are parsed row by row when an erasure may have forgotten some of their rows', async () => {
    const p = await createProject();
    const deviceId = 'lined-erased';
    const stub = deviceStub(env, p.id, deviceId);
    const sent = await captureSends(stub);
    const t0 = Date.now() - 60_000;
    const events = [
      { type: 'track', payload: { name: 'kept', profileId: 'stays', properties: { __deviceId: deviceId, __timestamp: t0 } } },
      { type: 'track', payload: { name: 'forgotten', profileId: 'leaves', properties: { __deviceId: deviceId, __timestamp: t0 + 1 } } },
    ];
    expect((await postBatch(p, { events })).status).toBe(202);
    await waitUntil(async () => sent.length, (n) => n === 1);
    const read = decodeIngestBody(sent[0]!);
    expect(read.pieces).toHaveLength(2);
    const forgotten = new Forgotten([{ kind: 'profile', projectId: p.id, profileId: 'leaves', beforeMs: Date.now() + 60_000 }]);
    const written = await writeRows(ch(), [read], Date.now(), false, forgotten);
    expect(written.events).toBe(1);
    const stored = await storedRows(p.id);
    expect(stored.events.map((e) => e.name)).toEqual(['kept']);
    expect(stored.payloads.map((r) => r.id)).toEqual(stored.events.map((e) => e.id));
  });

  it('parses an entry of another layout, and a body that does not split into its count is parsed whole', async () => {
    const p = await createProject();
    const deviceId = 'lined-2';
    const stub = deviceStub(env, p.id, deviceId);
    const sent = await captureSends(stub);
    const t0 = Date.now() - 60_000;
    const res = await postBatch(p, { events: [0, 1, 2].map((i) => trackEvent(`e${i}`, { __deviceId: deviceId, __timestamp: t0 + i })) });
    expect(res.status).toBe(202);
    await waitUntil(async () => sent.length, (n) => n === 1);
    const body = sent[0]!;
    const synced = Date.now();

    // The second entry rewritten with its row's keys in another order: still the same row.
    const at = body.indexOf(LINED_ENTRIES) + LINED_ENTRIES.length;
    const pieces = body.slice(at, -3).split(',\n');
    expect(pieces).toHaveLength(3);
    const entry = JSON.parse(pieces[1]!) as { s: string; r: Record<string, unknown>; p: string };
    const { id, ...others } = entry.r;
    pieces[1] = JSON.stringify({ s: entry.s, r: { ...others, id }, p: entry.p });
    const reordered = `${body.slice(0, at)}${pieces.join(',\n')}\n]}`;
    const { lines, whole, fromLines } = bothWays(reordered, synced);
    expect(lines.events[1]!.line.startsWith('{"session_id":')).toBe(false);
    expect(lines.events[0]!.line.startsWith('{"session_id":')).toBe(true);
    expect(fromLines.events).toEqual(whole.events);
    expect(fromLines.payloads).toEqual(whole.payloads);

    // Two entries on one line: the count no longer matches, so the body is parsed whole.
    const joined = `${body.slice(0, at)}${pieces[0]},${pieces[1]},\n${pieces[2]}\n]}`;
    const read = decodeIngestBody(joined);
    expect(read.pieces).toBeUndefined();
    expect(read.lined).toBeUndefined();
    expect(read.entries).toHaveLength(3);

    // A first send and its flagged resend in one delivery land once, as the message parsed whole.
    const flagged = body.replace('"sessions":[', '"redelivery":true,"sessions":[');
    expect(decodeIngestBody(flagged).pieces).toHaveLength(3);
    await writeRows(ch(), [decodeIngestBody(body), decodeIngestBody(flagged)], synced, [false, true]);
    expect(await storedRows(p.id)).toEqual(asStored(whole));
    // Later resends, lined or parsed whole, add nothing.
    await writeRows(ch(), [decodeIngestBody(reordered), decodeIngestBody(joined) as IngestMessage], synced, true);
    const stored = await ch().query<{ n: string; ids: string }>('SELECT count() AS n, uniqExact(id) AS ids FROM events WHERE project_id = {p:String}', { p: p.id });
    expect([Number(stored[0]!.n), Number(stored[0]!.ids)]).toEqual([3, 3]);
    const payloads = await ch().query<{ n: string }>('SELECT count() AS n FROM event_payloads WHERE project_id = {p:String}', { p: p.id });
    expect(Number(payloads[0]!.n)).toBe(3);

    // A lined body that also carries rows elsewhere is parsed whole: none of them is missed.
    const extra = body.replace('"payloads":[]', `"payloads":[${JSON.stringify({ id: 'x', project_id: p.id, created_at_ms: t0, received_at_ms: t0, payload: '{}' })}]`);
    expect(decodeIngestBody(extra).pieces).toBeUndefined();
  });
});
