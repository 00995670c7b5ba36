// The vehicle registry (D1) and the live view of a project's vehicles: registry entries joined
// with their live positions, the status computed at read time.
import { and, asc, eq, isNotNull } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { fleetCursors, vehicles } from '../db/schema';
import type { FleetRules } from './rules';
import { liveStatus, type LivePosition, type LiveStatus } from './status';
import { deviceKey } from './store';

export interface Vehicle {
  deviceId: string;
  name: string | null;
  plate: string | null;
  driver: string | null;
  group: string | null;
  timezone: string | null;
}

export type VehiclePatch = Partial<Omit<Vehicle, 'deviceId'>>;

const toVehicle = (r: typeof vehicles.$inferSelect): Vehicle => ({ deviceId: r.deviceId, name: r.name, plate: r.plate, driver: r.driver, group: r.group, timezone: r.timezone });

/**
 * Sets the given fields of a vehicle's entry (absent ones keep their value; null clears).
 * `mileageRebuildJob` (given with a zone change): the rebuild that leaves its mileage rows all in
 * the new zone, null when they already are.
 */
export async function upsertVehicle(
  d1: D1Database,
  projectId: string,
  deviceId: string,
  patch: VehiclePatch,
  nowMs = Date.now(),
  mileageRebuildJob?: string | null,
): Promise<Vehicle> {
  const set = { ...patch, ...(mileageRebuildJob !== undefined ? { mileageRebuildJob } : {}), updatedAt: nowMs };
  const [row] = await drizzle(d1)
    .insert(vehicles)
    .values({ projectId, deviceId, name: null, plate: null, driver: null, group: null, timezone: null, ...set })
    .onConflictDoUpdate({ target: [vehicles.projectId, vehicles.deviceId], set })
    .returning();
  return toVehicle(row!);
}

export async function getVehicle(d1: D1Database, projectId: string, deviceId: string): Promise<Vehicle | null> {
  const row = await drizzle(d1).select().from(vehicles).where(and(eq(vehicles.projectId, projectId), eq(vehicles.deviceId, deviceId))).get();
  return row ? toVehicle(row) : null;
}

/** The project's vehicles (of one group, if given), by device id. */
export async function listVehicles(d1: D1Database, projectId: string, group?: string): Promise<Vehicle[]> {
  const where = group === undefined ? eq(vehicles.projectId, projectId) : and(eq(vehicles.projectId, projectId), eq(vehicles.group, group));
  return (await drizzle(d1).select().from(vehicles).where(where).orderBy(asc(vehicles.deviceId)).all()).map(toVehicle);
}

/**
 * The project's vehicles whose mileage rows may be keyed by another zone than their registry zone
 * (a zone-change rebuild not finished yet): mileage reads widen their window. Read after the
 * registry entries, so a zone change between the two reads is seen here.
 */
export async function mileageRebuildDevices(d1: D1Database, projectId: string): Promise<Set<string>> {
  const rows = await drizzle(d1)
    .select({ deviceId: vehicles.deviceId })
    .from(vehicles)
    .where(and(eq(vehicles.projectId, projectId), isNotNull(vehicles.mileageRebuildJob)))
    .all();
  return new Set(rows.map((r) => r.deviceId));
}

/** The zone-change rebuild `jobId` is done: the vehicle's mileage rows are all of its registry zone, unless a later change started another. */
export async function finishMileageRebuild(d1: D1Database, projectId: string, deviceId: string, jobId: string): Promise<void> {
  await drizzle(d1)
    .update(vehicles)
    .set({ mileageRebuildJob: null })
    .where(and(eq(vehicles.projectId, projectId), eq(vehicles.deviceId, deviceId), eq(vehicles.mileageRebuildJob, jobId)))
    .run();
}

/** Devices that ever sent positions (they have a fleet cursor), registered or not. */
export async function positionDevices(d1: D1Database, projectId: string): Promise<string[]> {
  const rows = await drizzle(d1).select({ deviceId: fleetCursors.deviceId }).from(fleetCursors).where(eq(fleetCursors.projectId, projectId)).orderBy(asc(fleetCursors.deviceId)).all();
  return rows.map((r) => r.deviceId);
}

/** The first `limit` devices of the project that have a fleet cursor, by device id. */
export async function fleetCursorPage(d1: D1Database, projectId: string, limit: number): Promise<string[]> {
  const rows = await drizzle(d1).select({ deviceId: fleetCursors.deviceId }).from(fleetCursors).where(eq(fleetCursors.projectId, projectId)).orderBy(asc(fleetCursors.deviceId)).limit(limit).all();
  return rows.map((r) => r.deviceId);
}

export const emptyVehicle = (deviceId: string): Vehicle => ({ deviceId, name: null, plate: null, driver: null, group: null, timezone: null });

export interface LiveView {
  lat: number;
  lon: number;
  speed: number | null;
  heading: number | null;
  ignition: boolean | null;
  at: string;
  status: LiveStatus;
}

export function liveView(live: LivePosition, nowMs: number, rules: FleetRules): LiveView {
  const f = live.fix;
  return {
    lat: f.lat,
    lon: f.lon,
    speed: f.speedKmh ?? null,
    heading: f.heading ?? null,
    ignition: f.ignition ?? null,
    at: new Date(f.atMs).toISOString(),
    status: liveStatus(live, nowMs, rules),
  };
}

/** Most devices one D1 statement asks about (D1 binds at most 100 parameters). */
const ZONES_PER_STATEMENT = 90;

/**
 * Statements reading the registry time zone of each device (to ride in a D1 batch with others;
 * `zonesFrom` reads their answers): the zone its daily mileage rows are keyed by.
 */
export function zoneStatements(d1: D1Database, devices: readonly { projectId: string; deviceId: string }[]): D1PreparedStatement[] {
  const byProject = new Map<string, string[]>();
  for (const d of devices) byProject.set(d.projectId, [...(byProject.get(d.projectId) ?? []), d.deviceId]);
  const out: D1PreparedStatement[] = [];
  for (const [projectId, ids] of byProject) {
    for (let i = 0; i < ids.length; i += ZONES_PER_STATEMENT) {
      const part = ids.slice(i, i + ZONES_PER_STATEMENT);
      out.push(
        d1
          .prepare(`SELECT project_id, device_id, timezone FROM vehicles WHERE project_id = ?1 AND timezone IS NOT NULL AND device_id IN (${part.map((_, k) => `?${k + 2}`).join(', ')})`)
          .bind(projectId, ...part),
      );
    }
  }
  return out;
}

/** The zones the answers of zoneStatements name, by deviceKey (only devices registered with one). */
export function zonesFrom(results: readonly D1Result[]): Map<string, string> {
  const zones = new Map<string, string>();
  for (const r of results) for (const row of r.results as Array<{ project_id: string; device_id: string; timezone: string | null }>) {
    if (row.timezone) zones.set(deviceKey({ projectId: row.project_id, deviceId: row.device_id }), row.timezone);
  }
  return zones;
}

/** The registry time zone of each device (by deviceKey; only those registered with one), in one D1 batch. */
export async function registryZones(d1: D1Database, devices: readonly { projectId: string; deviceId: string }[]): Promise<Map<string, string>> {
  const statements = zoneStatements(d1, devices);
  return statements.length ? zonesFrom(await d1.batch(statements)) : new Map();
}
