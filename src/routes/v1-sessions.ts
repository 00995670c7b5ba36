// GET /v1/sessions — a project's current sessions, newest start first, a page at a time.
import { readRateLimit, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { decodeSessionsCursor, encodeSessionsCursor } from '../read/cursor';
import { listSessions } from '../read/sessions';
import { CLIENT_SECURITY, createRoute, json, router, z } from './openapi';
import { ReadQuery, readErrors, readPage } from './read-query';

const Instant = z.iso.datetime();

const SessionView = z
  .object({
    id: z.string(),
    deviceId: z.string(),
    startedAt: Instant.describe('event time of its first event'),
    endedAt: Instant.nullable().describe('event time of its last event once it is closed (idle for the session gap); null while open'),
    lastEventAt: Instant.describe('event time of its last event so far'),
    eventCount: z.number().int(),
    durationMs: z.number().int().describe('last event time minus first'),
  })
  .openapi('Session');

const SessionsPage = z.object({
  sessions: z.array(SessionView),
  nextCursor: z.string().nullable().describe('pass as `cursor` for the next page; null on the last page'),
});

const route = createRoute({
  method: 'get',
  path: '/v1/sessions',
  summary: "A project's sessions, newest start first",
  tags: ['read'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { query: ReadQuery },
  responses: { 200: json(SessionsPage, 'one page of sessions'), ...readErrors(['invalid_cursor', 'window_too_large']) },
});

export const v1SessionsRoute = router().openapi(route, async (c) => {
  const q = c.req.valid('query');
  const { window, after } = readPage(q, decodeSessionsCursor);
  const page = await listSessions(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, window, after, limit: q.limit });
  return c.json(
    {
      sessions: page.sessions.map((s) => ({
        id: s.id,
        deviceId: s.deviceId,
        startedAt: new Date(s.startedAtMs).toISOString(),
        endedAt: s.ended ? new Date(s.endedAtMs).toISOString() : null,
        lastEventAt: new Date(s.endedAtMs).toISOString(),
        eventCount: s.eventCount,
        durationMs: s.endedAtMs - s.startedAtMs,
      })),
      nextCursor: page.next ? encodeSessionsCursor(window, page.next) : null,
    },
    200,
  );
});
