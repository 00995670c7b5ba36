// Jobs in D1. Every write that races a chunk is a compare-and-set on `lease_version`.
import { and, desc, eq, inArray, lt, or, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { jobs } from '../db/schema';
import type { JobState, Progress } from './states';
import { throttleView, type ThrottleView } from './throttle';

export type JobRow = typeof jobs.$inferSelect;

/** What the admin routes show of a job. */
export interface JobView {
  id: string;
  type: string;
  state: JobState;
  rowsProcessed: number;
  rowsTotal: number | null;
  /** Source rows that could not become events (no key, device or time): counted in rowsProcessed too. */
  rowsSkipped: number;
  ratePerSec: number | null;
  etaSec: number | null;
  cursor: string | null;
  attempts: number;
  error: string | null;
  /** What a finished job did, by type (an erasure: what it removed from each store); null until then. */
  result: unknown;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  lastUpdateAt: string;
  /** A self-throttling import's controller: its step, rests and the read latency it sees; null otherwise. */
  throttle: ThrottleView | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function toView(j: JobRow): JobView {
  return {
    id: j.id,
    type: j.type,
    state: j.state as JobState,
    rowsProcessed: j.rowsProcessed,
    rowsTotal: j.rowsTotal,
    rowsSkipped: j.rowsSkipped,
    ratePerSec: j.ratePerSec,
    etaSec: j.etaSec,
    cursor: j.cursor,
    attempts: j.attempts,
    error: j.error,
    result: j.result === null ? null : (JSON.parse(j.result) as unknown),
    createdAt: iso(j.createdAt)!,
    startedAt: iso(j.startedAt),
    endedAt: iso(j.endedAt),
    lastUpdateAt: iso(j.lastUpdateAt)!,
    throttle: throttleView(j.params),
  };
}

export interface ChunkCommit extends Progress {
  rowsSkipped: number;
  cursor: string | null;
  maxKey: string | null;
  verifyWrites?: boolean;
}

/**
 * A statement creating an `enqueued` job only where `guard` (an SQL condition on ?5 onwards) holds:
 * for a job written in the same D1 batch as the change that calls for it, so that neither is
 * stored without the other. Its first chunk message is sent after the batch (see sendCreatedJob).
 */
export function createJobStatement(d1: D1Database, id: string, type: string, params: unknown, now: number, guard: { sql: string; binds: unknown[] }): D1PreparedStatement {
  return d1
    .prepare(`INSERT INTO jobs (id, type, state, params, created_at, last_update_at) SELECT ?1, ?2, 'enqueued', ?3, ?4, ?4 WHERE ${guard.sql}`)
    .bind(id, type, JSON.stringify(params), now, ...guard.binds);
}

export function jobStore(d1: D1Database) {
  const db = drizzle(d1);
  const byVersion = (id: string, version: number) => and(eq(jobs.id, id), eq(jobs.leaseVersion, version));

  return {
    async create(id: string, type: string, params: unknown, now: number): Promise<JobRow> {
      const [row] = await db
        .insert(jobs)
        .values({ id, type, state: 'enqueued', params: JSON.stringify(params), createdAt: now, lastUpdateAt: now })
        .returning();
      return row!;
    },

    /**
     * Creates the job unless another job of `type` whose params carry the same values is in one of
     * `blocking` states — one statement, so of two concurrent starts exactly one is written.
     * null when one blocks it.
     */
    async createUnlessActive(id: string, type: string, params: unknown, now: number, match: Record<string, string>, blocking: readonly JobState[]): Promise<JobRow | null> {
      const conditions = Object.entries(match).map(([k, v]) => sql`json_extract(${jobs.params}, ${'$.' + k}) = ${v}`);
      const blocked = and(eq(jobs.type, type), ...conditions, inArray(jobs.state, [...blocking]));
      const inserted = await db.all<{ id: string }>(sql`
        INSERT INTO ${jobs} (id, type, state, params, created_at, last_update_at)
        SELECT ${id}, ${type}, 'enqueued', ${JSON.stringify(params)}, ${now}, ${now}
        WHERE NOT EXISTS (SELECT 1 FROM ${jobs} WHERE ${blocked})
        RETURNING id`);
      return inserted.length ? ((await db.select().from(jobs).where(eq(jobs.id, id)).get()) ?? null) : null;
    },

    /** Other jobs of `type` whose params carry the same values (e.g. the same project and dataset). */
    async others(id: string, type: string, match: Record<string, string>, states?: readonly JobState[]): Promise<JobRow[]> {
      const conditions = Object.entries(match).map(([k, v]) => sql`json_extract(${jobs.params}, ${'$.' + k}) = ${v}`);
      return db
        .select()
        .from(jobs)
        .where(and(sql`${jobs.id} <> ${id}`, eq(jobs.type, type), ...conditions, ...(states ? [inArray(jobs.state, [...states])] : [])))
        .limit(10)
        .all();
    },

    async get(id: string): Promise<JobRow | undefined> {
      return db.select().from(jobs).where(eq(jobs.id, id)).get();
    },

    async list(limit = 100): Promise<JobRow[]> {
      return db.select().from(jobs).orderBy(desc(jobs.createdAt)).limit(limit).all();
    },

    async inStates(states: readonly JobState[], limit = 100): Promise<JobRow[]> {
      return db
        .select()
        .from(jobs)
        .where(inArray(jobs.state, [...states]))
        .orderBy(desc(jobs.lastUpdateAt))
        .limit(limit)
        .all();
    },

    /** Takes the lease for one chunk; null when another chunk owns the job or the message is stale. */
    async claim(id: string, version: number, now: number, leaseUntil: number): Promise<JobRow | null> {
      const [row] = await db
        .update(jobs)
        .set({
          state: 'running',
          leaseVersion: version + 1,
          leaseUntil,
          startedAt: sql`coalesce(${jobs.startedAt}, ${now})`,
          lastUpdateAt: now,
        })
        .where(and(byVersion(id, version), inArray(jobs.state, ['enqueued', 'running']), lt(jobs.leaseUntil, now)))
        .returning();
      return row ?? null;
    },

    /** Extends the lease of a running chunk; false once the watchdog fenced it off. */
    async renew(id: string, version: number, leaseUntil: number): Promise<boolean> {
      const [row] = await db.update(jobs).set({ leaseUntil }).where(byVersion(id, version)).returning({ id: jobs.id });
      return row !== undefined;
    },

    /** Records a finished chunk and frees the lease; null when the lease was lost meanwhile. */
    async commit(id: string, version: number, c: ChunkCommit, now: number): Promise<JobRow | null> {
      const [row] = await db
        .update(jobs)
        .set({ ...c, attempts: 0, leaseVersion: version + 1, leaseUntil: 0, lastUpdateAt: now })
        .where(byVersion(id, version))
        .returning();
      return row ?? null;
    },

    /** Moves a job whose lease `version` is current into a state (no lease held afterwards). */
    async settle(id: string, version: number, state: JobState, now: number, fields: Partial<JobRow> = {}): Promise<JobRow | null> {
      const terminal = state === 'succeeded' || state === 'failed' || state === 'cancelled';
      const [row] = await db
        .update(jobs)
        .set({ ...fields, state, leaseVersion: version + 1, leaseUntil: 0, lastUpdateAt: now, ...(terminal ? { endedAt: now } : {}) })
        .where(byVersion(id, version))
        .returning();
      return row ?? null;
    },

    /** An operator action: compare-and-set on the state the route read. */
    async transition(id: string, from: JobState, to: JobState, now: number, fields: Partial<JobRow> = {}, bumpVersion = false): Promise<JobRow | null> {
      const terminal = to === 'succeeded' || to === 'failed' || to === 'cancelled';
      const [row] = await db
        .update(jobs)
        .set({
          ...fields,
          state: to,
          lastUpdateAt: now,
          ...(terminal ? { endedAt: now } : {}),
          ...(bumpVersion ? { leaseVersion: sql`${jobs.leaseVersion} + 1`, leaseUntil: 0 } : {}),
        })
        .where(and(eq(jobs.id, id), eq(jobs.state, from)))
        .returning();
      return row ?? null;
    },

    /**
     * Jobs the watchdog must re-kick: a lease that expired (its chunk died), or no lease and no
     * word for `stallMs` (the message for the next chunk was lost).
     */
    async stalled(now: number, stallMs: number): Promise<JobRow[]> {
      return db
        .select()
        .from(jobs)
        .where(
          and(
            inArray(jobs.state, ['enqueued', 'running', 'pausing', 'cancelling']),
            or(and(sql`${jobs.leaseUntil} > 0`, lt(jobs.leaseUntil, now)), and(eq(jobs.leaseUntil, 0), lt(jobs.lastUpdateAt, now - stallMs))),
          ),
        )
        .limit(100)
        .all();
    },

    /**
     * Frees the lease of `version` without touching the state (an operator's pause or cancel
     * request stays), fencing off any chunk or message of that version.
     */
    async release(id: string, version: number, now: number, fields: Partial<JobRow> = {}): Promise<JobRow | null> {
      const [row] = await db
        .update(jobs)
        .set({ ...fields, leaseVersion: version + 1, leaseUntil: 0, lastUpdateAt: now })
        .where(byVersion(id, version))
        .returning();
      return row ?? null;
    },
  };
}

export type JobStore = ReturnType<typeof jobStore>;
