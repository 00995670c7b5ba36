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
      const live = JSON.parse(sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'live'").one().value) as Record<string, unknown>;
      for (const [key, value] of [...Object.entries(live), ['version', 1], ['smallSeenChunks', 3], ['flushAttemptedThrough', 7]]) {
        sql.exec('INSERT INTO meta (key, value) VALUES (?, ?)', key, JSON.stringify(value));
      }
      sql.exec("DELETE FROM meta WHERE key = 'live'");
      (o as unknown as { meta: MetaStore }).meta.clear();
    });
    expect(await metaKeys()).toContain('lastPosition');
    expect((await getJson<DeviceBody>(p, '/v1/devices/bike-old')).body).toEqual(before);

    expect((await postBatch(p, { events: [fix(now - MIN, 48.9)] })).status).toBe(202);
    const after = (await getJson<DeviceBody>(p, '/v1/devices/bike-old')).body;
    expect(after.lastPosition).toEqual({ lat: 48.9, lon: 2.35, at: new Date(now - MIN).toISOString() });
    expect(after.lastEvent).toMatchObject({ name: 'fix', createdAt: new Date(now - MIN).toISOString() });
    expect(after.liveSession).toMatchObject({ startedAt: new Date(now - 2 * MIN).toISOString(), eventCount: 2 });
    expect(await metaKeys()).toEqual(['gapMs', 'ident', 'live', 'nextSeenSweepMs']);
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
