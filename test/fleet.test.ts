// Fleet storage and recompute through the real ingest path: shuffled, duplicated, batched positions
// give the trips, mileage and track of an in-order upload; days split at local midnight; mileage
// is read from its aggregate.
import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { deleteRows } from '../src/clickhouse/mutations';
import { haversineM } from '../src/fleet/geo';
import type { Fix } from '../src/fleet/position';
import { ch, createProject, getJson, waitUntil } from './helpers';
import { FixLog, HOME, HOUR, MIN, mileageOf, positionEvent, prng, sendPositions, settled, shuffledWithDuplicates, straightDrive, syntheticDay, tripsOf } from './fleet-fixtures';

const DAY_MS = 86_400_000;
/** UTC midnight `days` days ago: the synthetic data stays inside ingestion's 5-day window. */
const dayStart = (days: number) => Math.floor((Date.now() - days * DAY_MS) / DAY_MS) * DAY_MS;
const date = (ms: number) => new Date(ms).toISOString().slice(0, 10);

describe('a synthetic day through the ingest path', () => {
  it('gives exactly three trips within 1 % of their routes, no parked jitter, the same as an in-order upload', async () => {
    const p = await createProject('fleet-day');
    const DAY = dayStart(3);
    const day = syntheticDay(20240615, DAY);
    const total = day.fixes.length;

    // Device "shuffled": every fix once or more (each fifth again, some a third time), in random
    // order, in several batches; device "ordered": the same fixes in time order.
    const shuffled = shuffledWithDuplicates(day.fixes, 7).map((f) => positionEvent('van-shuffled', f));
    const ordered = [...day.fixes].sort((a, b) => a.atMs - b.atMs).map((f) => positionEvent('van-ordered', f));
    const s = await sendPositions(p, shuffled, 400);
    expect(s.accepted).toBe(total);
    expect(s.duplicates).toBe(shuffled.length - total);
    await sendPositions(p, ordered, 500);
    await settled(p, 'van-shuffled', total);
    await settled(p, 'van-ordered', total);

    const window = `since=${DAY - HOUR}&until=${DAY + 25 * HOUR}`;
    const a = await tripsOf(p, `deviceId=van-shuffled&${window}`);
    const b = await tripsOf(p, `deviceId=van-ordered&${window}`);
    expect(a.status).toBe(200);
    expect(a.body.trips).toHaveLength(3);
    a.body.trips.forEach((trip, k) => {
      const route = day.routes[k]!;
      expect(Math.abs(trip.distanceM - route.lengthM) / route.lengthM, `trip ${k}: ${trip.distanceM} m vs ${route.lengthM} m`).toBeLessThan(0.01);
      expect(trip.avgSpeedKmh).toBeCloseTo((trip.distanceM / trip.durationMs) * 3600, 6);
    });
    expect(a.body.trips[0]!.startAt).toBe(new Date(DAY + 7 * HOUR + 5000).toISOString());
    expect(haversineM(a.body.trips[2]!.end, day.routes[2]!.vertices.at(-1)!)).toBeLessThan(30);
    // The same answer as the in-order delivery.
    expect(b.body.trips.map(({ deviceId: _d, ...t }) => t)).toEqual(a.body.trips.map(({ deviceId: _d, ...t }) => t));

    // Parked hours: the stretches without a trip counted at most 50 m of movement in all.
    const tripSpans = a.body.trips.map((t) => [Date.parse(t.startAt), Date.parse(t.endAt)] as const);
    const stretches = await ch().query<{ start_ms: number; end_ms: number; counted_m: number }>(
      `SELECT start_ms, end_ms, counted_m FROM (SELECT start_ms, end_ms, counted_m, deleted FROM fleet_stretches
         WHERE project_id = {p:String} AND device_id = 'van-shuffled' ORDER BY start_ms, version DESC LIMIT 1 BY start_ms) WHERE deleted = 0`,
      { p: p.id },
    );
    const parked = stretches.filter((st) => !tripSpans.some(([s0, e0]) => s0 <= Number(st.end_ms) && e0 >= Number(st.start_ms)));
    expect(parked.length).toBeGreaterThan(5);
    expect(parked.reduce((sum, st) => sum + Number(st.counted_m), 0)).toBeLessThanOrEqual(50);

    // Daily mileage: the trips' distance, nothing more, and the same for both devices.
    const m = await mileageOf(p, `deviceId=van-shuffled&from=${date(DAY)}&to=${date(DAY)}&tz=UTC`);
    expect(m.status).toBe(200);
    expect(m.body.days).toHaveLength(1);
    expect(m.body.days[0]!.trips).toBe(3);
    expect(m.body.days[0]!.distanceM).toBeCloseTo(a.body.trips.reduce((sum, t) => sum + t.distanceM, 0), 3);
    expect(m.body.days[0]!.movingMs).toBe(a.body.trips.reduce((sum, t) => sum + t.durationMs, 0));
    const mo = await mileageOf(p, `deviceId=van-ordered&from=${date(DAY)}&to=${date(DAY)}&tz=UTC`);
    expect(mo.body.days.map(({ deviceId: _d, ...d }) => d)).toEqual(m.body.days.map(({ deviceId: _d, ...d }) => d));

    // The track: every fix but the two teleports and the eight low-accuracy ones, in time order.
    const track = await getJson<{ type: string; geometry: { type: string; coordinates: number[][] }; properties: { times: string[] } }>(
      p,
      `/v1/devices/van-shuffled/track?since=${DAY}&until=${DAY + DAY_MS - 1}`,
    );
    expect(track.status).toBe(200);
    expect(track.body.type).toBe('Feature');
    expect(track.body.geometry.type).toBe('LineString');
    expect(track.body.geometry.coordinates).toHaveLength(total - 10);
    const times = track.body.properties.times.map(Date.parse);
    expect(times).toEqual([...times].sort((x, y) => x - y));
    const lons = track.body.geometry.coordinates.map((c) => c[0]!);
    expect(Math.max(...lons)).toBeLessThan(14); // no teleport (one is ~30 km west, one ~5.7 km north-east of home)
    const simplified = await getJson<{ geometry: { coordinates: number[][] }; properties: { times: string[] } }>(p, `/v1/devices/van-shuffled/track?since=${DAY}&until=${DAY + DAY_MS - 1}&simplify=50`);
    expect(simplified.body.geometry.coordinates.length).toBeLessThan(track.body.geometry.coordinates.length / 5);
    expect(simplified.body.geometry.coordinates[0]).toEqual(track.body.geometry.coordinates[0]);
    expect(simplified.body.properties.times.at(-1)).toBe(track.body.properties.times.at(-1));

    // Mileage comes from the aggregate: with the raw fixes gone it still answers the same.
    await deleteRows(ch(), 'events', 'project_id = {p:String} AND device_id = {d:String}', { p: p.id, d: 'van-shuffled' });
    const after = await mileageOf(p, `deviceId=van-shuffled&from=${date(DAY)}&to=${date(DAY)}&tz=UTC`);
    expect(after.body).toEqual(m.body);
  });
});

describe('daily mileage at local midnight', () => {
  it('splits a drive across midnight in Asia/Tokyo into two days, from the registry zone or tz=', async () => {
    const p = await createProject('fleet-tokyo');
    const D = dayStart(2);
    // 14:40–15:20 UTC is 23:40–00:20 in Tokyo (UTC+9): local midnight is 15:00 UTC.
    const from = D + 14 * HOUR + 40 * MIN;
    const log = new FixLog(prng(11));
    const end = straightDrive(log, { lat: 35.68, lon: 139.76 }, from, 241, 60, 10);
    log.park(end, from + 2410 * 1000, from + 70 * MIN);
    const events = log.fixes.map((f: Fix) => positionEvent('tokyo-1', f));
    await sendPositions(p, events, 200);
    const put = await SELF.fetch('http://gw/v1/devices/tokyo-1', { method: 'PUT', headers: p.headers, body: JSON.stringify({ name: 'Tokyo 1', timezone: 'Asia/Tokyo' }) });
    expect(put.status).toBe(200);
    expect(await put.json()).toMatchObject({ deviceId: 'tokyo-1', timezone: 'Asia/Tokyo' });
    await settled(p, 'tokyo-1', events.length);

    const trips = await tripsOf(p, `deviceId=tokyo-1&since=${D}&until=${D + 2 * DAY_MS}`);
    expect(trips.body.trips).toHaveLength(1);
    const trip = trips.body.trips[0]!;
    const midnight = D + 15 * HOUR;
    const next = date(D + DAY_MS);
    const registry = await mileageOf(p, `deviceId=tokyo-1&from=${date(D)}&to=${next}`);
    expect(registry.status).toBe(200);
    expect(registry.body.days.map((d) => d.date)).toEqual([date(D), next]);
    const [before, afterMidnight] = registry.body.days;
    expect(before!.movingMs).toBe(midnight - Date.parse(trip.startAt));
    expect(afterMidnight!.movingMs).toBe(Date.parse(trip.endAt) - midnight);
    expect(before!.distanceM / trip.distanceM).toBeCloseTo(0.5, 1);
    expect(before!.distanceM + afterMidnight!.distanceM).toBeCloseTo(trip.distanceM, 3);
    expect(registry.body.days.map((d) => d.trips)).toEqual([1, 0]);
    // The same days with tz= given; in UTC the whole drive is one day.
    expect((await mileageOf(p, `deviceId=tokyo-1&from=${date(D)}&to=${next}&tz=Asia/Tokyo`)).body).toEqual(registry.body);
    const utc = await mileageOf(p, `deviceId=tokyo-1&from=${date(D)}&to=${next}&tz=UTC`);
    expect(utc.body.days[0]!.distanceM).toBeCloseTo(trip.distanceM, 3);
    expect(utc.body.days[1]).toEqual({ deviceId: 'tokyo-1', date: next, distanceM: 0, movingMs: 0, trips: 0 });
    // A day without movement is listed with zeros.
    const three = await mileageOf(p, `deviceId=tokyo-1&from=${date(D - DAY_MS)}&to=${next}`);
    expect(three.body.days[0]).toEqual({ deviceId: 'tokyo-1', date: date(D - DAY_MS), distanceM: 0, movingMs: 0, trips: 0 });
  });
});

describe('history that arrives without the ingest consumer', () => {
  it('appears in trips and mileage after POST /admin/fleet/recompute', async () => {
    const p = await createProject('fleet-import');
    const D = dayStart(20); // older than ingestion accepts: as a legacy import brings it
    const log = new FixLog(prng(5));
    const end = straightDrive(log, HOME, D + 8 * HOUR, 120, 50);
    log.park(end, D + 8 * HOUR + 600_000, D + 9 * HOUR);
    const now = Date.now();
    await ch().insert(
      'events',
      log.fixes.map((f) => ({
        id: crypto.randomUUID(),
        project_id: p.id,
        device_id: 'imported-1',
        session_id: '',
        profile_id: '',
        type: 'track',
        name: 'position',
        created_at_ms: f.atMs,
        received_at_ms: now,
        synced_at_ms: now,
        properties: JSON.stringify({ lat: f.lat, lon: f.lon, speed: f.speedKmh }),
        ref_id: '',
        ip: '',
        country: '',
        region: '',
        city: '',
        timezone: '',
        latitude: null,
        longitude: null,
      })),
    );
    const window = `deviceId=imported-1&since=${D}&until=${D + DAY_MS}`;
    expect((await tripsOf(p, window)).body.trips).toEqual([]);

    const res = await SELF.fetch('http://gw/admin/fleet/recompute', {
      method: 'POST',
      headers: { authorization: 'Bearer test-admin-token', 'content-type': 'application/json' },
      body: JSON.stringify({ projectId: p.id, since: D - DAY_MS, until: D + 2 * DAY_MS }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const job = await waitUntil(
      async () => (await SELF.fetch(`http://gw/admin/backfills/${id}`, { headers: { authorization: 'Bearer test-admin-token' } })).json() as Promise<{ state: string; type: string }>,
      (j) => j.state === 'succeeded' || j.state === 'failed',
      { timeoutMs: 120_000 },
    );
    expect(job).toMatchObject({ state: 'succeeded', type: 'fleet_recompute' });
    const trips = (await tripsOf(p, window)).body.trips;
    expect(trips).toHaveLength(1);
    expect(trips[0]!.distanceM).toBeCloseTo((50 / 3.6) * 5 * 119, 0);
    const days = (await mileageOf(p, `deviceId=imported-1&from=${date(D)}&to=${date(D)}&tz=UTC`)).body.days;
    expect(days[0]!.distanceM).toBeCloseTo(trips[0]!.distanceM, 3);
    expect(days[0]!.trips).toBe(1);

    // Bad requests.
    const bad = await SELF.fetch('http://gw/admin/fleet/recompute', {
      method: 'POST',
      headers: { authorization: 'Bearer test-admin-token', 'content-type': 'application/json' },
      body: JSON.stringify({ projectId: 'no-such-project' }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('unknown_project');
  });
});
