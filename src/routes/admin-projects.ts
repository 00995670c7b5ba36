// POST /admin/projects — creates a project and its client; the secret is shown once, stored hashed.
import { zValidator } from '@hono/zod-validator';
import { drizzle } from 'drizzle-orm/d1';
import { Hono } from 'hono';
import { z } from 'zod';
import { requireAdmin, type AppEnv } from '../auth';
import { getConfig } from '../config';
import { clients, projects } from '../db/schema';
import { sha256Hex } from '../ingest/device-id';
import { validationHook } from './validation';

const CreateProject = z.object({
  name: z.string().trim().min(1).max(200),
  sessionGapMs: z.number().int().min(60_000).max(24 * 60 * 60 * 1000).optional(),
});

function randomToken(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

export const adminProjectsRoute = new Hono<AppEnv>().post(
  '/admin/projects',
  requireAdmin,
  zValidator('json', CreateProject, validationHook),
  async (c) => {
    const { name, sessionGapMs } = c.req.valid('json');
    const id = crypto.randomUUID();
    const clientId = crypto.randomUUID();
    const clientSecret = `sec_${randomToken(24)}`;
    const now = Date.now();
    const db = drizzle(c.env.DB);
    await db.batch([
      db.insert(projects).values({ id, name, sessionGapMs: sessionGapMs ?? getConfig(c.env).sessionGapMs, createdAt: now }),
      db.insert(clients).values({ id: clientId, projectId: id, secretHash: await sha256Hex(clientSecret), createdAt: now }),
    ]);
    return c.json({ id, clientId, clientSecret }, 201);
  },
);
