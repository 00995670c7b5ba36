// The archive manifest in D1 (table `archive_chunks`): what each chunk of a (project, month) holds,
// and how far it went (uploaded → verified → cleared; restored).
import { and, asc, desc, eq, gte, isNotNull, lte, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { archiveChunks, archiveNumbers } from '../db/schema';
import type { ArchiveChunkManifest } from './chunk';

export type ManifestRow = typeof archiveChunks.$inferSelect;

/** The manifest row as the chunk codec names its fields (what decodeChunk checks an object against). */
export function toChunkManifest(r: ManifestRow): ArchiveChunkManifest {
  return {
    projectId: r.projectId,
    month: r.month,
    number: r.number,
    key: r.key,
    rowCount: r.rowCount,
    rawBytes: r.rawBytes,
    compressedBytes: r.compressedBytes,
    sha256Hex: r.sha256,
    idsChecksumHex: r.idsChecksum,
    firstCreatedAtMs: r.firstCreatedAtMs,
    lastCreatedAtMs: r.lastCreatedAtMs,
  };
}

export function manifestStore(d1: D1Database) {
  const db = drizzle(d1);
  const chunk = (projectId: string, month: string, number: number) =>
    and(eq(archiveChunks.projectId, projectId), eq(archiveChunks.month, month), eq(archiveChunks.number, number));

  return {
    /** Records an uploaded chunk (not yet verified); a second insert of the same number is a no-op. */
    async insert(m: ArchiveChunkManifest, jobId: string, now: number): Promise<void> {
      await db
        .insert(archiveChunks)
        .values({
          projectId: m.projectId,
          month: m.month,
          number: m.number,
          key: m.key,
          rowCount: m.rowCount,
          rawBytes: m.rawBytes,
          compressedBytes: m.compressedBytes,
          sha256: m.sha256Hex,
          idsChecksum: m.idsChecksumHex,
          firstCreatedAtMs: m.firstCreatedAtMs,
          lastCreatedAtMs: m.lastCreatedAtMs,
          jobId,
          createdAt: now,
        })
        .onConflictDoNothing();
    },

    async get(projectId: string, month: string, number: number): Promise<ManifestRow | undefined> {
      return db.select().from(archiveChunks).where(chunk(projectId, month, number)).get();
    },

    /** A project's chunks (of one month, when given), in (month, number) order. */
    async list(projectId: string, month?: string): Promise<ManifestRow[]> {
      return db
        .select()
        .from(archiveChunks)
        .where(and(eq(archiveChunks.projectId, projectId), ...(month ? [eq(archiveChunks.month, month)] : [])))
        .orderBy(asc(archiveChunks.month), asc(archiveChunks.number))
        .all();
    },

    /** Every (project, month) that has chunks, for the listing (optionally one project or month). */
    async months(filter: { projectId?: string; month?: string } = {}): Promise<Array<{ projectId: string; month: string }>> {
      return db
        .selectDistinct({ projectId: archiveChunks.projectId, month: archiveChunks.month })
        .from(archiveChunks)
        .where(and(...(filter.projectId ? [eq(archiveChunks.projectId, filter.projectId)] : []), ...(filter.month ? [eq(archiveChunks.month, filter.month)] : [])))
        .orderBy(asc(archiveChunks.projectId), desc(archiveChunks.month))
        .all();
    },

    /**
     * The number the next chunk of a month takes: numbers only grow, even past chunks whose rows
     * were removed (their number is kept in `archive_numbers`).
     */
    async nextNumber(projectId: string, month: string): Promise<number> {
      const [row, removed] = await Promise.all([
        db
          .select({ max: sql<number | null>`max(${archiveChunks.number})` })
          .from(archiveChunks)
          .where(and(eq(archiveChunks.projectId, projectId), eq(archiveChunks.month, month)))
          .get(),
        db
          .select({ highWater: archiveNumbers.highWater })
          .from(archiveNumbers)
          .where(and(eq(archiveNumbers.projectId, projectId), eq(archiveNumbers.month, month)))
          .get(),
      ]);
      return Math.max(row?.max ?? 0, removed?.highWater ?? 0) + 1;
    },

    /** The verified chunks of a month whose time range holds `createdAtMs` (a lazy read's candidates). */
    async holdingTime(projectId: string, month: string, createdAtMs: number): Promise<ManifestRow[]> {
      return db
        .select()
        .from(archiveChunks)
        .where(
          and(
            eq(archiveChunks.projectId, projectId),
            eq(archiveChunks.month, month),
            isNotNull(archiveChunks.verifiedAt),
            lte(archiveChunks.firstCreatedAtMs, createdAtMs),
            gte(archiveChunks.lastCreatedAtMs, createdAtMs),
          ),
        )
        .orderBy(asc(archiveChunks.number))
        .all();
    },

    async markVerified(projectId: string, month: string, number: number, now: number): Promise<void> {
      await db.update(archiveChunks).set({ verifiedAt: now }).where(and(chunk(projectId, month, number), sql`${archiveChunks.verifiedAt} IS NULL`));
    },

    async markCleared(projectId: string, month: string, number: number, now: number): Promise<void> {
      await db.update(archiveChunks).set({ clearedAt: now, restoredAt: null }).where(chunk(projectId, month, number));
    },

    async markRestored(projectId: string, month: string, number: number, now: number): Promise<void> {
      await db.update(archiveChunks).set({ restoredAt: now }).where(chunk(projectId, month, number));
    },

    /** Removes a chunk's row; its number stays used (the month's high-water mark keeps it). */
    async remove(projectId: string, month: string, number: number): Promise<void> {
      await db.batch([
        db
          .insert(archiveNumbers)
          .values({ projectId, month, highWater: number })
          .onConflictDoUpdate({ target: [archiveNumbers.projectId, archiveNumbers.month], set: { highWater: sql`max(${archiveNumbers.highWater}, excluded.high_water)` } }),
        db.delete(archiveChunks).where(chunk(projectId, month, number)),
      ]);
    },

    /** Forgets every manifest row and number of a project (its deletion, once its objects are gone). */
    async forgetProject(projectId: string): Promise<void> {
      await db.batch([db.delete(archiveChunks).where(eq(archiveChunks.projectId, projectId)), db.delete(archiveNumbers).where(eq(archiveNumbers.projectId, projectId))]);
    },
  };
}

export type ManifestStore = ReturnType<typeof manifestStore>;
