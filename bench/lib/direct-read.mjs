// The read API's events query (one device's newest 100 events of the last 7 days) sent straight to
// ClickHouse, as the import and read benches time it beside the gateway's own reads.

/**
 * The request for `deviceId`'s page of `projectId` in `database`. The bench's own ids go into the
 * text: 18.16's HTTP interface has no query parameters.
 */
export function directEventsRequest(clickhouseUrl, database, projectId, deviceId) {
  const url = new URL(clickhouseUrl);
  url.searchParams.set('database', database);
  url.searchParams.set(
    'query',
    `SELECT toString(id) AS event_id, type, name, device_id, session_id, profile_id, created_at_ms, received_at_ms, synced_at_ms, properties, ref_id
       FROM events
      WHERE project_id = '${projectId}' AND device_id = '${deviceId}'
        AND created_at >= now() - 604800 AND created_at_ms >= (toUnixTimestamp(now()) - 604800) * 1000
      ORDER BY created_at_ms DESC, event_id DESC LIMIT 1 BY event_id LIMIT 100 FORMAT JSONEachRow`,
  );
  return url;
}
