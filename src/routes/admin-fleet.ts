// Fleet routes for operators: a project's live vehicles, a vehicle's track and trips (the console's,
// same answers as /v1 with the admin token), and the project's fleet rules.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { requireAdmin } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { projectOverrides, RulesContendedError, rulesInForce, setProjectRules } from '../fleet/project-rules';
import { FleetRulesOverridesSchema } from '../fleet/rules';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router, z } from './openapi';
import { LiveQuery, LiveVehicles, readFleetLive, readTrips, readVehicleTrack, TrackFeature, TrackQuery, TripsQuery, TripView } from './fleet';
import { DeviceParam } from './v1-devices-registry';

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
  request: { params: ProjectParam, query: LiveQuery },
  responses: { 200: json(LiveVehicles, 'vehicles that sent a position, by device id'), ...adminReadErrors() },
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

const Overrides = FleetRulesOverridesSchema.describe('overrides of the defaults; a field left out takes its default').openapi('FleetRulesOverrides');

const RulesView = z
  .object({
    projectId: z.string(),
    overrides: Overrides,
    rules: FleetRulesOverridesSchema.required().describe('the rules in force: defaults, FLEET_OFFLINE_AFTER_S, then the overrides'),
    recompute: z
      .object({ id: z.string(), state: z.string() })
      .nullable()
      .describe("the fleet_recompute job re-deriving the project's history under the new rules (PUT only; null when the analysis did not change)"),
  })
  .openapi('FleetRules');

const getRulesRoute = createRoute({
  method: 'get',
  path: '/admin/projects/{projectId}/fleet/rules',
  summary: "A project's fleet rules: its overrides and the rules in force",
  ...common,
  request: { params: ProjectParam },
  responses: {
    200: json(RulesView, 'the rules (`recompute` is null)'),
    ...errors(
      { 400: 'invalid_request' },
      { 401: 'unauthorized: a valid admin bearer token is required' },
      { 404: 'unknown_project' },
      { 503: `${ADMIN_DISABLED}; \`misconfigured\`` },
    ),
  },
});

const putRulesRoute = createRoute({
  method: 'put',
  path: '/admin/projects/{projectId}/fleet/rules',
  summary: "Replaces a project's fleet rule overrides ({} restores the defaults)",
  description:
    "New positions are analysed under the new rules at once. A change to any rule but `offlineAfterS` also starts a `fleet_recompute` job (written together with the rules) that re-derives the project's stored trips, mileage and live positions under them.",
  ...common,
  request: { params: ProjectParam, body: { required: true, content: { 'application/json': { schema: Overrides } } } },
  responses: {
    200: json(RulesView, 'the stored overrides, the rules in force and the recompute job'),
    ...errors(
      { 400: 'invalid_request (a field out of its bounds or unknown) or invalid_json' },
      { 401: 'unauthorized: a valid admin bearer token is required' },
      { 404: 'unknown_project' },
      { 409: 'rules_contended: other changes kept coming first; read the rules and retry' },
      { 415: 'unsupported_media_type: the body must be application/json' },
      { 503: `\`storage_unavailable\`: nothing was changed, see Retry-After; ${ADMIN_DISABLED}; \`misconfigured\`` },
    ),
  },
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
  })
  .openapi(getRulesRoute, async (c) => {
    const { projectId } = c.req.valid('param');
    c.header('Cache-Control', 'no-store');
    const overrides = await projectOverrides(c.env.DB, projectId);
    if (overrides === null) throw new ApiError(404, 'unknown_project', `no project ${projectId}`);
    return c.json({ projectId, overrides, rules: rulesInForce(c.env, overrides), recompute: null }, 200);
  })
  .openapi(putRulesRoute, async (c) => {
    const { projectId } = c.req.valid('param');
    c.header('Cache-Control', 'no-store');
    const overrides = c.req.valid('json');
    let set: Awaited<ReturnType<typeof setProjectRules>>;
    try {
      set = await setProjectRules(c.env, projectId, overrides);
    } catch (err) {
      if (err instanceof RulesContendedError) throw new ApiError(409, 'rules_contended', err.message);
      throw err;
    }
    if (set === null) throw new ApiError(404, 'unknown_project', `no project ${projectId}`);
    const recompute = set.recomputeJobId ? { id: set.recomputeJobId, state: 'enqueued' } : null;
    return c.json({ projectId, overrides, rules: rulesInForce(c.env, overrides), recompute }, 200);
  });
