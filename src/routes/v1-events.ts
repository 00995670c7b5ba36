// GET /v1/events — a project's events, newest first.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { requireClient, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { listEvents } from '../read/events';
import { ReadQuery } from './read-query';
import { validationHook } from './validation';

export const v1EventsRoute = new Hono<AppEnv>().get('/v1/events', requireClient, zValidator('query', ReadQuery, validationHook), async (c) => {
  const q = c.req.valid('query');
  const events = await listEvents(clickhouse(getConfig(c.env).clickhouse), { projectId: c.get('project').projectId, ...q });
  return c.json({ events });
});
