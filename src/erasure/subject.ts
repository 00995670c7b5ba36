// A subject's rows in ClickHouse: how they are found (always through `events`, the only table that
// names both device and profile), counted and deleted, and what its device objects are told to clear.
import { monthOfMs } from '../archive/month';
import type { ClickHouse } from '../clickhouse/client';
import { deleteRows, PARKED_PAYLOADS, unparkPartitions, type DeletableTable } from '../clickhouse/mutations';
import type { QueryParams } from '../clickhouse/params';
import { dateTimeBounds } from '../clickhouse/time';
import type { SubjectLookup } from '../pipeline/dead-letter-erasure';
import type { Subject } from './params';

/** What an erasure removed from ClickHouse (distinct ids; a redelivered copy of a row counts once). */
export interface ClickHouseCounts {
  events: number;
  payloads: number;
  sessions: number;
  profileOps: number;
}

export const NO_CLICKHOUSE_ROWS: ClickHouseCounts = { events: 0, payloads: 0, sessions: 0, profileOps: 0 };

export function addCounts(a: ClickHouseCounts, b: ClickHouseCounts): ClickHouseCounts {
  return { events: a.events + b.events, payloads: a.payloads + b.payloads, sessions: a.sessions + b.sessions, profileOps: a.profileOps + b.profileOps };
}

export function subjectParams(s: Subject): QueryParams {
  return s.kind === 'device' ? { projectId: s.projectId, deviceId: s.deviceId } : { projectId: s.projectId, profileId: s.profileId };
}

/** The subject's events. */
function eventsWhere(s: Subject): string {
  return s.kind === 'device' ? 'project_id = {projectId:String} AND device_id = {deviceId:String}' : 'project_id = {projectId:String} AND profile_id = {profileId:String}';
}

/**
 * Sessions a profile erasure removes: those of its devices whose every event is the profile's (and
 * the sessions merged into them). A session shared with other events (anonymous ones before an
 * identify, another user on the same device) stays: it names no profile and holds no event content.
 */
function profileSessionsWhere(): string {
  const devices = 'SELECT device_id FROM events WHERE project_id = {projectId:String} AND profile_id = {profileId:String}';
  const only = `SELECT session_id FROM events
     WHERE project_id = {projectId:String} AND profile_id = {profileId:String} AND session_id != ''
       AND session_id NOT IN (SELECT session_id FROM events WHERE project_id = {projectId:String} AND profile_id != {profileId:String} AND device_id IN (${devices}))`;
  return `project_id = {projectId:String} AND device_id IN (${devices}) AND (id IN (${only}) OR merged_into IN (${only}))`;
}

/** The tables of events and what they carry (fleet tables are derived per device: see FLEET_TABLES). */
type EventTable = Exclude<DeletableTable, 'fleet_stretches' | 'fleet_trips' | 'fleet_mileage_days' | 'fleet_live'>;

/** WHERE of each table's rows of the subject. All but `events` find them through `events`, so `events` goes last. */
function tableWhere(s: Subject, table: EventTable): string {
  const ids = `SELECT id FROM events WHERE ${eventsWhere(s)}`;
  switch (table) {
    case 'events':
      return eventsWhere(s);
    case 'event_payloads':
      return `project_id = {projectId:String} AND id IN (${ids})`;
    case 'sessions':
      return s.kind === 'device' ? 'project_id = {projectId:String} AND device_id = {deviceId:String}' : profileSessionsWhere();
    case 'profile_ops':
      return s.kind === 'device' ? `project_id = {projectId:String} AND id IN (${ids})` : 'project_id = {projectId:String} AND profile_id = {profileId:String}';
    case 'legacy_id_map':
      return `project_id = {projectId:String} AND new_id IN (${ids})`;
  }
}

/** Deletion order: every table found through `events` before `events` itself. */
const DELETE_ORDER: readonly EventTable[] = ['event_payloads', 'profile_ops', 'sessions', 'legacy_id_map', 'events'];

async function countWhere(ch: ClickHouse, table: string, where: string, params: QueryParams): Promise<number> {
  const count = async (from: string) => Number((await ch.query<{ n: number | string }>(`SELECT uniqExact(id) AS n FROM ${from} WHERE ${where}`, params))[0]?.n ?? 0);
  if (table !== 'event_payloads') return count(table);
  // Payloads moved aside by a partition drop under way (or cut short) are still there to erase.
  // Read main, parked, main: a row that goes aside and back meanwhile is seen in one of them.
  const before = await count(table);
  const parked = await count(PARKED_PAYLOADS);
  const after = await count(table);
  return Math.max(before, after) + parked;
}

/**
 * Payloads a partition drop left parked (cut short) come back to `event_payloads` before an erasure
 * counts: moving them back never loses a row, and a drop under way that meets it takes its long,
 * safe way. (A drop does not start while an erasure or project deletion is under way.)
 */
async function unparkAll(ch: ClickHouse): Promise<void> {
  await unparkPartitions(ch, 'event_payloads', 'all');
}

/** The subject's rows in each table, before they are deleted (the job's result), and again to verify. */
export async function countSubject(ch: ClickHouse, s: Subject): Promise<ClickHouseCounts> {
  await unparkAll(ch);
  const params = subjectParams(s);
  const [events, payloads, sessions, profileOps] = await Promise.all([
    countWhere(ch, 'events', tableWhere(s, 'events'), params),
    countWhere(ch, 'event_payloads', tableWhere(s, 'event_payloads'), params),
    countWhere(ch, 'sessions', tableWhere(s, 'sessions'), params),
    countWhere(ch, 'profile_ops', tableWhere(s, 'profile_ops'), params),
  ]);
  return { events, payloads, sessions, profileOps };
}

/**
 * Deletes the subject's rows from every table, waiting for each deletion to finish. Idempotent, and
 * safe to cut short anywhere: the rows still to go are found again through `events`, deleted last.
 */
export async function deleteSubject(ch: ClickHouse, s: Subject): Promise<void> {
  const params = subjectParams(s);
  for (const table of DELETE_ORDER) await deleteRows(ch, table, tableWhere(s, table), params);
}

/** The UTC months of the subject's events (the months whose archive chunks may hold its payloads). */
export async function subjectMonths(ch: ClickHouse, s: Subject): Promise<string[]> {
  const rows = await ch.query<{ d: number | string }>(`SELECT DISTINCT intDiv(created_at_ms, 86400000) AS d FROM events WHERE ${eventsWhere(s)}`, subjectParams(s));
  return [...new Set(rows.map((r) => monthOfMs(Number(r.d) * 86_400_000)))].sort();
}

/** The devices the subject's events came from. */
export async function subjectDevices(ch: ClickHouse, s: Subject): Promise<string[]> {
  if (s.kind === 'device') return [s.deviceId];
  const rows = await ch.query<{ device_id: string }>(`SELECT DISTINCT device_id FROM events WHERE ${eventsWhere(s)} ORDER BY device_id`, subjectParams(s));
  return rows.map((r) => r.device_id);
}

/** The ids of the subject's events with an event time in [fromMs, toMs] (an archive chunk's range). */
export async function subjectIdsBetween(ch: ClickHouse, s: Subject, fromMs: number, toMs: number): Promise<Set<string>> {
  const { fromSec, toSec } = dateTimeBounds(fromMs, toMs);
  const rows = await ch.query<{ id: string }>(
    `SELECT DISTINCT toString(id) AS id FROM events
      WHERE ${eventsWhere(s)} AND created_at_ms >= {fromMs:Int64} AND created_at_ms <= {toMs:Int64}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})`,
    { ...subjectParams(s), fromMs, toMs, fromSec, toSec },
  );
  return new Set(rows.map((r) => r.id.toLowerCase()));
}

/** Whether the subject has any event in [fromMs, toMs]. */
export async function subjectHasEventsBetween(ch: ClickHouse, s: Subject, fromMs: number, toMs: number): Promise<boolean> {
  const { fromSec, toSec } = dateTimeBounds(fromMs, toMs);
  const [row] = await ch.query<{ n: number | string }>(
    `SELECT count() AS n FROM events
      WHERE ${eventsWhere(s)} AND created_at_ms >= {fromMs:Int64} AND created_at_ms <= {toMs:Int64}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})`,
    { ...subjectParams(s), fromMs, toMs, fromSec, toSec },
  );
  return Number(row?.n ?? 0) > 0;
}

/**
 * Dedup entries live in a device object for 7 days of receipt (plus slack); events received
 * earlier can only matter to it as its last event or position.
 */
const DEVICE_MEMORY_MS = 9 * 24 * 60 * 60 * 1000;
/** A profile's events on one device told to its object at most (its recent ones). */
const MAX_DEVICE_EVENTS = 200_000;

/**
 * What a device object must clear of a profile: the profile's recent events on that device (its
 * dedup entries), its newest event and newest position there (the object's last event and
 * position), and the sessions of that device made only of the profile's events.
 */
export async function profileOnDevice(
  ch: ClickHouse,
  s: Extract<Subject, { kind: 'profile' }>,
  deviceId: string,
  nowMs: number,
): Promise<{ profileId: string; eventIds: string[]; eventTimesMs: number[]; sessionIds: string[] }> {
  const params = { projectId: s.projectId, profileId: s.profileId, deviceId, sinceMs: nowMs - DEVICE_MEMORY_MS };
  const on = 'project_id = {projectId:String} AND profile_id = {profileId:String} AND device_id = {deviceId:String}';
  const [recent, newest, position, sessions] = await Promise.all([
    ch.query<{ id: string; t: number | string }>(
      `SELECT toString(id) AS id, created_at_ms AS t FROM events WHERE ${on} AND received_at_ms >= {sinceMs:Int64} LIMIT 1 BY id LIMIT ${MAX_DEVICE_EVENTS}`,
      params,
    ),
    ch.query<{ id: string; t: number | string }>(`SELECT toString(id) AS id, created_at_ms AS t FROM events WHERE ${on} ORDER BY created_at_ms DESC LIMIT 1`, params),
    ch.query<{ id: string; t: number | string }>(
      `SELECT toString(id) AS id, created_at_ms AS t FROM events WHERE ${on} AND name = 'position' ORDER BY created_at_ms DESC LIMIT 1`,
      params,
    ),
    ch.query<{ id: string }>(
      `SELECT DISTINCT session_id AS id FROM events WHERE ${on} AND session_id != ''
         AND session_id NOT IN (SELECT session_id FROM events WHERE project_id = {projectId:String} AND device_id = {deviceId:String} AND profile_id != {profileId:String})`,
      params,
    ),
  ]);
  const events = new Map<string, number>();
  for (const r of [...recent, ...newest, ...position]) events.set(r.id.toLowerCase(), Number(r.t));
  return { profileId: s.profileId, eventIds: [...events.keys()], eventTimesMs: [...new Set(events.values())], sessionIds: sessions.map((r) => r.id) };
}

/**
 * What a parked ingest message alone does not tell about the subject (dead letters are erased
 * before ClickHouse is): whose event a payload parked apart from it is, and which sessions hold
 * events of the profile or of anyone else.
 */
export function deadLetterLookup(ch: ClickHouse, s: Subject): SubjectLookup {
  const idsIn = async (sql: string, ids: readonly string[]) =>
    new Set((await ch.query<{ id: string }>(sql, subjectParams(s), { ids: [...ids] })).map((r) => r.id));
  return {
    subjectEventIds: (ids) => idsIn(`SELECT DISTINCT toString(id) AS id FROM events WHERE ${eventsWhere(s)} AND toString(id) IN (SELECT value FROM ids)`, ids),
    async profileSessions(sessionIds) {
      if (s.kind !== 'profile') return { subject: new Set(), others: new Set() };
      const sessions = (profile: '=' | '!=') =>
        idsIn(`SELECT DISTINCT session_id AS id FROM events WHERE project_id = {projectId:String} AND profile_id ${profile} {profileId:String} AND session_id IN (SELECT value FROM ids)`, sessionIds);
      const [subject, others] = await Promise.all([sessions('='), sessions('!=')]);
      return { subject, others };
    },
  };
}

/** Everything of a project in one table (project deletion). */
export async function countProject(ch: ClickHouse, projectId: string): Promise<ClickHouseCounts> {
  await unparkAll(ch);
  const params = { projectId };
  const where = 'project_id = {projectId:String}';
  const [events, payloads, sessions, profileOps] = await Promise.all([
    countWhere(ch, 'events', where, params),
    countWhere(ch, 'event_payloads', where, params),
    countWhere(ch, 'sessions', where, params),
    countWhere(ch, 'profile_ops', where, params),
  ]);
  return { events, payloads, sessions, profileOps };
}

/** What a device's positions were turned into (trips, stretches, mileage, live position): derived rows. */
export const FLEET_TABLES: readonly DeletableTable[] = ['fleet_live', 'fleet_mileage_days', 'fleet_trips', 'fleet_stretches'];

export async function deleteProjectRows(ch: ClickHouse, projectId: string): Promise<void> {
  for (const table of [...FLEET_TABLES, ...DELETE_ORDER]) await deleteRows(ch, table, 'project_id = {projectId:String}', { projectId });
}

/** Deletes the fleet rows derived from these devices' positions (their trips, mileage, live position). */
export async function deleteDeviceFleet(ch: ClickHouse, projectId: string, deviceIds: readonly string[]): Promise<void> {
  for (const deviceId of deviceIds) {
    for (const table of FLEET_TABLES) await deleteRows(ch, table, 'project_id = {projectId:String} AND device_id = {deviceId:String}', { projectId, deviceId });
  }
}

/** The devices among `deviceIds` that still have positions, with their time span (a recompute's window). */
export async function remainingPositionSpans(ch: ClickHouse, projectId: string, deviceIds: readonly string[]): Promise<Array<{ deviceId: string; fromMs: number; toMs: number }>> {
  if (!deviceIds.length) return [];
  const rows = await ch.query<{ device_id: string; from_ms: number | string; to_ms: number | string }>(
    `SELECT device_id, min(created_at_ms) AS from_ms, max(created_at_ms) AS to_ms FROM events
      WHERE project_id = {projectId:String} AND name = 'position' AND device_id IN (SELECT value FROM devices)
      GROUP BY device_id ORDER BY device_id`,
    { projectId },
    { devices: deviceIds },
  );
  return rows.map((r) => ({ deviceId: r.device_id, fromMs: Number(r.from_ms), toMs: Number(r.to_ms) }));
}

/** A page of the project's devices after `after` (events ∪ sessions), in order. */
export async function projectDevicesAfter(ch: ClickHouse, projectId: string, after: string, limit: number): Promise<string[]> {
  const rows = await ch.query<{ device_id: string }>(
    `SELECT DISTINCT device_id FROM (
        SELECT device_id FROM events WHERE project_id = {projectId:String} AND device_id > {after:String}
        UNION ALL
        SELECT device_id FROM sessions WHERE project_id = {projectId:String} AND device_id > {after:String}
      ) ORDER BY device_id LIMIT ${Math.trunc(limit)}`,
    { projectId, after },
  );
  return rows.map((r) => r.device_id);
}
