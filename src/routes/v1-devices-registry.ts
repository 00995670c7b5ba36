// PUT /v1/devices/:deviceId (the vehicle registry) and GET /v1/devices (vehicles with their live position).
import { z } from 'zod';
import { readRateLimit, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { emptyVehicle, getVehicle, listVehicles, liveView, positionDevices, upsertVehicle, type VehiclePatch } from '../fleet/live';
import { assertTimeZone, InvalidTimeZoneError } from '../fleet/mileage';
import { readRules } from '../fleet/project-rules';
import { createRezoneJob } from '../fleet/rezone';
import { LIVE_STATUSES } from '../fleet/status';
import { readLive } from '../fleet/store';
import { sendCreatedJob } from '../jobs/actions';
import { hasLoneSurrogate, UNPAIRED_SURROGATE_MESSAGE } from '../lib/unicode';
import { CLIENT_SECURITY, createRoute, json, router } from './openapi';
import { readErrors } from './read-query';

const Text = z.string().trim().min(1).max(200).refine((t) => !hasLoneSurrogate(t), UNPAIRED_SURROGATE_MESSAGE).nullable();

export const VehicleBody = z.strictObject({
  name: Text.optional(),
  plate: Text.optional(),
  driver: Text.optional(),
  group: Text.optional(),
  timezone: z.string().max(64).nullable().optional().describe('an IANA time zone; mileage days are counted in it'),
});

export const DeviceParam = z.object({ deviceId: z.string().min(1).max(128) });

/** A vehicle's registry entry (every field null until set). */
export const VehicleView = z
  .object({
    deviceId: z.string(),
    name: z.string().nullable(),
    plate: z.string().nullable(),
    driver: z.string().nullable(),
    group: z.string().nullable(),
    timezone: z.string().nullable(),
  })
  .openapi('Vehicle');

/** The newest accepted fix by event time and the status derived from it at read time. */
export const LiveView = z
  .object({
    lat: z.number(),
    lon: z.number(),
    speed: z.number().nullable().describe('km/h'),
    heading: z.number().nullable().describe('degrees'),
    ignition: z.boolean().nullable(),
    at: z.iso.datetime().describe('event time of the fix'),
    status: z.enum(LIVE_STATUSES),
  })
  .openapi('LivePosition');

const VehiclesList = z.object({ devices: z.array(VehicleView.extend({ live: LiveView.nullable().describe('null until an accepted fix') })) });

/** The canonical IANA name, or 400 invalid_time_zone. */
export function timeZoneOr400(tz: string): string {
  try {
    return assertTimeZone(tz);
  } catch (err) {
    if (err instanceof InvalidTimeZoneError) throw new ApiError(400, 'invalid_time_zone', err.message, { timezone: tz });
    throw err;
  }
}

const putVehicle = createRoute({
  method: 'put',
  path: '/v1/devices/{deviceId}',
  summary: "Set a vehicle's registry entry",
  description: "Fields left out keep their value; null clears one. A new `timezone` starts a `fleet_recompute` job that rebuilds the vehicle's daily mileage rows in it; answers are right meanwhile.",
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { params: DeviceParam, body: { required: true, content: { 'application/json': { schema: VehicleBody } } } },
  responses: {
    200: json(VehicleView, 'the entry as stored'),
    ...readErrors(['invalid_json', 'invalid_time_zone'], { 415: 'unsupported_media_type: the body must be application/json' }),
  },
});

const listDevices = createRoute({
  method: 'get',
  path: '/v1/devices',
  summary: "The project's vehicles with their live position",
  description: 'Registered vehicles and every device that ever sent a position, by device id.',
  tags: ['fleet'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  responses: { 200: json(VehiclesList, 'every vehicle'), ...readErrors() },
});

export const v1DevicesRegistryRoute = router()
  .openapi(putVehicle, async (c) => {
    const { deviceId } = c.req.valid('param');
    const body = c.req.valid('json');
    const patch: VehiclePatch = { ...body };
    if (typeof body.timezone === 'string') patch.timezone = timeZoneOr400(body.timezone);
    const projectId = c.get('project').projectId;
    // Mileage rows are keyed by days of the registry zone: a new zone rebuilds them.
    const before = patch.timezone !== undefined ? await getVehicle(c.env.DB, projectId, deviceId) : null;
    const zoneChange = patch.timezone !== undefined && (before?.timezone ?? 'UTC') !== (patch.timezone ?? 'UTC');
    const rebuild = zoneChange ? await createRezoneJob(c.env, projectId, deviceId, patch.timezone ?? 'UTC') : null;
    // Until the rebuild is done, reads of its mileage also look for rows of other zones.
    const vehicle = await upsertVehicle(c.env.DB, projectId, deviceId, patch, Date.now(), zoneChange ? rebuild : undefined);
    if (rebuild) await sendCreatedJob(c.env, rebuild, 'fleet_recompute');
    return c.json(vehicle, 200);
  })
  .openapi(listDevices, async (c) => {
    const projectId = c.get('project').projectId;
    const [registered, withPositions, rules] = await Promise.all([listVehicles(c.env.DB, projectId), positionDevices(c.env.DB, projectId), readRules(c.env, projectId)]);
    const byId = new Map(registered.map((v) => [v.deviceId, v]));
    for (const d of withPositions) if (!byId.has(d)) byId.set(d, emptyVehicle(d));
    const live = await readLive(clickhouse(getConfig(c.env).clickhouse), projectId, [...byId.keys()]);
    const now = Date.now();
    const devices = [...byId.values()]
      .sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0))
      .map((v) => {
        const l = live.get(v.deviceId);
        return { ...v, live: l ? liveView(l, now, rules) : null };
      });
    return c.json({ devices }, 200);
  });
