// Fleet storage and recompute through the real ingest path: shuffled, duplicated, batched positions
// give the trips, mileage and track of an in-order upload; days split at local midnight; mileage
// is read from its aggregate.
import { createExecutionContext, env, SELF } from 'cloudflare:test';
import worker from '../src/index';
import { rekickStalledJobs, STALL_MS } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import { describe, expect, it } from 'vitest';
import { deleteRows } from '../src/clickhouse/mutations';
import { deviceStub } from '../src/device/stub';
import { haversineM } from '../src/fleet/geo';
import { checkPositionProperties, fixFromPosition, type Fix } from '../src/fleet/position';
import { finishMileageRebuild, upsertVehicle } from '../src/fleet/live';
import { rebuildDeviceDays, recomputeDevice, recomputeDevices, type PositionSpan } from '../src/fleet/recompute';
import { DEFAULT_FLEET_RULES } from '../src/fleet/rules';
import { readFixes, readFixesOf } from '../src/fleet/store';
import { analyse } from '../src/fleet/trips';
import { NO_REF_OR_GEO, ch, createProject, getJson, waitUntil } from './helpers';
import {
  currentFleetRows,
  destination,
  FixLog,
  HOME,
  HOUR,
  MIN,
  mileageOf,
  positionEvent,
  prng,
  sendPositions,
  settled,
  shuffledWithDuplicates,
  storeFixes,
  straightDrive,
  syntheticDay,
  tripsOf,
} from './fleet-fixtures';

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

    // The live position each device object keeps is the analysis of the whole set of stored fixes,
    // whatever the order they came in, and ClickHouse's copy (fleet-wide lists) is the same fix.
    const liveOf = async (deviceId: string) => (await deviceStub(env, p.id, deviceId).state())!.fleetLive;
    const shuffledLive = await liveOf('van-shuffled');
    expect(shuffledLive).toEqual(analyse(await readFixes(ch(), p.id, 'van-shuffled', DAY - DAY_MS, DAY + 2 * DAY_MS), DEFAULT_FLEET_RULES).live);
    expect(await liveOf('van-ordered')).toEqual(analyse(await readFixes(ch(), p.id, 'van-ordered', DAY - DAY_MS, DAY + 2 * DAY_MS), DEFAULT_FLEET_RULES).live);
    const { id: _id, ...newest } = shuffledLive!.fix;
    expect((await liveOf('van-ordered'))!.fix).toMatchObject(newest);
    const lastAccepted = [...day.fixes].filter((f) => (f.accuracyM ?? 0) <= 100).sort((x, y) => x.atMs - y.atMs).at(-1)!;
    expect(newest).toMatchObject({ atMs: lastAccepted.atMs, lat: lastAccepted.lat, lon: lastAccepted.lon });
    const listed = await getJson<{ vehicles: Array<{ deviceId: string; lat: number; lon: number; at: string; status: string }> }>(p, '/v1/fleet/live');
    const own = await getJson<{ live: { lat: number; lon: number; at: string; status: string } | null }>(p, '/v1/devices/van-shuffled');
    expect(own.body.live).toEqual(expect.objectContaining({ lat: newest.lat, lon: newest.lon, at: new Date(newest.atMs).toISOString() }));
    expect(listed.body.vehicles.find((v) => v.deviceId === 'van-shuffled')).toMatchObject(own.body.live!);

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

describe('daily mileage rows keyed by the registry zone', () => {
  const put = (p: { headers: Record<string, string> }, deviceId: string, body: unknown) =>
    SELF.fetch(`http://gw/v1/devices/${deviceId}`, { method: 'PUT', headers: p.headers, body: JSON.stringify(body) });
  /** The day rows of a project as stored (newest version of each day and zone, non-empty only). */
  const storedDays = (projectId: string) =>
    ch().query<{ device_id: string; day: string; zone: string }>(
      `SELECT device_id, day, zone FROM (
         SELECT device_id, toString(day) AS day, zone, bucket_ms FROM fleet_mileage_days WHERE project_id = {p:String}
          ORDER BY device_id, day, zone, version DESC LIMIT 1 BY device_id, day, zone)
        WHERE length(bucket_ms) > 0 ORDER BY device_id, day, zone`,
      { p: projectId },
    );
  /** `rows=` of the route's Server-Timing header: the day rows the answer was built from. */
  const mileageRead = async (p: { headers: Record<string, string> }, query: string) => {
    const res = await SELF.fetch(`http://gw/v1/mileage?${query}`, { headers: p.headers });
    expect(res.status).toBe(200);
    const timing = /rows=(\d+) read_rows=(\d+)/.exec(res.headers.get('server-timing') ?? '');
    expect(timing).not.toBeNull();
    return { body: (await res.json()) as { days: Array<{ date: string; distanceM: number; movingMs: number; trips: number }> }, rows: Number(timing![1]), readRows: Number(timing![2]) };
  };

  it('keys a Tokyo vehicle by Tokyo dates, answers in any zone, and rebuilds in a new zone without counting twice', async () => {
    const p = await createProject('fleet-zone');
    const D = dayStart(20); // stored and recomputed here, as an import would
    expect((await put(p, 'tokyo-2', { timezone: 'Asia/Tokyo' })).status).toBe(200);
    const log = new FixLog(prng(21));
    // 14:40–15:20 UTC crosses Tokyo midnight (15:00 UTC); 23:40–00:20 UTC crosses UTC midnight
    // (08:40–09:20 in Tokyo).
    const a = D + 14 * HOUR + 40 * MIN;
    let at = straightDrive(log, { lat: 35.68, lon: 139.76 }, a, 241, 60, 10);
    const b = D + 23 * HOUR + 40 * MIN;
    log.park(at, a + 2410 * 1000, b, { intervalMs: 10 * MIN });
    at = straightDrive(log, at, b, 241, 60, 10);
    log.park(at, b + 2410 * 1000, b + 70 * MIN);
    await storeFixes(p.id, 'tokyo-2', log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() })));
    const span = { fromMs: log.fixes[0]!.atMs, toMs: log.fixes[log.fixes.length - 1]!.atMs };
    await recomputeDevice(ch(), env, p.id, 'tokyo-2', DEFAULT_FLEET_RULES, span);

    const trips = (await tripsOf(p, `deviceId=tokyo-2&since=${D}&until=${D + 2 * DAY_MS}`)).body.trips;
    expect(trips).toHaveLength(2);
    const [t1, t2] = trips.map((t) => ({ startMs: Date.parse(t.startAt), endMs: Date.parse(t.endAt), distanceM: t.distanceM }));
    expect(await storedDays(p.id)).toEqual([
      { device_id: 'tokyo-2', day: date(D), zone: 'Asia/Tokyo' },
      { device_id: 'tokyo-2', day: date(D + DAY_MS), zone: 'Asia/Tokyo' },
    ]);

    const days = `deviceId=tokyo-2&from=${date(D - DAY_MS)}&to=${date(D + 2 * DAY_MS)}`;
    const answers = async () => ({
      registry: (await mileageOf(p, days)).body.days,
      tokyo: (await mileageOf(p, `${days}&tz=Asia/Tokyo`)).body.days,
      utc: (await mileageOf(p, `${days}&tz=UTC`)).body.days,
      ny: (await mileageOf(p, `${days}&tz=America/New_York`)).body.days,
      // One New York day: while the rows are Tokyo's and the registry says New York, the Tokyo row
      // of the next date holds most of it (read only because the rebuild is not done).
      nyDay: (await mileageOf(p, `deviceId=tokyo-2&from=${date(D)}&to=${date(D)}&tz=America/New_York`)).body.days,
    });
    const before = await answers();
    expect(before.registry).toEqual(before.tokyo);
    expect(before.nyDay).toEqual(before.ny.filter((d) => d.date === date(D)));
    const tokyoMidnight = D + 15 * HOUR;
    const utcMidnight = D + DAY_MS;
    // Tokyo: the first drive split at 15:00 UTC, the second all on the next day.
    expect(before.tokyo.map((d) => [d.movingMs, d.trips])).toEqual([
      [0, 0],
      [tokyoMidnight - t1!.startMs, 1],
      [t1!.endMs - tokyoMidnight + (t2!.endMs - t2!.startMs), 1],
      [0, 0],
    ]);
    // UTC: the first drive whole, the second split at UTC midnight.
    expect(before.utc.map((d) => [d.movingMs, d.trips])).toEqual([
      [0, 0],
      [t1!.endMs - t1!.startMs + (utcMidnight - t2!.startMs), 2],
      [t2!.endMs - utcMidnight, 0],
      [0, 0],
    ]);
    for (const answer of [before.tokyo, before.utc, before.ny]) {
      expect(answer.reduce((sum, d) => sum + d.distanceM, 0)).toBeCloseTo(t1!.distanceM + t2!.distanceM, 3);
    }
    // The registry zone's N days read N rows at most: here the two that exist.
    expect((await mileageRead(p, days)).rows).toBe(2);

    // A new zone: the answer right after the PUT, whatever the rebuild's progress, counts nothing twice.
    // The job queue refuses: the rebuild waits (for the watchdog) and the rows stay Tokyo's.
    const refusing = { ...env, JOBS_QUEUE: { send: () => Promise.reject(new Error('queue unavailable')), sendBatch: () => Promise.reject(new Error('queue unavailable')) } };
    const changed = await worker.fetch(
      new Request('http://gw/v1/devices/tokyo-2', { method: 'PUT', headers: p.headers, body: JSON.stringify({ timezone: 'America/New_York' }) }),
      refusing as unknown as typeof env,
      createExecutionContext(),
    );
    expect(changed.status).toBe(200);
    const rebuild = await rebuildMarker(p.id, 'tokyo-2');
    expect(rebuild).not.toBeNull();
    const during = await answers();
    expect(new Set((await storedDays(p.id)).map((r) => r.zone))).toEqual(new Set(['Asia/Tokyo']));
    const pending = (await jobStore(env.DB).get(rebuild!))!;
    expect(await rekickStalledJobs(env, pending.lastUpdateAt + STALL_MS + 1)).toContain(rebuild);
    expect(during).toEqual({ ...before, registry: before.ny });
    const job = await waitUntil(
      () =>
        env.DB.prepare("SELECT state FROM jobs WHERE type = 'fleet_recompute' AND json_extract(params, '$.projectId') = ?1 AND json_extract(params, '$.zone') = ?2")
          .bind(p.id, 'America/New_York')
          .first<{ state: string }>(),
      (j) => j?.state === 'succeeded' || j?.state === 'failed',
      { timeoutMs: 120_000 },
    );
    expect(job?.state).toBe('succeeded');
    // Once the rebuild is done, reads stop looking for rows of other zones.
    expect(await rebuildMarker(p.id, 'tokyo-2')).toBeNull();
    // Rebuilt in New York dates (both drives are on one New York day), the Tokyo rows gone.
    expect(await storedDays(p.id)).toEqual([{ device_id: 'tokyo-2', day: date(D), zone: 'America/New_York' }]);
    expect(await answers()).toEqual({ ...before, registry: before.ny });
    expect((await mileageRead(p, days)).rows).toBe(1);

    // Half a rebuild: back to Tokyo in the registry (its rebuild not run), then only the first
    // drive's stretch rewritten in Tokyo. Rows of both zones overlap; each instant is counted once.
    await upsertVehicle(env.DB, p.id, 'tokyo-2', { timezone: 'Asia/Tokyo' }, Date.now(), 'rebuild-not-run');
    await rebuildDeviceDays(ch(), env, p.id, 'tokyo-2', { fromMs: a, toMs: a + 40 * MIN });
    expect(new Set((await storedDays(p.id)).map((r) => r.zone))).toEqual(new Set(['Asia/Tokyo', 'America/New_York']));
    expect(await answers()).toEqual({ ...before, registry: before.tokyo });
    // An earlier rebuild ending meanwhile does not stop the reads looking for the other zone's
    // rows: only the rebuild the last change named does.
    await finishMileageRebuild(env.DB, p.id, 'tokyo-2', 'an-earlier-rebuild');
    expect(await rebuildMarker(p.id, 'tokyo-2')).toBe('rebuild-not-run');
    expect(await answers()).toEqual({ ...before, registry: before.tokyo });
  });

  it('reads one row per vehicle and local day for a Tokyo fleet driving across UTC midnight', async () => {
    const p = await createProject('fleet-zone-fleet');
    const D = dayStart(30);
    const vehicles = ['jp-1', 'jp-2', 'jp-3'];
    for (const [k, v] of vehicles.entries()) {
      expect((await put(p, v, { timezone: 'Asia/Tokyo', group: 'tokyo' })).status).toBe(200);
      const log = new FixLog(prng(40 + k));
      // Eight days of a morning drive at 08:40 in Tokyo (23:40 UTC): every one crosses UTC midnight.
      let at = { lat: 35.6 + k / 100, lon: 139.7 };
      for (let d = 0; d < 8; d++) {
        const start = D + d * DAY_MS + 23 * HOUR + 40 * MIN;
        at = straightDrive(log, at, start, 50, 60, 60);
        log.park(at, start + 50 * MIN, start + 70 * MIN);
      }
      await storeFixes(p.id, v, log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() })));
      await recomputeDevice(ch(), env, p.id, v, DEFAULT_FLEET_RULES, { fromMs: log.fixes[0]!.atMs, toMs: log.fixes[log.fixes.length - 1]!.atMs });
    }
    // Tokyo dates D+1 … D+8 hold the drives: 8 rows a vehicle, not 9 UTC days.
    expect((await storedDays(p.id)).filter((r) => r.device_id === 'jp-1').map((r) => r.day)).toEqual(Array.from({ length: 8 }, (_, d) => date(D + (d + 1) * DAY_MS)));
    // Four days in the middle of the history: 4 rows per vehicle answered (rows on either side exist).
    const read = await mileageRead(p, `group=tokyo&from=${date(D + 3 * DAY_MS)}&to=${date(D + 6 * DAY_MS)}`);
    expect(read.body.days).toHaveLength(12);
    expect(read.body.days.every((d) => d.trips === 1 && d.distanceM > 40_000)).toBe(true);
    expect(read.rows).toBe(12);
    expect(read.readRows).toBeGreaterThanOrEqual(12);
    // The same days in UTC re-split from the same rows plus the one holding the first drive's start.
    const utc = await mileageRead(p, `group=tokyo&from=${date(D + 3 * DAY_MS)}&to=${date(D + 6 * DAY_MS)}&tz=UTC`);
    expect(utc.rows).toBe(15);
    expect(utc.body.days.every((d) => d.distanceM > 40_000)).toBe(true);
  });
});

/** The zone-change rebuild a vehicle's mileage reads wait for (vehicles.mileage_rebuild_job). */
async function rebuildMarker(projectId: string, deviceId: string): Promise<string | null> {
  const row = await env.DB.prepare('SELECT mileage_rebuild_job AS job FROM vehicles WHERE project_id = ?1 AND device_id = ?2').bind(projectId, deviceId).first<{ job: string | null }>();
  return row?.job ?? null;
}

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
        ...NO_REF_OR_GEO,
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

describe('the devices of a batch recomputed together', () => {
  it('give the rows each device recomputed alone gives, over late fixes, many devices and several projects', async () => {
    const together = await createProject('fleet-together');
    const alone = await createProject('fleet-alone');
    // The same device ids with other fixes, recomputed in the same runs as `together`.
    const other = await createProject('fleet-together-other');
    const D = dayStart(4);
    const rng = prng(31);
    // Devices whose windows lie days apart: two synthetic days, drives with parking at different
    // hours, one only parked; ids with a ':' and non-ASCII characters.
    const fleet: Array<{ id: string; fixes: Fix[] }> = [
      { id: 'day:1', fixes: syntheticDay(101, D).fixes },
      { id: 'day-2 ü', fixes: syntheticDay(202, D + 2 * DAY_MS).fixes },
    ];
    for (let k = 0; k < 10; k++) {
      const log = new FixLog(prng(500 + k), `v${k}-`);
      const start = D + k * 7 * HOUR + k * MIN;
      let at = destination(HOME, 45 * k, 1000 * k);
      log.park(at, start - HOUR, start);
      at = straightDrive(log, at, start, 60 + 20 * k, 40 + 5 * k);
      const stop = start + (60 + 20 * k) * 5000;
      log.park(at, stop + MIN, stop + HOUR);
      if (k % 3 === 0) straightDrive(log, destination(at, 180, 200), stop + HOUR + 10 * MIN, 80, 50);
      fleet.push({ id: `van/${k}`, fixes: log.fixes });
    }
    const parkedLog = new FixLog(prng(77), 'p-');
    parkedLog.park(HOME, D + 5 * HOUR, D + 9 * HOUR);
    fleet.push({ id: 'parked', fixes: parkedLog.fixes });
    // Event ids: the same in `together` and `alone`, so ties break alike.
    for (const d of fleet) d.fixes = d.fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
    const otherFleet = fleet.map((d) => ({ id: d.id, fixes: d.fixes.map((f) => ({ ...f, id: crypto.randomUUID(), atMs: f.atMs + 90 * MIN, lon: f.lon + 0.3 })) }));

    // Two deliveries: most fixes, then the rest (late ones inside stored stretches, and newer ones).
    const split = (fixes: Fix[]) => {
      const first: Fix[] = [];
      const later: Fix[] = [];
      for (const f of fixes) (rng.chance(0.7) ? first : later).push(f);
      return [first, later] as const;
    };
    const rounds = [fleet, otherFleet].map((devices) => devices.map((d) => ({ id: d.id, parts: split(d.fixes) })));
    const spanOf = (projectId: string, deviceId: string, fixes: Fix[]): PositionSpan => ({
      projectId,
      deviceId,
      fromMs: Math.min(...fixes.map((f) => f.atMs)),
      toMs: Math.max(...fixes.map((f) => f.atMs)),
    });
    for (const round of [0, 1]) {
      const spans: PositionSpan[] = [];
      for (const [devices, projects] of [[rounds[0]!, [together, alone]], [rounds[1]!, [other]]] as const) {
        for (const d of devices) {
          const fixes = d.parts[round]!;
          if (!fixes.length) continue;
          for (const p of projects) await storeFixes(p.id, d.id, fixes);
          spans.push(...projects.filter((p) => p !== alone).map((p) => spanOf(p.id, d.id, fixes)));
        }
      }
      // One run for every device of `together` and `other`; one device at a time for `alone`.
      const passes = await recomputeDevices(ch(), env, spans);
      expect([...passes.values()].every((n) => n >= 1), JSON.stringify([...passes])).toBe(true);
      expect(passes.size).toBe(spans.length);
      for (const d of rounds[0]!) {
        const fixes = d.parts[round]!;
        if (fixes.length) expect(await recomputeDevice(ch(), env, alone.id, d.id, DEFAULT_FLEET_RULES, spanOf(alone.id, d.id, fixes))).toBeGreaterThan(0);
      }
    }

    const rows = await currentFleetRows(together.id);
    expect(rows).toEqual(await currentFleetRows(alone.id));
    expect(new Set(rows.trips.map((t) => (t as { device_id: string }).device_id)).size).toBe(fleet.length - 1);
    expect(new Set(rows.live.map((t) => (t as { device_id: string }).device_id)).size).toBe(fleet.length);
    // And each is the analysis of the device's whole set of fixes, in its own project.
    const storedTrips = (r: typeof rows, id: string) =>
      (r.trips as Array<{ device_id: string; start_at_ms: number; end_at_ms: number; distance_m: number }>)
        .filter((t) => t.device_id === id)
        .map((t) => ({ startAt: Number(t.start_at_ms), endAt: Number(t.end_at_ms), distanceM: Number(t.distance_m) }));
    const otherRows = await currentFleetRows(other.id);
    for (const [devices, r] of [[fleet, rows], [otherFleet, otherRows]] as const) {
      for (const d of devices) {
        const expected = analyse(d.fixes, DEFAULT_FLEET_RULES).trips;
        const got = storedTrips(r, d.id);
        expect(got.map((t) => [t.startAt, t.endAt]), d.id).toEqual(expected.map((t) => [t.startAt, t.endAt]));
        got.forEach((t, k) => expect(t.distanceM).toBeCloseTo(expected[k]!.distanceM, 6));
      }
    }
    expect(storedTrips(otherRows, 'van/1')[0]!.startAt).toBe(storedTrips(rows, 'van/1')[0]!.startAt + 90 * MIN);
  });
});

describe('a device another consumer holds', () => {
  it('is only marked; its span is recomputed once the lease is free', async () => {
    const p = await createProject('fleet-held');
    const D = dayStart(2);
    const log = new FixLog(prng(9));
    const end = straightDrive(log, HOME, D + 8 * HOUR, 120, 50);
    log.park(end, D + 8 * HOUR + 700_000, D + 9 * HOUR);
    const fixes = log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
    const first = fixes.slice(0, 60);
    const rest = fixes.slice(60);
    const span = (fs: Fix[]): PositionSpan => ({ projectId: p.id, deviceId: 'held-1', fromMs: fs[0]!.atMs, toMs: fs[fs.length - 1]!.atMs });
    const cursor = () =>
      env.DB.prepare('SELECT pending_from_ms AS pendingFrom, pending_to_ms AS pendingTo, dirty, seq, lease_token AS token FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2')
        .bind(p.id, 'held-1')
        .first<{ pendingFrom: number | null; pendingTo: number | null; dirty: number; seq: number; token: string | null }>();

    await storeFixes(p.id, 'held-1', first);
    expect((await recomputeDevices(ch(), env, [span(first)])).get(`${p.id}\u0000held-1`)).toBe(1);
    expect(await cursor()).toMatchObject({ pendingFrom: null, seq: 1, token: null });

    // Another consumer holds the device: this run only widens its pending span.
    await env.DB.prepare('UPDATE fleet_cursors SET lease_token = ?3, lease_until = ?4 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'held-1', 'someone-else', Date.now() + 60_000).run();
    await storeFixes(p.id, 'held-1', rest);
    expect((await recomputeDevices(ch(), env, [span(rest)])).get(`${p.id}\u0000held-1`)).toBe(0);
    const marked = await cursor();
    expect(marked).toMatchObject({ pendingFrom: rest[0]!.atMs, pendingTo: rest[rest.length - 1]!.atMs, seq: 1, token: 'someone-else' });
    expect((await tripsOf(p, `deviceId=held-1&since=${D}&until=${D + DAY_MS}`)).body.trips[0]?.endAt).not.toBe(new Date(fixes[119]!.atMs).toISOString());

    // Its lease runs out: the next run (here without new fixes) recomputes the marked span.
    await env.DB.prepare('UPDATE fleet_cursors SET lease_until = 0 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'held-1').run();
    expect(await recomputeDevice(ch(), env, p.id, 'held-1')).toBe(1);
    expect(await cursor()).toMatchObject({ pendingFrom: null, seq: 2, token: null });
    const trips = (await tripsOf(p, `deviceId=held-1&since=${D}&until=${D + DAY_MS}`)).body.trips;
    expect(trips.map((t) => [t.startAt, t.endAt])).toEqual(analyse(fixes, DEFAULT_FLEET_RULES).trips.map((t) => [new Date(t.startAt).toISOString(), new Date(t.endAt).toISOString()]));
  });
});

describe('stored rows read as fixes', () => {
  it('keeps exactly the rows the position schema accepts, with the values it gives', async () => {
    const p = await createProject('fleet-stored-rows');
    const T = dayStart(2) + 6 * HOUR;
    // Rows as an import (or an old version) may have stored them: the read alone decides.
    const candidates: unknown[] = [
      { lat: 52.5, lon: 13.4 },
      { lat: -90, lon: 180, speed: 0, heading: 360, accuracy: 0, altitude: -12.5, ignition: false, note: 'extra' },
      { lat: 52.5, lon: 13.4, speed: 50.5, heading: 0, accuracy: 4, altitude: 30, ignition: true },
      { lat: '52.5', lon: 13.4 },
      { lat: 91, lon: 13.4 },
      { lat: 52.5, lon: -180.01 },
      { lat: 52.5 },
      { lat: 52.5, lon: 13.4, speed: -1 },
      // An unknown speed, as an imported NULL column: a fix without a speed.
      { lat: 52.5, lon: 13.4, speed: null },
      { lat: 52.5, lon: 13.4, heading: 361 },
      { lat: 52.5, lon: 13.4, accuracy: -0.5 },
      { lat: 52.5, lon: 13.4, altitude: '30' },
      { lat: 52.5, lon: 13.4, ignition: 'yes' },
      { lat: 52.5, lon: 13.4, ignition: 1 },
      [52.5, 13.4],
      null,
      42,
    ];
    const now = Date.now();
    const rows = candidates.map((props, k) => ({ id: crypto.randomUUID(), atMs: T + k * 1000, properties: JSON.stringify(props) }));
    rows.push({ id: crypto.randomUUID(), atMs: T + 99_000, properties: '{"lat": 52.5, "lon":' });
    await ch().insert(
      'events',
      rows.map((r) => ({
        id: r.id,
        project_id: p.id,
        device_id: 'stored-1',
        session_id: '',
        profile_id: '',
        type: 'track',
        name: 'position',
        created_at_ms: r.atMs,
        received_at_ms: now,
        synced_at_ms: now,
        properties: r.properties,
        ...NO_REF_OR_GEO,
      })),
    );
    const expected = candidates.flatMap((props, k) => {
      const check = checkPositionProperties(props);
      return check.ok ? [fixFromPosition(rows[k]!.id, rows[k]!.atMs, check.properties)] : [];
    });
    expect(expected).toHaveLength(4);
    const byTime = (fixes: Fix[]) => [...fixes].sort((a, b) => a.atMs - b.atMs);
    expect(byTime(await readFixes(ch(), p.id, 'stored-1', T, T + DAY_MS))).toEqual(expected);
    const windows = await readFixesOf(ch(), [{ projectId: p.id, deviceId: 'stored-1', fromMs: T, toMs: T + DAY_MS }]);
    expect(byTime(windows.get(`${p.id}\u0000stored-1`) ?? [])).toEqual(expected);
  });
});
