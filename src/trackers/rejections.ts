// Rows of tracker apps rejected for good, counted per (project, source) in D1 for the operator: the
// apps are told "ok" (or they would resend a malformed row forever), so this is where they show.
import { desc, eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { rejectedRows } from '../db/schema';
import type { Rejection } from '../ingest/normalize';
import type { TrackerSource } from './position-event';

/** Rows listed by (project, source) in `/admin/health`, the most recent first; the total covers all. */
const LISTED = 20;
const MAX_ERROR_CHARS = 500;

export async function countRejectedRows(d1: D1Database, projectId: string, source: TrackerSource, rejections: readonly Rejection[], nowMs: number): Promise<void> {
  const last = rejections.at(-1);
  if (!last) return;
  const row = { projectId, source, count: rejections.length, lastReason: last.reason, lastError: last.error.slice(0, MAX_ERROR_CHARS), lastAt: nowMs };
  await drizzle(d1)
    .insert(rejectedRows)
    .values(row)
    .onConflictDoUpdate({
      target: [rejectedRows.projectId, rejectedRows.source],
      set: { count: sql`${rejectedRows.count} + excluded.count`, lastReason: row.lastReason, lastError: row.lastError, lastAt: row.lastAt },
    });
}

export interface TrackerRejections {
  rejectedRows: number;
  recent: Array<{ projectId: string; source: string; count: number; lastReason: string; lastError: string; lastAt: string }>;
}

export async function trackerRejections(d1: D1Database): Promise<TrackerRejections> {
  const db = drizzle(d1);
  try {
    const [total, recent] = await Promise.all([
      db.select({ rows: sql<number>`coalesce(sum(${rejectedRows.count}), 0)` }).from(rejectedRows).get(),
      db.select().from(rejectedRows).orderBy(desc(rejectedRows.lastAt)).limit(LISTED).all(),
    ]);
    return {
      rejectedRows: total?.rows ?? 0,
      recent: recent.map((r) => ({ ...r, lastAt: new Date(r.lastAt).toISOString() })),
    };
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new Error(`cannot read rejected tracker rows from D1: ${cause}`);
  }
}

export interface ProjectRejections {
  rejectedRows: number;
  sources: Array<{ source: string; count: number; lastReason: string; lastError: string; lastAt: string }>;
}

/** One project's rejected tracker rows, per source (its own read route: `GET /v1/rejections`). */
export async function projectRejections(d1: D1Database, projectId: string): Promise<ProjectRejections> {
  const rows = await drizzle(d1).select().from(rejectedRows).where(eq(rejectedRows.projectId, projectId)).orderBy(desc(rejectedRows.lastAt)).all();
  return {
    rejectedRows: rows.reduce((n, r) => n + r.count, 0),
    sources: rows.map((r) => ({ source: r.source, count: r.count, lastReason: r.lastReason, lastError: r.lastError, lastAt: new Date(r.lastAt).toISOString() })),
  };
}
