// GET /v1/events — a project's events and session markers, newest first, a page at a time.
import { readRateLimit, requireClient } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { decodeEventsCursor, encodeEventsCursor } from '../read/cursor';
import { listEvents } from '../read/events';
import { CLIENT_SECURITY, createRoute, json, router, z } from './openapi';
import { ReadQuery, readErrors, readPage } from './read-query';

const Instant = z.iso.datetime();

export const EventView = z
  .object({
    id: z.string().describe('the event id (UUIDv7)'),
    type: z.string().describe('track, identify, increment, decrement, group or assign_group'),
    name: z.string().describe('the event name; `session_start` / `session_end` for the session markers'),
    deviceId: z.string(),
    sessionId: z.string(),
    profileId: z.string().describe('empty when the event names none'),
    createdAt: Instant.describe('when the event happened (skew-corrected)'),
    receivedAt: Instant.describe('edge receipt'),
    syncedAt: Instant.nullable().describe('when the pipeline stored it; null for session markers'),
    properties: z.record(z.string(), z.unknown()).describe("the event's own properties"),
    refId: z.string().optional().describe('translated legacy events only: the new id of the legacy row'),
  })
  .openapi('Event');

const EventsPage = z.object({
  events: z.array(EventView),
  nextCursor: z.string().nullable().describe('pass as `cursor` for the next page; null on the last page'),
});

const route = createRoute({
  method: 'get',
  path: '/v1/events',
  summary: "A project's events and session markers, newest first",
  tags: ['read'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { query: ReadQuery },
  responses: { 200: json(EventsPage, 'one page of events'), ...readErrors(['invalid_cursor', 'window_too_large']) },
});

export const v1EventsRoute = router().openapi(route, async (c) => {
  const q = c.req.valid('query');
  const { window, after } = readPage(q, decodeEventsCursor);
  const page = await listEvents(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, window, after, limit: q.limit });
  return c.json({ events: page.events, nextCursor: page.next ? encodeEventsCursor(window, page.next) : null }, 200);
});
