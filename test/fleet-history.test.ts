// Positions that arrive through a legacy import join the fleet views: the import's completion starts
// a fleet recompute over the span it imported.
import { env } from 'cloudflare:test';
import { expect, it } from 'vitest';
import type { Fix } from '../src/fleet/position';
import { importBody, startImport, suffix, waitJob, withPg } from './backfill-helpers';
import { FixLog, HOME, HOUR, makeRoute, MIN, mileageOf, prng, tripsOf } from './fleet-fixtures';
import { createProject, getJson, waitUntil } from './helpers';

const DAY_MS = 86_400_000;
const finished = (j: { state: string }) => ['succeeded', 'failed', 'cancelled'].includes(j.state);
const date = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** The fleet_recompute job started for the project: the job list does not say whose a job is, and each test here starts one. */
async function recomputeOf(projectId: string) {
  const id = await waitUntil(
    async () =>
      (await env.DB.prepare("SELECT id FROM jobs WHERE type = 'fleet_recompute' AND json_extract(params, '$.projectId') = ?1").bind(projectId).first<{ id: string }>())?.id,
    (found) => found !== undefined,
    { timeoutMs: 90_000 },
  );
  return waitJob(id!, finished, 90_000);
}

/** Imports `table` as positions into a new project and waits for the import and the recompute it starts. */
async function importPositions(name: string, table: string) {
  const p = await createProject(name);
  const body = importBody(p.id, 'fleetone', table);
  body.source = { ...body.source, name: 'position' };
  const job = await waitJob(await startImport(body), finished, 90_000);
  expect(job.state).toBe('succeeded');
  // The import's completion started the recompute; it runs on the job engine like any job.
  expect((await recomputeOf(p.id)).state).toBe('succeeded');
  return { p, job };
}

it('recomputes the fleet views after an import of positions', async () => {
  const table = `legacy_positions_${suffix()}`;
  await withPg(async (c) => {
    await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text, created_at timestamptz, lat double precision, lon double precision, speed double precision)`);
    // Twenty days ago: a van driving east for ten minutes, a fix every 20 s.
    await c.query(
      `INSERT INTO ${table} SELECT g, 'van-7', now() - interval '20 days' + g * interval '20 seconds', 52.52, 13.40 + g * 0.001, 40 FROM generate_series(1, 30) g`,
    );
  });
  const { p } = await importPositions('fleet-history', table);
  const live = await getJson<{ vehicles: Array<{ deviceId: string; lat: number; lon: number; at: string }> }>(p, '/v1/fleet/live');
  expect(live.body.vehicles).toEqual([expect.objectContaining({ deviceId: 'van-7', lat: 52.52 })]);
  expect(live.body.vehicles[0]!.lon).toBeCloseTo(13.43, 6);
  // The vehicle never sent anything through the gateway: its object exists for its live position.
  const own = await getJson<{ live: { lat: number; lon: number; at: string } | null; lastEvent: unknown }>(p, '/v1/devices/van-7');
  expect(own.status).toBe(200);
  expect(own.body.lastEvent).toBeNull();
  expect(own.body.live).toMatchObject({ lat: 52.52, at: live.body.vehicles[0]!.at });
  expect(own.body.live!.lon).toBeCloseTo(13.43, 6);
});

it('shows imported history in the track, the trips and the daily mileage', async () => {
  // Two weeks ago, past ingestion's 5-day window: one trip on day D, parked overnight, one trip
  // back on day D+1, parked before and after each (the parked fixes after a drive end its trip).
  const D = Math.floor((Date.now() - 14 * DAY_MS) / DAY_MS) * DAY_MS;
  const rng = prng(20240712);
  const log = new FixLog(rng);
  const out = makeRoute(HOME, [[80, 2600], [110, 3100], [60, 2400]]);
  const back = makeRoute(out.vertices.at(-1)!, [[250, 3000], [200, 2500]]);
  log.park(HOME, D + 14.5 * HOUR, D + 15 * HOUR, { ignition: false });
  const outEnd = log.drive(out, D + 15 * HOUR, { ignition: true });
  log.park(out.vertices.at(-1)!, outEnd + MIN, outEnd + 30 * MIN, { ignition: false });
  log.park(out.vertices.at(-1)!, D + DAY_MS + 7.5 * HOUR, D + DAY_MS + 8 * HOUR);
  const backEnd = log.drive(back, D + DAY_MS + 8 * HOUR);
  log.park(back.vertices.at(-1)!, backEnd + MIN, backEnd + 30 * MIN);
  const fixes = log.fixes;

  // The legacy table's keys are not in time order (the import pages by key, the views go by time),
  // and a field a fix lacks is a NULL column, as legacy tables hold unknown speed or ignition.
  const keys = rng.shuffle(fixes.map((_, i) => i + 1));
  const column = <T>(pick: (f: Fix) => T | undefined) => fixes.map((f) => pick(f) ?? null);
  const table = `legacy_drive_${suffix()}`;
  await withPg(async (c) => {
    await c.query(
      `CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text, created_at timestamptz, lat double precision, lon double precision,
         speed double precision, accuracy double precision, ignition boolean)`,
    );
    await c.query(
      `INSERT INTO ${table} SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::boolean[])`,
      [keys, column(() => 'truck-3'), column((f) => new Date(f.atMs).toISOString()), column((f) => f.lat), column((f) => f.lon), column((f) => f.speedKmh), column((f) => f.accuracyM), column((f) => f.ignition)],
    );
  });
  // Not vacuous: the NULL columns above are really there.
  expect(fixes.some((f) => f.speedKmh === undefined) && fixes.some((f) => f.ignition === undefined)).toBe(true);

  const { p, job } = await importPositions('fleet-history-drive', table);
  expect(job.rowsProcessed).toBe(fixes.length);
  expect(job.rowsSkipped).toBe(0);

  // The track: every imported fix (none breaks a rule), in time order.
  const track = await getJson<{ geometry: { coordinates: Array<[number, number]> }; properties: { times: string[] } }>(
    p,
    `/v1/devices/truck-3/track?since=${D}&until=${D + 2 * DAY_MS - 1}`,
  );
  expect(track.status).toBe(200);
  expect(track.body.properties.times).toEqual(fixes.map((f) => new Date(f.atMs).toISOString()));
  track.body.geometry.coordinates.forEach(([lon, lat], i) => {
    expect(lat).toBeCloseTo(fixes[i]!.lat, 7);
    expect(lon).toBeCloseTo(fixes[i]!.lon, 7);
  });

  // Exactly the two trips, each within 1 % of its route.
  const trips = await tripsOf(p, `deviceId=truck-3&since=${D}&until=${D + 2 * DAY_MS - 1}`);
  expect(trips.status).toBe(200);
  expect(trips.body.trips).toHaveLength(2);
  const routes = [out, back];
  trips.body.trips.forEach((trip, k) => {
    const route = routes[k]!;
    expect(Math.abs(trip.distanceM - route.lengthM) / route.lengthM, `trip ${k}: ${trip.distanceM} m vs ${route.lengthM} m`).toBeLessThan(0.01);
  });
  expect(date(Date.parse(trips.body.trips[0]!.startAt))).toBe(date(D));
  expect(date(Date.parse(trips.body.trips[1]!.startAt))).toBe(date(D + DAY_MS));

  // Daily mileage from the day before to the day after: each trip on its own day, nothing else.
  const m = await mileageOf(p, `deviceId=truck-3&from=${date(D - DAY_MS)}&to=${date(D + 2 * DAY_MS)}&tz=UTC`);
  expect(m.status).toBe(200);
  expect(m.body.days.map((d) => d.date)).toEqual([D - DAY_MS, D, D + DAY_MS, D + 2 * DAY_MS].map(date));
  const expected = [0, out.lengthM, back.lengthM, 0];
  m.body.days.forEach((day, k) => {
    if (expected[k] === 0) expect(day).toMatchObject({ distanceM: 0, movingMs: 0, trips: 0 });
    else {
      expect(Math.abs(day.distanceM - expected[k]!) / expected[k]!, `${day.date}: ${day.distanceM} m vs ${expected[k]} m`).toBeLessThan(0.01);
      expect(day).toMatchObject({ movingMs: trips.body.trips[k - 1]!.durationMs, trips: 1 });
    }
  });
  const total = out.lengthM + back.lengthM;
  expect(Math.abs(m.body.days.reduce((sum, d) => sum + d.distanceM, 0) - total) / total).toBeLessThan(0.01);
});
