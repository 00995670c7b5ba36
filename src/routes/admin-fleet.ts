// Fleet reads for operators (the console): a project's live vehicles, a vehicle's track and trips,
// with the admin token instead of the project's credentials; same parameters and answers as /v1.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { requireAdmin } from '../auth';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { ADMIN_SECURITY, createRoute, errors, json, router, z } from './openapi';
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
