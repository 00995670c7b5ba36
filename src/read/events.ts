// The read API's event list: stored events (one copy per id), with session ids resolved through
// merges, next to session_start/session_end derived from the current sessions.
import type { ClickHouse } from '../clickhouse/client';
import { hash128, uuidv7At } from '../lib/ids';
import { listSessions, resolveMergedSessions } from './sessions';

export interface EventView {
  id: string;
  type: string;
  name: string;
  deviceId: string;
  sessionId: string;
  profileId: string;
  createdAt: string;
  receivedAt: string;
  syncedAt: string | null;
  properties: Record<string, unknown>;
  refId?: string;
}

interface EventRowOut {
  id: string;
  type: string;
  name: string;
  device_id: string;
  session_id: string;
  profile_id: string;
  created_at_ms: number;
  received_at_ms: number;
  synced_at_ms: number;
  properties: string;
  ref_id: string;
}

const iso = (ms: number) => new Date(ms).toISOString();
const MAX_DATETIME_SEC = 4_294_967_295;

export async function listEvents(
  ch: ClickHouse,
  q: { projectId: string; deviceId?: string; sinceMs: number; untilMs: number; limit: number },
): Promise<EventView[]> {
  const params = {
    projectId: q.projectId,
    ...(q.deviceId !== undefined ? { deviceId: q.deviceId } : {}),
    since: q.sinceMs,
    until: q.untilMs,
    // DateTime is 32-bit unsigned seconds: clamp, so far-off bounds still prune partitions correctly.
    sinceSec: Math.min(MAX_DATETIME_SEC, Math.max(0, Math.floor(q.sinceMs / 1000))),
    untilSec: Math.min(MAX_DATETIME_SEC, Math.max(0, Math.ceil(q.untilMs / 1000))),
    limit: q.limit,
  };
  const [rows, sessions] = await Promise.all([
    ch.query<EventRowOut>(
      `SELECT toString(id) AS id, type, name, device_id, session_id, profile_id, created_at_ms, received_at_ms,
              synced_at_ms, properties, ref_id
         FROM events
        WHERE project_id = {projectId:String} ${q.deviceId !== undefined ? 'AND device_id = {deviceId:String}' : ''}
          AND created_at >= toDateTime({sinceSec:Int64}) AND created_at <= toDateTime({untilSec:Int64})
          AND created_at_ms >= {since:Int64} AND created_at_ms <= {until:Int64}
        ORDER BY created_at_ms DESC, id DESC
        LIMIT 1 BY id
        LIMIT {limit:UInt32}`,
      params,
    ),
    listSessions(ch, { ...q, limit: q.limit }),
  ]);
  const merged = await resolveMergedSessions(ch, q.projectId, rows.map((r) => r.session_id));
  const events: EventView[] = rows.map((r) => ({
    id: r.id,
    type: r.type,
    name: r.name,
    deviceId: r.device_id,
    sessionId: merged.get(r.session_id) ?? r.session_id,
    profileId: r.profile_id,
    createdAt: iso(Number(r.created_at_ms)),
    receivedAt: iso(Number(r.received_at_ms)),
    syncedAt: Number(r.synced_at_ms) > 0 ? iso(Number(r.synced_at_ms)) : null,
    properties: JSON.parse(r.properties) as Record<string, unknown>,
    ...(r.ref_id ? { refId: r.ref_id } : {}),
  }));
  for (const s of sessions) {
    const marker = (name: 'session_start' | 'session_end', atMs: number): EventView => ({
      id: uuidv7At(atMs, hash128(`${s.id}:${name}`)),
      type: 'track',
      name,
      deviceId: s.deviceId,
      sessionId: s.id,
      profileId: '',
      createdAt: iso(atMs),
      receivedAt: iso(atMs),
      syncedAt: null,
      properties: { __derived: true, eventCount: s.eventCount, durationMs: s.endedAtMs - s.startedAtMs },
    });
    if (s.startedAtMs >= q.sinceMs && s.startedAtMs <= q.untilMs) events.push(marker('session_start', s.startedAtMs));
    if (s.ended && s.endedAtMs >= q.sinceMs && s.endedAtMs <= q.untilMs) events.push(marker('session_end', s.endedAtMs));
  }
  // session_start sorts before the first event at the same instant, session_end after the last.
  const rank = (e: EventView) => (e.name === 'session_end' ? 2 : e.name === 'session_start' ? 0 : 1);
  events.sort((a, b) => b.createdAt.localeCompare(a.createdAt) || rank(b) - rank(a));
  return events.slice(0, q.limit);
}
