// GET /v1/sessions — a project's current sessions, newest first.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { listSessions } from '../read/sessions';
import { ReadQuery } from './read-query';
import { validationHook } from './validation';

export const v1SessionsRoute = new Hono<AppEnv>().get('/v1/sessions', requireClient, zValidator('query', ReadQuery, validationHook), async (c) => {
  const q = c.req.valid('query');
  const sessions = await listSessions(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, ...q });
  return c.json({
    sessions: sessions.map((s) => ({
      id: s.id,
      deviceId: s.deviceId,
      startedAt: new Date(s.startedAtMs).toISOString(),
      endedAt: s.ended ? new Date(s.endedAtMs).toISOString() : null,
      lastEventAt: new Date(s.endedAtMs).toISOString(),
      eventCount: s.eventCount,
      durationMs: s.endedAtMs - s.startedAtMs,
    })),
  });
});
