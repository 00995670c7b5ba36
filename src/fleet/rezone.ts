// A vehicle's registry zone changed: its daily mileage rows, keyed by calendar days of the old zone,
// are rebuilt in the new one by a fleet_recompute job (FleetRecomputeParams.zone).
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import { jobStore } from '../jobs/store';
import { POSITION_EVENT_NAME } from './position';
import { storedZone } from './store';

const DAY_MS = 86_400_000;
/** Live positions are at most 5 days old: the days a consumer may still be writing in the old zone. */
const RECENT_MS = 6 * DAY_MS;

/**
 * Writes the job that rebuilds the device's day rows in `zone` ('UTC' for none) over the days its
 * rows of other zones cover and the last few days; the job's id, or null when there is nothing
 * to rebuild (no rows of another zone, no position in the last days). The job is stored before the
 * registry changes and its first chunk sent after (sendCreatedJob): a zone change is never stored
 * without its rebuild, and a rebuild whose change did not land rewrites the rows in the zone the
 * registry still names, which changes nothing. Until the job is done, reads combine the rows of
 * both zones without counting anything twice (mileageSpans).
 */
export async function createRezoneJob(env: Env, projectId: string, deviceId: string, zone: string): Promise<string | null> {
  const [row] = await clickhouse(getConfig(env).clickhouse).query<{ n: number; lo: string; hi: string }>(
    `SELECT toUInt64(count()) AS n, toString(min(day)) AS lo, toString(max(day)) AS hi FROM fleet_mileage_days
      WHERE project_id = {p:String} AND device_id = {d:String} AND zone != {z:String}`,
    { p: projectId, d: deviceId, z: storedZone(zone) },
  );
  const now = Date.now();
  const some = row !== undefined && Number(row.n) > 0;
  // Nothing to rebuild and no recent position a consumer could still be analysing under the old
  // zone (a vehicle registered before it drives): no job, no wider reads.
  if (!some && !(await hasPositionsSince(env, projectId, deviceId, now - RECENT_MS))) return null;
  // A local day of any zone lies within a day either side of the same UTC date. With no rows of
  // another zone yet, the job still covers the last days: a consumer that looked the zone up
  // before the change may be writing rows of the old zone for them (positions are at most 5 days
  // old), and the reads widen for the vehicle until the job is done.
  const sinceMs = Math.min(some ? Date.parse(`${row!.lo}T00:00:00Z`) - DAY_MS : Infinity, now - RECENT_MS);
  // To a minute ahead at least, for the same consumers.
  const untilMs = Math.max(some ? Date.parse(`${row!.hi}T00:00:00Z`) + 2 * DAY_MS : -Infinity, now + 60_000);
  const job = await jobStore(env.DB).create(crypto.randomUUID(), 'fleet_recompute', { projectId, deviceId, sinceMs, untilMs, zone, reason: 'zone' }, Date.now());
  return job.id;
}

async function hasPositionsSince(env: Env, projectId: string, deviceId: string, sinceMs: number): Promise<boolean> {
  const [row] = await clickhouse(getConfig(env).clickhouse).query<{ n: string }>(
    `SELECT count() AS n FROM events
      WHERE project_id = {p:String} AND device_id = {d:String} AND created_at >= toDateTime({fromSec:Int64}) AND created_at_ms >= {from:Int64}
        AND type = 'track' AND name = {name:String}`,
    { p: projectId, d: deviceId, fromSec: Math.floor(sinceMs / 1000), from: sinceMs, name: POSITION_EVENT_NAME },
  );
  return Number(row?.n ?? 0) > 0;
}
