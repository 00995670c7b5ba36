// GET /admin/datasets/:dataset?projectId= — a project's legacy dataset: whether its initial import is
// complete, how much is mapped, and how many realtime events are held for it.
import { zValidator } from '@hono/zod-validator';
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { Hono } from 'hono';
import { z } from 'zod';
import { requireAdmin, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { projects } from '../db/schema';
import { ApiError } from '../errors';
import { initialMigrationCompletedAt, projectsUsingDataset } from '../legacy/datasets';
import { countHeld } from '../legacy/realtime';
import { countMapped } from '../legacy/store';
import { validationHook } from './validation';

const DatasetParam = z.object({ dataset: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/) });
const DatasetQuery = z.object({ projectId: z.string().min(1).max(128).optional() });

export interface DatasetView {
  dataset: string;
  /** null while no project uses the name (and none was asked for). */
  projectId: string | null;
  initialMigrationCompletedAt: string | null;
  mapped: number;
  /** Realtime events waiting for the initial import. */
  held: number;
}

export const adminDatasetsRoute = new Hono<AppEnv>().get(
  '/admin/datasets/:dataset',
  requireAdmin,
  zValidator('param', DatasetParam, validationHook),
  zValidator('query', DatasetQuery, validationHook),
  async (c) => {
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
      return c.json<DatasetView>({ dataset, projectId: null, initialMigrationCompletedAt: null, mapped: 0, held: 0 });
    }
    const key = { projectId, dataset };
    const [completedAt, mapped, held] = await Promise.all([
      initialMigrationCompletedAt(c.env.DB, key),
      countMapped(clickhouse(getConfig(c.env).clickhouse), key),
      countHeld(c.env.DB, key),
    ]);
    return c.json<DatasetView>({
      dataset,
      projectId,
      initialMigrationCompletedAt: completedAt === null ? null : new Date(completedAt).toISOString(),
      mapped,
      held,
    });
  },
);
