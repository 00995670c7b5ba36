// Fleet storage: fixes read from `events`, and the derived stretches, trips, daily mileage rows and
// live position in ClickHouse (versioned ReplacingMergeTree rows, see migrations/clickhouse/0008).
import type { ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { averageSpeedKmh } from './geo';
import type { ResumePoint } from './incremental';
import { localDates, localMidnights, MILEAGE_BUCKET_MS, type MileageSpan } from './mileage';
import { checkPositionProperties, fixFromPosition, POSITION_EVENT_NAME, type Fix, type PositionProperties } from './position';
import { analysisRulesKey, type FleetRules } from './rules';
import type { LivePosition } from './status';
import type { Stretch, StretchEnd, Trip, TripEndReason } from './trips';

const DAY_MS = 86_400_000;

/** Every stored `position` fix of a device with fromMs ≤ atMs ≤ toMs (any accuracy; copies of an id included). */
export async function readFixes(ch: ClickHouse, projectId: string, deviceId: string, fromMs: number, toMs: number): Promise<Fix[]> {
  const rows = await ch.query<FixRow>(
    `SELECT toString(id) AS id, created_at_ms AS at, properties FROM events
      WHERE project_id = {p:String} AND device_id = {d:String}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
        AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
        AND type = 'track' AND name = {name:String}`,
    { p: projectId, d: deviceId, ...dateTimeBounds(fromMs, toMs), from: fromMs, to: toMs, name: POSITION_EVENT_NAME },
  );
  const fixes: Fix[] = [];
  for (const r of rows) pushFix(fixes, r);
  return fixes;
}

interface FixRow {
  id: string;
  at: number;
  properties: string;
}

const finite = (v: unknown, lo: number, hi: number) => typeof v === 'number' && Number.isFinite(v) && v >= lo && v <= hi;
const optionalFinite = (v: unknown, lo: number, hi: number) => v === undefined || v === null || finite(v, lo, hi);

/**
 * Properties that PositionPropertiesSchema certainly accepts, checked by hand: a recompute re-reads
 * a whole open stretch, and the schema's parse was most of its cost. Anything else goes to the schema.
 */
function plainPosition(p: unknown): p is PositionProperties {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return false;
  const o = p as Record<string, unknown>;
  return (
    finite(o.lat, -90, 90) &&
    finite(o.lon, -180, 180) &&
    optionalFinite(o.speed, 0, Infinity) &&
    optionalFinite(o.heading, 0, 360) &&
    optionalFinite(o.accuracy, 0, Infinity) &&
    optionalFinite(o.altitude, -Infinity, Infinity) &&
    (o.ignition === undefined || o.ignition === null || typeof o.ignition === 'boolean')
  );
}

function pushFix(fixes: Fix[], r: FixRow): void {
  let props: unknown;
  try {
    props = JSON.parse(r.properties);
  } catch {
    return;
  }
  if (plainPosition(props)) {
    fixes.push(fixFromPosition(r.id, Number(r.at), props));
    return;
  }
  // Rows stored before per-row validation existed (or by an import) may be malformed: not fixes.
  const check = checkPositionProperties(props);
  if (check.ok) fixes.push(fixFromPosition(r.id, Number(r.at), check.properties));
}

// ---------------------------------------------------------------------------------------------
// Batched reads: many devices (of any projects), each with its own window, in one query

/** A device and a window of its times (what "from" means depends on the read). */
export interface DeviceWindow {
  projectId: string;
  deviceId: string;
  fromMs: number;
  toMs: number;
}

export const deviceKey = (d: { projectId: string; deviceId: string }) => `${d.projectId}\u0000${d.deviceId}`;

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const utf8 = new TextEncoder();
/** The UTF-8 bytes of `s` as hex (ASCII ids, the common case, without encoding them first). */
function hex(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return Array.from(utf8.encode(s), (b) => HEX_BYTE[b]!).join('');
    out += HEX_BYTE[c]!;
  }
  return out;
}

/**
 * The windows as external data: `windows` rows `hex(project):hex(device):from:to` (ids may hold any
 * character; hex holds no `:`), read back by WINDOWS; `projects` and `devices` for the key index.
 */
function windowLists(windows: readonly DeviceWindow[]) {
  return {
    windows: windows.map((w) => `${hex(w.projectId)}:${hex(w.deviceId)}:${Math.trunc(w.fromMs)}:${Math.trunc(w.toMs)}`),
    projects: [...new Set(windows.map((w) => w.projectId))],
    devices: [...new Set(windows.map((w) => w.deviceId))],
  };
}

/** The `windows` external table as (project_id, device_id, lo, hi), to join on the device. */
const WINDOWS = `(SELECT unhex(w[1]) AS project_id, unhex(w[2]) AS device_id, toInt64(w[3]) AS lo, toInt64(w[4]) AS hi
   FROM (SELECT splitByChar(':', value) AS w FROM windows)) AS win`;
const LISTED = 'project_id IN (SELECT value FROM projects) AND device_id IN (SELECT value FROM devices)';

function byDevice<T extends { project_id: string; device_id: string }, U>(rows: readonly T[], to: (r: T) => U): Map<string, U[]> {
  const out = new Map<string, U[]>();
  for (const r of rows) {
    const key = deviceKey({ projectId: r.project_id, deviceId: r.device_id });
    let list = out.get(key);
    if (!list) out.set(key, (list = []));
    list.push(to(r));
  }
  return out;
}

/** Every stored `position` fix of each device inside its window [fromMs, toMs], by deviceKey. */
export async function readFixesOf(ch: ClickHouse, windows: readonly DeviceWindow[]): Promise<Map<string, Fix[]>> {
  const out = new Map<string, Fix[]>();
  if (windows.length === 0) return out;
  const fromMs = Math.min(...windows.map((w) => w.fromMs));
  const toMs = Math.max(...windows.map((w) => w.toMs));
  const rows = await ch.query<FixRow & { project_id: string; device_id: string }>(
    `SELECT project_id, device_id, toString(id) AS id, created_at_ms AS at, properties
       FROM events ALL INNER JOIN ${WINDOWS} USING (project_id, device_id)
      WHERE ${LISTED}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
        AND created_at_ms >= lo AND created_at_ms <= hi
        AND type = 'track' AND name = {name:String}`,
    { ...dateTimeBounds(fromMs, toMs), name: POSITION_EVENT_NAME },
    windowLists(windows),
  );
  for (const r of rows) {
    const key = deviceKey({ projectId: r.project_id, deviceId: r.device_id });
    let fixes = out.get(key);
    if (!fixes) out.set(key, (fixes = []));
    pushFix(fixes, r);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Stretches

interface StretchRow {
  start_ms: number;
  end_ms: number;
  last_accepted_ms: number;
  counted_m: number;
  end_reason: string;
}

/**
 * A stretch as stored, with its `resume` text: the device's last stretch keeps there where its
 * analysis stopped (resumeText); '' for every other stretch, and for rows from before the column.
 */
export interface StoredStretch extends Stretch {
  resume: string;
}

/** Layout of the stored resume text; text of another layout is not continued (the window is re-read). */
const RESUME_LAYOUT = 1;

/** The stored form of a resume point: its layout and the rules it was analysed under with it. */
export function resumeText(point: ResumePoint | null, rules: FleetRules): string {
  return point ? JSON.stringify({ v: RESUME_LAYOUT, rules: analysisRulesKey(rules), throughMs: point.throughMs, state: point.state }) : '';
}

/** The resume point of stored text, or null when there is none to continue under `rules`. */
export function parseResume(text: string, rules: FleetRules): ResumePoint | null {
  if (!text) return null;
  let o: { v?: unknown; rules?: unknown; throughMs?: unknown; state?: unknown };
  try {
    o = JSON.parse(text);
  } catch {
    return null;
  }
  if (o === null || typeof o !== 'object' || o.v !== RESUME_LAYOUT || o.rules !== analysisRulesKey(rules)) return null;
  if (typeof o.throughMs !== 'number' || o.state === null || typeof o.state !== 'object') return null;
  return { throughMs: o.throughMs, state: o.state as ResumePoint['state'] };
}

const toStretch = (r: StretchRow): Stretch => ({
  startMs: Number(r.start_ms),
  endMs: Number(r.end_ms),
  lastAcceptedMs: Number(r.last_accepted_ms),
  countedM: Number(r.counted_m),
  end: r.end_reason as StretchEnd,
});

/** The current (highest-version, not deleted) rows of a fleet table for one device, as a subquery. */
const CURRENT_STRETCHES = `SELECT start_ms, end_ms, last_accepted_ms, counted_m, end_reason, deleted FROM fleet_stretches
  WHERE project_id = {p:String} AND device_id = {d:String} AND %WHERE%
  ORDER BY start_ms, version DESC LIMIT 1 BY start_ms`;

async function currentStretches(ch: ClickHouse, projectId: string, deviceId: string, where: string, params: Record<string, number>, tail = ''): Promise<Stretch[]> {
  const rows = await ch.query<StretchRow>(
    `SELECT start_ms, end_ms, last_accepted_ms, counted_m, end_reason FROM (${CURRENT_STRETCHES.replace('%WHERE%', where)}) WHERE deleted = 0 ${tail}`,
    { p: projectId, d: deviceId, ...params },
  );
  return rows.map(toStretch);
}

/**
 * The part of each device's stretches a recompute for fixes from its `fromMs` on can touch: the
 * last stretch starting before `fromMs` and everything after it, by deviceKey, in start order.
 */
export async function stretchesFrom(ch: ClickHouse, devices: readonly Omit<DeviceWindow, 'toMs'>[]): Promise<Map<string, StoredStretch[]>> {
  if (devices.length === 0) return new Map();
  const current = (cond: string) => `SELECT project_id, device_id, start_ms, end_ms, last_accepted_ms, counted_m, end_reason, resume FROM (
      SELECT project_id, device_id, start_ms, end_ms, last_accepted_ms, counted_m, end_reason, resume, deleted
        FROM fleet_stretches ALL INNER JOIN ${WINDOWS} USING (project_id, device_id)
       WHERE ${LISTED} AND ${cond}
       ORDER BY project_id, device_id, start_ms, version DESC LIMIT 1 BY project_id, device_id, start_ms)
     WHERE deleted = 0`;
  const rows = await ch.query<StretchRow & { project_id: string; device_id: string; resume: string }>(
    `SELECT * FROM (${current('start_ms >= lo')})
     UNION ALL
     SELECT * FROM (${current('start_ms < lo')} ORDER BY project_id, device_id, start_ms DESC LIMIT 1 BY project_id, device_id)`,
    {},
    windowLists(devices.map((d) => ({ ...d, toMs: d.fromMs }))),
  );
  const out = byDevice(rows, (r): StoredStretch => ({ ...toStretch(r), resume: r.resume }));
  for (const list of out.values()) list.sort((a, b) => a.startMs - b.startMs);
  return out;
}

/** Stretches overlapping [sinceMs, untilMs], for a consistent track read. */
export async function stretchesOverlapping(ch: ClickHouse, projectId: string, deviceId: string, sinceMs: number, untilMs: number): Promise<Stretch[]> {
  return currentStretches(ch, projectId, deviceId, 'start_ms <= {until:Int64}', { until: Math.trunc(untilMs), since: Math.trunc(sinceMs) }, 'AND end_ms >= {since:Int64} ORDER BY start_ms');
}

export interface Versioned {
  projectId: string;
  deviceId: string;
  version: number;
}

/** `fleet_stretches` rows: the stretches as they are now, and `deleted` rows for those gone. */
export function stretchRows(v: Versioned, stretches: readonly StoredStretch[], removedStartMs: readonly number[]): object[] {
  return [
    ...stretches.map((s) => ({ project_id: v.projectId, device_id: v.deviceId, start_ms: s.startMs, end_ms: s.endMs, last_accepted_ms: s.lastAcceptedMs, counted_m: s.countedM, end_reason: s.end, resume: s.resume, deleted: 0, version: v.version })),
    ...removedStartMs.map((t) => ({ project_id: v.projectId, device_id: v.deviceId, start_ms: t, end_ms: t, last_accepted_ms: t, counted_m: 0, end_reason: 'open', resume: '', deleted: 1, version: v.version })),
  ];
}

// ---------------------------------------------------------------------------------------------
// Trips

/** A stored trip: the API fields and its 15-minute buckets (tripStarts 1 in its first). */
export interface StoredTrip {
  deviceId: string;
  startAt: number;
  endAt: number;
  distanceM: number;
  maxSpeedKmh: number;
  start: { lat: number; lon: number };
  end: { lat: number; lon: number };
  endReason: TripEndReason;
  buckets: Array<{ startMs: number; distanceM: number; movingMs: number }>;
}

interface TripRow {
  device_id: string;
  start_at_ms: number;
  end_at_ms: number;
  distance_m: number;
  max_speed_kmh: number;
  start_lat: number;
  start_lon: number;
  end_lat: number;
  end_lon: number;
  end_reason: string;
  bucket_ms: number[];
  bucket_distance_m: number[];
  bucket_moving_ms: number[];
}

const TRIP_COLUMNS = 'device_id, start_at_ms, end_at_ms, distance_m, max_speed_kmh, start_lat, start_lon, end_lat, end_lon, end_reason, bucket_ms, bucket_distance_m, bucket_moving_ms';

const toStoredTrip = (r: TripRow): StoredTrip => ({
  deviceId: r.device_id,
  startAt: Number(r.start_at_ms),
  endAt: Number(r.end_at_ms),
  distanceM: Number(r.distance_m),
  maxSpeedKmh: Number(r.max_speed_kmh),
  start: { lat: Number(r.start_lat), lon: Number(r.start_lon) },
  end: { lat: Number(r.end_lat), lon: Number(r.end_lon) },
  endReason: r.end_reason as TripEndReason,
  buckets: r.bucket_ms.map((b, k) => ({ startMs: Number(b), distanceM: Number(r.bucket_distance_m[k]), movingMs: Number(r.bucket_moving_ms[k]) })),
});

/** A trip of an analysis as stored. */
export function storedTrip(deviceId: string, t: Trip): StoredTrip {
  return {
    deviceId,
    startAt: t.startAt,
    endAt: t.endAt,
    distanceM: t.distanceM,
    maxSpeedKmh: t.maxSpeedKmh,
    start: t.start,
    end: t.end,
    endReason: t.endReason,
    buckets: t.buckets.map((b) => ({ startMs: b.startMs, distanceM: b.distanceM, movingMs: b.movingMs ?? 0 })),
  };
}

/** A stored trip in the shape FleetHistory keeps. */
export function historyTrip(t: StoredTrip): Trip {
  const durationMs = t.endAt - t.startAt;
  return {
    startAt: t.startAt,
    endAt: t.endAt,
    durationMs,
    distanceM: t.distanceM,
    maxSpeedKmh: t.maxSpeedKmh,
    avgSpeedKmh: averageSpeedKmh(t.distanceM, durationMs),
    start: t.start,
    end: t.end,
    endReason: t.endReason,
    buckets: t.buckets.map((b, k) => ({ ...b, endMs: b.startMs + MILEAGE_BUCKET_MS, tripStarts: k === 0 ? 1 : 0 })),
  };
}

/**
 * Current trips of `deviceIds` (a value list: any number of devices) that overlap [fromMs, toMs]:
 * end at or after `fromMs` and start at or before `toMs`.
 */
export async function tripsOverlapping(ch: ClickHouse, projectId: string, deviceIds: readonly string[], fromMs: number, toMs: number): Promise<StoredTrip[]> {
  if (deviceIds.length === 0) return [];
  const rows = await ch.query<TripRow>(
    `SELECT ${TRIP_COLUMNS} FROM (
       SELECT ${TRIP_COLUMNS}, deleted FROM fleet_trips
        WHERE project_id = {p:String} AND device_id IN (SELECT value FROM devices) AND start_at_ms <= {to:Int64}
        ORDER BY device_id, start_at_ms, version DESC LIMIT 1 BY device_id, start_at_ms)
      WHERE deleted = 0 AND end_at_ms >= {from:Int64} ORDER BY device_id, start_at_ms`,
    { p: projectId, from: Math.trunc(fromMs), to: Math.trunc(toMs) },
    { devices: [...deviceIds] },
  );
  return rows.map(toStoredTrip);
}

/**
 * Current trips of each device that end at or after its `fromMs` (so also all that start then or
 * later), by deviceKey, in start order.
 */
export async function tripsEndingFrom(ch: ClickHouse, devices: readonly Omit<DeviceWindow, 'toMs'>[]): Promise<Map<string, StoredTrip[]>> {
  if (devices.length === 0) return new Map();
  // The newest version of every trip key first: a `deleted` row's end is its start, so the window
  // applies only after.
  const rows = await ch.query<TripRow & { project_id: string }>(
    `SELECT project_id, ${TRIP_COLUMNS} FROM (
       SELECT project_id, ${TRIP_COLUMNS}, deleted, lo FROM fleet_trips ALL INNER JOIN ${WINDOWS} USING (project_id, device_id)
        WHERE ${LISTED}
        ORDER BY project_id, device_id, start_at_ms, version DESC LIMIT 1 BY project_id, device_id, start_at_ms)
      WHERE deleted = 0 AND end_at_ms >= lo ORDER BY project_id, device_id, start_at_ms`,
    {},
    windowLists(devices.map((d) => ({ ...d, toMs: d.fromMs }))),
  );
  return byDevice(rows, toStoredTrip);
}

/** `fleet_trips` rows: the trips as they are now, and `deleted` rows for those gone. */
export function tripRows(v: Versioned, trips: readonly StoredTrip[], removedStartAt: readonly number[]): object[] {
  const base = { project_id: v.projectId, device_id: v.deviceId, version: v.version };
  return [
    ...trips.map((t) => ({
      ...base,
      start_at_ms: t.startAt,
      end_at_ms: t.endAt,
      distance_m: t.distanceM,
      max_speed_kmh: t.maxSpeedKmh,
      start_lat: t.start.lat,
      start_lon: t.start.lon,
      end_lat: t.end.lat,
      end_lon: t.end.lon,
      end_reason: t.endReason,
      bucket_ms: t.buckets.map((b) => b.startMs),
      bucket_distance_m: t.buckets.map((b) => b.distanceM),
      bucket_moving_ms: t.buckets.map((b) => b.movingMs),
      deleted: 0,
    })),
    ...removedStartAt.map((t) => ({
      ...base,
      start_at_ms: t,
      end_at_ms: t,
      distance_m: 0,
      max_speed_kmh: 0,
      start_lat: 0,
      start_lon: 0,
      end_lat: 0,
      end_lon: 0,
      end_reason: 'open',
      bucket_ms: [],
      bucket_distance_m: [],
      bucket_moving_ms: [],
      deleted: 1,
    })),
  ];
}

// ---------------------------------------------------------------------------------------------
// Daily mileage rows

/**
 * One (device, local day) aggregate: the day's non-empty 15-minute buckets. The day is a calendar
 * day of the vehicle's registry zone when the row was written (UTC without one).
 */
export interface MileageDayRow {
  deviceId: string;
  /** Calendar date in `zone`, YYYY-MM-DD. */
  day: string;
  /** IANA zone of `day`. */
  zone: string;
  buckets: Array<{ startMs: number; distanceM: number; movingMs: number; tripStarts: number }>;
}

/** A day row as read back, with the version of the recompute that wrote it. */
export interface StoredMileageDayRow extends MileageDayRow {
  version: number;
}

export const utcDay = (ms: number) => new Date(Math.floor(ms / DAY_MS) * DAY_MS).toISOString().slice(0, 10);

/**
 * The stored form of a row's zone: '' for UTC, as rows written before zones were (so a UTC row
 * written now replaces such a row by key), else the IANA name.
 */
export const storedZone = (zone: string) => (zone === 'UTC' ? '' : zone);
const zoneOfStored = (stored: string) => stored || 'UTC';

/**
 * The day rows `trips` give for the local days `days` of `zone` (every listed day gets a row, empty
 * when no trip touches it). Trips are summed in start order, so equal sets give equal floats.
 */
export function mileageRows(deviceId: string, days: readonly string[], trips: readonly StoredTrip[], zone = 'UTC'): MileageDayRow[] {
  const byDay = new Map<string, Map<number, { distanceM: number; movingMs: number; tripStarts: number }>>(days.map((d) => [d, new Map()]));
  const dayOf = localDates(zone);
  const sorted = [...trips].sort((a, b) => a.startAt - b.startAt);
  for (const t of sorted) {
    const startBucket = Math.floor(t.startAt / MILEAGE_BUCKET_MS) * MILEAGE_BUCKET_MS;
    const buckets = t.buckets.some((b) => b.startMs === startBucket) ? t.buckets : [{ startMs: startBucket, distanceM: 0, movingMs: 0 }, ...t.buckets];
    for (const b of buckets) {
      const day = byDay.get(dayOf(b.startMs));
      if (!day) continue;
      let acc = day.get(b.startMs);
      if (!acc) day.set(b.startMs, (acc = { distanceM: 0, movingMs: 0, tripStarts: 0 }));
      acc.distanceM += b.distanceM;
      acc.movingMs += b.movingMs;
      if (b.startMs === startBucket) acc.tripStarts += 1;
    }
  }
  return [...byDay.entries()].map(([day, m]) => ({
    deviceId,
    day,
    zone,
    buckets: [...m.entries()].sort((a, b) => a[0] - b[0]).map(([startMs, b]) => ({ startMs, ...b })),
  }));
}

interface MileageRow {
  device_id: string;
  day_text: string;
  zone: string;
  version: number;
  bucket_ms: number[];
  distance_m: number[];
  moving_ms: number[];
  trip_starts: number[];
}

/** The widest offsets of any zone from UTC: a local date of an instant is its UTC date ±1. */
const MAX_WEST_MS = 12 * 3_600_000;
const MAX_EAST_MS = 14 * 3_600_000;

/**
 * A device whose day rows a read needs: those of `zone` (its registry zone) overlapping [startMs,
 * endMs). `otherZones`: rows of other zones may exist (a zone-change rebuild not finished yet).
 */
export interface MileageRead {
  deviceId: string;
  zone: string;
  startMs: number;
  endMs: number;
  otherZones?: boolean;
}

const MILEAGE_ROWS = `SELECT device_id, toString(day) AS day_text, zone, version, bucket_ms, distance_m, moving_ms, trip_starts FROM fleet_mileage_days
      WHERE project_id = {p:String} AND device_id IN (SELECT value FROM devices)`;
const NEWEST_PER_KEY = 'ORDER BY device_id, day, zone, version DESC LIMIT 1 BY device_id, day, zone';

/**
 * Current day rows of each device that overlap its window: the aggregate, never raw fixes. The
 * table is sorted by (project, day, device), so one query over the window's dates reads the
 * project's rows of those days, about one per vehicle-day for a fleet. Rows of the device's `zone`
 * are kept by their own dates, so N local days of that zone are N rows per device. Rows of any
 * other zone can overlap the window from a date either side: those dates are read only for the
 * devices that may have such rows (`otherZones`), in a second query; see mileageSpans for how the
 * zones are combined. The windows are applied here, not in the query: joined as a table they would
 * add a row read per device. `readRows` is what ClickHouse reports it read; `rows` those kept.
 */
export async function readMileageRows(ch: ClickHouse, projectId: string, reads: readonly MileageRead[]): Promise<{ rows: StoredMileageDayRow[]; readRows: number }> {
  const wanted = reads.filter((r) => r.endMs > r.startMs);
  if (wanted.length === 0) return { rows: [], readRows: 0 };
  const dayOf = new Map<string, (ms: number) => string>();
  const windows = new Map(
    wanted.map((r) => {
      let f = dayOf.get(r.zone);
      if (!f) dayOf.set(r.zone, (f = localDates(r.zone)));
      const lo = f(r.startMs);
      const hi = f(r.endMs - 1);
      const other = r.otherZones === true;
      return [r.deviceId, { zone: storedZone(r.zone), lo, hi, other, anyLo: other ? utcDay(r.startMs - MAX_WEST_MS) : lo, anyHi: other ? utcDay(r.endMs - 1 + MAX_EAST_MS) : hi }];
    }),
  );
  const all = [...windows.values()];
  const from = all.reduce((m, w) => (w.lo < m ? w.lo : m), all[0]!.lo);
  const to = all.reduce((m, w) => (w.hi > m ? w.hi : m), all[0]!.hi);
  const widened = [...windows].filter(([, w]) => w.other).map(([d]) => d);
  const [own, others] = await Promise.all([
    ch.queryStats<MileageRow>(`${MILEAGE_ROWS} AND day >= toDate({from:String}) AND day <= toDate({to:String}) ${NEWEST_PER_KEY}`, { p: projectId, from, to }, { devices: [...windows.keys()] }),
    widened.length === 0
      ? { rows: [] as MileageRow[], readRows: 0 }
      : ch.queryStats<MileageRow>(
          `${MILEAGE_ROWS} AND day >= toDate({anyFrom:String}) AND day <= toDate({anyTo:String}) AND (day < toDate({from:String}) OR day > toDate({to:String})) ${NEWEST_PER_KEY}`,
          {
            p: projectId,
            from,
            to,
            anyFrom: utcDay(Math.min(...wanted.filter((r) => r.otherZones).map((r) => r.startMs)) - MAX_WEST_MS),
            anyTo: utcDay(Math.max(...wanted.filter((r) => r.otherZones).map((r) => r.endMs)) - 1 + MAX_EAST_MS),
          },
          { devices: widened },
        ),
  ]);
  const kept = [...own.rows, ...others.rows].filter((r) => {
    const w = windows.get(r.device_id);
    if (!w) return false;
    return r.zone === w.zone ? r.day_text >= w.lo && r.day_text <= w.hi : r.day_text >= w.anyLo && r.day_text <= w.anyHi;
  });
  return {
    readRows: own.readRows + others.readRows,
    rows: kept.map((r) => ({
      deviceId: r.device_id,
      day: r.day_text,
      zone: zoneOfStored(r.zone),
      version: Number(r.version),
      buckets: r.bucket_ms.map((b, k) => ({ startMs: Number(b), distanceM: Number(r.distance_m[k]), movingMs: Number(r.moving_ms[k]), tripStarts: Number(r.trip_starts[k]) })),
    })),
  };
}

/** `fleet_mileage_days` rows. */
export function mileageInsertRows(v: Versioned, rows: readonly MileageDayRow[]): object[] {
  return rows.map((r) => ({
    project_id: v.projectId,
    device_id: v.deviceId,
    day: r.day,
    zone: storedZone(r.zone),
    bucket_ms: r.buckets.map((b) => b.startMs),
    distance_m: r.buckets.map((b) => b.distanceM),
    moving_ms: r.buckets.map((b) => b.movingMs),
    trip_starts: r.buckets.map((b) => b.tripStarts),
    version: v.version,
  }));
}

const bucketSpan = (b: MileageDayRow['buckets'][number]): MileageSpan => ({ startMs: b.startMs, endMs: b.startMs + MILEAGE_BUCKET_MS, distanceM: b.distanceM, movingMs: b.movingMs, tripStarts: b.tripStarts });

/**
 * One device's day rows as spans for `dailyMileage`. Rows of one zone never overlap: their buckets
 * are the answer. Rows of two zones do (the days of a vehicle whose zone changed, some rebuilt in
 * the new zone, some not yet): each row is the whole truth about its own day as of its version —
 * the recompute that wrote it summed every trip touching that day — so each bucket is taken from
 * the newest row whose day holds it, and from no other. A bucket missing from that row is empty,
 * even if an older row of the other zone still has it. No instant is counted twice, whatever
 * state the rebuild is in.
 */
export function mileageSpans(rows: readonly StoredMileageDayRow[]): MileageSpan[] {
  if (rows.every((r) => r.zone === rows[0]!.zone)) return rows.flatMap((r) => r.buckets.map(bucketSpan));
  const newestFirst = [...rows].sort((a, b) => b.version - a.version || (a.zone < b.zone ? -1 : a.zone > b.zone ? 1 : 0) || (a.day < b.day ? -1 : 1));
  const held: Array<{ startMs: number; endMs: number }> = [];
  const spans: MileageSpan[] = [];
  for (const r of newestFirst) {
    const day = localMidnights(r.zone, r.day, r.day)[0]!;
    for (const b of r.buckets) {
      if (!held.some((h) => b.startMs >= h.startMs && b.startMs < h.endMs)) spans.push(bucketSpan(b));
    }
    held.push(day);
  }
  return spans;
}

// ---------------------------------------------------------------------------------------------
// Live position

interface LiveRow {
  device_id: string;
  fix_id: string;
  at_ms: number;
  lat: number;
  lon: number;
  speed_kmh: number | null;
  heading: number | null;
  accuracy_m: number | null;
  altitude_m: number | null;
  ignition: number | null;
  counted_lat: number;
  counted_lon: number;
  counted_at_ms: number;
  moved_by_drift: number;
}

function toLive(r: LiveRow): LivePosition {
  const fix: Fix = { id: r.fix_id, atMs: Number(r.at_ms), lat: Number(r.lat), lon: Number(r.lon) };
  if (r.speed_kmh !== null) fix.speedKmh = Number(r.speed_kmh);
  if (r.heading !== null) fix.heading = Number(r.heading);
  if (r.accuracy_m !== null) fix.accuracyM = Number(r.accuracy_m);
  if (r.altitude_m !== null) fix.altitudeM = Number(r.altitude_m);
  if (r.ignition !== null) fix.ignition = Number(r.ignition) === 1;
  return { fix, countedPoint: { lat: Number(r.counted_lat), lon: Number(r.counted_lon), atMs: Number(r.counted_at_ms) }, movedByDrift: Number(r.moved_by_drift) === 1 };
}

/** The first and last event time of the project's stored positions; null when it has none. */
export async function positionTimeRange(ch: ClickHouse, projectId: string): Promise<{ fromMs: number; toMs: number } | null> {
  const [row] = await ch.query<{ n: string; from_ms: string; to_ms: string }>(
    `SELECT count() AS n, min(created_at_ms) AS from_ms, max(created_at_ms) AS to_ms FROM events
      WHERE project_id = {p:String} AND type = 'track' AND name = {name:String}`,
    { p: projectId, name: POSITION_EVENT_NAME },
  );
  return row && Number(row.n) > 0 ? { fromMs: Number(row.from_ms), toMs: Number(row.to_ms) } : null;
}

/** Live positions of a project's devices (all of them, or those listed). */
export async function readLive(ch: ClickHouse, projectId: string, deviceIds?: readonly string[]): Promise<Map<string, LivePosition>> {
  const filter = deviceIds ? 'AND device_id IN (SELECT value FROM devices)' : '';
  if (deviceIds && deviceIds.length === 0) return new Map();
  const rows = await ch.query<LiveRow>(
    `SELECT device_id, fix_id, at_ms, lat, lon, speed_kmh, heading, accuracy_m, altitude_m, ignition, counted_lat, counted_lon, counted_at_ms, moved_by_drift FROM (
       SELECT device_id, fix_id, at_ms, lat, lon, speed_kmh, heading, accuracy_m, altitude_m, ignition, counted_lat, counted_lon, counted_at_ms, moved_by_drift, deleted
         FROM fleet_live WHERE project_id = {p:String} ${filter}
        ORDER BY device_id, version DESC LIMIT 1 BY device_id)
      WHERE deleted = 0`,
    { p: projectId },
    deviceIds ? { devices: [...deviceIds] } : undefined,
  );
  return new Map(rows.map((r) => [r.device_id, toLive(r)]));
}

/** The `fleet_live` row of a live position. */
export function liveRow(v: Versioned, live: LivePosition): object {
  const f = live.fix;
  return {
    project_id: v.projectId,
    device_id: v.deviceId,
    fix_id: f.id,
    at_ms: f.atMs,
    lat: f.lat,
    lon: f.lon,
    speed_kmh: f.speedKmh ?? null,
    heading: f.heading ?? null,
    accuracy_m: f.accuracyM ?? null,
    altitude_m: f.altitudeM ?? null,
    ignition: f.ignition === undefined ? null : f.ignition ? 1 : 0,
    counted_lat: live.countedPoint.lat,
    counted_lon: live.countedPoint.lon,
    counted_at_ms: live.countedPoint.atMs,
    moved_by_drift: live.movedByDrift ? 1 : 0,
    version: v.version,
    deleted: 0,
  };
}

/** A `fleet_live` row that deletes the device's live position (no fix of it is accepted any more). */
export function liveDeletion(v: Versioned): object {
  return {
    project_id: v.projectId,
    device_id: v.deviceId,
    fix_id: '',
    at_ms: 0,
    lat: 0,
    lon: 0,
    speed_kmh: null,
    heading: null,
    accuracy_m: null,
    altitude_m: null,
    ignition: null,
    counted_lat: 0,
    counted_lon: 0,
    counted_at_ms: 0,
    moved_by_drift: 0,
    version: v.version,
    deleted: 1,
  };
}
