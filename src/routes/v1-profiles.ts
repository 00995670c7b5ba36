// GET /v1/profiles/:profileId — a profile folded from its identify/increment/decrement events.
import { readRateLimit, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { readProfile } from '../read/profiles';
import { CLIENT_SECURITY, createRoute, json, router, z } from './openapi';
import { readErrors } from './read-query';

const ProfileParam = z.object({ profileId: z.string().min(1).max(256).describe('the `profileId` the events named') });

const ProfileView = z
  .object({
    id: z.string(),
    properties: z.record(z.string(), z.unknown()).describe("identify fields and properties (the newest wins) and each counter's sum"),
    firstSeenAt: z.iso.datetime().describe('event time of its first operation'),
    updatedAt: z.iso.datetime().describe('event time of its latest operation'),
  })
  .openapi('Profile');

const route = createRoute({
  method: 'get',
  path: '/v1/profiles/{profileId}',
  summary: 'A profile folded from its identify, increment and decrement events',
  tags: ['read'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { params: ProfileParam },
  responses: { 200: json(ProfileView, 'the folded profile'), ...readErrors([], { 404: 'profile_not_found: no identify, increment or decrement event names it' }) },
});

export const v1ProfilesRoute = router().openapi(route, async (c) => {
  const { profileId } = c.req.valid('param');
  const p = await readProfile(clickhouse(getConfig(c.env).clickhouse), c.get('project').projectId, profileId);
  if (!p) throw new ApiError(404, 'profile_not_found', `no identify, increment or decrement event names profile ${profileId}`);
  return c.json(
    {
      id: profileId,
      properties: p.properties,
      firstSeenAt: new Date(p.firstSeenMs).toISOString(),
      updatedAt: new Date(p.lastUpdatedMs).toISOString(),
    },
    200,
  );
});
