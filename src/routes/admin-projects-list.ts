// GET /admin/projects — every project with its client id, for operators (never a secret or its hash).
import { asc } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { requireAdmin } from '../auth';
import { clients, projects } from '../db/schema';
import { ADMIN_SECURITY, createRoute, errors, json, router, z } from './openapi';

const ProjectSummary = z
  .object({
    id: z.string(),
    name: z.string(),
    clientId: z.string().nullable().openapi({ description: "the project's first client; its secret was shown once, at creation" }),
    sessionGapMs: z.number().int(),
    createdAt: z.string().openapi({ format: 'date-time' }),
  })
  .openapi('ProjectSummary');

const listProjects = createRoute({
  method: 'get',
  path: '/admin/projects',
  summary: 'List projects',
  tags: ['admin'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin],
  responses: {
    200: json(z.object({ projects: z.array(ProjectSummary) }), 'every project, oldest first'),
    ...errors(401, 503),
  },
});

export const adminProjectsListRoute = router().openapi(listProjects, async (c) => {
  const db = drizzle(c.env.DB);
  const [rows, clientRows] = await Promise.all([
    db.select().from(projects).orderBy(asc(projects.createdAt), asc(projects.id)).all(),
    db.select({ id: clients.id, projectId: clients.projectId }).from(clients).orderBy(asc(clients.createdAt), asc(clients.id)).all(),
  ]);
  const firstClient = new Map<string, string>();
  for (const client of clientRows) if (!firstClient.has(client.projectId)) firstClient.set(client.projectId, client.id);
  c.header('Cache-Control', 'no-store');
  return c.json(
    {
      projects: rows.map((p) => ({
        id: p.id,
        name: p.name,
        clientId: firstClient.get(p.id) ?? null,
        sessionGapMs: p.sessionGapMs,
        createdAt: new Date(p.createdAt).toISOString(),
      })),
    },
    200,
  );
});
