// Fleet reads (GET /v1/fleet/live, /v1/devices/:deviceId/track, /v1/trips, /v1/mileage) and the
// operator's recompute (POST /admin/fleet/recompute).
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { z } from 'zod';
import { readRateLimit, requireAdmin, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { fleetReadRules, getConfig } from '../config';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { simplifyTrack } from '../fleet/geo';
import { planTrackRead } from '../fleet/incremental';
import { emptyVehicle, getVehicle, listVehicles, liveView, positionDevices, type Vehicle } from '../fleet/live';
import { dailyMileage, InvalidDateError, localMidnights, parseDate } from '../fleet/mileage';
import { FleetRecomputeParams } from '../fleet/recompute';
import { LIVE_STATUSES } from '../fleet/status';
import { mileageSpans, readFixes, readLive, readMileageRows, stretchesOverlapping, tripsOverlapping, utcDay } from '../fleet/store';
import { analyse } from '../fleet/trips';
import { startJob } from '../jobs/actions';
import { projects } from '../db/schema';
import { drizzle } from 'drizzle-orm/d1';
import { eq } from 'drizzle-orm';
import { MAX_PROJECT_WINDOW_MS } from './read-query';
import { timeZoneOr400 } from './v1-devices-registry';
import { validationHook } from './validation';

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

const LiveQuery = z.object({ group: Group.optional(), status: z.enum(LIVE_STATUSES).optional() });
const TrackQuery = z.object({ since: Instant.optional(), until: Instant.optional(), simplify: z.coerce.number().min(0).max(100_000).optional() });
const TripsQuery = z.object({ deviceId: DeviceId.optional(), group: Group.optional(), since: Instant.optional(), until: Instant.optional() });
const MileageQuery = z.object({ deviceId: DeviceId.optional(), group: Group.optional(), from: z.string().max(32), to: z.string().max(32), tz: z.string().max(64).optional() });
const BodyInstant = z.union([z.number().int(), Instant]);
const RecomputeBody = z.strictObject({ projectId: z.string().min(1).max(128), deviceId: DeviceId.optional(), since: BodyInstant.optional(), until: BodyInstant.optional() });

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

export const fleetRoute = new Hono<AppEnv>()
  .get('/v1/fleet/live', requireClient, readRateLimit, zValidator('query', LiveQuery, validationHook), async (c) => {
    const q = c.req.valid('query');
    const projectId = c.get('project').projectId;
    const vehicles = await selectVehicles(c.env, projectId, q);
    const live = await readLive(clickhouse(getConfig(c.env).clickhouse), projectId, vehicles.map((v) => v.deviceId));
    const now = Date.now();
    const out = [];
    for (const v of vehicles) {
      const l = live.get(v.deviceId);
      if (!l) continue;
      const view = liveView(l, now, fleetReadRules(c.env));
      if (q.status !== undefined && view.status !== q.status) continue;
      out.push({ deviceId: v.deviceId, name: v.name, plate: v.plate, group: v.group, ...view });
    }
    return c.json({ vehicles: out });
  })
  .get('/v1/devices/:deviceId/track', requireClient, readRateLimit, zValidator('param', z.object({ deviceId: DeviceId }), validationHook), zValidator('query', TrackQuery, validationHook), async (c) => {
    const { deviceId } = c.req.valid('param');
    const q = c.req.valid('query');
    const { sinceMs, untilMs } = window(q, DAY_MS, MAX_TRACK_WINDOW_MS);
    const projectId = c.get('project').projectId;
    const ch = clickhouse(getConfig(c.env).clickhouse);
    // Whole stretches: whether a fix is accepted depends on the fixes before it in its stretch.
    const read = planTrackRead(await stretchesOverlapping(ch, projectId, deviceId, sinceMs, untilMs), sinceMs, untilMs);
    const accepted = analyse(await readFixes(ch, projectId, deviceId, read.fromMs, read.toMs), fleetReadRules(c.env)).accepted.filter((f) => f.atMs >= sinceMs && f.atMs <= untilMs);
    const points = q.simplify !== undefined ? simplifyTrack(accepted, q.simplify) : accepted;
    return c.json({
      type: 'Feature',
      geometry: { type: 'LineString', coordinates: points.map((f) => [f.lon, f.lat]) },
      properties: { deviceId, times: points.map((f) => iso(f.atMs)) },
    });
  })
  .get('/v1/trips', requireClient, readRateLimit, zValidator('query', TripsQuery, validationHook), async (c) => {
    const q = c.req.valid('query');
    const { sinceMs, untilMs } = window(q, 7 * DAY_MS, q.deviceId !== undefined ? 3700 * DAY_MS : MAX_PROJECT_WINDOW_MS);
    const projectId = c.get('project').projectId;
    const vehicles = await selectVehicles(c.env, projectId, q);
    const trips = await tripsOverlapping(clickhouse(getConfig(c.env).clickhouse), projectId, vehicles.map((v) => v.deviceId), sinceMs, untilMs);
    return c.json({
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
    });
  })
  .get('/v1/mileage', requireClient, readRateLimit, zValidator('query', MileageQuery, validationHook), async (c) => {
    const q = c.req.valid('query');
    daysOr400(q.from, q.to);
    const tz = q.tz !== undefined ? timeZoneOr400(q.tz) : undefined;
    const projectId = c.get('project').projectId;
    const vehicles = await selectVehicles(c.env, projectId, q);
    // Devices grouped by the zone their days are counted in; each group is one read of the aggregate.
    const byZone = new Map<string, string[]>();
    for (const v of vehicles) {
      const zone = tz ?? v.timezone ?? 'UTC';
      byZone.set(zone, [...(byZone.get(zone) ?? []), v.deviceId]);
    }
    const ch = clickhouse(getConfig(c.env).clickhouse);
    const days: Array<{ deviceId: string; date: string; distanceM: number; movingMs: number; trips: number }> = [];
    for (const [zone, deviceIds] of byZone) {
      let local;
      try {
        local = localMidnights(zone, q.from, q.to);
      } catch (err) {
        if (err instanceof InvalidDateError) throw new ApiError(400, 'invalid_date', err.message);
        throw err;
      }
      const rows = await readMileageRows(ch, projectId, deviceIds, utcDay(local[0]!.startMs), utcDay(local[local.length - 1]!.endMs - 1));
      for (const deviceId of deviceIds) {
        const spans = mileageSpans(rows.filter((r) => r.deviceId === deviceId));
        for (const d of dailyMileage(spans, zone, q.from, q.to)) days.push({ deviceId, ...d });
      }
    }
    days.sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : a.date < b.date ? -1 : a.date > b.date ? 1 : 0));
    return c.json({ days });
  })
  .post('/admin/fleet/recompute', requireAdmin, zValidator('json', RecomputeBody, validationHook), async (c) => {
    const body = c.req.valid('json');
    const exists = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, body.projectId)).get();
    if (!exists) throw new ApiError(400, 'unknown_project', `no project ${body.projectId}`);
    const untilMs = body.until ?? Date.now() + 60_000;
    const sinceMs = body.since ?? untilMs - 92 * DAY_MS;
    if (sinceMs > untilMs) throw new ApiError(400, 'invalid_request', 'since must not be after until');
    const params: FleetRecomputeParams = { projectId: body.projectId, sinceMs, untilMs, ...(body.deviceId !== undefined ? { deviceId: body.deviceId } : {}) };
    const job = await startJob(c.env, 'fleet_recompute', params);
    return c.json({ id: job.id, state: job.state }, 202);
  });
