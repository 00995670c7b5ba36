// The read API's event list: stored events (one copy per id), with session ids resolved through
// merges, next to session_start/session_end derived from the current sessions, one page at a time
// in one total order (see EventPosition) so that following cursors serves every item once.
import type { ClickHouse } from '../clickhouse/client';
import { hash128, uuidv7At } from '../lib/ids';
import type { EventPosition, ReadWindow } from './cursor';
import { currentSessionsSql, resolveMergedSessions, toSessionView, windowParams, type SessionRowOut, type SessionView } from './sessions';

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
  event_id: string;
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
/** DateTime is 32-bit unsigned seconds: clamp, so far-off bounds still prune partitions correctly. */
const toSec = (ms: number, round: (x: number) => number) => Math.min(MAX_DATETIME_SEC, Math.max(0, round(ms / 1000)));

export const RANK_SESSION_START = 0;
export const RANK_EVENT = 1;
export const RANK_SESSION_END = 2;

/** Negative when `a` comes first: createdAt, rank and key, each descending. Keys are ASCII ids. */
export function compareEventPositions(a: EventPosition, b: EventPosition): number {
  return b.atMs - a.atMs || b.rank - a.rank || (a.key < b.key ? 1 : a.key > b.key ? -1 : 0);
}

/**
 * The SQL test "position (t, rank, key) comes after the cursor {at, rank, key}"; `rank` is the
 * literal rank of the rows tested.
 */
function afterCursorSql(t: string, rank: number, key: string): string {
  return `(${t} < {at:Int64} OR (${t} = {at:Int64} AND (${rank} < {rank:Int64} OR (${rank} = {rank:Int64} AND ${key} < {key:String}))))`;
}

interface Item {
  pos: EventPosition;
  /** A stored event's session as written, resolved through merges once the page is known. */
  sessionId?: string;
  /** The stored event's device: its session's merges are looked up within it. */
  deviceId?: string;
  view: (merged: Map<string, string>) => EventView;
}

export async function listEvents(
  ch: ClickHouse,
  q: { projectId: string; window: ReadWindow; after: EventPosition | null; limit: number },
): Promise<{ events: EventView[]; next: EventPosition | null }> {
  const { window } = q;
  // Without a cursor the page starts past the window's end: every item in it comes after that.
  const after = q.after ?? { atMs: window.untilMs + 1, rank: RANK_SESSION_END + 1, key: '' };
  // Nothing after the cursor lies later than its time: read no partition or session beyond it.
  const scanUntil = Math.min(window.untilMs, after.atMs);
  const params = {
    ...windowParams(q.projectId, window),
    scanUntil,
    sinceSec: toSec(window.sinceMs, Math.floor),
    untilSec: toSec(scanUntil, Math.ceil),
    at: after.atMs,
    rank: after.rank,
    key: after.key,
    take: q.limit + 1,
  };
  const device = window.deviceId !== undefined ? 'AND device_id = {deviceId:String}' : '';
  const startQualifies = `s_started >= {since:Int64} AND s_started <= {until:Int64} AND ${afterCursorSql('s_started', RANK_SESSION_START, 'id')}`;
  const endQualifies = `s_ended = 1 AND s_ended_at >= {since:Int64} AND s_ended_at <= {until:Int64} AND ${afterCursorSql('s_ended_at', RANK_SESSION_END, 'id')}`;
  const [rows, sessionRows] = await Promise.all([
    ch.query<EventRowOut>(
      `SELECT toString(id) AS event_id, type, name, device_id, session_id, profile_id, created_at_ms, received_at_ms,
              synced_at_ms, properties, ref_id
         FROM events
        WHERE project_id = {projectId:String} ${device}
          AND created_at >= toDateTime({sinceSec:Int64}) AND created_at <= toDateTime({untilSec:Int64})
          AND created_at_ms >= {since:Int64} AND created_at_ms <= {until:Int64}
          AND ${afterCursorSql('created_at_ms', RANK_EVENT, 'event_id')}
        ORDER BY created_at_ms DESC, event_id DESC
        LIMIT 1 BY event_id
        LIMIT {take:UInt32}`,
      params,
    ),
    // The sessions with a marker after the cursor, ordered by their first such marker: the first
    // `take` of them hold the first `take` markers.
    ch.query<SessionRowOut & { end_q: number; start_q: number }>(
      currentSessionsSql(window, {
        extraColumns: `(${endQualifies}) AS end_q, (${startQualifies}) AS start_q`,
        having: 'end_q OR start_q',
        orderBy: 'if(end_q, s_ended_at, s_started) DESC, if(end_q, 2, 0) DESC, id DESC',
        limit: '{take:UInt32}',
      }),
      params,
    ),
  ]);

  const items: Item[] = rows.map((r) => ({
    pos: { atMs: Number(r.created_at_ms), rank: RANK_EVENT, key: r.event_id },
    sessionId: r.session_id,
    deviceId: r.device_id,
    view: (merged) => ({
      id: r.event_id,
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
    }),
  }));
  for (const r of sessionRows) {
    const s = toSessionView(r);
    if (Number(r.start_q) === 1) items.push(markerItem(s, 'session_start', s.startedAtMs, RANK_SESSION_START));
    if (Number(r.end_q) === 1) items.push(markerItem(s, 'session_end', s.endedAtMs, RANK_SESSION_END));
  }
  items.sort((a, b) => compareEventPositions(a.pos, b.pos));
  const page = items.slice(0, q.limit);
  const withSession = page.filter((i) => i.sessionId);
  const merged = await resolveMergedSessions(
    ch,
    q.projectId,
    withSession.map((i) => i.sessionId!),
    withSession.map((i) => i.deviceId!),
  );
  return { events: page.map((i) => i.view(merged)), next: items.length > q.limit ? page[page.length - 1]!.pos : null };
}

function markerItem(s: SessionView, name: 'session_start' | 'session_end', atMs: number, rank: 0 | 2): Item {
  const view: EventView = {
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
  };
  return { pos: { atMs, rank, key: s.id }, view: () => view };
}
