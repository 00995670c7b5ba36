// Fleet reads (GET /v1/fleet/live, /v1/devices/:deviceId/track, /v1/trips, /v1/mileage) and the
// operator's recompute (POST /admin/fleet/recompute).
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { readRateLimit, requireAdmin, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { averageSpeedKmh, simplifyTrack } from '../fleet/geo';
import { planTrackRead } from '../fleet/incremental';
import { emptyVehicle, getVehicle, listVehicles, liveView, mileageRebuildDevices, positionDevices, type Vehicle } from '../fleet/live';
import { dailyMileage, InvalidDateError, localMidnights, parseDate } from '../fleet/mileage';
import { readRules } from '../fleet/project-rules';
import { FleetRecomputeParams } from '../fleet/recompute';
import { LIVE_STATUSES } from '../fleet/status';
import { mileageSpans, readFixes, readLive, readMileageRows, stretchesOverlapping, tripsOverlapping, type MileageRead, type StoredMileageDayRow } from '../fleet/store';
import { analyse } from '../fleet/trips';
import { startJob } from '../jobs/actions';
import { ADMIN_SECURITY, CLIENT_SECURITY, createRoute, errors, json, router } from './openapi';
import { MAX_PROJECT_WINDOW_MS, readErrors } from './read-query';
import { DeviceParam, LiveView, timeZoneOr400, VehicleView } from './v1-devices-registry';

const Instant = z.union([
  z.string().regex(/^\d{1,15}$/, 'a time is epoch milliseconds or ISO-8601').transform(Number),
  z.iso.datetime({ offset: true, error: 'a time is epoch milliseconds or ISO-8601' }).transform((s) => Date.parse(s)),
]);
const DeviceId = z.string().min(1).max(128);
const Group = z.string().min(1).max(200);
const DAY_MS = 86_400_000;
/** A track is analysed whole: one request reads at most this much of a device's history. */
const MAX_TRACK_WINDOW_MS = 31 * DAY_MS;

const iso = (ms: number) => new Date(ms).toISOString();

function window(q: { since?: number; until?: number }, defaultMs: number, maxMs: number): { sinceMs: number; untilMs: number } {
  const untilMs = q.until ?? Date.now() + 60_000;
  const sinceMs = q.since ?? untilMs - defaultMs;
  if (sinceMs > untilMs) throw new ApiError(400, 'invalid_request', 'since must not be after until');
  if (untilMs - sinceMs > maxMs) throw new ApiError(400, 'window_too_large', `since..until spans at most ${Math.round(maxMs / DAY_MS)} days here`, { maxWindowMs: maxMs, windowMs: untilMs - sinceMs });
  return { sinceMs, untilMs };
}

/** The vehicles a fleet read covers: one device, a registry group, or every vehicle of the project. */
async function selectVehicles(env: Env, projectId: string, q: { deviceId?: string; group?: string }): Promise<Vehicle[]> {
  if (q.deviceId !== undefined) {
    const v = (await getVehicle(env.DB, projectId, q.deviceId)) ?? emptyVehicle(q.deviceId);
    return q.group === undefined || v.group === q.group ? [v] : [];
  }
  if (q.group !== undefined) return listVehicles(env.DB, projectId, q.group);
  const [registered, withPositions] = await Promise.all([listVehicles(env.DB, projectId), positionDevices(env.DB, projectId)]);
  const byId = new Map(registered.map((v) => [v.deviceId, v]));
  for (const d of withPositions) if (!byId.has(d)) byId.set(d, emptyVehicle(d));
  return [...byId.values()].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
}

export const LiveQuery = z.object({
  group: Group.optional().describe("only the registry's vehicles of this group"),
  status: z.enum(LIVE_STATUSES).optional().describe('only vehicles in this status'),
});
export const TrackQuery = z.object({
  since: Instant.optional().describe('default: one day before `until`; at most 31 days before it'),
  until: Instant.optional().describe('default: now plus one minute'),
  simplify: z.coerce.number().min(0).max(100_000).optional().describe('Douglas–Peucker tolerance in metres; the endpoints are kept'),
});
export const TripsQuery = z.object({
  deviceId: DeviceId.optional().describe('one vehicle; without it and `group`, every vehicle of the project (at most 92 days then)'),
  group: Group.optional().describe("the registry's vehicles of this group"),
  since: Instant.optional().describe('default: 7 days before `until`'),
  until: Instant.optional().describe('default: now plus one minute'),
});
const MileageQuery = z.object({
  deviceId: DeviceId.optional().describe('one vehicle; without it and `group`, every vehicle of the project'),
  group: Group.optional().describe("the registry's vehicles of this group"),
  from: z.string().max(32).describe('first day, YYYY-MM-DD'),
  to: z.string().max(32).describe('last day (inclusive), YYYY-MM-DD'),
  tz: z.string().max(64).optional().describe("IANA time zone of the days; default: each vehicle's registry zone, else UTC"),
});
const BodyInstant = z.union([z.number().int(), Instant]);
const RecomputeBody = z.strictObject({
  projectId: z.string().min(1).max(128),
  deviceId: DeviceId.optional().describe('one device; default: every device of the project'),
  since: BodyInstant.optional().describe('default: 92 days before `until`'),
  until: BodyInstant.optional().describe('default: now plus one minute'),
});

const Iso = z.iso.datetime();
const LatLon = z.object({ lat: z.number(), lon: z.number() });

export const LiveVehicles = z.object({
  vehicles: z.array(VehicleView.pick({ deviceId: true, name: true, plate: true, group: true }).extend(LiveView.shape)).describe('vehicles with an accepted fix'),
});

export const TrackFeature = z
  .object({
    type: z.literal('Feature'),
    geometry: z.object({ type: z.literal('LineString'), coordinates: z.array(z.tuple([z.number(), z.number()])).describe('[lon, lat] of each accepted fix, in event-time order') }),
    properties: z.object({ deviceId: z.string(), times: z.array(Iso).describe('event time of each coordinate') }),
  })
  .openapi('Track');

export const TripView = z
  .object({
    deviceId: z.string(),
    startAt: Iso.describe('time of the first moving fix'),
    endAt: Iso.describe('time of the fix at which the vehicle stopped'),
    durationMs: z.number(),
    distanceM: z.number(),
    maxSpeedKmh: z.number().describe('the highest reported (else derived) speed of its fixes'),
    avgSpeedKmh: z.number().describe('distance over duration'),
    start: LatLon,
    end: LatLon,
  })
  .openapi('Trip');

const MileageDay = z
  .object({
    deviceId: z.string(),
    date: z.string().describe('YYYY-MM-DD, a calendar day in the chosen zone'),
    distanceM: z.number(),
    movingMs: z.number().describe('time spent in trips that day'),
    trips: z.number().int().describe('trips that started that day'),
  })
  .openapi('MileageDay');

/** The newest accepted fix of each vehicle (of a group, of a status): GET /v1/fleet/live's answer. */
export async function readFleetLive(env: Env, projectId: string, q: z.infer<typeof LiveQuery>): Promise<z.infer<typeof LiveVehicles>> {
  const [vehicles, rules] = await Promise.all([selectVehicles(env, projectId, q), readRules(env, projectId)]);
  const live = await readLive(clickhouse(getConfig(env).clickhouse), projectId, vehicles.map((v) => v.deviceId));
  const now = Date.now();
  const out: z.infer<typeof LiveVehicles>['vehicles'] = [];
  for (const v of vehicles) {
    const l = live.get(v.deviceId);
    if (!l) continue;
    const view = liveView(l, now, rules);
    if (q.status !== undefined && view.status !== q.status) continue;
    out.push({ deviceId: v.deviceId, name: v.name, plate: v.plate, group: v.group, ...view });
  }
  return { vehicles: out };
}

/** A vehicle's accepted fixes in the window as a GeoJSON LineString: GET /v1/devices/:deviceId/track's answer. */
export async function readVehicleTrack(env: Env, projectId: string, deviceId: string, q: z.infer<typeof TrackQuery>): Promise<z.infer<typeof TrackFeature>> {
  const { sinceMs, untilMs } = window(q, DAY_MS, MAX_TRACK_WINDOW_MS);
  const ch = clickhouse(getConfig(env).clickhouse);
  // Whole stretches: whether a fix is accepted depends on the fixes before it in its stretch.
  const [stretches, rules] = await Promise.all([stretchesOverlapping(ch, projectId, deviceId, sinceMs, untilMs), readRules(env, projectId)]);
  const read = planTrackRead(stretches, sinceMs, untilMs);
  const accepted = analyse(await readFixes(ch, projectId, deviceId, read.fromMs, read.toMs), rules).accepted.filter((f) => f.atMs >= sinceMs && f.atMs <= untilMs);
  const points = q.simplify !== undefined ? simplifyTrack(accepted, q.simplify) : accepted;
  return {
    type: 'Feature',
    geometry: { type: 'LineString', coordinates: points.map((f): [number, number] => [f.lon, f.lat]) },
    properties: { deviceId, times: points.map((f) => iso(f.atMs)) },
  };
}

/** The trips overlapping the window (of one device, a group, or the project): GET /v1/trips's answer. */
export async function readTrips(env: Env, projectId: string, q: z.infer<typeof TripsQuery>): Promise<{ trips: z.infer<typeof TripView>[] }> {
  const { sinceMs, untilMs } = window(q, 7 * DAY_MS, q.deviceId !== undefined ? 3700 * DAY_MS : MAX_PROJECT_WINDOW_MS);
  const vehicles = await selectVehicles(env, projectId, q);
  const trips = await tripsOverlapping(clickhouse(getConfig(env).clickhouse), projectId, vehicles.map((v) => v.deviceId), sinceMs, untilMs);
  return {
    trips: trips.map((t) => {
      const durationMs = t.endAt - t.startAt;
      return {
        deviceId: t.deviceId,
        startAt: iso(t.startAt),
        endAt: iso(t.endAt),
        durationMs,
        distanceM: t.distanceM,
        maxSpeedKmh: t.maxSpeedKmh,
        avgSpeedKmh: averageSpeedKmh(t.distanceM, durationMs),
        start: t.start,
        end: t.end,
      };
    }),
  };
}

/**
 * Daily mileage from the day rows: GET /v1/mileage's answer. Each device's days are those of `tz`,
 * else of its registry zone, which its rows are keyed by; all devices are read in one query (and
 * the dates either side in a second one for devices whose zone-change rebuild is not done). `rows`
 * and `rowsRead` are the day rows returned and the rows ClickHouse read for them.
 */
async function readMileage(env: Env, projectId: string, q: z.infer<typeof MileageQuery>, tz: string | undefined) {
  const vehicles = await selectVehicles(env, projectId, q);
  const rebuilding = await mileageRebuildDevices(env.DB, projectId);
  const groups = new Map<string, { zone: string; rowZone: string; deviceIds: string[] }>();
  for (const v of vehicles) {
    const rowZone = v.timezone ?? 'UTC';
    const zone = tz ?? rowZone;
    const key = `${zone}\u0000${rowZone}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { zone, rowZone, deviceIds: [] }));
    g.deviceIds.push(v.deviceId);
  }
  const windows: MileageRead[] = [];
  for (const g of groups.values()) {
    let local;
    try {
      local = localMidnights(g.zone, q.from, q.to);
    } catch (err) {
      if (err instanceof InvalidDateError) throw new ApiError(400, 'invalid_date', err.message);
      throw err;
    }
    for (const deviceId of g.deviceIds) windows.push({ deviceId, zone: g.rowZone, startMs: local[0]!.startMs, endMs: local[local.length - 1]!.endMs, otherZones: rebuilding.has(deviceId) });
  }
  const read = await readMileageRows(clickhouse(getConfig(env).clickhouse), projectId, windows);
  const byDevice = new Map<string, StoredMileageDayRow[]>();
  for (const r of read.rows) {
    const list = byDevice.get(r.deviceId);
    if (list) list.push(r);
    else byDevice.set(r.deviceId, [r]);
  }
  const days: Array<{ deviceId: string; date: string; distanceM: number; movingMs: number; trips: number }> = [];
  for (const g of groups.values()) {
    for (const deviceId of g.deviceIds) {
      for (const d of dailyMileage(mileageSpans(byDevice.get(deviceId) ?? []), g.zone, q.from, q.to)) days.push({ deviceId, ...d });
    }
  }
  const rowsRead = read.readRows;
  const rows = read.rows.length;
  days.sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : a.date < b.date ? -1 : a.date > b.date ? 1 : 0));
  return { days, rowsRead, rows };
}

const StartedJob = z.object({ id: z.string().describe('the job id'), state: z.string().describe('`enqueued`') });

const fleetLive = createRoute({
  method: 'get',
  path: '/v1/fleet/live',
  summary: "Every vehicle's live position and status",
  description:
    'The newest accepted fix by event time. `moving`: speed ≥ 3 km/h or moving by the drift rule; `idle`: ignition on, not moving; `parked`: otherwise; `offline`: no fix for FLEET_OFFLINE_AFTER_S.',
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { query: LiveQuery },
  responses: { 200: json(LiveVehicles, 'the live vehicles'), ...readErrors() },
});

const deviceTrack = createRoute({
  method: 'get',
  path: '/v1/devices/{deviceId}/track',
  summary: "A vehicle's track as a GeoJSON LineString",
  description: 'The fixes that pass the accuracy and outlier rules (parked jitter included), in event-time order.',
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { params: DeviceParam, query: TrackQuery },
  responses: { 200: json(TrackFeature, 'the track'), ...readErrors(['window_too_large']) },
});

const trips = createRoute({
  method: 'get',
  path: '/v1/trips',
  summary: 'Trips overlapping a window',
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { query: TripsQuery },
  responses: { 200: json(z.object({ trips: z.array(TripView) }), 'the trips'), ...readErrors(['window_too_large']) },
});

const mileage = createRoute({
  method: 'get',
  path: '/v1/mileage',
  summary: 'Daily mileage per vehicle',
  description:
    'Every day from `from` to `to` inclusive (0 where nothing moved); distance and moving time across midnight are split at midnight. The `Server-Timing` header tells the day rows the answer was built from and the rows ClickHouse read (`clickhouse;desc="rows=N read_rows=M"`).',
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { query: MileageQuery },
  responses: { 200: json(z.object({ days: z.array(MileageDay) }), 'one row per vehicle and day'), ...readErrors(['invalid_date', 'invalid_time_zone']) },
});

const recompute = createRoute({
  method: 'post',
  path: '/admin/fleet/recompute',
  summary: "Recompute a project's trips and mileage from its stored fixes",
  description: 'Starts a `fleet_recompute` job; `GET /admin/backfills/{id}` follows it.',
  tags: ['admin'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: RecomputeBody } } } },
  responses: {
    202: json(StartedJob, 'the job'),
    ...errors(
      { 400: 'invalid_request, invalid_json or unknown_project' },
      { 401: 'unauthorized: a valid admin bearer token is required' },
      { 415: 'unsupported_media_type: the body must be application/json' },
      { 503: 'admin_disabled (ADMIN_TOKEN is not configured) or misconfigured' },
    ),
  },
});

/** Both dates well-formed, from ≤ to, and not too many days; else 400 invalid_date. */
function daysOr400(from: string, to: string): void {
  try {
    parseDate(from);
    parseDate(to);
    localMidnights('UTC', from, to);
  } catch (err) {
    if (err instanceof InvalidDateError) throw new ApiError(400, 'invalid_date', err.message, { from, to });
    throw err;
  }
}

export const fleetRoute = router()
  .openapi(fleetLive, async (c) => c.json(await readFleetLive(c.env, c.get('project').projectId, c.req.valid('query')), 200))
  .openapi(deviceTrack, async (c) => c.json(await readVehicleTrack(c.env, c.get('project').projectId, c.req.valid('param').deviceId, c.req.valid('query')), 200))
  .openapi(trips, async (c) => c.json(await readTrips(c.env, c.get('project').projectId, c.req.valid('query')), 200))
  .openapi(mileage, async (c) => {
    const q = c.req.valid('query');
    daysOr400(q.from, q.to);
    const tz = q.tz !== undefined ? timeZoneOr400(q.tz) : undefined;
    const { days, rowsRead, rows } = await readMileage(c.env, c.get('project').projectId, q, tz);
    // What the answer cost ClickHouse: the day rows it answered and the rows it read for them.
    c.header('Server-Timing', `clickhouse;desc="rows=${rows} read_rows=${rowsRead}"`);
    return c.json({ days }, 200);
  })
  .openapi(recompute, async (c) => {
    const body = c.req.valid('json');
    const exists = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
    if (!exists) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    const untilMs = body.until ?? Date.now() + 60_000;
    const sinceMs = body.since ?? untilMs - 92 * DAY_MS;
    if (sinceMs > untilMs) throw new ApiError(400, 'invalid_request', 'since must not be after until');
    const params: FleetRecomputeParams = { projectId: body.projectId, sinceMs, untilMs, reason: 'operator', ...(body.deviceId !== undefined ? { deviceId: body.deviceId } : {}) };
    const job = await startJob(c.env, 'fleet_recompute', params);
    return c.json({ id: job.id, state: job.state }, 202);
  });
