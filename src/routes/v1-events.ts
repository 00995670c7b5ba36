// GET /v1/events — a project's events and session markers, newest first, a page at a time.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { decodeEventsCursor, encodeEventsCursor } from '../read/cursor';
import { listEvents } from '../read/events';
import { ReadQuery, readPage } from './read-query';
import { validationHook } from './validation';

export const v1EventsRoute = new Hono<AppEnv>().get('/v1/events', requireClient, readRateLimit, zValidator('query', ReadQuery, validationHook), async (c) => {
  const q = c.req.valid('query');
  const { window, after } = readPage(q, decodeEventsCursor);
  const page = await listEvents(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, window, after, limit: q.limit });
  return c.json({ events: page.events, nextCursor: page.next ? encodeEventsCursor(window, page.next) : null });
});
