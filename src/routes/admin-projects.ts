// POST /admin/projects — creates a project and its client; the secret is shown once, stored hashed.
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { getConfig } from '../config';
import { clients, projects } from '../db/schema';
import { sha256Hex } from '../ingest/device-id';
import { hasLoneSurrogate, UNPAIRED_SURROGATE_MESSAGE } from '../lib/unicode';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

const CreateProject = z.object({
  name: z.string().trim().min(1).max(200).refine((t) => !hasLoneSurrogate(t), UNPAIRED_SURROGATE_MESSAGE),
  sessionGapMs: z.number().int().min(60_000).max(24 * 60 * 60 * 1000).optional(),
});

const CreatedProject = z.object({
  id: z.string(),
  clientId: z.string().describe('the `openpanel-client-id` header'),
  clientSecret: z.string().describe('the `openpanel-client-secret` header; shown once, stored hashed'),
});

function randomToken(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const route = createRoute({
  method: 'post',
  path: '/admin/projects',
  summary: 'Create a project and its client credentials',
  tags: ['admin'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { body: { required: true, content: { 'application/json': { schema: CreateProject } } } },
  responses: { 201: json(CreatedProject, 'the project; `clientSecret` is never shown again'), ...errors(400, 401, 415, { 503: `${ADMIN_DISABLED}; \`misconfigured\`` }) },
});

export const adminProjectsRoute = router().openapi(route, async (c) => {
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
});
