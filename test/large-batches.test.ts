// Batches at the documented limits (2000 events, 10 MB, 32 KB an event) are accepted whatever their
// device mix, stored exactly once, and deduplicated and sessionised as smaller batches are.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { callBaseOf, MAX_HANDOFF_BYTES, packDeviceEvents, packEvent, unpackEvents } from '../src/device/packed';
import { deviceStub, toDeviceEvent } from '../src/ingest/accept';
import { NO_GEO, normalizeEvent } from '../src/ingest/normalize';
import { MAX_BODY_BYTES, MAX_EVENT_BYTES } from '../src/ingest/wire';
import { markInitialMigrationCompleted } from '../src/legacy/datasets';
import { countHeld, releaseHeldEvents } from '../src/legacy/realtime';
import { ch, countEvents, createProject, postBatch, trackEvent, waitUntil, type TestProject } from './helpers';

type BatchResult = { accepted: number; duplicates: number; rejected: Array<{ index: number; reason: string; retryable: boolean }> };

const utf8 = (s: string) => new TextEncoder().encode(s).length;

/**
 * A telemetry row of exactly `bytes` UTF-8 bytes: many short fields (JSON-heavy, so escaping shows)
 * and a place name outside Latin-1 (so the runtime holds the text as two bytes a character).
 */
function telemetryRow(bytes: number, props: Record<string, unknown>) {
  const properties: Record<string, unknown> = { place: 'Łódź', ...props, pad: '' };
  const row = trackEvent('telemetry', properties);
  let size = utf8(JSON.stringify(row));
  for (let k = 0; size + 24 < bytes; k++) {
    properties[`f${k}`] = `v${k}`;
    size += `"f${k}":"v${k}",`.length;
  }
  properties.pad = 'x'.repeat(bytes - utf8(JSON.stringify(row)));
  const json = JSON.stringify(row);
  if (utf8(json) !== bytes) throw new Error(`test row is ${utf8(json)} bytes, not ${bytes}`);
  return row;
}

async function post(p: TestProject, events: unknown[]) {
  const body = JSON.stringify({ events });
  expect(utf8(body)).toBeLessThanOrEqual(MAX_BODY_BYTES);
  const res = await postBatch(p, body);
  expect(res.status).toBe(202);
  return (await res.json()) as BatchResult;
}

/** Waits until every expected id is in ClickHouse, then checks that none is there twice. */
async function expectStoredOnce(projectId: string, n: number) {
  await waitUntil(() => countEvents(projectId), (c) => c.ids >= n, { timeoutMs: 180_000 });
  expect(await countEvents(projectId)).toEqual({ rows: n, ids: n });
  const [payloads] = await ch().query<{ rows: number; ids: number }>(
    'SELECT count() AS rows, uniqExact(id) AS ids FROM event_payloads WHERE project_id = {p:String}',
    { p: projectId },
  );
  expect({ rows: Number(payloads!.rows), ids: Number(payloads!.ids) }).toEqual({ rows: n, ids: n });
}

// Each test moves about 10 MB through the whole pipeline: generous timeouts, no timed assertions.
describe('batches at the limits', { timeout: 400_000 }, () => {
  it('accepts 1000 events of 5 KB from one device, stores each once, in one session, and counts a replay as duplicates', async () => {
    const p = await createProject('large-5kb');
    const base = Date.now() - 30 * 60_000;
    const events = Array.from({ length: 1000 }, (_, i) =>
      telemetryRow(5 * 1024, { __deviceId: 'truck-5kb', __eventId: `5kb-${i}`, __timestamp: base + i * 1000, seq: i }),
    );
    expect(await post(p, events)).toEqual({ accepted: 1000, duplicates: 0, rejected: [] });

    const sessions = await deviceStub(env, p.id, 'truck-5kb').sessions();
    expect(sessions.map((s) => s.eventCount)).toEqual([1000]);
    await expectStoredOnce(p.id, 1000);

    // The SDK resends the whole batch: every row is a duplicate, whichever call it travels in.
    expect(await post(p, events)).toEqual({ accepted: 0, duplicates: 1000, rejected: [] });
    expect(await countEvents(p.id)).toEqual({ rows: 1000, ids: 1000 });
  });

  it('accepts 320 events just under 32 KB from one device (a 10 MB batch) and stores each once, intact', async () => {
    const p = await createProject('large-32kb');
    const base = Date.now() - 30 * 60_000;
    const bytes = MAX_EVENT_BYTES - 100;
    const events = Array.from({ length: 320 }, (_, i) =>
      telemetryRow(bytes, { __deviceId: 'truck-32kb', __eventId: `32kb-${i}`, __timestamp: base + i * 1000, seq: i }),
    );
    expect(await post(p, events)).toEqual({ accepted: 320, duplicates: 0, rejected: [] });
    await expectStoredOnce(p.id, 320);

    const [stored] = await ch().query<{ properties: string }>(
      `SELECT properties FROM events WHERE project_id = {p:String} AND visitParamExtractInt(properties, 'seq') = 319`,
      { p: p.id },
    );
    const sent: Record<string, unknown> = { ...events[319]!.payload.properties };
    for (const reserved of ['__deviceId', '__eventId', '__timestamp']) delete sent[reserved];
    expect(JSON.parse(stored!.properties)).toEqual(sent);
  });

  it('accepts a 2000-event, 10 MB batch of one heavy device and many light ones, with per-row outcomes in place', async () => {
    const p = await createProject('large-mixed');
    const base = Date.now() - 40 * 60_000;
    const events: unknown[] = [];
    const expected: BatchResult['rejected'] = [];
    for (let i = 0; i < 2000; i++) {
      const heavy = i % 5 !== 4; // 1600 rows for one device, 400 spread over 100 others
      const deviceId = heavy ? 'truck-heavy' : `van-${i % 100}`;
      // The heavy device's last rows repeat its first event ids: duplicates across its calls.
      const eventId = heavy && i >= 1900 ? `mixed-${i - 1900}` : `mixed-${i}`;
      const tooOld = i % 250 === 125;
      const timestamp = tooOld ? Date.now() - 6 * 24 * 3600_000 : base + i * 1000;
      if (tooOld) expected.push({ index: i, reason: 'too_old', retryable: false });
      events.push(telemetryRow(5 * 1024, { __deviceId: deviceId, __eventId: eventId, __timestamp: timestamp, seq: i }));
    }
    const duplicates = events.filter((_, i) => i % 5 !== 4 && i >= 1900).length;
    const result = await post(p, events);
    expect(result.rejected.map(({ index, reason, retryable }) => ({ index, reason, retryable }))).toEqual(expected);
    expect(result.duplicates).toBe(duplicates);
    expect(result.accepted).toBe(2000 - expected.length - duplicates);
    await expectStoredOnce(p.id, result.accepted);
  });

  it('releases a large backlog of held events for one device into its object, each stored once', async () => {
    const p = await createProject('large-held');
    const base = Date.now() - 30 * 60_000;
    const held = Array.from({ length: 300 }, (_, i) =>
      telemetryRow(MAX_EVENT_BYTES - 100, { __deviceId: 'truck-held', __dataset: 'fleetone', __legacyId: `h-${i}`, __timestamp: base + i * 1000, seq: i }),
    );
    for (let i = 0; i < held.length; i += 100) {
      expect(await post(p, held.slice(i, i + 100))).toEqual({ accepted: 100, duplicates: 0, rejected: [] });
    }
    const dataset = { projectId: p.id, dataset: 'fleetone' };
    expect(await countHeld(env.DB, dataset)).toBe(300);

    await markInitialMigrationCompleted(env.DB, dataset, Date.now());
    expect(await releaseHeldEvents(env, dataset, { maxMs: 600_000 })).toBe(300);
    expect(await countHeld(env.DB, dataset)).toBe(0);
    await expectStoredOnce(p.id, 300);
  });
});

describe('the hand-off to a device object', () => {
  // One request's events: one receive time, as the route gives them.
  const deviceEvents = (rows: unknown[], receivedAtMs = Date.now()) =>
    rows.map((raw, i) => {
      const r = normalizeEvent(raw, { receivedAtMs, ip: '203.0.113.9', userAgent: 'test', geo: NO_GEO }, i);
      if (!r.ok) throw new Error(r.rejection.error);
      return toDeviceEvent('p', 'd', r.event);
    });

  it('cuts a device\'s events into bounded calls, in order, each row escaped once', () => {
    const events = deviceEvents(Array.from({ length: 1000 }, (_, i) => telemetryRow(5 * 1024, { __eventId: `h-${i}` })));
    const calls = packDeviceEvents(events);
    expect(calls.length).toBeGreaterThan(1);
    for (const call of calls) {
      const strings = [call.k!, call.id!, call.t!, call.n!, call.pr!, call.rp].flat();
      const bytes = 2 * (strings.reduce((n, text) => n + text.length, 0) + (call.base?.length ?? 0)) + 4 * 8 * call.rp.length;
      expect(bytes).toBeLessThanOrEqual(MAX_HANDOFF_BYTES);
      // Rows travel as strings of their own, never inside another field.
      expect([call.k!, call.id!, call.t!, call.n!, call.pr!].flat().join('')).not.toContain('Łódź');
      expect(call.c!.length).toBe(call.rp.length);
      expect(call.pos!.length).toBe(2 * call.rp.length);
    }
    const base = callBaseOf(events.map((e) => e.row));
    expect(calls.flatMap(unpackEvents)).toEqual(events.map((e) => packEvent(e, base)));
  });

  it('unpacks a call in the earlier form (the fields as one JSON array), and refuses columns that disagree', () => {
    const events = deviceEvents([trackEvent('position', { lat: 48.85, lon: 2.35 }), trackEvent('plain', { n: 1 })]);
    const [call] = packDeviceEvents(events);
    const unpacked = unpackEvents(call!);
    expect(unpacked.map((e) => e.pos)).toEqual([[48.85, 2.35], null]);
    const earlier = { fields: JSON.stringify(unpacked.map(({ rp: _rp, ...fields }) => fields)), rp: call!.rp, base: call!.base };
    expect(unpackEvents(earlier)).toEqual(unpacked);
    expect(() => unpackEvents({ ...call!, n: call!.n!.slice(1) })).toThrow(/columns/);
    expect(() => unpackEvents({ rp: call!.rp })).toThrow(/column/);
  });

  it('sends the fields a call\'s events share once, and only those all of them share', () => {
    const events = deviceEvents([trackEvent('a', { n: 1 }), trackEvent('b', { n: 2 }), trackEvent('c', { n: 3 })]);
    const [whole] = packDeviceEvents(events);
    expect(JSON.parse(whole!.base!)).toEqual({ ...callBaseOf(events.map((e) => e.row)), ip: '203.0.113.9', project_id: 'p', device_id: 'd' });
    expect(Object.keys(JSON.parse(whole!.base!)).sort()).toEqual(['city', 'country', 'device_id', 'ip', 'latitude', 'longitude', 'project_id', 'received_at_ms', 'region', 'timezone']);

    // An event that came another way (its own address and place): those fields leave the base, and
    // every row keeps its own, so no base value is any one event's alone.
    events[2] = { ...events[2]!, row: { ...events[2]!.row, ip: '198.51.100.4', city: 'Lyon', latitude: 45.76 } };
    const [call, ...more] = packDeviceEvents(events);
    expect(more).toEqual([]);
    const base = JSON.parse(call!.base!) as Record<string, unknown>;
    expect(base).toMatchObject({ project_id: 'p', device_id: 'd', country: '', region: '', timezone: '', longitude: null });
    for (const k of ['ip', 'city', 'latitude']) expect(base).not.toHaveProperty(k);
    const rows = call!.rp.map((rp) => (JSON.parse(`{${rp}}`) as { r: Record<string, unknown> }).r);
    for (const r of rows) for (const k of Object.keys(base)) expect(r).not.toHaveProperty(k);
    expect(rows[0]).toMatchObject({ ip: '203.0.113.9', city: '', latitude: null });
    expect(rows[2]).toMatchObject({ ip: '198.51.100.4', city: 'Lyon', latitude: 45.76 });
    // The base under each row gives back the row, field for field.
    rows.forEach((r, i) => expect({ ...base, ...r }).toEqual(events[i]!.row));
  });

  it('writes the same text as stringifying each row whole, and carries each event\'s fields as they were', () => {
    // Quotes, escapes, astral characters, numbers of every kind, a profile, a position, a property
    // that is itself JSON text: the hand-written JSON must be JSON.stringify's, byte for byte.
    const rows = [
      trackEvent('say "hi"\\', { __eventId: 'e"1', text: 'Łódź 😀 \u0007', nested: { a: [1, 2.5, -0, 1e21, null, true] } }),
      { type: 'track', payload: { name: 'position', profileId: 42, properties: { lat: 48.8566, lon: -2.3522e-7, speed: 0 } } },
      { type: 'identify', payload: { profileId: 'u-1', email: 'a@b.c', properties: { plan: '{"not":"parsed"}' } } },
      trackEvent('plain'),
    ];
    const events = deviceEvents(rows);
    events[1] = { ...events[1]!, row: { ...events[1]!.row, ip: '198.51.100.4', latitude: 45.76, longitude: -0.5 } };
    const shared = callBaseOf(events.map((e) => e.row));
    const [call] = packDeviceEvents(events);
    events.forEach((e, i) => {
      const own = Object.fromEntries(Object.entries(e.row).filter(([k, v]) => !shared || !(k in shared) || (shared as Record<string, unknown>)[k] !== v));
      expect(call!.rp[i]).toBe(`"r":${JSON.stringify(own)},"p":${JSON.stringify(e.payload.payload)}`);
    });
    // The fields cross as columns and come back as packing each event alone gives them.
    expect(unpackEvents(call!)).toEqual(events.map((e) => packEvent(e, shared)));
    // Without a base (a legacy call's rows), each row whole.
    expect(packEvent(events[3]!).rp).toBe(`"r":${JSON.stringify(events[3]!.row)},"p":${JSON.stringify(events[3]!.payload.payload)}`);
    // A row with a field beyond the usual ones keeps it, whole base or not.
    const plain = deviceEvents([trackEvent('a'), trackEvent('b')]);
    const wider = { ...plain[0]!, row: { ...plain[0]!.row, extra: 1 } as (typeof plain)[0]['row'] };
    const base = callBaseOf(plain.map((e) => e.row));
    expect(Object.keys(base!)).toHaveLength(10);
    expect(JSON.parse(`{${packEvent(wider, base).rp}}`).r).toMatchObject({ id: wider.row.id, extra: 1 });
    expect(JSON.parse(`{${packEvent(plain[0]!, base).rp}}`).r).not.toHaveProperty('extra');
  });

  it('sends an event larger than a call\'s budget on its own', () => {
    const events = deviceEvents([trackEvent('a', { n: 1 }), telemetryRow(MAX_EVENT_BYTES - 100, {}), trackEvent('b', { n: 2 })]);
    expect(packDeviceEvents(events, 1000).map((c) => c.rp.length)).toEqual([1, 1, 1]);
    expect(packDeviceEvents(events).map((c) => c.rp.length)).toEqual([3]);
  });
});

