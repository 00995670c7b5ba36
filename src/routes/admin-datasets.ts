// GET /admin/datasets/:dataset?projectId= — a project's legacy dataset: whether its initial import is
// complete, how much is mapped, and how many realtime events are held for it.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { projects } from '../db/schema';
import { ApiError } from '../errors';
import { initialMigrationCompletedAt, projectsUsingDataset } from '../legacy/datasets';
import { countHeld } from '../legacy/realtime';
import { countMapped } from '../legacy/store';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

const DatasetParam = z.object({ dataset: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/) });
const DatasetQuery = z.object({ projectId: z.string().min(1).max(128).optional().describe('may be left out while only one project uses the dataset') });

const DatasetView = z.object({
  dataset: z.string(),
  projectId: z.string().nullable().describe('null while no project uses the name (and none was asked for)'),
  initialMigrationCompletedAt: z.string().nullable(),
  mapped: z.number().describe('legacy rows with their new event id'),
  held: z.number().describe('realtime events waiting for the initial import'),
});
export type DatasetView = z.infer<typeof DatasetView>;

const route = createRoute({
  method: 'get',
  path: '/admin/datasets/{dataset}',
  summary: "A project's legacy dataset: import completion, mapped rows, held realtime events",
  tags: ['jobs'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  request: { params: DatasetParam, query: DatasetQuery },
  responses: {
    200: json(DatasetView, 'the dataset in that project'),
    ...errors(
      { 400: '`invalid_request`, `ambiguous_dataset` (several projects use it: name one with ?projectId=)' },
      401,
      { 404: '`dataset_not_enabled` (not in LEGACY_DATASETS), `unknown_project`' },
      { 503: `${ADMIN_DISABLED}; \`misconfigured\`; \`storage_unavailable\`` },
    ),
  },
});

export const adminDatasetsRoute = router().openapi(route, async (c) => {
  const { dataset } = c.req.valid('param');
  if (!getConfig(c.env).legacyDatasets.includes(dataset)) {
    throw new ApiError(404, 'dataset_not_enabled', `dataset ${dataset} is not enabled (LEGACY_DATASETS)`);
  }
  let { projectId } = c.req.valid('query');
  if (projectId !== undefined) {
    const project = await drizzle(c.env.DB).select({ id: projects.id }).from(projects).where(eq(projects.id, projectId)).get();
    if (!project) throw new ApiError(404, 'unknown_project', `no project ${projectId}`);
  } else {
    // The name alone is enough while one project uses it.
    const users = await projectsUsingDataset(c.env.DB, dataset);
    if (users.length > 1) {
      throw new ApiError(400, 'ambiguous_dataset', `dataset ${dataset} is used by ${users.length} projects: name one with ?projectId=`, { dataset, projectIds: users });
    }
    projectId = users[0];
  }
  if (projectId === undefined) {
    return c.json({ dataset, projectId: null, initialMigrationCompletedAt: null, mapped: 0, held: 0 }, 200);
  }
  const key = { projectId, dataset };
  const [completedAt, mapped, held] = await Promise.all([
    initialMigrationCompletedAt(c.env.DB, key),
    countMapped(clickhouse(getConfig(c.env).clickhouse), key),
    countHeld(c.env.DB, key),
  ]);
  return c.json(
    {
      dataset,
      projectId,
      initialMigrationCompletedAt: completedAt === null ? null : new Date(completedAt).toISOString(),
      mapped,
      held,
    },
    200,
  );
});
