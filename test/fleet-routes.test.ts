// Fleet routes: the registry, live positions and statuses (a late fix never wins), and bad input —
// coded 4xx, or empty answers, never another project's data.
import { env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { deviceStub } from '../src/device/stub';
import type { Fix } from '../src/fleet/position';
import { createProject, getJson, type TestProject } from './helpers';
import { destination, HOME, HOUR, MIN, mileageOf, positionEvent, sendPositions, settled, tripsOf } from './fleet-fixtures';

type LiveVehicle = { deviceId: string; name: string | null; plate: string | null; group: string | null; lat: number; lon: number; speed: number | null; heading: number | null; ignition: boolean | null; at: string; status: string };
type Device = { deviceId: string; name: string | null; plate: string | null; driver: string | null; group: string | null; timezone: string | null; live: Omit<LiveVehicle, 'deviceId' | 'name' | 'plate' | 'group'> | null };

const put = (p: TestProject, deviceId: string, body: unknown) =>
  SELF.fetch(`http://gw/v1/devices/${encodeURIComponent(deviceId)}`, { method: 'PUT', headers: p.headers, body: typeof body === 'string' ? body : JSON.stringify(body) });

async function errorOf(res: Response): Promise<{ status: number; code: string }> {
  const body = (await res.json()) as { error: { code: string } };
  return { status: res.status, code: body.error.code };
}

const fix = (id: string, atMs: number, extra: Partial<Fix> = {}): Fix => ({ id, atMs, ...HOME, ...extra });

describe('live positions', () => {
  it('never lets a late fix replace a newer one, and reports moving, idle, parked and offline', async () => {
    const p = await createProject('fleet-live');
    const now = Date.now();
    const newest = fix('m-2', now - 2 * MIN, { ...destination(HOME, 90, 1500), speedKmh: 50, heading: 90 });
    // The newest fix first, then a late one from before it.
    await sendPositions(p, [positionEvent('mover', fix('m-1', now - 4 * MIN, { speedKmh: 50 })), positionEvent('mover', newest)], 10);
    await settled(p, 'mover', 2);
    await sendPositions(p, [positionEvent('mover', fix('m-late', now - 3 * MIN, { ...destination(HOME, 90, 700), speedKmh: 50 }))], 10);
    // A fix the rules ignore (accuracy) newer than all: never the live position either.
    await sendPositions(p, [positionEvent('mover', fix('m-fuzzy', now - 1 * MIN, { ...destination(HOME, 0, 900), accuracyM: 400 }))], 10);
    await sendPositions(p, [positionEvent('idler', fix('i-1', now - MIN, { speedKmh: 0, ignition: true }))], 10);
    await sendPositions(p, [positionEvent('parker', fix('p-1', now - MIN, { speedKmh: 0, ignition: false }))], 10);
    await sendPositions(p, [positionEvent('sleeper', fix('s-1', now - 2 * HOUR, { speedKmh: 60 }))], 10);
    for (const [d, n] of [['mover', 4], ['idler', 1], ['parker', 1], ['sleeper', 1]] as const) await settled(p, d, n);

    expect((await put(p, 'idler', { name: 'Idler', plate: 'B-ID 1', driver: 'Ida', group: 'north' })).status).toBe(200);
    expect((await put(p, 'mover', { name: 'Mover', group: 'north', timezone: 'Europe/Berlin' })).status).toBe(200);

    const live = await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live');
    expect(live.status).toBe(200);
    const byId = new Map(live.body.vehicles.map((v) => [v.deviceId, v]));
    expect(byId.get('mover')).toMatchObject({ name: 'Mover', group: 'north', at: new Date(newest.atMs).toISOString(), lat: newest.lat, lon: newest.lon, speed: 50, heading: 90, status: 'moving' });
    expect(byId.get('idler')).toMatchObject({ status: 'idle', ignition: true, plate: 'B-ID 1' });
    expect(byId.get('parker')).toMatchObject({ status: 'parked', ignition: false });
    expect(byId.get('sleeper')).toMatchObject({ status: 'offline' });

    expect((await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live?status=idle')).body.vehicles.map((v) => v.deviceId)).toEqual(['idler']);
    expect((await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live?group=north')).body.vehicles.map((v) => v.deviceId)).toEqual(['idler', 'mover']);
    expect((await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live?group=north&status=moving')).body.vehicles.map((v) => v.deviceId)).toEqual(['mover']);

    const devices = await getJson<{ devices: Device[] }>(p, '/v1/devices');
    expect(devices.status).toBe(200);
    expect(devices.body.devices.map((d) => d.deviceId)).toEqual(['idler', 'mover', 'parker', 'sleeper']);
    expect(devices.body.devices[1]).toMatchObject({ deviceId: 'mover', name: 'Mover', timezone: 'Europe/Berlin', live: { status: 'moving', at: new Date(newest.atMs).toISOString() } });
    expect(devices.body.devices[0]).toMatchObject({ deviceId: 'idler', name: 'Idler', plate: 'B-ID 1', driver: 'Ida', group: 'north', timezone: null });

    // A registry entry without positions is listed with live: null; a PUT changes only what it names.
    expect((await put(p, 'spare', { name: 'Spare' })).status).toBe(200);
    const changed = await put(p, 'idler', { plate: null });
    expect(await changed.json()).toMatchObject({ deviceId: 'idler', name: 'Idler', plate: null, driver: 'Ida', group: 'north' });
    const after = await getJson<{ devices: Device[] }>(p, '/v1/devices');
    expect(after.body.devices.find((d) => d.deviceId === 'spare')).toMatchObject({ name: 'Spare', live: null });

    // Each vehicle's own object keeps the same live position and status as the fleet list shows.
    for (const v of live.body.vehicles) {
      const own = await getJson<{ live: Device['live']; lastPosition: { at: string } | null }>(p, `/v1/devices/${v.deviceId}`);
      const { deviceId: _d, name: _n, plate: _p, group: _g, ...position } = v;
      expect(own.body.live, v.deviceId).toEqual(position);
    }
    // The object's last position as received is the ignored fuzzy fix; its live position is not.
    expect((await getJson<{ lastPosition: { at: string } }>(p, '/v1/devices/mover')).body.lastPosition.at).toBe(new Date(now - MIN).toISOString());
    // A recompute pass that finishes late (an older version) never sets an older answer back.
    const mover = deviceStub(env, p.id, 'mover');
    const kept = (await mover.state())!.fleetLive;
    expect(kept?.fix.atMs).toBe(newest.atMs);
    expect(await mover.setFleetLive({ projectId: p.id, deviceId: 'mover', version: 1, live: null })).toBe(false);
    expect((await mover.state())!.fleetLive).toEqual(kept);
    // A device that never sent anything gets no object just to hold "none".
    expect(await deviceStub(env, p.id, 'ghost').setFleetLive({ projectId: p.id, deviceId: 'ghost', version: 1, live: null })).toBe(false);
    expect(await deviceStub(env, p.id, 'ghost').state()).toBeNull();
  });
});

describe('bad input', () => {
  it('answers coded 4xx for wrong types, unknown zones and malformed dates', async () => {
    const p = await createProject('fleet-bad');
    expect(await errorOf(await put(p, 'v1', { timezone: 'Mars/Olympus_Mons' }))).toEqual({ status: 400, code: 'invalid_time_zone' });
    expect(await errorOf(await put(p, 'v1', { name: 42 }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await put(p, 'v1', { colour: 'red' }))).toEqual({ status: 400, code: 'invalid_request' });
    expect((await put(p, 'v1', '{"name":')).status).toBe(400);
    expect(await errorOf(await SELF.fetch('http://gw/v1/fleet/live?status=asleep', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/mileage?from=2024-02-30&to=2024-03-01', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_date' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/mileage?from=20240201&to=2024-03-01', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_date' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/mileage?from=2024-03-02&to=2024-03-01', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_date' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/mileage?from=2024-03-01&to=2024-03-01&tz=Not/AZone', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_time_zone' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/mileage?to=2024-03-01', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/trips?since=yesterday', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/trips?since=2000&until=1000', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/devices/v1/track?simplify=-3', { headers: p.headers }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await errorOf(await SELF.fetch('http://gw/v1/devices/v1/track?since=0&until=9999999999999', { headers: p.headers }))).toEqual({ status: 400, code: 'window_too_large' });
    expect((await SELF.fetch('http://gw/v1/fleet/live')).status).toBe(401);
    expect((await SELF.fetch('http://gw/v1/devices', { method: 'GET' })).status).toBe(401);
  });

  it('never shows another project a vehicle, and leaves malformed stored positions out of the track', async () => {
    const owner = await createProject('fleet-owner');
    const other = await createProject('fleet-other');
    const now = Date.now();
    const fixes: Fix[] = [];
    for (let i = 0; i < 40; i++) fixes.push(fix(`o-${i}`, now - 30 * MIN + i * 5000, { ...destination(HOME, 90, i * 70), speedKmh: 50 }));
    for (let i = 0; i < 10; i++) fixes.push(fix(`o-park-${i}`, now - 20 * MIN + i * MIN, { ...destination(HOME, 90, 39 * 70), speedKmh: 0 }));
    await sendPositions(owner, fixes.map((f) => positionEvent('secret-van', f)), 100);
    // Wrong types and out-of-range coordinates: refused per row by the ingest path, or, if stored,
    // never a fix of the track.
    await SELF.fetch('http://gw/track/batch', {
      method: 'POST',
      headers: owner.headers,
      body: JSON.stringify({
        events: [
          { type: 'track', payload: { name: 'position', properties: { __deviceId: 'secret-van', __eventId: 'bad-1', __timestamp: now - 25 * MIN + 1, lat: 91, lon: 13 } } },
          { type: 'track', payload: { name: 'position', properties: { __deviceId: 'secret-van', __eventId: 'bad-2', __timestamp: now - 25 * MIN + 2, lat: '52.5', lon: 13 } } },
        ],
      }),
    });
    await settled(owner, 'secret-van', fixes.length);
    expect((await put(owner, 'secret-van', { name: 'Secret', group: 'g1', timezone: 'UTC' })).status).toBe(200);

    const window = `since=${now - HOUR}&until=${now}`;
    const mine = await tripsOf(owner, `deviceId=secret-van&${window}`);
    expect(mine.body.trips).toHaveLength(1);
    const track = await getJson<{ geometry: { coordinates: number[][] } }>(owner, `/v1/devices/secret-van/track?${window}`);
    expect(track.body.geometry.coordinates).toHaveLength(fixes.length);
    for (const [lon, lat] of track.body.geometry.coordinates) {
      expect(Math.abs(lat!)).toBeLessThanOrEqual(90);
      expect(Math.abs(lon!)).toBeLessThanOrEqual(180);
    }

    // The other project: the same device id and group name show nothing of the owner's.
    expect((await tripsOf(other, `deviceId=secret-van&${window}`)).body.trips).toEqual([]);
    expect((await tripsOf(other, window)).body.trips).toEqual([]);
    expect((await tripsOf(other, `group=g1&${window}`)).body.trips).toEqual([]);
    expect((await getJson<{ vehicles: unknown[] }>(other, '/v1/fleet/live')).body.vehicles).toEqual([]);
    expect((await getJson<{ vehicles: unknown[] }>(other, '/v1/fleet/live?group=g1')).body.vehicles).toEqual([]);
    expect((await getJson<{ devices: unknown[] }>(other, '/v1/devices')).body.devices).toEqual([]);
    expect((await getJson<{ geometry: { coordinates: unknown[] } }>(other, `/v1/devices/secret-van/track?${window}`)).body.geometry.coordinates).toEqual([]);
    const today = new Date(now).toISOString().slice(0, 10);
    const yesterday = new Date(now - 86_400_000).toISOString().slice(0, 10);
    const theirs = await mileageOf(other, `deviceId=secret-van&from=${yesterday}&to=${today}`);
    expect(theirs.body.days).toEqual([yesterday, today].map((date) => ({ deviceId: 'secret-van', date, distanceM: 0, movingMs: 0, trips: 0 })));
    expect((await mileageOf(other, `from=${yesterday}&to=${today}`)).body.days).toEqual([]);
    // The owner's own answer is not empty, so the empty ones above are not vacuous.
    const own = await mileageOf(owner, `deviceId=secret-van&from=${yesterday}&to=${today}`);
    expect(own.body.days.reduce((sum, d) => sum + d.distanceM, 0)).toBeGreaterThan(2000);
    // By group: the owner's group holds the van's trip and mileage, another group nothing.
    expect((await tripsOf(owner, `group=g1&${window}`)).body.trips).toEqual(mine.body.trips);
    expect((await tripsOf(owner, `group=g2&${window}`)).body.trips).toEqual([]);
    const byGroup = await mileageOf(owner, `group=g1&from=${yesterday}&to=${today}`);
    expect(byGroup.body.days).toEqual(own.body.days);
    expect((await mileageOf(owner, `group=g2&from=${yesterday}&to=${today}`)).body.days).toEqual([]);
    // Writing the same device id in the other project leaves the owner's entry alone.
    expect((await put(other, 'secret-van', { name: 'Mine now' })).status).toBe(200);
    expect((await getJson<{ devices: Device[] }>(owner, '/v1/devices')).body.devices[0]).toMatchObject({ deviceId: 'secret-van', name: 'Secret' });
  });
});
