// The fleet recompute of a device after its positions are stored: one device at a time (a D1 lease
// on its fleet cursor), the affected stretches re-analysed from ClickHouse, and only what changed
// written back as new versions of its stretches, trips, daily mileage rows and live position.
import { z } from 'zod';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome, type JobRunner } from '../jobs/runner';
import { mapPool } from '../lib/pool';
import type { EventRow } from '../pipeline/messages';
import { applyRecompute, planRecompute, widenRecompute, type FleetHistory, type RecomputeRange } from './incremental';
import { POSITION_EVENT_NAME } from './position';
import { DEFAULT_FLEET_RULES, type FleetRules } from './rules';
import { liveFromAccepted } from './status';
import {
  historyTrip,
  mileageRows,
  readFixes,
  readLive,
  readMileageRows,
  storedTrip,
  stretchesFrom,
  tripsOverlapping,
  tripsStartingFrom,
  utcDay,
  writeLive,
  writeMileageRows,
  writeStretches,
  writeTrips,
  type StoredTrip,
  type Versioned,
} from './store';
import { analyse, type Analysis } from './trips';

/** A recompute holds its device this long; a consumer that dies lets the next batch take over. */
export const FLEET_LEASE_MS = 120_000;
/** Passes one lease makes while other batches keep widening the pending span; the rest waits for the next batch. */
const MAX_PASSES = 4;
const DEVICE_CONCURRENCY = 4;
const DAY_MS = 86_400_000;

/** The span of new position fixes of one device. */
export interface PositionSpan {
  projectId: string;
  deviceId: string;
  fromMs: number;
  toMs: number;
}

/** The devices with `position` events among `events`, with the span of their times. */
export function positionSpans(events: readonly Pick<EventRow, 'project_id' | 'device_id' | 'type' | 'name' | 'created_at_ms'>[]): PositionSpan[] {
  const spans = new Map<string, PositionSpan>();
  for (const e of events) {
    if (e.type !== 'track' || e.name !== POSITION_EVENT_NAME) continue;
    const key = `${e.project_id}\u0000${e.device_id}`;
    const s = spans.get(key);
    if (!s) spans.set(key, { projectId: e.project_id, deviceId: e.device_id, fromMs: e.created_at_ms, toMs: e.created_at_ms });
    else {
      s.fromMs = Math.min(s.fromMs, e.created_at_ms);
      s.toMs = Math.max(s.toMs, e.created_at_ms);
    }
  }
  return [...spans.values()];
}

// ---------------------------------------------------------------------------------------------
// The fleet cursor (D1): pending span, lease, version sequence

interface Pending {
  fromMs: number;
  toMs: number;
  dirty: number;
  seq: number;
}

/** Widens the device's pending span by [fromMs, toMs]; the row is created on a device's first positions. */
export async function markPending(db: D1Database, s: PositionSpan, nowMs = Date.now()): Promise<void> {
  await db
    .prepare(
      `INSERT INTO fleet_cursors (project_id, device_id, pending_from_ms, pending_to_ms, dirty, lease_until, seq, updated_at)
       VALUES (?1, ?2, ?3, ?4, 1, 0, 0, ?5)
       ON CONFLICT (project_id, device_id) DO UPDATE SET
         pending_from_ms = min(coalesce(pending_from_ms, excluded.pending_from_ms), excluded.pending_from_ms),
         pending_to_ms = max(coalesce(pending_to_ms, excluded.pending_to_ms), excluded.pending_to_ms),
         dirty = dirty + 1,
         updated_at = excluded.updated_at`,
    )
    .bind(s.projectId, s.deviceId, Math.trunc(s.fromMs), Math.trunc(s.toMs), nowMs)
    .run();
}

interface CursorRow {
  pending_from_ms: number | null;
  pending_to_ms: number | null;
  dirty: number;
  seq: number;
}

const pendingOf = (r: CursorRow | null): Pending | null =>
  r && r.pending_from_ms !== null && r.pending_to_ms !== null ? { fromMs: r.pending_from_ms, toMs: r.pending_to_ms, dirty: r.dirty, seq: r.seq } : null;

/** Takes the device's lease if it is free and something is pending; `seq` grows with each lease. */
async function acquire(db: D1Database, projectId: string, deviceId: string, token: string, nowMs: number): Promise<Pending | null> {
  const row = await db
    .prepare(
      `UPDATE fleet_cursors SET lease_token = ?3, lease_until = ?4, seq = seq + 1
        WHERE project_id = ?1 AND device_id = ?2 AND lease_until < ?5 AND pending_from_ms IS NOT NULL
        RETURNING pending_from_ms, pending_to_ms, dirty, seq`,
    )
    .bind(projectId, deviceId, token, nowMs + FLEET_LEASE_MS, nowMs)
    .first<CursorRow>();
  return pendingOf(row);
}

/** Clears the pending span and the lease, unless more was marked meanwhile: then the current pending. */
async function finish(db: D1Database, projectId: string, deviceId: string, token: string, done: Pending): Promise<Pending | null> {
  const cleared = await db
    .prepare(
      `UPDATE fleet_cursors SET pending_from_ms = NULL, pending_to_ms = NULL, lease_token = NULL, lease_until = 0
        WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3 AND dirty = ?4`,
    )
    .bind(projectId, deviceId, token, done.dirty)
    .run();
  if (cleared.meta.changes === 1) return null;
  const row = await db
    .prepare(`UPDATE fleet_cursors SET lease_until = ?4 WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3 RETURNING pending_from_ms, pending_to_ms, dirty, seq`)
    .bind(projectId, deviceId, token, Date.now() + FLEET_LEASE_MS)
    .first<CursorRow>();
  if (!row) throw new Error(`fleet lease of ${deviceId} was lost`);
  return pendingOf(row) ?? null;
}

async function release(db: D1Database, projectId: string, deviceId: string, token: string): Promise<void> {
  await db.prepare(`UPDATE fleet_cursors SET lease_token = NULL, lease_until = 0 WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3`).bind(projectId, deviceId, token).run();
}

/** Still ours (and extended): a chunk whose lease ran out must not write over its successor's rows. */
async function holdsLease(db: D1Database, projectId: string, deviceId: string, token: string): Promise<boolean> {
  const r = await db
    .prepare(`UPDATE fleet_cursors SET lease_until = ?4 WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3 AND lease_until >= ?5`)
    .bind(projectId, deviceId, token, Date.now() + FLEET_LEASE_MS, Date.now())
    .run();
  return r.meta.changes === 1;
}

// ---------------------------------------------------------------------------------------------
// One pass

export interface PassResult {
  range: RecomputeRange | null;
  fixesRead: number;
  tripsWritten: number;
  tripsRemoved: number;
  daysWritten: number;
  liveWritten: boolean;
}

const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * Recomputes the device for fixes stored in [fromMs, toMs] and writes what changed with `version`.
 * `beforeWrite` is checked once the analysis is done (the lease is still held).
 */
export async function recomputePass(
  ch: ClickHouse,
  v: Versioned,
  span: { fromMs: number; toMs: number },
  rules: FleetRules,
  beforeWrite: () => Promise<boolean> = async () => true,
): Promise<PassResult> {
  const { projectId, deviceId } = v;
  const stretches = await stretchesFrom(ch, projectId, deviceId, span.fromMs);
  const from = stretches[0]?.startMs ?? span.fromMs;
  const oldTrips = await tripsStartingFrom(ch, projectId, deviceId, Math.min(from, span.fromMs));
  const history: FleetHistory = { stretches, trips: oldTrips.map(historyTrip) };

  let range = planRecompute(stretches, [span.fromMs, span.toMs]);
  let fresh: Analysis | null = null;
  let fixesRead = 0;
  while (range) {
    const fixes = await readFixes(ch, projectId, deviceId, range.fromMs, range.toMs);
    fixesRead += fixes.length;
    fresh = analyse(fixes, rules, { followingFixMs: range.followingFixMs });
    const wider = widenRecompute(stretches, range, fresh);
    if (!wider) break;
    range = wider;
  }
  const result: PassResult = { range, fixesRead, tripsWritten: 0, tripsRemoved: 0, daysWritten: 0, liveWritten: false };
  if (!range || !fresh) return result;
  const inRange = (t: number) => t >= range!.fromMs && t <= range!.toMs;
  const next = applyRecompute(history, range, fresh);

  // Stretches and trips of the window: changed ones rewritten, vanished ones marked deleted.
  const oldStretches = new Map(stretches.filter((s) => inRange(s.startMs)).map((s) => [s.startMs, s]));
  const newStretches = fresh.stretches.filter((s) => !sameJson(oldStretches.get(s.startMs), s));
  const goneStretches = [...oldStretches.keys()].filter((t) => !fresh!.stretches.some((s) => s.startMs === t));
  const oldInRange = new Map(oldTrips.filter((t) => inRange(t.startAt)).map((t) => [t.startAt, t]));
  const freshTrips = fresh.trips.map((t) => storedTrip(deviceId, t));
  const changedTrips = freshTrips.filter((t) => !sameJson(oldInRange.get(t.startAt), t));
  const goneTrips = [...oldInRange.keys()].filter((t) => !freshTrips.some((f) => f.startAt === t));

  // Daily rows of the UTC days whose trips changed, rebuilt from every trip touching them.
  const touched = new Set<string>();
  const touch = (t: StoredTrip) => {
    touched.add(utcDay(t.startAt));
    for (const b of t.buckets) touched.add(utcDay(b.startMs));
  };
  changedTrips.forEach(touch);
  for (const t of goneTrips) touch(oldInRange.get(t)!);
  for (const t of changedTrips) {
    const old = oldInRange.get(t.startAt);
    if (old) touch(old);
  }
  let dayRows: ReturnType<typeof mileageRows> = [];
  if (touched.size) {
    const days = [...touched].sort();
    const firstMs = Date.parse(`${days[0]}T00:00:00Z`);
    const lastMs = Date.parse(`${days[days.length - 1]}T00:00:00Z`) + DAY_MS - 1;
    const others = (await tripsOverlapping(ch, projectId, [deviceId], firstMs, lastMs)).filter((t) => !inRange(t.startAt));
    const rebuilt = mileageRows(deviceId, days, [...others, ...freshTrips]);
    const stored = new Map((await readMileageRows(ch, projectId, [deviceId], days[0]!, days[days.length - 1]!)).map((r) => [r.day, r]));
    dayRows = rebuilt.filter((r) => {
      const old = stored.get(r.day);
      return old ? !sameJson(old.buckets, r.buckets) : r.buckets.length > 0;
    });
  }

  // Live: from the accepted fixes of the device's last stretch, when this window holds it.
  let live = null;
  const last = next.stretches[next.stretches.length - 1];
  if (last && inRange(last.startMs)) {
    live = liveFromAccepted(fresh.accepted.filter((f) => f.atMs >= last.startMs), rules);
    if (live && sameJson((await readLive(ch, projectId, [deviceId])).get(deviceId), live)) live = null;
  }

  if (!(await beforeWrite())) throw new Error(`fleet lease of ${deviceId} ran out before its recompute could write`);
  // Trips and stretches before the daily rows and live position that derive from them.
  await Promise.all([writeStretches(ch, v, newStretches, goneStretches), writeTrips(ch, v, changedTrips, goneTrips)]);
  await Promise.all([dayRows.length ? writeMileageRows(ch, v, dayRows) : undefined, live ? writeLive(ch, v, live) : undefined]);
  return { ...result, tripsWritten: changedTrips.length, tripsRemoved: goneTrips.length, daysWritten: dayRows.length, liveWritten: live !== null };
}

// ---------------------------------------------------------------------------------------------
// A device under its lease

/**
 * Runs the device's pending recompute if no one else is: the lease holder loops until nothing new
 * was marked while it worked, so every marked span is recomputed by someone. Returns the passes run
 * (0: another consumer holds the device, or nothing was pending).
 */
export async function recomputeDevice(ch: ClickHouse, db: D1Database, projectId: string, deviceId: string, rules: FleetRules = DEFAULT_FLEET_RULES): Promise<number> {
  const token = crypto.randomUUID();
  let pending = await acquire(db, projectId, deviceId, token, Date.now());
  if (!pending) return 0;
  const seq = pending.seq;
  let passes = 0;
  try {
    while (pending) {
      if (passes >= MAX_PASSES) {
        await release(db, projectId, deviceId, token);
        return passes;
      }
      // Versions grow across leases (seq) and across the passes of one lease.
      const version = seq * 1000 + passes;
      await recomputePass(ch, { projectId, deviceId, version }, pending, rules, () => holdsLease(db, projectId, deviceId, token));
      passes++;
      pending = await finish(db, projectId, deviceId, token, pending);
    }
    return passes;
  } catch (err) {
    // The pending span stays: the device's next batch (or an operator's recompute job) redoes it.
    await release(db, projectId, deviceId, token).catch(() => {});
    throw err;
  }
}

/** The ingest consumer's step after a durable insert: mark and recompute every device with new positions. */
export async function recomputeAfterWrite(ch: ClickHouse, db: D1Database, spans: readonly PositionSpan[]): Promise<void> {
  await mapPool(spans, DEVICE_CONCURRENCY, async (s) => {
    try {
      await markPending(db, s);
      await recomputeDevice(ch, db, s.projectId, s.deviceId);
    } catch (err) {
      console.error(JSON.stringify({ msg: 'fleet recompute failed; the next batch of the device retries it', projectId: s.projectId, deviceId: s.deviceId, error: String(err) }));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The `fleet_recompute` job: history that arrived without the ingest consumer (a legacy import)

export const FleetRecomputeParams = z.object({
  projectId: z.string().min(1).max(128),
  deviceId: z.string().min(1).max(128).optional(),
  sinceMs: z.number().int(),
  untilMs: z.number().int(),
});
export type FleetRecomputeParams = z.infer<typeof FleetRecomputeParams>;

interface RecomputeCursor {
  deviceId: string;
  /** Start of the next day window of `deviceId` to recompute. */
  atMs: number;
}

/** Day windows per chunk: each is one bounded read and analysis, oldest first, so the history grows in order. */
const DAYS_PER_CHUNK = 3;

/** The first device after `after` (or the named one) with positions in the window. */
async function nextDevice(ch: ClickHouse, p: FleetRecomputeParams, after: string | null): Promise<string | null> {
  if (p.deviceId !== undefined) return after === null ? p.deviceId : null;
  const [row] = await ch.query<{ device_id: string }>(
    `SELECT device_id FROM events
      WHERE project_id = {p:String} AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
        AND type = 'track' AND name = {name:String} AND device_id > {after:String}
      ORDER BY device_id LIMIT 1`,
    { p: p.projectId, ...dateTimeBounds(p.sinceMs, p.untilMs), name: POSITION_EVENT_NAME, after: after ?? '' },
  );
  return row ? row.device_id : null;
}

async function countDevices(ch: ClickHouse, p: FleetRecomputeParams): Promise<number> {
  if (p.deviceId !== undefined) return 1;
  const [row] = await ch.query<{ n: number }>(
    `SELECT toUInt64(uniqExact(device_id)) AS n FROM events
      WHERE project_id = {p:String} AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64}) AND type = 'track' AND name = {name:String}`,
    { p: p.projectId, ...dateTimeBounds(p.sinceMs, p.untilMs), name: POSITION_EVENT_NAME },
  );
  return Number(row?.n ?? 0);
}

export const fleetRecomputeRunner: JobRunner = {
  pauseMs: () => 0,
  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const parsed = FleetRecomputeParams.safeParse(job.params);
    if (!parsed.success) throw new PermanentChunkError(`bad fleet_recompute params: ${parsed.error.message}`);
    const p = parsed.data;
    const ch = clickhouse(getConfig(env).clickhouse);
    const daysPerDevice = Math.max(1, Math.ceil((p.untilMs - p.sinceMs + 1) / DAY_MS));
    const planned = job.rowsTotal === null;
    const rowsTotal = planned ? (await countDevices(ch, p)) * daysPerDevice : job.rowsTotal!;
    let cursor: RecomputeCursor | null = job.cursor ? (JSON.parse(job.cursor) as RecomputeCursor) : null;
    if (!cursor) {
      const first = await nextDevice(ch, p, null);
      if (first === null) return { cursor: null, maxKey: null, rowsTotal, rowsBefore: 0, rows: 0, skippedBefore: 0, skipped: 0, done: true };
      cursor = { deviceId: first, atMs: p.sinceMs };
    }
    let rows = 0;
    for (let k = 0; k < DAYS_PER_CHUNK && cursor; k++) {
      const toMs = Math.min(cursor.atMs + DAY_MS - 1, p.untilMs);
      // Marked first: if the ingest consumer holds the device, it recomputes this span before it lets go.
      await markPending(env.DB, { projectId: p.projectId, deviceId: cursor.deviceId, fromMs: cursor.atMs, toMs });
      await recomputeDevice(ch, env.DB, p.projectId, cursor.deviceId);
      rows++;
      if (toMs < p.untilMs) cursor = { deviceId: cursor.deviceId, atMs: toMs + 1 };
      else {
        const next = await nextDevice(ch, p, cursor.deviceId);
        cursor = next === null ? null : { deviceId: next, atMs: p.sinceMs };
      }
    }
    return {
      cursor: cursor ? JSON.stringify(cursor) : null,
      maxKey: null,
      rowsTotal: Math.max(rowsTotal, job.rowsProcessed + rows),
      rowsBefore: job.rowsProcessed,
      rows,
      skippedBefore: job.rowsSkipped,
      skipped: 0,
      done: cursor === null,
    };
  },
  async complete() {
    return undefined;
  },
};
