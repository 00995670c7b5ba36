// GET /admin/datasets/:dataset — whether a legacy dataset's initial import is complete, and how much is mapped.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { z } from 'zod';
import { requireAdmin, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { initialMigrationCompletedAt } from '../legacy/datasets';
import { countHeld } from '../legacy/realtime';
import { countMapped } from '../legacy/store';
import { validationHook } from './validation';

const DatasetParam = z.object({ dataset: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/) });

export const adminDatasetsRoute = new Hono<AppEnv>().get('/admin/datasets/:dataset', requireAdmin, zValidator('param', DatasetParam, validationHook), async (c) => {
  const { dataset } = c.req.valid('param');
  if (!getConfig(c.env).legacyDatasets.includes(dataset)) {
    throw new ApiError(404, 'dataset_not_enabled', `dataset ${dataset} is not enabled (LEGACY_DATASETS)`);
  }
  const [completedAt, mapped, held] = await Promise.all([
    initialMigrationCompletedAt(c.env.DB, dataset),
    countMapped(clickhouse(getConfig(c.env).clickhouse), dataset),
    countHeld(c.env.DB, dataset),
  ]);
  return c.json({
    dataset,
    initialMigrationCompletedAt: completedAt === null ? null : new Date(completedAt).toISOString(),
    mapped,
    /** Realtime events waiting for the initial import. */
    held,
  });
});
