// The per-dataset flag in D1 that says the initial import is complete.
import { eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { legacyDatasets } from '../db/schema';

/** Once set the flag never changes back, so a positive answer can be kept for the isolate's life. */
const completed = new Map<string, number>();

export async function initialMigrationCompletedAt(d1: D1Database, dataset: string): Promise<number | null> {
  const hit = completed.get(dataset);
  if (hit !== undefined) return hit;
  const row = await drizzle(d1).select().from(legacyDatasets).where(eq(legacyDatasets.dataset, dataset)).get();
  const at = row?.initialMigrationCompletedAt ?? null;
  if (at !== null) completed.set(dataset, at);
  return at;
}

/** Sets the flag; the first completion time is kept when a re-run completes again. */
export async function markInitialMigrationCompleted(d1: D1Database, dataset: string, now: number): Promise<number> {
  const [row] = await drizzle(d1)
    .insert(legacyDatasets)
    .values({ dataset, initialMigrationCompletedAt: now })
    .onConflictDoUpdate({
      target: legacyDatasets.dataset,
      set: { initialMigrationCompletedAt: sql`coalesce(${legacyDatasets.initialMigrationCompletedAt}, ${now})` },
    })
    .returning();
  return row!.initialMigrationCompletedAt!;
}

export async function completedDatasets(d1: D1Database): Promise<string[]> {
  const rows = await drizzle(d1).select({ dataset: legacyDatasets.dataset }).from(legacyDatasets).where(sql`${legacyDatasets.initialMigrationCompletedAt} IS NOT NULL`).all();
  return rows.map((r) => r.dataset);
}
