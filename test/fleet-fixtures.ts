// Seeded generators of fleet data for the I/O tests (the same ideas as test/fleet-core.test.ts):
// routes of known length, parked jitter, teleports and low-accuracy fixes, shuffled re-deliveries.
import { env } from 'cloudflare:test';
import { haversineM, type LatLon } from '../src/fleet/geo';
import type { Fix } from '../src/fleet/position';
import { destination, RAD } from './geo-fixtures';
import { NO_REF_OR_GEO, ch, getJson, postBatch, waitUntil, type TestProject } from './helpers';

export { destination, RAD };

export const MIN = 60_000;
export const HOUR = 3_600_000;

/** mulberry32: a small seeded PRNG, so every failing case can be replayed. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    between: (lo: number, hi: number) => lo + (hi - lo) * next(),
    int: (lo: number, hi: number) => Math.floor(lo + (hi - lo + 1) * next()),
    chance: (p: number) => next() < p,
    shuffle<T>(xs: T[]): T[] {
      for (let i = xs.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [xs[i], xs[j]] = [xs[j]!, xs[i]!];
      }
      return xs;
    },
  };
}
export type Rng = ReturnType<typeof prng>;


/** A point moved by a random offset between minM and maxM metres. */
export function jitter(rng: Rng, p: LatLon, minM: number, maxM: number): LatLon {
  return destination(p, rng.between(0, 360), rng.between(minM, maxM));
}

export interface Route {
  vertices: LatLon[];
  cumulative: number[];
  lengthM: number;
}

export function makeRoute(start: LatLon, legs: Array<[bearingDeg: number, lengthM: number]>): Route {
  const vertices = [start];
  for (const [b, l] of legs) vertices.push(destination(vertices[vertices.length - 1]!, b, l));
  const cumulative = [0];
  for (let i = 1; i < vertices.length; i++) cumulative.push(cumulative[i - 1]! + haversineM(vertices[i - 1]!, vertices[i]!));
  return { vertices, cumulative, lengthM: cumulative[cumulative.length - 1]! };
}

export function pointAlong(r: Route, s: number): LatLon {
  let i = 1;
  while (i < r.cumulative.length - 1 && r.cumulative[i]! < s) i++;
  const a = r.vertices[i - 1]!;
  const b = r.vertices[i]!;
  const leg = r.cumulative[i]! - r.cumulative[i - 1]!;
  const t = leg === 0 ? 0 : Math.min(1, Math.max(0, (s - r.cumulative[i - 1]!) / leg));
  return { lat: a.lat + (b.lat - a.lat) * t, lon: a.lon + (b.lon - a.lon) * t };
}

export type Phase = { kind: 'move'; from: number; dist: number; durS: number; vmax: number } | { kind: 'wait'; at: number; durS: number };
export const ACCEL = 1.5; // m/s²

export function movePhase(from: number, dist: number, vmax: number): Phase {
  const v = Math.min(vmax, Math.sqrt(dist * ACCEL)); // triangular profile when the cruise speed is out of reach
  return { kind: 'move', from, dist, durS: dist / v + v / ACCEL, vmax: v };
}

/** Position along the route and speed (m/s) at `t` seconds into a phase. */
export function phaseState(p: Phase, t: number): { s: number; v: number } {
  if (p.kind === 'wait') return { s: p.at, v: 0 };
  const ta = p.vmax / ACCEL;
  const da = 0.5 * ACCEL * ta * ta;
  if (t <= ta) return { s: p.from + 0.5 * ACCEL * t * t, v: ACCEL * t };
  if (t <= p.durS - ta) return { s: p.from + da + p.vmax * (t - ta), v: p.vmax };
  const r = Math.max(0, p.durS - t);
  return { s: p.from + p.dist - 0.5 * ACCEL * r * r, v: ACCEL * r };
}

export class FixLog {
  readonly fixes: Fix[] = [];
  private seq = 0;
  constructor(readonly rng: Rng, readonly prefix = 'f') {}

  add(fix: Omit<Fix, 'id'>): Fix {
    const f = { id: `${this.prefix}${String(this.seq++).padStart(6, '0')}`, ...fix };
    this.fixes.push(f);
    return f;
  }

  /** Parked at `at` with 3–5 m of GPS jitter, a fix every `intervalMs` in [fromMs, toMs). */
  park(at: LatLon, fromMs: number, toMs: number, opts: { intervalMs?: number; ignition?: boolean; speed?: boolean } = {}) {
    for (let t = fromMs; t < toMs; t += opts.intervalMs ?? MIN) {
      const p = jitter(this.rng, at, 3, 5);
      this.add({
        atMs: t,
        ...p,
        ...(opts.speed === false || this.rng.chance(0.2) ? {} : { speedKmh: this.rng.between(0, 1) }),
        ...(this.rng.chance(0.3) ? {} : { accuracyM: this.rng.between(4, 12) }),
        ...(opts.ignition === undefined ? {} : { ignition: opts.ignition }),
      });
    }
  }

  /**
   * Drives `route` from `startMs` (stopped at both ends; optional waits at route positions), a fix
   * every `intervalMs` and one at arrival. Returns the arrival time.
   */
  drive(route: Route, startMs: number, opts: { intervalMs?: number; cruiseKmh?: number; waits?: Array<[atM: number, durS: number]>; speed?: boolean; ignition?: boolean; noiseM?: number } = {}): number {
    const vmax = (opts.cruiseKmh ?? 50) / 3.6;
    const phases: Phase[] = [];
    let s = 0;
    for (const [at, dur] of opts.waits ?? []) {
      phases.push(movePhase(s, at - s, vmax), { kind: 'wait', at, durS: dur });
      s = at;
    }
    phases.push(movePhase(s, route.lengthM - s, vmax));
    const totalS = phases.reduce((sum, p) => sum + p.durS, 0);
    const stateAt = (t: number) => {
      let rest = t;
      for (const p of phases) {
        if (rest <= p.durS) return phaseState(p, rest);
        rest -= p.durS;
      }
      return { s: route.lengthM, v: 0 };
    };
    const intervalMs = opts.intervalMs ?? 5000;
    const endMs = startMs + Math.round(totalS * 1000);
    const sample = (atMs: number) => {
      const { s: pos, v } = stateAt((atMs - startMs) / 1000);
      const p = jitter(this.rng, pointAlong(route, pos), 0, opts.noiseM ?? 1.5);
      this.add({
        atMs,
        ...p,
        ...(opts.speed === false ? {} : { speedKmh: Math.max(0, v * 3.6 + (v > 0 ? this.rng.between(-1, 1) : 0)) }),
        accuracyM: this.rng.between(3, 8),
        ...(opts.ignition === undefined ? {} : { ignition: opts.ignition }),
      });
    };
    for (let t = startMs; t < endMs; t += intervalMs) sample(t);
    sample(endMs);
    return endMs;
  }
}

export const HOME: LatLon = { lat: 52.52, lon: 13.405 };

export interface SyntheticDay {
  fixes: Fix[];
  routes: Route[];
  /** The fixes of each parked period (teleports and low-accuracy fixes left out). */
  parkedPeriods: Fix[][];
}

/**
 * One vehicle's day: parked hours with 3–5 m jitter, three trips along known routes (one with a
 * 60 s wait at a light, one reporting ignition), two teleport fixes and some low-accuracy fixes.
 */
export function syntheticDay(seed: number, DAY: number): SyntheticDay {
  const rng = prng(seed);
  const log = new FixLog(rng);
  const routeA = makeRoute(HOME, [[80, 2600], [110, 3100], [60, 2400], [95, 2200], [130, 1800]]);
  const routeB = makeRoute(routeA.vertices[routeA.vertices.length - 1]!, [[200, 2500], [170, 2200], [215, 1900], [190, 2300]]);
  const routeC = makeRoute(routeB.vertices[routeB.vertices.length - 1]!, [[300, 3500], [330, 3000], [285, 2800], [320, 3200], [300, 2600]]);
  const endOf = (r: Route) => r.vertices[r.vertices.length - 1]!;
  const parked: Array<[LatLon, number, number]> = [];
  const park = (at: LatLon, from: number, to: number, opts?: Parameters<FixLog['park']>[3]) => {
    parked.push([at, from, to]);
    log.park(at, from, to, opts);
  };

  park(HOME, DAY, DAY + 7 * HOUR);
  const aEnd = log.drive(routeA, DAY + 7 * HOUR);
  park(endOf(routeA), aEnd + MIN, DAY + 9.5 * HOUR);
  const bEnd = log.drive(routeB, DAY + 9.5 * HOUR, { waits: [[4200, 60]] });
  park(endOf(routeB), bEnd + MIN, DAY + 12 * HOUR);
  const cStart = DAY + 12 * HOUR;
  const cEnd = log.drive(routeC, cStart, { ignition: true, cruiseKmh: 70 });
  park(endOf(routeC), cEnd + MIN, DAY + 24 * HOUR, { ignition: false });

  const parkedCount = log.fixes.length;
  // Two teleports: one while parked at home, one in the middle of trip C.
  log.add({ atMs: DAY + 3 * HOUR + 30_500, ...destination(HOME, 45, 8000), speedKmh: 0, accuracyM: 6 });
  const mid = cStart + Math.round((cEnd - cStart) / 2 / 5000) * 5000 + 2500;
  log.add({ atMs: mid, ...destination(pointAlong(routeC, routeC.lengthM / 2), 250, 30_000), speedKmh: 70, accuracyM: 5, ignition: true });
  // Low-accuracy fixes, far off, spread over the day.
  for (let k = 0; k < 8; k++) {
    const atMs = DAY + Math.round(rng.between(0.5, 23.5) * HOUR) + 1;
    log.add({ atMs, ...jitter(rng, HOME, 300, 2000), speedKmh: rng.between(0, 40), accuracyM: rng.between(150, 900) });
  }
  const generated = log.fixes.slice(0, parkedCount);
  const parkedPeriods = parked.map(([, from, to]) => generated.filter((f) => f.atMs >= from && f.atMs < to));
  return { fixes: log.fixes, routes: [routeA, routeB, routeC], parkedPeriods };
}

/** The same set delivered shuffled, with every fifth fix sent again (some twice). */
export function shuffledWithDuplicates(fixes: readonly Fix[], seed: number): Fix[] {
  const rng = prng(seed);
  const out = fixes.map((f) => ({ ...f }));
  for (let i = 0; i < fixes.length; i += 5) out.push({ ...fixes[i]! });
  for (let i = 0; i < fixes.length; i += 17) out.push({ ...fixes[i]! });
  return rng.shuffle(out);
}

/** A `position` event as /track/batch takes it. */
export function positionEvent(deviceId: string, f: Fix, eventId = f.id) {
  const properties: Record<string, unknown> = { __deviceId: deviceId, __eventId: eventId, __timestamp: f.atMs, lat: f.lat, lon: f.lon };
  if (f.speedKmh !== undefined) properties.speed = f.speedKmh;
  if (f.heading !== undefined) properties.heading = f.heading;
  if (f.accuracyM !== undefined) properties.accuracy = f.accuracyM;
  if (f.altitudeM !== undefined) properties.altitude = f.altitudeM;
  if (f.ignition !== undefined) properties.ignition = f.ignition;
  return { type: 'track', payload: { name: 'position', properties } };
}

/** A straight drive east at `kmh`, one fix every `intervalS`, from `fromMs`; returns the last point. */
export function straightDrive(log: FixLog, start: LatLon, fromMs: number, count: number, kmh: number, intervalS = 5, extra: Partial<Fix> = {}): LatLon {
  let p = start;
  for (let i = 0; i < count; i++) {
    if (i > 0) p = destination(p, 90, (kmh / 3.6) * intervalS);
    log.add({ atMs: fromMs + i * intervalS * 1000, ...p, speedKmh: kmh, ...extra });
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Gateway helpers for the fleet I/O tests


/** Sends `events` in batches of `size`, each answered 202 with every row accepted or a duplicate. */
export async function sendPositions(p: TestProject, events: unknown[], size: number): Promise<{ accepted: number; duplicates: number }> {
  let accepted = 0;
  let duplicates = 0;
  for (let i = 0; i < events.length; i += size) {
    const res = await postBatch(p, { events: events.slice(i, i + size) });
    const body = (await res.json()) as { accepted: number; duplicates: number; rejected: unknown[] };
    if (res.status !== 202 || body.rejected.length) throw new Error(`batch refused: ${res.status} ${JSON.stringify(body).slice(0, 500)}`);
    accepted += body.accepted;
    duplicates += body.duplicates;
  }
  return { accepted, duplicates };
}

/** Waits until `count` positions of the device are in ClickHouse and its fleet recompute has nothing pending. */
export async function settled(p: TestProject, deviceId: string, count: number): Promise<void> {
  await waitUntil(
    async () => {
      const [events] = await ch().query<{ n: number }>(
        "SELECT uniqExact(id) AS n FROM events WHERE project_id = {p:String} AND device_id = {d:String} AND name = 'position'",
        { p: p.id, d: deviceId },
      );
      const cursor = await env.DB.prepare('SELECT pending_from_ms AS pending, lease_until AS lease FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2')
        .bind(p.id, deviceId)
        .first<{ pending: number | null; lease: number }>();
      return { n: Number(events?.n ?? 0), cursor };
    },
    (s) => s.n >= count && s.cursor !== null && s.cursor.pending === null && s.cursor.lease === 0,
    { timeoutMs: 180_000, intervalMs: 300 },
  );
}

export interface ApiTrip {
  deviceId: string;
  startAt: string;
  endAt: string;
  durationMs: number;
  distanceM: number;
  maxSpeedKmh: number;
  avgSpeedKmh: number;
  start: LatLon;
  end: LatLon;
}
export interface ApiDay {
  deviceId: string;
  date: string;
  distanceM: number;
  movingMs: number;
  trips: number;
}

export const tripsOf = (p: TestProject, query: string) => getJson<{ trips: ApiTrip[] }>(p, `/v1/trips?${query}`);
export const mileageOf = (p: TestProject, query: string) => getJson<{ days: ApiDay[] }>(p, `/v1/mileage?${query}`);

/** The properties of the `position` event that carries `f`. */
export function positionProperties(f: Fix): Record<string, unknown> {
  const properties: Record<string, unknown> = { lat: f.lat, lon: f.lon };
  if (f.speedKmh !== undefined) properties.speed = f.speedKmh;
  if (f.heading !== undefined) properties.heading = f.heading;
  if (f.accuracyM !== undefined) properties.accuracy = f.accuracyM;
  if (f.altitudeM !== undefined) properties.altitude = f.altitudeM;
  if (f.ignition !== undefined) properties.ignition = f.ignition;
  return properties;
}

/** Stores fixes straight into `events` (as an import does: no ingest consumer, no recompute); each fix's id is its event id (a UUID). */
export async function storeFixes(projectId: string, deviceId: string, fixes: readonly Fix[]): Promise<void> {
  const now = Date.now();
  await ch().insert(
    'events',
    fixes.map((f) => {
      const properties = positionProperties(f);
      return {
        id: f.id,
        project_id: projectId,
        device_id: deviceId,
        session_id: '',
        profile_id: '',
        type: 'track',
        name: 'position',
        created_at_ms: f.atMs,
        received_at_ms: now,
        synced_at_ms: now,
        properties: JSON.stringify(properties),
        ...NO_REF_OR_GEO,
      };
    }),
  );
}

const TRIP_COLUMNS = 'device_id, start_at_ms, end_at_ms, distance_m, max_speed_kmh, start_lat, start_lon, end_lat, end_lon, end_reason, bucket_ms, bucket_distance_m, bucket_moving_ms';

/** The current (newest-version, not deleted) fleet rows of a project, without project id and version, by table. */
export async function currentFleetRows(projectId: string): Promise<Record<'stretches' | 'trips' | 'mileage' | 'live', unknown[]>> {
  const q = (sql: string) => ch().query<Record<string, unknown>>(sql, { p: projectId });
  const [stretches, trips, mileage, live] = await Promise.all([
    q(`SELECT device_id, start_ms, end_ms, last_accepted_ms, counted_m, end_reason FROM (
         SELECT device_id, start_ms, end_ms, last_accepted_ms, counted_m, end_reason, deleted FROM fleet_stretches WHERE project_id = {p:String}
          ORDER BY device_id, start_ms, version DESC LIMIT 1 BY device_id, start_ms)
        WHERE deleted = 0 ORDER BY device_id, start_ms`),
    q(`SELECT ${TRIP_COLUMNS} FROM (
         SELECT ${TRIP_COLUMNS}, deleted FROM fleet_trips WHERE project_id = {p:String} ORDER BY device_id, start_at_ms, version DESC LIMIT 1 BY device_id, start_at_ms)
        WHERE deleted = 0 ORDER BY device_id, start_at_ms`),
    q(`SELECT device_id, toString(day) AS day_text, zone, bucket_ms, distance_m, moving_ms, trip_starts FROM fleet_mileage_days WHERE project_id = {p:String}
        ORDER BY device_id, day, zone, version DESC LIMIT 1 BY device_id, day, zone`),
    q(`SELECT device_id, fix_id, at_ms, lat, lon, speed_kmh, heading, accuracy_m, altitude_m, ignition, counted_lat, counted_lon, counted_at_ms, moved_by_drift FROM (
         SELECT device_id, fix_id, at_ms, lat, lon, speed_kmh, heading, accuracy_m, altitude_m, ignition, counted_lat, counted_lon, counted_at_ms, moved_by_drift, deleted
           FROM fleet_live WHERE project_id = {p:String} ORDER BY device_id, version DESC LIMIT 1 BY device_id)
        WHERE deleted = 0`),
  ]);
  // A day row with no buckets reads as no row (both are a day without movement).
  return { stretches, trips, mileage: mileage.filter((r) => (r.bucket_ms as unknown[]).length > 0), live };
}
