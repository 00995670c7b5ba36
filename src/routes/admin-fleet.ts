// Fleet reads for operators (the console): a project's live vehicles, a vehicle's track and trips,
// with the admin token instead of the project's credentials; same parameters and answers as /v1.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { requireAdmin } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { fleetReadRules, getConfig } from '../config';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { simplifyTrack } from '../fleet/geo';
import { planTrackRead } from '../fleet/incremental';
import { emptyVehicle, getVehicle, listVehicles, liveView, positionDevices, type Vehicle } from '../fleet/live';
import { LIVE_STATUSES } from '../fleet/status';
import { readFixes, readLive, stretchesOverlapping, tripsOverlapping } from '../fleet/store';
import { analyse } from '../fleet/trips';
import { ADMIN_SECURITY, createRoute, errors, json, router, z } from './openapi';
import { MAX_PROJECT_WINDOW_MS } from './read-query';
import { DeviceParam, LiveView, VehicleView } from './v1-devices-registry';

const DAY_MS = 86_400_000;
/** A track is analysed whole: one request reads at most this much of a device's history. */
const MAX_TRACK_WINDOW_MS = 31 * DAY_MS;

const Instant = z
  .union([
    z.string().regex(/^\d{1,15}$/, 'a time is epoch milliseconds or ISO-8601').transform(Number),
    z.iso.datetime({ offset: true, error: 'a time is epoch milliseconds or ISO-8601' }).transform((s) => Date.parse(s)),
  ])
  .openapi({ type: 'string', description: 'epoch milliseconds or ISO-8601', example: '2026-03-01T08:00:00Z' });
const DeviceId = z.string().min(1).max(128);
const Group = z.string().min(1).max(200);

export const FleetLiveQuery = z.object({
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

const Iso = z.iso.datetime();
const LatLon = z.object({ lat: z.number(), lon: z.number() });
const LiveVehicle = VehicleView.pick({ deviceId: true, name: true, plate: true, group: true }).extend(LiveView.shape);
const TrackFeature = z
  .object({
    type: z.literal('Feature'),
    geometry: z.object({ type: z.literal('LineString'), coordinates: z.array(z.tuple([z.number(), z.number()])).describe('[lon, lat] of each accepted fix, in event-time order') }),
    properties: z.object({ deviceId: z.string(), times: z.array(Iso).describe('event time of each coordinate') }),
  })
  .openapi('AdminTrack');
const TripView = z
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
  .openapi('AdminTrip');

export type FleetLive = { vehicles: z.infer<typeof LiveVehicle>[] };
export type Track = z.infer<typeof TrackFeature>;
export type Trips = { trips: z.infer<typeof TripView>[] };

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

/** The newest accepted fix of each vehicle (of a group, of a status), as GET /v1/fleet/live answers. */
export async function readFleetLive(env: Env, projectId: string, q: z.infer<typeof FleetLiveQuery>): Promise<FleetLive> {
  const vehicles = await selectVehicles(env, projectId, q);
  const live = await readLive(clickhouse(getConfig(env).clickhouse), projectId, vehicles.map((v) => v.deviceId));
  const now = Date.now();
  const out: FleetLive['vehicles'] = [];
  for (const v of vehicles) {
    const l = live.get(v.deviceId);
    if (!l) continue;
    const view = liveView(l, now, fleetReadRules(env));
    if (q.status !== undefined && view.status !== q.status) continue;
    out.push({ deviceId: v.deviceId, name: v.name, plate: v.plate, group: v.group, ...view });
  }
  return { vehicles: out };
}

/** A vehicle's accepted fixes in the window as a GeoJSON LineString, as GET /v1/devices/:deviceId/track answers. */
export async function readVehicleTrack(env: Env, projectId: string, deviceId: string, q: z.infer<typeof TrackQuery>): Promise<Track> {
  const { sinceMs, untilMs } = window(q, DAY_MS, MAX_TRACK_WINDOW_MS);
  const ch = clickhouse(getConfig(env).clickhouse);
  // Whole stretches: whether a fix is accepted depends on the fixes before it in its stretch.
  const read = planTrackRead(await stretchesOverlapping(ch, projectId, deviceId, sinceMs, untilMs), sinceMs, untilMs);
  const accepted = analyse(await readFixes(ch, projectId, deviceId, read.fromMs, read.toMs), fleetReadRules(env)).accepted.filter((f) => f.atMs >= sinceMs && f.atMs <= untilMs);
  const points = q.simplify !== undefined ? simplifyTrack(accepted, q.simplify) : accepted;
  return {
    type: 'Feature',
    geometry: { type: 'LineString', coordinates: points.map((f) => [f.lon, f.lat] as [number, number]) },
    properties: { deviceId, times: points.map((f) => iso(f.atMs)) },
  };
}

/** The trips overlapping the window (of one device, a group, or the project), as GET /v1/trips answers. */
export async function readTrips(env: Env, projectId: string, q: z.infer<typeof TripsQuery>): Promise<Trips> {
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
        avgSpeedKmh: durationMs > 0 ? (t.distanceM / durationMs) * 3600 : 0,
        start: t.start,
        end: t.end,
      };
    }),
  };
}

const ProjectParam = z.object({ projectId: z.string().min(1).max(128) });

async function projectOr404(env: Env, projectId: string): Promise<void> {
  const project = await drizzle(env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, projectId)).get();
  if (!project) throw new ApiError(404, 'unknown_project', `no project ${projectId}`);
}

function adminReadErrors(...extra400: string[]) {
  return errors(
    { 400: ['invalid_request', ...extra400].join(', ') },
    { 401: 'unauthorized: a valid admin bearer token is required' },
    { 404: 'unknown_project' },
    { 503: 'storage_unavailable (the event store is unreachable), admin_disabled or misconfigured; see Retry-After' },
  );
}

const common = { tags: ['admin', 'fleet'], security: ADMIN_SECURITY, middleware: [requireAdmin] };

const liveRoute = createRoute({
  method: 'get',
  path: '/admin/projects/{projectId}/fleet/live',
  summary: "A project's vehicles with their live position and status (as GET /v1/fleet/live)",
  ...common,
  request: { params: ProjectParam, query: FleetLiveQuery },
  responses: { 200: json(z.object({ vehicles: z.array(LiveVehicle) }), 'vehicles that sent a position, by device id'), ...adminReadErrors() },
});

const trackRoute = createRoute({
  method: 'get',
  path: '/admin/projects/{projectId}/devices/{deviceId}/track',
  summary: "A vehicle's track (as GET /v1/devices/{deviceId}/track)",
  ...common,
  request: { params: ProjectParam.extend(DeviceParam.shape), query: TrackQuery },
  responses: { 200: json(TrackFeature, 'a GeoJSON Feature: the accepted fixes in event-time order'), ...adminReadErrors('window_too_large') },
});

const tripsRoute = createRoute({
  method: 'get',
  path: '/admin/projects/{projectId}/trips',
  summary: 'Trips overlapping a window (as GET /v1/trips)',
  ...common,
  request: { params: ProjectParam, query: TripsQuery },
  responses: { 200: json(z.object({ trips: z.array(TripView) }), 'trips by device, then start'), ...adminReadErrors('window_too_large') },
});

export const adminFleetRoute = router()
  .openapi(liveRoute, async (c) => {
    const { projectId } = c.req.valid('param');
    c.header('Cache-Control', 'no-store');
    await projectOr404(c.env, projectId);
    return c.json(await readFleetLive(c.env, projectId, c.req.valid('query')), 200);
  })
  .openapi(trackRoute, async (c) => {
    const { projectId, deviceId } = c.req.valid('param');
    c.header('Cache-Control', 'no-store');
    await projectOr404(c.env, projectId);
    return c.json(await readVehicleTrack(c.env, projectId, deviceId, c.req.valid('query')), 200);
  })
  .openapi(tripsRoute, async (c) => {
    const { projectId } = c.req.valid('param');
    c.header('Cache-Control', 'no-store');
    await projectOr404(c.env, projectId);
    return c.json(await readTrips(c.env, projectId, c.req.valid('query')), 200);
  });
