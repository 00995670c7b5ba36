// Current state of sessions from the versioned sessions table: argMax per id, no FINAL.
import type { ClickHouse } from '../clickhouse/client';

export interface SessionView {
  id: string;
  deviceId: string;
  startedAtMs: number;
  endedAtMs: number;
  eventCount: number;
  ended: boolean;
}

interface SessionRowOut {
  id: string;
  s_device: string;
  s_started: number;
  s_ended_at: number;
  s_count: number;
  s_ended: number;
}

export async function listSessions(
  ch: ClickHouse,
  q: { projectId: string; deviceId?: string; sinceMs: number; untilMs: number; limit: number },
): Promise<SessionView[]> {
  const rows = await ch.query<SessionRowOut>(
    `SELECT id, any(device_id) AS s_device,
            argMax(started_at_ms, version) AS s_started, argMax(ended_at_ms, version) AS s_ended_at,
            argMax(event_count, version) AS s_count, argMax(ended, version) AS s_ended,
            argMax(merged_into, version) AS s_merged
       FROM sessions
      WHERE project_id = {projectId:String} ${q.deviceId !== undefined ? 'AND device_id = {deviceId:String}' : ''}
      GROUP BY id
     HAVING s_merged = '' AND s_started <= {until:Int64} AND s_ended_at >= {since:Int64}
      ORDER BY s_started DESC
      LIMIT {limit:UInt32}`,
    { projectId: q.projectId, ...(q.deviceId !== undefined ? { deviceId: q.deviceId } : {}), since: q.sinceMs, until: q.untilMs, limit: q.limit },
  );
  return rows.map((r) => ({
    id: r.id,
    deviceId: r.s_device,
    startedAtMs: Number(r.s_started),
    endedAtMs: Number(r.s_ended_at),
    eventCount: Number(r.s_count),
    ended: Number(r.s_ended) === 1,
  }));
}

/** Maps session ids to the session that absorbed them (following chains of merges). */
export async function resolveMergedSessions(ch: ClickHouse, projectId: string, ids: string[]): Promise<Map<string, string>> {
  const resolved = new Map<string, string>();
  let frontier = [...new Set(ids.filter(Boolean))];
  for (let hop = 0; hop < 8 && frontier.length; hop++) {
    const rows = await ch.query<{ id: string; merged: string }>(
      `SELECT id, argMax(merged_into, version) AS merged FROM sessions
        WHERE project_id = {projectId:String} AND id IN (SELECT value FROM ids)
        GROUP BY id HAVING merged != ''`,
      { projectId },
      { ids: frontier },
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
