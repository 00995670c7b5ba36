// PUT /v1/devices/:deviceId (the vehicle registry) and GET /v1/devices (vehicles with their live position).
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { z } from 'zod';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { fleetReadRules, getConfig } from '../config';
import { ApiError } from '../errors';
import { emptyVehicle, listVehicles, liveView, positionDevices, upsertVehicle, type VehiclePatch } from '../fleet/live';
import { assertTimeZone, InvalidTimeZoneError } from '../fleet/mileage';
import { readLive } from '../fleet/store';
import { validationHook } from './validation';

const Text = z.string().trim().min(1).max(200).nullable();

export const VehicleBody = z.strictObject({
  name: Text.optional(),
  plate: Text.optional(),
  driver: Text.optional(),
  group: Text.optional(),
  timezone: z.string().max(64).nullable().optional(),
});

const DeviceParam = z.object({ deviceId: z.string().min(1).max(128) });

/** The canonical IANA name, or 400 invalid_time_zone. */
export function timeZoneOr400(tz: string): string {
  try {
    return assertTimeZone(tz);
  } catch (err) {
    if (err instanceof InvalidTimeZoneError) throw new ApiError(400, 'invalid_time_zone', err.message, { timezone: tz });
    throw err;
  }
}

export const v1DevicesRegistryRoute = new Hono<AppEnv>()
  .put('/v1/devices/:deviceId', requireClient, readRateLimit, zValidator('param', DeviceParam, validationHook), zValidator('json', VehicleBody, validationHook), async (c) => {
    const { deviceId } = c.req.valid('param');
    const body = c.req.valid('json');
    const patch: VehiclePatch = { ...body };
    if (typeof body.timezone === 'string') patch.timezone = timeZoneOr400(body.timezone);
    const vehicle = await upsertVehicle(c.env.DB, c.get('project').projectId, deviceId, patch);
    return c.json(vehicle);
  })
  .get('/v1/devices', requireClient, readRateLimit, async (c) => {
    const projectId = c.get('project').projectId;
    const [registered, withPositions] = await Promise.all([listVehicles(c.env.DB, projectId), positionDevices(c.env.DB, projectId)]);
    const byId = new Map(registered.map((v) => [v.deviceId, v]));
    for (const d of withPositions) if (!byId.has(d)) byId.set(d, emptyVehicle(d));
    const live = await readLive(clickhouse(getConfig(c.env).clickhouse), projectId, [...byId.keys()]);
    const now = Date.now();
    const devices = [...byId.values()]
      .sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0))
      .map((v) => {
        const l = live.get(v.deviceId);
        return { ...v, live: l ? liveView(l, now, fleetReadRules(c.env)) : null };
      });
    return c.json({ devices });
  });
