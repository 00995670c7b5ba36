// Legacy datasets in D1, one per (project, dataset): the flag that says the initial import is
// complete, and how many realtime events wait for it.
import { and, eq, gt, isNotNull, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { jobs, legacyDatasets } from '../db/schema';

/** A dataset belongs to the project that imports it; the same name in another project is another dataset. */
export interface DatasetKey {
  projectId: string;
  dataset: string;
}

const cacheKey = (key: DatasetKey) => `${key.projectId}\u0000${key.dataset}`;

/** Once set the flag never changes back, so a positive answer can be kept for the isolate's life. */
const completed = new Map<string, number>();

export async function initialMigrationCompletedAt(d1: D1Database, key: DatasetKey): Promise<number | null> {
  const hit = completed.get(cacheKey(key));
  if (hit !== undefined) return hit;
  const row = await drizzle(d1)
    .select({ at: legacyDatasets.initialMigrationCompletedAt })
    .from(legacyDatasets)
    .where(and(eq(legacyDatasets.projectId, key.projectId), eq(legacyDatasets.dataset, key.dataset)))
    .get();
  const at = row?.at ?? null;
  if (at !== null) completed.set(cacheKey(key), at);
  return at;
}

/** Sets the flag; the first completion time is kept when a re-run completes again. */
export async function markInitialMigrationCompleted(d1: D1Database, key: DatasetKey, now: number): Promise<number> {
  const [row] = await drizzle(d1)
    .insert(legacyDatasets)
    .values({ projectId: key.projectId, dataset: key.dataset, initialMigrationCompletedAt: now })
    .onConflictDoUpdate({
      target: [legacyDatasets.projectId, legacyDatasets.dataset],
      set: { initialMigrationCompletedAt: sql`coalesce(${legacyDatasets.initialMigrationCompletedAt}, ${now})` },
    })
    .returning();
  return row!.initialMigrationCompletedAt!;
}

/** Completed datasets with realtime events still held: the watchdog releases them. */
export async function releasableDatasets(d1: D1Database): Promise<DatasetKey[]> {
  return drizzle(d1)
    .select({ projectId: legacyDatasets.projectId, dataset: legacyDatasets.dataset })
    .from(legacyDatasets)
    .where(and(isNotNull(legacyDatasets.initialMigrationCompletedAt), gt(legacyDatasets.held, 0)))
    .all();
}

/** Projects that use a dataset name: they hold or completed it, or ran an import of it. */
export async function projectsUsingDataset(d1: D1Database, dataset: string): Promise<string[]> {
  const db = drizzle(d1);
  const [known, imported] = await Promise.all([
    db.select({ projectId: legacyDatasets.projectId }).from(legacyDatasets).where(eq(legacyDatasets.dataset, dataset)).all(),
    db
      .selectDistinct({ projectId: sql<string>`json_extract(${jobs.params}, '$.projectId')` })
      .from(jobs)
      .where(and(eq(jobs.type, 'legacy_import'), sql`json_extract(${jobs.params}, '$.dataset') = ${dataset}`))
      .all(),
  ]);
  return [...new Set([...known, ...imported].map((r) => r.projectId).filter(Boolean))].sort();
}
