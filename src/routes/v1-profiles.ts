// GET /v1/profiles/:profileId — a profile folded from its identify/increment/decrement events.
import { Hono } from 'hono';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { readProfile } from '../read/profiles';

export const v1ProfilesRoute = new Hono<AppEnv>().get('/v1/profiles/:profileId', requireClient, readRateLimit, async (c) => {
  const profileId = c.req.param('profileId');
  if (profileId.length < 1 || profileId.length > 256) throw new ApiError(400, 'invalid_request', 'profileId must be 1 to 256 characters');
  const p = await readProfile(clickhouse(getConfig(c.env).clickhouse), c.get('project').projectId, profileId);
  if (!p) throw new ApiError(404, 'profile_not_found', `no identify, increment or decrement event names profile ${profileId}`);
  return c.json({
    id: profileId,
    properties: p.properties,
    firstSeenAt: new Date(p.firstSeenMs).toISOString(),
    updatedAt: new Date(p.lastUpdatedMs).toISOString(),
  });
});
