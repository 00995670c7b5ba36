// The read a legacy import's throttle times: the events query of GET /v1/events for one device of
// the project, so the import backs off as soon as the project's readers would feel it.
import type { ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';

/** The read API's default window and page. */
const WINDOW_MS = 7 * 24 * 3600_000;
const PAGE = 100;

/**
 * A probe: the newest page of events of one of the project's recently active devices, as the read
 * API selects them (bounded by the device and the page). Before the project has live events, the
 * same read of a device that has none.
 */
export async function eventsProbe(ch: ClickHouse, projectId: string): Promise<() => Promise<void>> {
  const now = Date.now();
  const [recent] = await ch.query<{ device_id: string }>(
    `SELECT device_id FROM events WHERE project_id = {p:String} AND created_at >= toDateTime({since:Int64}) LIMIT 1`,
    { p: projectId, since: Math.floor((now - WINDOW_MS) / 1000) },
  );
  const deviceId = recent?.device_id ?? '';
  return async () => {
    const untilMs = Date.now();
    const sinceMs = untilMs - WINDOW_MS;
    await ch.query(
      `SELECT toString(id) AS event_id, type, name, device_id, session_id, profile_id, created_at_ms, received_at_ms,
              synced_at_ms, properties, ref_id
         FROM events
        WHERE project_id = {p:String} AND device_id = {d:String}
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {since:Int64} AND created_at_ms <= {until:Int64}
        ORDER BY created_at_ms DESC, event_id DESC
        LIMIT 1 BY event_id
        LIMIT {take:UInt32}`,
      { p: projectId, d: deviceId, ...dateTimeBounds(sinceMs, untilMs), since: sinceMs, until: untilMs, take: PAGE },
    );
  };
}
