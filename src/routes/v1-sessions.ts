// GET /v1/sessions — a project's current sessions, newest start first, a page at a time.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { decodeSessionsCursor, encodeSessionsCursor } from '../read/cursor';
import { listSessions } from '../read/sessions';
import { ReadQuery, readPage } from './read-query';
import { validationHook } from './validation';

export const v1SessionsRoute = new Hono<AppEnv>().get('/v1/sessions', requireClient, readRateLimit, zValidator('query', ReadQuery, validationHook), async (c) => {
  const q = c.req.valid('query');
  const { window, after } = readPage(q, decodeSessionsCursor);
  const page = await listSessions(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, window, after, limit: q.limit });
  return c.json({
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
  });
});
