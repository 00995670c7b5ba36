// GET /v1/devices/:deviceId — a device's live state from its object (its fleet live position
// included), with its profile.
import { readRateLimit, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { deviceStub } from '../device/stub';
import { liveView } from '../fleet/live';
import { readRules } from '../fleet/project-rules';
import { readProfile } from '../read/profiles';
import { CLIENT_SECURITY, createRoute, json, router, z } from './openapi';
import { readErrors } from './read-query';
import { DeviceParam, LiveView } from './v1-devices-registry';

const iso = (ms: number) => new Date(ms).toISOString();
const Instant = z.iso.datetime();

const DeviceView = z
  .object({
    deviceId: z.string(),
    lastSeenAt: Instant.nullable().describe('edge receipt of the newest request that brought a new event'),
    lastEvent: z
      .object({ id: z.string(), type: z.string(), name: z.string(), createdAt: Instant, sessionId: z.string().nullable() })
      .nullable()
      .describe('the event with the latest event time'),
    lastPosition: z
      .object({ lat: z.number(), lon: z.number(), at: Instant })
      .nullable()
      .describe('the position event with the latest event time, as received (the fleet rules not applied)'),
    live: LiveView.nullable().describe(
      'the vehicle\'s live position as the fleet keeps it: the newest fix by event time its rules accept, status derived now; null until its positions are recomputed',
    ),
    liveSession: z
      .object({
        id: z.string(),
        startedAt: Instant,
        lastEventAt: Instant,
        eventCount: z.number().int(),
        idleAt: Instant.describe('when it closes unless another event arrives'),
      })
      .nullable()
      .describe('the session still open, if any'),
    profile: z
      .object({ id: z.string(), properties: z.record(z.string(), z.unknown()), updatedAt: Instant.nullable() })
      .nullable()
      .describe('the profile its latest event named, folded'),
  })
  .openapi('DeviceState');

const route = createRoute({
  method: 'get',
  path: '/v1/devices/{deviceId}',
  summary: "A device's live state: last event, position, open session and profile",
  tags: ['read'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { params: DeviceParam },
  responses: { 200: json(DeviceView, "the device's state"), ...readErrors([], { 404: 'device_not_found: no events have been received for it' }) },
});

export const v1DevicesRoute = router().openapi(route, async (c) => {
  const { deviceId } = c.req.valid('param');
  const projectId = c.get('project').projectId;
  const state = await deviceStub(c.env, projectId, deviceId).state();
  if (!state) throw new ApiError(404, 'device_not_found', `no events have been received for device ${deviceId}`);
  // Status depends on the project's rules (offline delay) and the time of the read.
  const readLive = async () => (state.fleetLive ? liveView(state.fleetLive, Date.now(), await readRules(c.env, projectId)) : null);
  const readOwnProfile = async () => {
    if (!state.profileId) return null;
    // ClickHouse being down answers 503 storage_unavailable (app.onError), never its error text.
    const p = await readProfile(clickhouse(getConfig(c.env).clickhouse), projectId, state.profileId);
    return { id: state.profileId, properties: p?.properties ?? {}, updatedAt: p ? iso(p.lastUpdatedMs) : null };
  };
  const [live, profile] = await Promise.all([readLive(), readOwnProfile()]);
  return c.json(
    {
      deviceId: state.deviceId,
      lastSeenAt: state.lastSeenMs !== null ? iso(state.lastSeenMs) : null,
      lastEvent: state.lastEvent
        ? { id: state.lastEvent.id, type: state.lastEvent.type, name: state.lastEvent.name, createdAt: iso(state.lastEvent.createdAtMs), sessionId: state.lastEvent.sessionId || null }
        : null,
      lastPosition: state.lastPosition ? { lat: state.lastPosition.lat, lon: state.lastPosition.lon, at: iso(state.lastPosition.atMs) } : null,
      live,
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
    },
    200,
  );
});
