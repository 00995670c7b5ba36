// GET /v1/devices/:deviceId (live state) and profiles (identify, increment, decrement).
import { env, runInDurableObject, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import type { MetaStore } from '../src/device/schema';
import { deviceStub } from '../src/ingest/accept';
import { foldProfile, type ProfileOp } from '../src/profiles/fold';
import { createProject, getJson, postBatch, waitUntil, type TestProject } from './helpers';
import { rng, shuffle } from './session-history';

type DeviceBody = {
  deviceId: string;
  lastSeenAt: string | null;
  lastEvent: { id: string; type: string; name: string; createdAt: string; sessionId: string | null } | null;
  lastPosition: { lat: number; lon: number; at: string } | null;
  liveSession: { id: string; startedAt: string; lastEventAt: string; eventCount: number; idleAt: string } | null;
  profile: { id: string; properties: Record<string, unknown>; updatedAt: string | null } | null;
};

const MIN = 60_000;

function track(p: TestProject, body: unknown) {
  return SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: JSON.stringify(body) });
}

describe('foldProfile', () => {
  it('gives the same profile for any order of its operations, each counted once', () => {
    const ops: ProfileOp[] = [
      { id: 'a', type: 'identify', createdAtMs: 1, properties: { email: 'a@example.com', plan: 'free' } },
      ...Array.from({ length: 10 }, (_, i) => ({ id: `i${i}`, type: 'increment', createdAtMs: 2 + i, properties: { property: 'logins', value: 1 } })),
      { id: 'd', type: 'decrement', createdAtMs: 5, properties: { property: 'credits', value: 3 } },
      { id: 'b', type: 'identify', createdAtMs: 20, properties: { plan: 'pro' } },
      { id: 'c', type: 'identify', createdAtMs: 15, properties: { plan: 'team' } },
    ];
    const expected = { email: 'a@example.com', plan: 'pro', logins: 10, credits: -3 };
    for (let seed = 0; seed < 20; seed++) {
      const withReplays = [...ops, ops[3]!, ops[11]!];
      expect(foldProfile(shuffle(withReplays, rng(seed)))!.properties).toEqual(expected);
    }
    expect(foldProfile([])).toBeNull();
  });
});

describe('GET /v1/devices/:deviceId', () => {
  it('answers 404 device_not_found for a device that never sent an event, and for another project\'s device', async () => {
    const p = await createProject('devices-404');
    const q = await createProject('devices-other');
    expect((await postBatch(q, { events: [{ type: 'track', payload: { name: 'x', properties: { __deviceId: 'theirs' } } }] })).status).toBe(202);
    for (const id of ['never-seen', 'theirs']) {
      const res = await getJson<{ error: { code: string } }>(p, `/v1/devices/${id}`);
      expect(res.status).toBe(404);
      expect(res.body.error.code).toBe('device_not_found');
    }
    expect((await getJson<DeviceBody>(q, '/v1/devices/theirs')).status).toBe(200);
  });

  it('shows the last event, last seen time, last position and the live session', async () => {
    const p = await createProject('devices-state');
    const now = Date.now();
    const res = await postBatch(p, {
      events: [
        // Newest first: a later-arriving older fix must not replace the newer position.
        { type: 'track', payload: { name: 'fix', properties: { __deviceId: 'bike-1', __timestamp: now - 1 * MIN, lat: 48.85, lon: 2.35 } } },
        { type: 'track', payload: { name: 'fix', properties: { __deviceId: 'bike-1', __timestamp: now - 3 * MIN, lat: 48.8, lon: 2.3 } } },
        { type: 'track', payload: { name: 'battery', properties: { __deviceId: 'bike-1', __timestamp: now - 2 * MIN, level: 0.8 } } },
      ],
    });
    expect(res.status).toBe(202);
    const { status, body } = await getJson<DeviceBody>(p, '/v1/devices/bike-1');
    expect(status).toBe(200);
    expect(body.deviceId).toBe('bike-1');
    expect(Date.parse(body.lastSeenAt!)).toBeGreaterThanOrEqual(now);
    expect(body.lastEvent).toMatchObject({ type: 'track', name: 'fix', createdAt: new Date(now - MIN).toISOString() });
    expect(body.lastPosition).toEqual({ lat: 48.85, lon: 2.35, at: new Date(now - MIN).toISOString() });
    expect(body.liveSession).toMatchObject({
      startedAt: new Date(now - 3 * MIN).toISOString(),
      lastEventAt: new Date(now - MIN).toISOString(),
      eventCount: 3,
      idleAt: new Date(now - MIN + 30 * MIN).toISOString(),
    });
    expect(body.lastEvent!.sessionId).toBe(body.liveSession!.id);
    expect(body.profile).toBeNull();
  });

  it('reads the live state an older object kept in a meta row per field, and moves it into one row on its next event', async () => {
    const p = await createProject('devices-older-meta');
    const now = Date.now();
    const fix = (atMs: number, lat: number) => ({ type: 'track', payload: { name: 'fix', properties: { __deviceId: 'bike-old', __timestamp: atMs, lat, lon: 2.35 } } });
    expect((await postBatch(p, { events: [fix(now - 2 * MIN, 48.85)] })).status).toBe(202);
    const before = (await getJson<DeviceBody>(p, '/v1/devices/bike-old')).body;
    expect(before.lastPosition).toEqual({ lat: 48.85, lon: 2.35, at: new Date(now - 2 * MIN).toISOString() });
    const stub = deviceStub(env, p.id, 'bike-old');
    const metaKeys = () => runInDurableObject(stub, (_o, state) => state.storage.sql.exec<{ key: string }>('SELECT key FROM meta ORDER BY key').toArray().map((r) => r.key));
    // The older layout: each field in a row of its own, and keys nothing reads any more.
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      const sql = state.storage.sql;
      // The call's live state rides in its session row; an older object kept it in `meta`.
      const live = JSON.parse(sql.exec<{ live: string }>('SELECT live FROM sessions WHERE live_v IS NOT NULL').one().live) as Record<string, unknown>;
      for (const [key, value] of [...Object.entries(live), ['version', 1], ['smallSeenChunks', 3], ['flushAttemptedThrough', 7]]) {
        sql.exec('INSERT INTO meta (key, value) VALUES (?, ?)', key, JSON.stringify(value));
      }
      sql.exec("DELETE FROM meta WHERE key = 'live'");
      sql.exec('UPDATE sessions SET live = NULL, live_v = NULL');
      (o as unknown as { meta: MetaStore }).meta.clear();
      (o as unknown as { stores: { live: { forget(): void } } }).stores.live.forget();
    });
    expect(await metaKeys()).toContain('lastPosition');
    expect((await getJson<DeviceBody>(p, '/v1/devices/bike-old')).body).toEqual(before);

    expect((await postBatch(p, { events: [fix(now - MIN, 48.9)] })).status).toBe(202);
    const after = (await getJson<DeviceBody>(p, '/v1/devices/bike-old')).body;
    expect(after.lastPosition).toEqual({ lat: 48.9, lon: 2.35, at: new Date(now - MIN).toISOString() });
    expect(after.lastEvent).toMatchObject({ name: 'fix', createdAt: new Date(now - MIN).toISOString() });
    expect(after.liveSession).toMatchObject({ startedAt: new Date(now - 2 * MIN).toISOString(), eventCount: 2 });
    // The new state rides in the session row the call wrote; the older rows are gone.
    expect(await metaKeys()).toEqual(['gapMs', 'ident', 'nextSeenSweepMs']);
  });
});

describe('live state storage', () => {
  type Internals = { meta: MetaStore; schemaReady: boolean; stores: { live: { forget(): void }; sessions: { forget(): void } } };
  /** What a new life of the object starts with: nothing in memory. */
  const newLife = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as Internals;
      self.meta.clear();
      self.stores.live.forget();
      self.stores.sessions.forget();
      self.schemaReady = false;
    });
  const metaWrites = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) => {
      const sql = state.storage.sql as SqlStorage & { metaWrites?: number };
      const exec = sql.exec.bind(sql);
      sql.metaWrites = 0;
      sql.exec = ((query: string, ...args: SqlStorageValue[]) => {
        if (query.startsWith('INSERT INTO meta')) sql.metaWrites!++;
        return exec(query, ...args);
      }) as typeof sql.exec;
    });
  const countedMetaWrites = (stub: DurableObjectStub<DeviceObject>) => runInDurableObject(stub, (_o, state) => (state.storage.sql as SqlStorage & { metaWrites?: number }).metaWrites);
  const fix = (device: string, atMs: number, lat: number, extra: Record<string, unknown> = {}) => ({
    type: 'track',
    payload: { name: 'fix', ...extra, properties: { __deviceId: device, __timestamp: atMs, lat, lon: 2.35 } },
  });

  it("rides in the session row a call writes (no row of its own per call), and a new life reads it back", async () => {
    const p = await createProject('live-in-session');
    const stub = deviceStub(env, p.id, 'van-1');
    const now = Date.now();
    expect((await postBatch(p, { events: [fix('van-1', now - 3 * MIN, 48.8)] })).status).toBe(202);
    await metaWrites(stub);
    expect((await postBatch(p, { events: [fix('van-1', now - 2 * MIN, 48.9), fix('van-1', now - 2.5 * MIN, 48.7)] })).status).toBe(202);
    expect(await countedMetaWrites(stub)).toBe(0);
    const before = (await getJson<DeviceBody>(p, '/v1/devices/van-1')).body;
    expect(before.lastPosition).toEqual({ lat: 48.9, lon: 2.35, at: new Date(now - 2 * MIN).toISOString() });
    await newLife(stub);
    expect((await getJson<DeviceBody>(p, '/v1/devices/van-1')).body).toEqual(before);
    // A call of other events only (no session row) writes the state to `meta`: still the newest.
    expect((await track(p, { type: 'identify', payload: { profileId: 'driver-7', properties: { __deviceId: 'van-1', __timestamp: now - MIN } } })).status).toBe(200);
    await newLife(stub);
    const after = (await getJson<DeviceBody>(p, '/v1/devices/van-1')).body;
    expect(after.lastEvent).toMatchObject({ type: 'identify', createdAt: new Date(now - MIN).toISOString() });
    expect(after.lastPosition).toEqual(before.lastPosition);
    expect(after.profile?.id).toBe('driver-7');
  });

  it('gives an older object\'s sessions the columns, and its state in `meta` stays current until a call carries a newer one', async () => {
    const p = await createProject('live-upgrade');
    const stub = deviceStub(env, p.id, 'van-4');
    const now = Date.now();
    expect((await postBatch(p, { events: [fix('van-4', now - 3 * MIN, 48.8)] })).status).toBe(202);
    const before = (await getJson<DeviceBody>(p, '/v1/devices/van-4')).body;
    // The layout before: the state in one `meta` row, sessions without the two columns.
    await runInDurableObject(stub, (_o, state) => {
      const sql = state.storage.sql;
      const live = sql.exec<{ live: string }>('SELECT live FROM sessions WHERE live_v IS NOT NULL').one().live;
      sql.exec("INSERT INTO meta (key, value) VALUES ('live', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", live);
      sql.exec('ALTER TABLE sessions DROP COLUMN live_v');
      sql.exec('ALTER TABLE sessions DROP COLUMN live');
    });
    await newLife(stub);
    expect((await getJson<DeviceBody>(p, '/v1/devices/van-4')).body).toEqual(before);
    await metaWrites(stub);
    expect((await postBatch(p, { events: [fix('van-4', now - 2 * MIN, 48.9)] })).status).toBe(202);
    expect(await countedMetaWrites(stub)).toBe(0);
    await newLife(stub);
    expect((await getJson<DeviceBody>(p, '/v1/devices/van-4')).body.lastPosition).toEqual({ lat: 48.9, lon: 2.35, at: new Date(now - 2 * MIN).toISOString() });
  });

  it('keeps the live state once the session row carrying it is pruned', async () => {
    const p = await createProject('live-pruned');
    const stub = deviceStub(env, p.id, 'van-2');
    const now = Date.now();
    expect((await postBatch(p, { events: [fix('van-2', now - MIN, 48.8)] })).status).toBe(202);
    // Nine days on: the session ends and is pruned, the ids leave their window.
    await runInDurableObject(stub, (o: DeviceObject) => o.maintain(now + 9 * 24 * 60 * MIN));
    expect(await stub.sessions()).toEqual([]);
    await newLife(stub);
    const state = await stub.state(now + 9 * 24 * 60 * MIN);
    expect(state?.lastPosition).toEqual({ lat: 48.8, lon: 2.35, atMs: now - MIN });
    expect(state?.lastEvent).toMatchObject({ name: 'fix', createdAtMs: now - MIN });
  });

  it('forgets what a rolled-back prune noted, so the next one keeps the state again', async () => {
    const p = await createProject('live-rollback');
    const stub = deviceStub(env, p.id, 'van-5');
    const now = Date.now();
    const later = now + 9 * 24 * 60 * MIN;
    expect((await postBatch(p, { events: [fix('van-5', now - MIN, 48.8)] })).status).toBe(202);
    // The state goes to `meta`, then the prune fails: both roll back, the row still holds it.
    await runInDurableObject(stub, async (o: DeviceObject) => {
      const sessions = (o as unknown as { stores: { sessions: { prune(nowMs: number): void } } }).stores.sessions;
      const prune = sessions.prune.bind(sessions);
      sessions.prune = () => {
        sessions.prune = prune;
        throw new Error('storage failed mid-prune');
      };
      await o.maintain(later);
    });
    expect((await stub.sessions()).length).toBe(1);
    await runInDurableObject(stub, (o: DeviceObject) => o.maintain(later));
    expect(await stub.sessions()).toEqual([]);
    await newLife(stub);
    expect((await stub.state(later))?.lastPosition).toEqual({ lat: 48.8, lon: 2.35, atMs: now - MIN });
  });

  it('takes a `meta` state written without a number (a release before) over older session rows', async () => {
    const p = await createProject('live-unnumbered');
    const stub = deviceStub(env, p.id, 'van-6');
    const now = Date.now();
    expect((await postBatch(p, { events: [fix('van-6', now - 3 * MIN, 48.8)] })).status).toBe(202);
    // A release before this layout took a later call: its state in `meta`, with no number.
    await runInDurableObject(stub, (_o, state) => {
      const sql = state.storage.sql;
      const live = JSON.parse(sql.exec<{ live: string }>('SELECT live FROM sessions WHERE live_v IS NOT NULL').one().live) as { lastSeenMs: number; lastPosition: unknown };
      const newer = { ...live, lastSeenMs: live.lastSeenMs + 1000, lastPosition: { lat: 49.1, lon: 2.35, atMs: now - MIN } };
      sql.exec("INSERT INTO meta (key, value) VALUES ('live', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", JSON.stringify(newer));
    });
    await newLife(stub);
    expect((await stub.state())?.lastPosition).toEqual({ lat: 49.1, lon: 2.35, atMs: now - MIN });
  });

  it("leaves no live state of an erased profile in any session row", async () => {
    const p = await createProject('live-erased');
    const stub = deviceStub(env, p.id, 'van-3');
    const now = Date.now();
    // Two sessions, each row carrying the state of its call: the profile's, then another driver's.
    expect((await postBatch(p, { events: [fix('van-3', now - 120 * MIN, 48.8, { profileId: 'gone' })] })).status).toBe(202);
    expect((await postBatch(p, { events: [fix('van-3', now - MIN, 48.9, { profileId: 'kept' })] })).status).toBe(202);
    const carried = () => runInDurableObject(stub, (_o, state) => state.storage.sql.exec<{ live: string }>('SELECT live FROM sessions WHERE live IS NOT NULL').toArray().map((r) => r.live));
    expect((await carried()).some((l) => l.includes('gone'))).toBe(true);
    const erased = await stub.erase({ profileId: 'gone', eventIds: [], eventTimesMs: [now - 120 * MIN], sessionIds: [] });
    expect(erased.whole).toBe(false);
    expect(await carried()).toEqual([]);
    await newLife(stub);
    const state = await stub.state();
    expect(state?.profileId).toBe('kept');
    expect(state?.lastPosition).toEqual({ lat: 48.9, lon: 2.35, atMs: now - MIN });
  });
});

describe('profiles', () => {
  it('identify upserts, increment/decrement from two devices in parallel count once each, latest identify wins', async () => {
    const p = await createProject('profiles');
    const now = Date.now();
    const props = (deviceId: string, minutesAgo: number, eventId: string) => ({ __deviceId: deviceId, __timestamp: now - minutesAgo * MIN, __eventId: eventId });
    expect((await track(p, { type: 'identify', payload: { profileId: 'u-1', email: 'ada@example.com', properties: { plan: 'free', ...props('phone', 20, 'id-1') } } })).status).toBe(200);

    const increments = Array.from({ length: 10 }, (_, i) =>
      track(p, { type: 'increment', payload: { profileId: 'u-1', property: 'logins', properties: props(i % 2 ? 'phone' : 'watch', 10 - i / 2, `inc-${i}`) } }),
    );
    const decrement = track(p, { type: 'decrement', payload: { profileId: 'u-1', property: 'credits', value: 3, properties: props('watch', 9, 'dec-1') } });
    const replay = track(p, { type: 'increment', payload: { profileId: 'u-1', property: 'logins', properties: props('phone', 10 - 1 / 2, 'inc-1') } });
    for (const res of await Promise.all([...increments, decrement, replay])) expect(res.status).toBe(200);
    // The newer identify arrives first; the older one, arriving later, does not undo it.
    expect((await track(p, { type: 'identify', payload: { profileId: 'u-1', properties: { plan: 'pro', ...props('watch', 1, 'id-2') } } })).status).toBe(200);
    expect((await track(p, { type: 'identify', payload: { profileId: 'u-1', properties: { plan: 'team', ...props('phone', 5, 'id-3') } } })).status).toBe(200);

    const expected = { email: 'ada@example.com', plan: 'pro', logins: 10, credits: -3 };
    const { body } = await waitUntil(
      () => getJson<DeviceBody>(p, '/v1/devices/phone'),
      (r) => r.body.profile?.properties.logins === 10 && r.body.profile.properties.credits === -3 && r.body.profile.properties.plan === 'pro',
    );
    expect(body.profile).toMatchObject({ id: 'u-1', properties: expected, updatedAt: new Date(now - MIN).toISOString() });
    const profile = await getJson<{ id: string; properties: Record<string, unknown> }>(p, '/v1/profiles/u-1');
    expect(profile.body).toMatchObject({ id: 'u-1', properties: expected });
    expect((await getJson(p, '/v1/profiles/nobody')).status).toBe(404);
  });
});
