// Current state of sessions from the versioned sessions table: argMax per id, no FINAL, and only
// the sessions that can overlap the read's window are grouped.
import type { ClickHouse } from '../clickhouse/client';
import type { QueryParams } from '../clickhouse/params';
import type { ReadWindow, SessionPosition } from './cursor';

export interface SessionView {
  id: string;
  deviceId: string;
  startedAtMs: number;
  endedAtMs: number;
  eventCount: number;
  ended: boolean;
}

export interface SessionRowOut {
  id: string;
  s_device: string;
  s_started: number;
  s_ended_at: number;
  s_count: number;
  s_ended: number;
}

export const toSessionView = (r: SessionRowOut): SessionView => ({
  id: r.id,
  deviceId: r.s_device,
  startedAtMs: Number(r.s_started),
  endedAtMs: Number(r.s_ended_at),
  eventCount: Number(r.s_count),
  ended: Number(r.s_ended) === 1,
});

/**
 * SQL over the current state of the sessions that overlap `[{since}, {scanUntil}]`, grouped per id
 * (columns s_device, s_started, s_ended_at, s_count, s_ended, s_merged). `extraColumns`,
 * `having`, `orderBy` and `limit` finish the statement; callers bind projectId, deviceId (when the
 * window names one), since and scanUntil.
 *
 * The inner WHERE bounds the scan on the raw rows: a session is a candidate when any of its versions
 * overlaps the window. Its current (highest) version is one of those rows, so a session whose current
 * state overlaps is never dropped, wherever older versions lay; the outer query then groups every
 * version of the candidates, so argMax sees the current one even when the bounds have since moved
 * out of the window, and HAVING decides on the current state alone (merged sessions included).
 */
export function currentSessionsSql(window: ReadWindow, parts: { extraColumns?: string; having: string; orderBy: string; limit: string }): string {
  const device = window.deviceId !== undefined ? 'AND device_id = {deviceId:String}' : '';
  return `SELECT id, any(device_id) AS s_device,
            argMax(started_at_ms, version) AS s_started, argMax(ended_at_ms, version) AS s_ended_at,
            argMax(event_count, version) AS s_count, argMax(ended, version) AS s_ended,
            argMax(merged_into, version) AS s_merged${parts.extraColumns ? `,\n            ${parts.extraColumns}` : ''}
       FROM sessions
      WHERE project_id = {projectId:String} ${device}
        AND id IN (SELECT id FROM sessions
                    WHERE project_id = {projectId:String} ${device}
                      AND started_at_ms <= {scanUntil:Int64} AND ended_at_ms >= {since:Int64})
      GROUP BY id
     HAVING s_merged = '' AND (${parts.having})
      ORDER BY ${parts.orderBy}
      LIMIT ${parts.limit}`;
}

export const windowParams = (projectId: string, window: ReadWindow): QueryParams => ({
  projectId,
  ...(window.deviceId !== undefined ? { deviceId: window.deviceId } : {}),
  since: window.sinceMs,
  until: window.untilMs,
});

/** Sessions overlapping the window, newest start first, the `limit` after position `after`. */
export async function listSessions(
  ch: ClickHouse,
  q: { projectId: string; window: ReadWindow; after: SessionPosition | null; limit: number },
): Promise<{ sessions: SessionView[]; next: SessionPosition | null }> {
  // Without a cursor the page starts past the window's end: every session there comes after it.
  const at = q.after?.startedAtMs ?? q.window.untilMs + 1;
  const rows = await ch.query<SessionRowOut>(
    currentSessionsSql(q.window, {
      having: `s_started <= {until:Int64} AND s_ended_at >= {since:Int64}
               AND (s_started < {at:Int64} OR (s_started = {at:Int64} AND id < {key:String}))`,
      orderBy: 's_started DESC, id DESC',
      limit: '{take:UInt32}',
    }),
    {
      ...windowParams(q.projectId, q.window),
      scanUntil: Math.min(q.window.untilMs, at),
      at,
      key: q.after?.id ?? '',
      take: q.limit + 1,
    },
  );
  const sessions = rows.slice(0, q.limit).map(toSessionView);
  const last = sessions[sessions.length - 1];
  return { sessions, next: rows.length > q.limit && last ? { startedAtMs: last.startedAtMs, id: last.id } : null };
}

/**
 * Maps session ids to the session that absorbed them (following chains of merges). `deviceIds`, the
 * devices the sessions belong to (a session merges only into one of its own device), bounds the
 * lookup by the table's key (project, device, id): by ids alone it reads every session row of the
 * project wherever a granule holds several devices (ids prune only within one device's rows).
 */
export async function resolveMergedSessions(ch: ClickHouse, projectId: string, ids: string[], deviceIds?: readonly string[]): Promise<Map<string, string>> {
  const resolved = new Map<string, string>();
  let frontier = [...new Set(ids.filter(Boolean))];
  const devices = deviceIds ? [...new Set(deviceIds)] : [];
  // One device (a device's page, the common read) as a scalar, an equality on the key that both
  // generations bound the read by (test/clickhouse-lists.test.ts); several as a list in the body.
  const byDevice = devices.length === 1 ? 'AND device_id = {deviceId:String}' : devices.length > 1 ? 'AND device_id IN (SELECT value FROM devices)' : '';
  for (let hop = 0; hop < 8 && frontier.length; hop++) {
    const rows = await ch.query<{ id: string; merged: string }>(
      `SELECT id, argMax(merged_into, version) AS merged FROM sessions
        WHERE project_id = {projectId:String} ${byDevice}
          AND id IN (SELECT value FROM ids)
        GROUP BY id HAVING merged != ''`,
      devices.length === 1 ? { projectId, deviceId: devices[0]! } : { projectId },
      devices.length > 1 ? { ids: frontier, devices } : { ids: frontier },
    );
    frontier = [];
    for (const r of rows) {
      for (const [from, to] of resolved) if (to === r.id) resolved.set(from, r.merged);
      resolved.set(r.id, r.merged);
      frontier.push(r.merged);
    }
  }
  return resolved;
}

export interface StoredSession {
  id: string;
  deviceId: string;
  startMs: number;
  endMs: number;
  eventCount: number;
  ended: number;
  version: number;
}

/** The current (unmerged) sessions of some of a project's devices that overlap `[fromMs, toMs]`. */
export async function currentSessionsOfDevices(ch: ClickHouse, projectId: string, deviceIds: readonly string[], fromMs: number, toMs: number): Promise<StoredSession[]> {
  if (deviceIds.length === 0) return [];
  const rows = await ch.query<SessionRowOut & { s_version: number }>(
    `SELECT id, any(device_id) AS s_device,
            argMax(started_at_ms, version) AS s_started, argMax(ended_at_ms, version) AS s_ended_at,
            argMax(event_count, version) AS s_count, argMax(ended, version) AS s_ended,
            argMax(merged_into, version) AS s_merged, max(version) AS s_version
       FROM sessions
      WHERE project_id = {p:String} AND device_id IN (SELECT value FROM devices)
        AND id IN (SELECT id FROM sessions
                    WHERE project_id = {p:String} AND device_id IN (SELECT value FROM devices)
                      AND started_at_ms <= {to:Int64} AND ended_at_ms >= {from:Int64})
      GROUP BY id
     HAVING s_merged = '' AND s_started <= {to:Int64} AND s_ended_at >= {from:Int64}`,
    { p: projectId, from: fromMs, to: toMs },
    { devices: [...new Set(deviceIds)] },
  );
  return rows.map((r) => ({
    id: r.id,
    deviceId: r.s_device,
    startMs: Number(r.s_started),
    endMs: Number(r.s_ended_at),
    eventCount: Number(r.s_count),
    ended: Number(r.s_ended),
    version: Number(r.s_version),
  }));
}
