// Device objects: sessions by event time whatever the arrival order, exactly one start and end,
// offline history that leaves the live session alone, late data on ended sessions, bounded state.
import { env, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceEvent } from '../durable-objects/device-object';
import { DEDUP_WINDOW_MS, DeviceObject, FLUSH_SAFETY_MS } from '../durable-objects/device-object';
import { sessionsOf } from '../src/device/sessions';
import { deviceStub, toDeviceEvent } from '../src/ingest/accept';
import { writeRows } from '../src/pipeline/writer';
import { NO_GEO, normalizeEvent } from '../src/ingest/normalize';
import { ch, collidingKeys, createProject, getJson, postBatch, trackEvent, waitUntil, type TestProject } from './helpers';
import { deliveryOrder, GAP_MS, generateHistory, rng, splitBatches } from './session-history';

type SessionsBody = { sessions: Array<{ id: string; startedAt: string; endedAt: string | null; lastEventAt: string; eventCount: number; durationMs: number }> };
type EventsBody = { events: Array<{ id: string; name: string; sessionId: string; createdAt: string; properties: Record<string, unknown> }> };
type DeviceBody = {
  deviceId: string;
  lastEvent: { id: string; name: string; createdAt: string; sessionId: string | null } | null;
  lastPosition: { lat: number; lon: number; at: string } | null;
  liveSession: { id: string; startedAt: string; lastEventAt: string; eventCount: number; idleAt: string } | null;
  profile: { id: string; properties: Record<string, unknown> } | null;
};

const MIN = 60_000;
const HOUR = 60 * MIN;

/** Wire events → what the route hands the object (normalised at `receivedAtMs`). */
function toObjectEvents(projectId: string, deviceId: string, raws: unknown[], receivedAtMs: number): DeviceEvent[] {
  return raws.map((raw, i) => {
    const r = normalizeEvent(raw, { receivedAtMs, ip: '203.0.113.9', userAgent: 'test', geo: NO_GEO }, i);
    if (!r.ok) throw new Error(`bad test event: ${r.rejection.error}`);
    return toDeviceEvent(projectId, deviceId, r.event);
  });
}

/** Hands events straight to the device object with an injected clock (`receivedAtMs` for normalising). */
function ingest(projectId: string, deviceId: string, raws: unknown[], nowMs: number, receivedAtMs = nowMs) {
  const events = toObjectEvents(projectId, deviceId, raws, receivedAtMs);
  return deviceStub(env, projectId, deviceId).ingest({ projectId, deviceId, gapMs: GAP_MS, events, nowMs });
}

/** Track events at `times`; every third carries an __eventId, the rest dedup by content hash. */
function historyEvents(deviceId: string, times: number[]) {
  return times.map((t, i) =>
    trackEvent('reading', { __deviceId: deviceId, __timestamp: t, seq: i, ...(i % 3 === 0 ? { __eventId: `${deviceId}-${i}` } : {}) }),
  );
}

const shape = (s: { startMs: number; endMs: number; eventCount: number }) => ({ startMs: s.startMs, endMs: s.endMs, eventCount: s.eventCount });

async function currentSessions(p: TestProject, deviceId: string, query = '') {
  return getJson<SessionsBody>(p, `/v1/sessions?deviceId=${encodeURIComponent(deviceId)}${query}`);
}

/** Current rows of the ClickHouse sessions table for a device: argMax per id. */
async function storedSessions(projectId: string, deviceId: string) {
  return ch().query<{ id: string; merged: string; started: number; ended_at: number; n: number; ended: number }>(
    `SELECT id, argMax(merged_into, version) AS merged, argMax(started_at_ms, version) AS started,
            argMax(ended_at_ms, version) AS ended_at, argMax(event_count, version) AS n, argMax(ended, version) AS ended
       FROM sessions WHERE project_id = {p:String} AND device_id = {d:String} GROUP BY id`,
    { p: projectId, d: deviceId },
  );
}

describe('arrival-order independence', () => {
  const history = generateHistory(rng(42), Date.now() - 4 * 24 * HOUR, 500);
  const expected = sessionsOf(history, GAP_MS);

  it('builds a history with several sessions and gaps around 30 minutes', () => {
    expect(history).toHaveLength(500);
    expect(expected.length).toBeGreaterThanOrEqual(5);
    const gaps = history.slice(1).map((t, i) => t - history[i]!);
    expect(gaps).toContain(GAP_MS - 1);
    expect(gaps.some((g) => g > GAP_MS && g <= GAP_MS + 60_000)).toBe(true);
  });

  it('10 random orders and batch splits with duplicates give the offline sessions (object)', async () => {
    const nowMs = Date.now();
    for (let order = 0; order < 10; order++) {
      const rand = rng(1000 + order);
      const projectId = `order-project-${order}-${nowMs}`;
      const deviceId = `order-device-${order}`;
      const events = historyEvents(deviceId, history);
      const delivery = deliveryOrder(events, rand, 0.2);
      const batches = splitBatches(delivery, rand, 1 + Math.floor(rand() * 150));
      let accepted = 0;
      let duplicates = 0;
      // A few batches in flight at once, as a route under load would send them.
      for (let i = 0; i < batches.length; i += 4) {
        const results = await Promise.all(batches.slice(i, i + 4).map((b) => ingest(projectId, deviceId, b, nowMs)));
        for (const r of results.flatMap((x) => x.results)) r.status === 'accepted' ? accepted++ : duplicates++;
      }
      expect(accepted, `order ${order}`).toBe(500);
      expect(duplicates, `order ${order}`).toBe(delivery.length - 500);
      const sessions = await deviceStub(env, projectId, deviceId).sessions();
      expect(sessions.map(shape), `order ${order}`).toEqual(expected);
    }
  });

  it('one shuffled delivery through POST /track/batch reads back the same sessions and markers', async () => {
    const p = await createProject('order-http');
    const deviceId = 'order-http-device';
    const rand = rng(7);
    const events = historyEvents(deviceId, history);
    const delivery = deliveryOrder(events, rand, 0.2);
    const batches = splitBatches(delivery, rand, 80);
    let accepted = 0;
    for (let i = 0; i < batches.length; i += 3) {
      const responses = await Promise.all(batches.slice(i, i + 3).map((b) => postBatch(p, { events: b })));
      for (const res of responses) {
        expect(res.status).toBe(202);
        accepted += ((await res.json()) as { accepted: number }).accepted;
      }
    }
    expect(accepted).toBe(500);

    const since = `&since=${history[0]! - HOUR}&limit=1000`;
    const { body } = await waitUntil(
      () => currentSessions(p, deviceId, since),
      (r) => r.status === 200 && JSON.stringify(r.body.sessions.map((s) => s.eventCount).reverse()) === JSON.stringify(expected.map((s) => s.eventCount)),
    );
    const got = body.sessions
      .map((s) => ({ startMs: Date.parse(s.startedAt), endMs: Date.parse(s.lastEventAt), eventCount: s.eventCount }))
      .reverse();
    expect(got).toEqual(expected);
    // The history ended over a day ago: every session is ended, with its duration.
    for (const s of body.sessions) {
      expect(s.endedAt).toBe(s.lastEventAt);
      expect(s.durationMs).toBe(Date.parse(s.lastEventAt) - Date.parse(s.startedAt));
    }

    const ids = new Set(body.sessions.map((s) => s.id));
    const { body: ev } = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?deviceId=${deviceId}${since}`),
      (r) => r.body.events.filter((e) => e.name === 'reading').length === 500,
    );
    const starts = ev.events.filter((e) => e.name === 'session_start');
    const ends = ev.events.filter((e) => e.name === 'session_end');
    expect(starts).toHaveLength(expected.length);
    expect(ends).toHaveLength(expected.length);
    expect(new Set(starts.map((e) => e.sessionId))).toEqual(ids);
    expect(new Set(ends.map((e) => e.sessionId))).toEqual(ids);
    // Each stored event resolves (through merges) to a current session that covers its time.
    const perSession = new Map<string, number>();
    for (const e of ev.events.filter((x) => x.name === 'reading')) {
      expect(ids.has(e.sessionId)).toBe(true);
      perSession.set(e.sessionId, (perSession.get(e.sessionId) ?? 0) + 1);
    }
    for (const s of body.sessions) expect(perSession.get(s.id)).toBe(s.eventCount);
  });
});

describe('per-project session gap', () => {
  it('uses the project\'s sessionGapMs: 5 minutes splits on a 6-minute gap, joins on a 4-minute one', async () => {
    const p = await createProject('gap-5min', { sessionGapMs: 5 * MIN });
    const now = Date.now();
    const times = [now - 30 * MIN, now - 26 * MIN, now - 20 * MIN, now - 16 * MIN];
    const res = await postBatch(p, { events: times.map((t) => trackEvent('g', { __deviceId: 'gap-device', __timestamp: t })) });
    expect((await res.json()) as unknown).toEqual({ accepted: 4, duplicates: 0, rejected: [] });
    const { body } = await waitUntil(() => currentSessions(p, 'gap-device'), (r) => r.body.sessions.length === 2);
    expect(body.sessions.map((s) => [s.startedAt, s.lastEventAt, s.eventCount, s.endedAt !== null])).toEqual([
      [new Date(times[2]!).toISOString(), new Date(times[3]!).toISOString(), 2, true],
      [new Date(times[0]!).toISOString(), new Date(times[1]!).toISOString(), 2, true],
    ]);
  });
});

describe('exactly one session_start', () => {
  it('20 parallel requests carrying one session\'s events, shuffled in time, make one session', async () => {
    const p = await createProject('parallel');
    const deviceId = 'parallel-device';
    const now = Date.now();
    // 60 events 6 minutes apart (6 hours, one session); each request gets 3 events from anywhere in
    // it, so requests arriving first open sessions that later ones bridge and merge.
    const times = Array.from({ length: 60 }, (_, i) => now - 2 * MIN - (59 - i) * 6 * MIN);
    const order = deliveryOrder(times, rng(99), 0);
    const requests = Array.from({ length: 20 }, (_, r) =>
      order.slice(r * 3, r * 3 + 3).map((t) => trackEvent('tick', { __deviceId: deviceId, __timestamp: t })),
    );
    const responses = await Promise.all(requests.map((events) => postBatch(p, { events })));
    for (const res of responses) expect(await res.json()).toEqual({ accepted: 3, duplicates: 0, rejected: [] });

    const { body } = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?deviceId=${deviceId}&limit=1000`),
      (r) => r.body.events.filter((e) => e.name === 'tick').length === 60 && r.body.events.some((e) => e.name === 'session_start'),
    );
    const starts = body.events.filter((e) => e.name === 'session_start');
    expect(starts).toHaveLength(1);
    expect(new Set(body.events.map((e) => e.sessionId))).toEqual(new Set([starts[0]!.sessionId]));
    expect(starts[0]!.createdAt).toBe(new Date(times[0]!).toISOString());

    const stored = await waitUntil(
      () => storedSessions(p.id, deviceId),
      (rows) => rows.filter((r) => r.merged === '').length === 1 && rows.every((r) => r.merged === '' || r.merged === starts[0]!.sessionId),
    );
    const current = stored.filter((r) => r.merged === '');
    expect(current).toHaveLength(1);
    expect(Number(current[0]!.n)).toBe(60);
    // Absorbed sessions point straight at the survivor.
    for (const r of stored.filter((x) => x.merged !== '')) expect(r.merged).toBe(current[0]!.id);
  });
});

describe('offline history and the live session', () => {
  it('a 2-hour drive sent 6 hours late is one back-dated session; the live session is untouched', async () => {
    const p = await createProject('offline');
    const deviceId = 'truck-7';
    const now = Date.now();
    const live = Array.from({ length: 5 }, (_, i) => trackEvent('ping', { __deviceId: deviceId, __timestamp: now - (4 - i) * MIN }));
    expect((await postBatch(p, { events: live })).status).toBe(202);
    const before = (await getJson<DeviceBody>(p, `/v1/devices/${deviceId}`)).body;
    expect(before.liveSession).not.toBeNull();
    expect(before.liveSession!.eventCount).toBe(5);

    const driveStart = now - 8 * HOUR;
    const drive = Array.from({ length: 121 }, (_, i) =>
      trackEvent('position', { __deviceId: deviceId, __timestamp: driveStart + i * MIN, lat: 52 + i / 1000, lon: 13 }),
    );
    const res = await postBatch(p, { events: drive });
    expect(await res.json()).toEqual({ accepted: 121, duplicates: 0, rejected: [] });

    const after = (await getJson<DeviceBody>(p, `/v1/devices/${deviceId}`)).body;
    expect(after.liveSession).toEqual(before.liveSession);
    // The idle timer (the object's alarm, once the outbox is flushed) still follows the live session.
    // While rows waited, the alarm stood within FLUSH_SAFETY_MS instead; run it now rather than wait
    // out that minute (a wait that raced the poll's own one-minute deadline).
    const stub = deviceStub(env, p.id, deviceId);
    await waitUntil(
      () => runInDurableObject(stub, async (instance) => (await (instance as unknown as DeviceObject).state())!.pendingRows),
      (pending) => pending === 0,
    );
    const safety = await runInDurableObject(stub, (_, state) => state.storage.getAlarm());
    expect(safety).not.toBeNull();
    expect(safety!).toBeLessThanOrEqual(Date.now() + FLUSH_SAFETY_MS);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    const alarm = await runInDurableObject(stub, (_, state) => state.storage.getAlarm());
    expect(alarm).not.toBeNull();
    expect(alarm!).toBeGreaterThan(Date.now() + FLUSH_SAFETY_MS);
    expect(Math.abs(alarm! - Date.parse(before.liveSession!.idleAt))).toBeLessThan(10_000);

    const { body } = await waitUntil(
      () => currentSessions(p, deviceId, `&since=${driveStart - HOUR}`),
      (r) => r.body.sessions.length === 2 && r.body.sessions.reduce((n, s) => n + s.eventCount, 0) === 126,
    );
    const [liveSession, driveSession] = body.sessions;
    expect(liveSession!.id).toBe(before.liveSession!.id);
    expect(liveSession!.endedAt).toBeNull();
    expect(driveSession).toMatchObject({
      startedAt: new Date(driveStart).toISOString(),
      endedAt: new Date(driveStart + 2 * HOUR).toISOString(),
      eventCount: 121,
      durationMs: 2 * HOUR,
    });
    // Live state: the last event is still the live ping; the last position is the drive's newest fix.
    expect(after.lastEvent).toMatchObject({ name: 'ping', sessionId: before.liveSession!.id });
    expect(after.lastPosition).toEqual({ lat: 52.12, lon: 13, at: new Date(driveStart + 2 * HOUR).toISOString() });
  });
});

describe('session_end and late data', () => {
  it('ends a session after the gap with its duration; a late event extends the ended session', async () => {
    const p = await createProject('late');
    const deviceId = 'late-device';
    const t0 = Date.now();
    const events = Array.from({ length: 5 }, (_, i) => trackEvent('step', { __deviceId: deviceId, __timestamp: t0 - 20 * MIN + i * 5 * MIN }));
    await ingest(p.id, deviceId, events, t0);
    const stub = deviceStub(env, p.id, deviceId);

    expect((await stub.maintain(t0 + GAP_MS - 1)).ended).toBe(0);
    expect((await stub.state(t0 + GAP_MS - 1))!.liveSession).not.toBeNull();
    expect((await stub.maintain(t0 + GAP_MS)).ended).toBe(1);
    expect((await stub.state(t0 + GAP_MS))!.liveSession).toBeNull();

    const window = `&since=${t0 - HOUR}&until=${t0 + 2 * HOUR}&limit=1000`;
    const ended = await waitUntil(
      () => currentSessions(p, deviceId, window),
      (r) => r.body.sessions.length === 1 && r.body.sessions[0]!.endedAt !== null,
    );
    expect(ended.body.sessions[0]).toMatchObject({
      startedAt: new Date(t0 - 20 * MIN).toISOString(),
      endedAt: new Date(t0).toISOString(),
      eventCount: 5,
      durationMs: 20 * MIN,
    });

    // Ten minutes after the last event, delivered 45 minutes after it.
    const late = await ingest(p.id, deviceId, [trackEvent('step', { __deviceId: deviceId, __timestamp: t0 + 10 * MIN })], t0 + 45 * MIN);
    expect(late.results[0]).toMatchObject({ status: 'accepted', sessionId: ended.body.sessions[0]!.id });
    await stub.maintain(t0 + 45 * MIN);
    const extended = await waitUntil(
      () => currentSessions(p, deviceId, window),
      (r) => r.body.sessions[0]?.eventCount === 6,
    );
    expect(extended.body.sessions).toHaveLength(1);
    expect(extended.body.sessions[0]).toMatchObject({
      id: ended.body.sessions[0]!.id,
      endedAt: new Date(t0 + 10 * MIN).toISOString(),
      eventCount: 6,
      durationMs: 30 * MIN,
    });
    const { body } = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?deviceId=${deviceId}${window}`),
      (r) => r.body.events.filter((e) => e.name === 'step').length === 6,
    );
    const markers = body.events.filter((e) => e.name.startsWith('session_'));
    expect(markers.map((e) => [e.name, e.createdAt])).toEqual([
      ['session_end', new Date(t0 + 10 * MIN).toISOString()],
      ['session_start', new Date(t0 - 20 * MIN).toISOString()],
    ]);
    expect(markers[0]!.properties).toMatchObject({ durationMs: 30 * MIN, eventCount: 6 });
  });

  it('a session the alarm ended and a call extends in the same millisecond gets a newer version', async () => {
    const projectId = `same-ms-${Date.now()}`;
    const stub = deviceStub(env, projectId, 'same-ms');
    const t0 = Date.now() - 2 * GAP_MS;
    await ingest(projectId, 'same-ms', [trackEvent('a', { __deviceId: 'same-ms', __timestamp: t0 })], t0 + 1000);
    // The object keeps its sessions in memory between calls: the alarm's end must reach them too.
    const endAt = t0 + GAP_MS + 5000;
    expect((await stub.maintain(endAt)).ended).toBe(1);
    await ingest(projectId, 'same-ms', [trackEvent('b', { __deviceId: 'same-ms', __timestamp: t0 + 10_000 })], endAt);
    const versions = await runInDurableObject(stub, (_o, state) => state.storage.sql.exec<{ version: number; event_count: number }>('SELECT version, event_count FROM sessions').toArray());
    expect(versions).toEqual([{ version: endAt * 1000 + 1, event_count: 2 }]);
  });

  it('a historical session older than the gap is ended at once', async () => {
    const projectId = `hist-${Date.now()}`;
    const now = Date.now();
    await ingest(projectId, 'hist', [trackEvent('x', { __deviceId: 'hist', __timestamp: now - 3 * HOUR })], now);
    const [s] = await deviceStub(env, projectId, 'hist').sessions();
    expect(s).toMatchObject({ startMs: now - 3 * HOUR, endMs: now - 3 * HOUR, eventCount: 1, ended: true });
  });
});

describe('merges', () => {
  it('chained merges leave every stored session pointing at the survivor, and the last event resolved', async () => {
    const p = await createProject('chain');
    const deviceId = 'chain-device';
    const t0 = Date.now() - 3 * HOUR;
    const at = (m: number) => [trackEvent('hop', { __deviceId: deviceId, __timestamp: t0 + m * MIN, m })];
    const stub = deviceStub(env, p.id, deviceId);
    const ids: string[] = [];
    for (const m of [0, 40, 80]) ids.push((await ingest(p.id, deviceId, at(m), Date.now())).results[0]!.sessionId);
    expect(new Set(ids).size).toBe(3);
    await stub.maintain(Date.now()); // C, B and A are in ClickHouse as three sessions
    await waitUntil(() => storedSessions(p.id, deviceId), (rows) => rows.length === 3);
    // 60 bridges B and A (A into B); then 20 bridges C and B (B into C): a chain A → B → C.
    expect((await ingest(p.id, deviceId, at(60), Date.now())).results[0]!.sessionId).toBe(ids[1]);
    await stub.maintain(Date.now());
    expect((await ingest(p.id, deviceId, at(20), Date.now())).results[0]!.sessionId).toBe(ids[0]);
    await stub.maintain(Date.now());

    const rows = await waitUntil(
      () => storedSessions(p.id, deviceId),
      (r) => r.filter((x) => x.merged === '').length === 1 && r.find((x) => x.id === ids[2])?.merged === ids[0],
    );
    expect(Object.fromEntries(rows.map((r) => [r.id, r.merged]))).toEqual({ [ids[0]!]: '', [ids[1]!]: ids[0], [ids[2]!]: ids[0] });
    // The last event (at 80) was recorded in A; the device reports the session it now belongs to.
    const device = (await getJson<DeviceBody>(p, `/v1/devices/${deviceId}`)).body;
    expect(device.lastEvent).toMatchObject({ name: 'hop', createdAt: new Date(t0 + 80 * MIN).toISOString(), sessionId: ids[0] });
    const { body } = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?deviceId=${deviceId}&since=${t0 - HOUR}`),
      (r) => r.body.events.filter((e) => e.name === 'hop').length === 5,
    );
    expect(new Set(body.events.map((e) => e.sessionId))).toEqual(new Set([ids[0]]));
  });
});

describe('duplicates', () => {
  it('a replayed event answers with its original id and the session it belongs to now, after a merge', async () => {
    const projectId = `dups-${Date.now()}`;
    const deviceId = 'dups-device';
    const t0 = Date.now() - 3 * HOUR;
    const ev = (m: number) => trackEvent('dup', { __deviceId: deviceId, __timestamp: t0 + m * MIN, __eventId: `dup-${m}` });
    const first = await ingest(projectId, deviceId, [ev(0), ev(40)], Date.now());
    const [a, b] = first.results;
    expect(a!.sessionId).not.toBe(b!.sessionId);
    await ingest(projectId, deviceId, [ev(20)], Date.now()); // bridges: b's session merges into a's
    const replay = await ingest(projectId, deviceId, [ev(40), ev(40)], Date.now());
    for (const r of replay.results) expect(r).toEqual({ status: 'duplicate', sessionId: a!.sessionId, eventId: b!.eventId });
    const profileOp = { type: 'increment', payload: { profileId: 'u', property: 'n', properties: { __deviceId: deviceId, __timestamp: t0, __eventId: 'inc-1' } } };
    await ingest(projectId, deviceId, [profileOp], Date.now());
    expect((await ingest(projectId, deviceId, [profileOp], Date.now())).results[0]).toMatchObject({ status: 'duplicate', sessionId: '' });
  });
});

describe('bounded state', () => {
  it('prunes dedup ids older than 7 days (injected clock); a replay after that is new again', async () => {
    const projectId = `prune-${Date.now()}`;
    const deviceId = 'prune-device';
    const t0 = Date.now();
    const events = Array.from({ length: 50 }, (_, i) => trackEvent('e', { __deviceId: deviceId, __timestamp: t0 - HOUR + i * MIN, __eventId: `p-${i}` }));
    const stub = deviceStub(env, projectId, deviceId);
    await ingest(projectId, deviceId, events, t0);
    expect((await ingest(projectId, deviceId, events, t0 + DEDUP_WINDOW_MS - 1, t0)).results.every((r) => r.status === 'duplicate')).toBe(true);
    expect((await stub.maintain(t0 + DEDUP_WINDOW_MS - 1)).pruned).toBe(0);
    expect((await stub.state(t0 + DEDUP_WINDOW_MS))!.seenIds).toBe(50);
    expect((await stub.maintain(t0 + DEDUP_WINDOW_MS + 1)).pruned).toBe(50);
    expect((await stub.state(t0 + DEDUP_WINDOW_MS + 1))!.seenIds).toBe(0);
    expect((await ingest(projectId, deviceId, events, t0 + DEDUP_WINDOW_MS + 2, t0)).results.every((r) => r.status === 'accepted')).toBe(true);
  });

  it('storage per device stays bounded over 14 simulated days of traffic', async () => {
    const projectId = `bounded-${Date.now()}`;
    const deviceId = 'bounded-device';
    const stub = deviceStub(env, projectId, deviceId);
    const day = 24 * HOUR;
    const t0 = Date.now();
    const perDay = 400;
    const samples: Array<{ seen: number; sessions: number; bytes: number }> = [];
    for (let d = 0; d < 14; d++) {
      const nowMs = t0 + d * day;
      const events = Array.from({ length: perDay }, (_, i) =>
        trackEvent('beat', { __deviceId: deviceId, __timestamp: nowMs - 2 * HOUR + i * 10_000, d, i, payload: 'x'.repeat(64) }),
      );
      for (let i = 0; i < events.length; i += 200) await ingest(projectId, deviceId, events.slice(i, i + 200), nowMs);
      await stub.maintain(nowMs);
      const s = (await stub.state(nowMs))!;
      samples.push({ seen: s.seenIds, sessions: s.sessions, bytes: s.storageBytes });
    }
    // Ids of the last 7 days (today's and the seven before, seen exactly 7 days ago), about a week of sessions.
    for (const s of samples) {
      expect(s.seen).toBeLessThanOrEqual(8 * perDay);
      expect(s.sessions).toBeLessThanOrEqual(9);
    }
    expect(samples[13]!.seen).toBe(8 * perDay);
    // Freed pages are reused: the second week needs no more room than the first.
    console.log(JSON.stringify({ storageByDay: samples.map((s) => s.bytes) }));
    expect(samples[13]!.bytes).toBeLessThanOrEqual(samples[7]!.bytes * 1.25);
  });
});

/** The tables of an object written before chunked dedup: one `seen` row per key. */
function createOlderLayout(state: DurableObjectState) {
  state.storage.sql.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE seen (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, created_at_ms INTEGER NOT NULL, seen_at_ms INTEGER NOT NULL) WITHOUT ROWID;`);
}

describe('dedup index', () => {
  const seenChunks = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) => state.storage.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen_chunks').one().n);

  it('never takes a new id for a duplicate because its fingerprint collides with a stored one', async () => {
    const projectId = `collide-${Date.now()}`;
    const deviceId = 'collide-device';
    const [a, b] = collidingKeys('e:c-').map((k) => k.slice('e:'.length));
    const ev = (id: string, m: number) => trackEvent('c', { __deviceId: deviceId, __timestamp: Date.now() - HOUR + m * MIN, __eventId: id });
    const first = await ingest(projectId, deviceId, [ev(a!, 0)], Date.now());
    expect(first.results[0]!.status).toBe('accepted');
    const second = await ingest(projectId, deviceId, [ev(b!, 1)], Date.now());
    expect(second.results[0]!.status).toBe('accepted');
    const replay = await ingest(projectId, deviceId, [ev(b!, 1), ev(a!, 0)], Date.now());
    expect(replay.results.map((r) => [r.status, r.eventId])).toEqual([
      ['duplicate', second.results[0]!.eventId],
      ['duplicate', first.results[0]!.eventId],
    ]);
  });

  it('rebuilds the index from storage when the object starts again', async () => {
    const projectId = `rebuild-${Date.now()}`;
    const deviceId = 'rebuild-device';
    const events = Array.from({ length: 30 }, (_, i) => trackEvent('r', { __deviceId: deviceId, __timestamp: Date.now() - HOUR + i * MIN, i }));
    const accepted = await ingest(projectId, deviceId, events, Date.now());
    const stub = deviceStub(env, projectId, deviceId);
    const replayed = await runInDurableObject(stub, (_o, state) => {
      const restarted = new DeviceObject(state, env); // a new instance: nothing in memory
      return restarted.ingest({ projectId, deviceId, gapMs: GAP_MS, events: toObjectEvents(projectId, deviceId, events, Date.now()), nowMs: Date.now() });
    });
    expect(replayed.results.map((r) => [r.status, r.eventId])).toEqual(accepted.results.map((r) => ['duplicate', r.eventId]));
  });

  it('moves the per-key rows of an older object into chunks and keeps deduplicating them', async () => {
    const projectId = `legacy-seen-${Date.now()}`;
    const deviceId = 'legacy-seen-device';
    const t = Date.now() - HOUR;
    const stub = deviceStub(env, projectId, deviceId);
    await runInDurableObject(stub, (_o, state) => {
      createOlderLayout(state);
      state.storage.sql.exec('INSERT INTO seen VALUES (?, ?, ?, ?), (?, ?, ?, ?)', 'e:old-1', 'evt-old-1', t, t, 'e:old-2', 'evt-old-2', t + 1, t + 5);
    });
    const ev = (id: string, at: number) => trackEvent('o', { __deviceId: deviceId, __timestamp: at, __eventId: id });
    const res = await ingest(projectId, deviceId, [ev('old-1', t), ev('old-2', t + 1), ev('new-1', t + 2)], Date.now());
    expect(res.results.map((r) => [r.status, r.eventId])).toEqual([
      ['duplicate', 'evt-old-1'],
      ['duplicate', 'evt-old-2'],
      ['accepted', res.results[2]!.eventId],
    ]);
    const tables = await runInDurableObject(stub, (_o, state) =>
      state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'seen%'").toArray().map((r) => r.name),
    );
    expect(tables).toEqual(['seen_chunks']);
    expect((await stub.state())!.seenIds).toBe(3);
  });

  it('past its memory bound the object scans the fingerprint blobs and still deduplicates exactly', async () => {
    const projectId = `scan-${Date.now()}`;
    const deviceId = 'scan-device';
    const stub = deviceStub(env, projectId, deviceId);
    await runInDurableObject(stub, (o) => {
      (o as DeviceObject).maxIndexedKeys = 10;
    });
    const ev = (i: number) => trackEvent('s', { __deviceId: deviceId, __timestamp: Date.now() - HOUR + i * 1000, __eventId: `s-${i}` });
    const first = await ingest(projectId, deviceId, Array.from({ length: 30 }, (_, i) => ev(i)), Date.now());
    expect(first.results.every((r) => r.status === 'accepted')).toBe(true);
    const mixed = await ingest(projectId, deviceId, [ev(3), ev(30), ev(29)], Date.now());
    expect(mixed.results.map((r) => [r.status, r.eventId])).toEqual([
      ['duplicate', first.results[3]!.eventId],
      ['accepted', mixed.results[1]!.eventId],
      ['duplicate', first.results[29]!.eventId],
    ]);
    expect((await stub.state())!.seenIds).toBe(31);
  });

  it('moves a large older table into chunks a batch per call, deduplicating throughout', async () => {
    const projectId = `legacy-batches-${Date.now()}`;
    const deviceId = 'legacy-batches-device';
    const t = Date.now() - HOUR;
    const stub = deviceStub(env, projectId, deviceId);
    await runInDurableObject(stub, (o, state) => {
      (o as DeviceObject).seenMigrateRows = 100;
      createOlderLayout(state);
      for (let i = 0; i < 250; i++) state.storage.sql.exec('INSERT INTO seen VALUES (?, ?, ?, ?)', `e:lb-${i}`, `evt-lb-${i}`, t + i, t + (i % 7));
    });
    const ev = (i: number) => trackEvent('lb', { __deviceId: deviceId, __timestamp: t + i, __eventId: `lb-${i}` });
    const tables = () =>
      runInDurableObject(stub, (_o, state) =>
        state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'seen%' ORDER BY name").toArray().map((r) => r.name),
      );
    // Each call moves 100 rows; ids not moved yet are still found in the older table.
    for (const i of [249, 0, 120]) {
      const r = await ingest(projectId, deviceId, [ev(i)], Date.now());
      expect([r.results[0]!.status, r.results[0]!.eventId]).toEqual(['duplicate', `evt-lb-${i}`]);
      expect((await stub.state())!.seenIds).toBe(250);
    }
    expect(await tables()).toEqual(['seen_chunks']);
    const all = await ingest(projectId, deviceId, Array.from({ length: 251 }, (_, i) => ev(i)), Date.now());
    expect(all.results.slice(0, 250).every((r, i) => r.status === 'duplicate' && r.eventId === `evt-lb-${i}`)).toBe(true);
    expect(all.results[250]!.status).toBe('accepted');
  });

  it('merges the chunks of single-event requests and still recognises every id', async () => {
    const projectId = `compact-${Date.now()}`;
    const deviceId = 'compact-device';
    const stub = deviceStub(env, projectId, deviceId);
    const t0 = Math.floor(Date.now() / HOUR) * HOUR; // one hour of receipt
    const events = Array.from({ length: 140 }, (_, i) => trackEvent('one', { __deviceId: deviceId, __timestamp: t0 - HOUR + i * 1000, __eventId: `one-${i}` }));
    for (let i = 0; i < events.length; i++) await ingest(projectId, deviceId, [events[i]!], t0 + i);
    await stub.maintain(t0 + 200); // the alarm may have merged some already
    expect(await seenChunks(stub)).toBeLessThanOrEqual(140 - 127);
    expect((await stub.state(t0 + 200))!.seenIds).toBe(140);
    const replay = await ingest(projectId, deviceId, events, t0 + 300);
    expect(replay.results.every((r) => r.status === 'duplicate')).toBe(true);
    // A merged chunk is kept for the window of its newest id, then pruned whole.
    expect((await stub.maintain(t0 + DEDUP_WINDOW_MS - 1)).pruned).toBe(0);
    expect((await stub.maintain(t0 + 140 + DEDUP_WINDOW_MS)).pruned).toBe(140);
    expect(await seenChunks(stub)).toBe(0);
  });
});

describe('the writer', () => {
  it('never shows an event before its session: sessions are written first, a failed session write stores no events', async () => {
    const p = await createProject('writer-order');
    const t = Date.now() - HOUR;
    const [e] = toObjectEvents(p.id, 'w-device', [trackEvent('x', { __deviceId: 'w-device', __timestamp: t })], Date.now());
    const message = {
      events: [{ ...e!.row, session_id: 's-1', synced_at_ms: 0 }],
      payloads: [e!.payload],
      sessions: [{ project_id: p.id, device_id: 'w-device', id: 's-1', started_at_ms: t, ended_at_ms: t, event_count: 1, ended: 1, merged_into: '', version: 1, updated_at_ms: t }],
    };
    const real = ch();
    const failingSessions = { ...real, insert: (table: string, rows: readonly object[]) => (table === 'sessions' ? Promise.reject(new Error('sessions insert failed')) : real.insert(table, rows)) };
    await expect(writeRows(failingSessions, [message], Date.now(), false)).rejects.toThrow('sessions insert failed');
    const count = async () => Number((await real.query<{ n: number }>('SELECT count() AS n FROM events WHERE project_id = {p:String}', { p: p.id }))[0]!.n);
    expect(await count()).toBe(0);
    // The retry stores both; the read API then shows the event with its session_start.
    await writeRows(real, [message], Date.now(), true);
    const { body } = await getJson<EventsBody>(p, `/v1/events?deviceId=w-device&since=${t - HOUR}`);
    expect(body.events.map((x) => x.name).sort()).toEqual(['session_end', 'session_start', 'x']);
  });
});
