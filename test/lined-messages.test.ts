// Lined ingest messages: a device object's chunk goes to the queue one entry per line, and the
// consumer cuts each entry's ClickHouse lines out of its text instead of parsing and encoding it.
import { env, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import { addSubjects, noSubjects } from '../src/erasure/tombstones';
import { deviceStub } from '../src/ingest/accept';
import { decodeIngestBody, decodeMessage, expandMessage, LINED_ENTRIES, linesOfPieces, type IngestMessage } from '../src/pipeline/messages';
import { writeRows } from '../src/pipeline/writer';
import { ch, createProject, postBatch, trackEvent, waitUntil } from './helpers';

/** What a device object hands its queue, as raw bodies (nothing reaches the real queue). */
async function captureSends(stub: DurableObjectStub<DeviceObject>): Promise<string[]> {
  const sent: string[] = [];
  await runInDurableObject(stub, (o: DeviceObject) => {
    const self = o as unknown as { env: typeof env };
    const queue = {
      send: () => Promise.reject(new Error('unused')),
      sendBatch: async (messages: Array<{ body: unknown }>) => {
        for (const m of messages) sent.push(m.body as string);
      },
    };
    self.env = { ...self.env, INGEST_QUEUE: queue as unknown as typeof env.INGEST_QUEUE };
  });
  return sent;
}

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

    // Either way the rows land once, and a resend of the same lined message adds nothing.
    await writeRows(ch(), [decodeIngestBody(reordered)], synced, false);
    await writeRows(ch(), [decodeIngestBody(body), decodeIngestBody(joined) as IngestMessage], synced, true);
    const stored = await ch().query<{ n: string; ids: string }>('SELECT count() AS n, uniqExact(id) AS ids FROM events WHERE project_id = {p:String}', { p: p.id });
    expect([Number(stored[0]!.n), Number(stored[0]!.ids)]).toEqual([3, 3]);
    const payloads = await ch().query<{ n: string }>('SELECT count() AS n FROM event_payloads WHERE project_id = {p:String}', { p: p.id });
    expect(Number(payloads[0]!.n)).toBe(3);
  });
});
