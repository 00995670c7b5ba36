// GET /v1/devices/:deviceId — a device's live state from its object, with its profile.
import { Hono } from 'hono';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { deviceStub } from '../device/stub';
import { readProfile } from '../read/profiles';

const iso = (ms: number) => new Date(ms).toISOString();

export const v1DevicesRoute = new Hono<AppEnv>().get('/v1/devices/:deviceId', requireClient, readRateLimit, async (c) => {
  const deviceId = c.req.param('deviceId');
  if (deviceId.length < 1 || deviceId.length > 128) throw new ApiError(400, 'invalid_request', 'deviceId must be 1 to 128 characters');
  const projectId = c.get('project').projectId;
  const state = await deviceStub(c.env, projectId, deviceId).state();
  if (!state) throw new ApiError(404, 'device_not_found', `no events have been received for device ${deviceId}`);
  let profile = null;
  if (state.profileId) {
    // ClickHouse being down answers 503 storage_unavailable (app.onError), never its error text.
    const p = await readProfile(clickhouse(getConfig(c.env).clickhouse), projectId, state.profileId);
    profile = { id: state.profileId, properties: p?.properties ?? {}, updatedAt: p ? iso(p.lastUpdatedMs) : null };
  }
  return c.json({
    deviceId: state.deviceId,
    lastSeenAt: state.lastSeenMs !== null ? iso(state.lastSeenMs) : null,
    lastEvent: state.lastEvent
      ? { id: state.lastEvent.id, type: state.lastEvent.type, name: state.lastEvent.name, createdAt: iso(state.lastEvent.createdAtMs), sessionId: state.lastEvent.sessionId || null }
      : null,
    lastPosition: state.lastPosition ? { lat: state.lastPosition.lat, lon: state.lastPosition.lon, at: iso(state.lastPosition.atMs) } : null,
    liveSession: state.liveSession
      ? {
          id: state.liveSession.id,
          startedAt: iso(state.liveSession.startMs),
          lastEventAt: iso(state.liveSession.endMs),
          eventCount: state.liveSession.eventCount,
          idleAt: iso(state.liveSession.idleAtMs),
        }
      : null,
    profile,
  });
});
