// The fleet recompute after positions are stored: one holder per device (a D1 lease on its fleet
// cursor), the affected stretches re-analysed from ClickHouse, and what changed written back as new
// versions of its stretches, trips, daily mileage rows and live position. The devices of one queue
// batch are recomputed together: one read per table for all of them, one insert per table, and the
// cursor work of all of them in one D1 batch.
import { z } from 'zod';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { deleteRows } from '../clickhouse/mutations';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import { deviceStub } from '../device/stub';
import type { FleetLiveUpdate } from '../device/types';
import type { Env } from '../env';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome, type JobRunner } from '../jobs/runner';
import { mapPool } from '../lib/pool';
import type { EventRow } from '../pipeline/messages';
import { analyseRange, applyRecompute, planRecompute, readWindow, resumeAfter, widenRecompute, type FleetHistory, type RecomputeRange } from './incremental';
import { finishMileageRebuild, registryZones, zoneStatements, zonesFrom } from './live';
import type { Fix } from './position';
import { POSITION_EVENT_NAME } from './position';
import { localDates, localDayOf, localMidnights } from './mileage';
import { analysisRules, analysisRulesFrom, rulesStatements } from './project-rules';
import type { FleetRules } from './rules';
import {
  deviceKey,
  historyTrip,
  liveDeletion,
  liveRow,
  mileageInsertRows,
  mileageRows,
  parseResume,
  readFixesOf,
  resumeText,
  storedTrip,
  storedZone,
  stretchesFrom,
  stretchRows,
  tripRows,
  tripsEndingFrom,
  utcDay,
  type DeviceWindow,
  type MileageDayRow,
  type StoredStretch,
  type StoredTrip,
  type Versioned,
} from './store';
import type { LivePosition } from './status';
import type { Analysis } from './trips';

/** A recompute holds its device this long; a consumer that dies lets the next batch take over. */
export const FLEET_LEASE_MS = 120_000;
/** Passes one lease makes while other batches keep widening the pending span; the rest waits for the next batch. */
const MAX_PASSES = 4;
/** Devices recomputed together: bounds the fixes held in memory and the statements of one D1 batch. */
const DEVICES_PER_RUN = 100;
const DAY_MS = 86_400_000;
/** Device objects one pass hands live positions to at once. */
const OBJECT_CALL_CONCURRENCY = 16;
/** An object that has not taken its live position by then counts as refusing (its pass is retried). */
const OBJECT_CALL_TIMEOUT_MS = 10_000;

/**
 * What a recompute reaches besides ClickHouse: D1 (cursors, leases, rules, zones) and the device
 * objects, which keep each vehicle's live position.
 */
export type FleetEnv = Pick<Env, 'DB' | 'DEVICE'>;

export interface DeviceKey {
  projectId: string;
  deviceId: string;
}

/** The span of new position fixes of one device. */
export interface PositionSpan extends DeviceKey {
  fromMs: number;
  toMs: number;
}

/** The devices with `position` events among `events`, with the span of their times. */
export function positionSpans(events: readonly Pick<EventRow, 'project_id' | 'device_id' | 'type' | 'name' | 'created_at_ms'>[]): PositionSpan[] {
  const spans = new Map<string, PositionSpan>();
  // A message holds one device's events: the span of the one before is most often the one.
  let last: PositionSpan | undefined;
  for (const e of events) {
    if (e.type !== 'track' || e.name !== POSITION_EVENT_NAME) continue;
    let s = last && last.deviceId === e.device_id && last.projectId === e.project_id ? last : undefined;
    if (!s) {
      const key = `${e.project_id}\u0000${e.device_id}`;
      s = spans.get(key);
      if (!s) spans.set(key, (s = { projectId: e.project_id, deviceId: e.device_id, fromMs: e.created_at_ms, toMs: e.created_at_ms }));
    }
    if (e.created_at_ms < s.fromMs) s.fromMs = e.created_at_ms;
    if (e.created_at_ms > s.toMs) s.toMs = e.created_at_ms;
    last = s;
  }
  return [...spans.values()];
}

// ---------------------------------------------------------------------------------------------
// The fleet cursor (D1): pending span, lease, version sequence. Statements, so that the cursors of
// many devices move in one `db.batch` (one round trip, one transaction).

interface Pending {
  fromMs: number;
  toMs: number;
  dirty: number;
  seq: number;
}

interface CursorRow {
  pending_from_ms: number | null;
  pending_to_ms: number | null;
  dirty: number;
  seq: number;
}

const pendingOf = (r: CursorRow | null | undefined): Pending | null =>
  r && r.pending_from_ms !== null && r.pending_to_ms !== null ? { fromMs: r.pending_from_ms, toMs: r.pending_to_ms, dirty: r.dirty, seq: r.seq } : null;

/**
 * Widens the device's pending span by [fromMs, toMs] (the row is created on a device's first
 * positions) and takes the device's lease if it is free, as `acquireStatement` would right after:
 * the row answered carries `lease_token` = `token` when it did.
 */
const markAndAcquireStatement = (db: D1Database, s: PositionSpan, token: string, nowMs: number) =>
  db
    .prepare(
      `INSERT INTO fleet_cursors (project_id, device_id, pending_from_ms, pending_to_ms, dirty, lease_token, lease_until, seq, updated_at)
       VALUES (?1, ?2, ?3, ?4, 1, ?6, ?7, 1, ?5)
       ON CONFLICT (project_id, device_id) DO UPDATE SET
         pending_from_ms = min(coalesce(pending_from_ms, excluded.pending_from_ms), excluded.pending_from_ms),
         pending_to_ms = max(coalesce(pending_to_ms, excluded.pending_to_ms), excluded.pending_to_ms),
         dirty = dirty + 1,
         updated_at = excluded.updated_at,
         lease_token = CASE WHEN lease_until < excluded.updated_at THEN excluded.lease_token ELSE lease_token END,
         seq = CASE WHEN lease_until < excluded.updated_at THEN seq + 1 ELSE seq END,
         lease_until = CASE WHEN lease_until < excluded.updated_at THEN excluded.lease_until ELSE lease_until END
       RETURNING pending_from_ms, pending_to_ms, dirty, seq, lease_token`,
    )
    .bind(s.projectId, s.deviceId, Math.trunc(s.fromMs), Math.trunc(s.toMs), nowMs, token, nowMs + FLEET_LEASE_MS);

/** Widens the device's pending span by [fromMs, toMs] without taking its lease (before the ack). */
const markStatement = (db: D1Database, s: PositionSpan, nowMs: number) =>
  db
    .prepare(
      `INSERT INTO fleet_cursors (project_id, device_id, pending_from_ms, pending_to_ms, dirty, lease_until, seq, updated_at)
       VALUES (?1, ?2, ?3, ?4, 1, 0, 0, ?5)
       ON CONFLICT (project_id, device_id) DO UPDATE SET
         pending_from_ms = min(coalesce(pending_from_ms, excluded.pending_from_ms), excluded.pending_from_ms),
         pending_to_ms = max(coalesce(pending_to_ms, excluded.pending_to_ms), excluded.pending_to_ms),
         dirty = dirty + 1,
         updated_at = excluded.updated_at`,
    )
    .bind(s.projectId, s.deviceId, Math.trunc(s.fromMs), Math.trunc(s.toMs), nowMs);

/**
 * Records the positions' spans as pending in D1, in one batch. The ingest consumer does this before
 * it acks a batch, so positions it stored are never acked without a trace: if the recompute after
 * the ack fails or never runs, the watchdog finds the span still pending.
 */
export async function markPending(db: D1Database, spans: readonly PositionSpan[], nowMs = Date.now()): Promise<void> {
  for (let i = 0; i < spans.length; i += DEVICES_PER_RUN) {
    const run = spans.slice(i, i + DEVICES_PER_RUN);
    if (run.length) await db.batch(run.map((s) => markStatement(db, s, nowMs)));
  }
}

/** A pending span nobody holds for this long (its recompute failed or never ran) is the watchdog's. */
export const ORPHAN_PENDING_MS = 60_000;

/**
 * The watchdog's step: recomputes devices whose span stayed pending with no lease held (a recompute
 * that failed, or an isolate that went away between the ack and the recompute).
 */
export async function recomputeLeftPending(ch: ClickHouse, env: FleetEnv, nowMs: number, limit = DEVICES_PER_RUN, maxRuns = WATCHDOG_RUNS): Promise<number> {
  let total = 0;
  // A full run means more is left (a fleet that caught up and went quiet): up to maxRuns a minute.
  // A run with a failure stops it: the next minute retries (a failing device is not retried at once).
  for (let run = 0; run < maxRuns; run++) {
    const { found, recomputed } = await recomputeLeftPendingOnce(ch, env, nowMs, limit);
    total += found;
    if (found < limit || recomputed < found) break;
  }
  return total;
}

/** Runs of DEVICES_PER_RUN devices one watchdog minute recomputes at most. */
const WATCHDOG_RUNS = 10;

async function recomputeLeftPendingOnce(ch: ClickHouse, env: FleetEnv, nowMs: number, limit: number): Promise<{ found: number; recomputed: number }> {
  const { results } = await env.DB
    .prepare(
      `SELECT project_id, device_id, pending_from_ms, pending_to_ms FROM fleet_cursors
        WHERE pending_from_ms IS NOT NULL AND lease_until < ?1
          AND (updated_at < ?2 OR (deferred_since IS NOT NULL AND deferred_since < ?4))
        ORDER BY updated_at LIMIT ?3`,
    )
    .bind(nowMs, nowMs - ORPHAN_PENDING_MS, limit, nowMs - FLEET_DEFER_MAX_MS)
    .all<{ project_id: string; device_id: string; pending_from_ms: number; pending_to_ms: number }>();
  if (!results.length) return { found: 0, recomputed: 0 };
  const passes = await recomputeDevices(
    ch,
    env,
    results.map((r) => ({ projectId: r.project_id, deviceId: r.device_id, fromMs: r.pending_from_ms, toMs: r.pending_to_ms })),
  );
  return { found: results.length, recomputed: [...passes.values()].filter((n) => n > 0).length };
}

/** Takes the device's lease if it is free and something is pending; `seq` grows with each lease. */
const acquireStatement = (db: D1Database, k: DeviceKey, token: string, nowMs: number) =>
  db
    .prepare(
      `UPDATE fleet_cursors SET lease_token = ?3, lease_until = ?4, seq = seq + 1
        WHERE project_id = ?1 AND device_id = ?2 AND lease_until < ?5 AND pending_from_ms IS NOT NULL
        RETURNING pending_from_ms, pending_to_ms, dirty, seq, lease_token`,
    )
    .bind(k.projectId, k.deviceId, token, nowMs + FLEET_LEASE_MS, nowMs);

/**
 * Clears the pending span and the lease, unless more was marked meanwhile (`dirty` moved on): then
 * extends the lease. Answers the row as it is now (`lease_token` null once cleared); none if the
 * lease was lost.
 */
const finishStatement = (db: D1Database, k: DeviceKey, token: string, done: Pending, nowMs: number) =>
  db
    .prepare(
      `UPDATE fleet_cursors SET
         pending_from_ms = CASE WHEN dirty = ?4 THEN NULL ELSE pending_from_ms END,
         pending_to_ms = CASE WHEN dirty = ?4 THEN NULL ELSE pending_to_ms END,
         lease_token = CASE WHEN dirty = ?4 THEN NULL ELSE lease_token END,
         lease_until = CASE WHEN dirty = ?4 THEN 0 ELSE ?5 END,
         deferred_since = CASE WHEN dirty = ?4 THEN NULL ELSE deferred_since END
        WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3
        RETURNING pending_from_ms, pending_to_ms, dirty, seq, lease_token`,
    )
    .bind(k.projectId, k.deviceId, token, done.dirty, nowMs + FLEET_LEASE_MS);

const releaseStatement = (db: D1Database, k: DeviceKey, token: string) =>
  db.prepare(`UPDATE fleet_cursors SET lease_token = NULL, lease_until = 0 WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3`).bind(k.projectId, k.deviceId, token);

/**
 * As releaseStatement, for a failed pass: its span is no longer deferred (no batch takes it at
 * once again), but pending as after any failed recompute: the device's next batch or the watchdog.
 */
const releaseFailedStatement = (db: D1Database, k: DeviceKey, token: string) =>
  db
    .prepare(`UPDATE fleet_cursors SET lease_token = NULL, lease_until = 0, deferred_since = NULL WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3`)
    .bind(k.projectId, k.deviceId, token);

/** Still ours (and extended): a pass whose lease ran out must not write over its successor's rows. */
const holdsStatement = (db: D1Database, k: DeviceKey, token: string, nowMs: number) =>
  db
    .prepare(`UPDATE fleet_cursors SET lease_until = ?4 WHERE project_id = ?1 AND device_id = ?2 AND lease_token = ?3 AND lease_until >= ?5`)
    .bind(k.projectId, k.deviceId, token, nowMs + FLEET_LEASE_MS, nowMs);

/** Lets the leases go; `failed`: their passes failed (see releaseFailedStatement). */
async function release(db: D1Database, keys: readonly DeviceKey[], token: string, failed = false): Promise<void> {
  if (keys.length) await db.batch(keys.map((k) => (failed ? releaseFailedStatement : releaseStatement)(db, k, token)));
}

/** How long an erasure holds the fleet leases of its devices: its ClickHouse deletions are mutations on 18.16. */
const ERASURE_LEASE_MS = 15 * 60_000;

/** Takes the device's lease for an erasure when free, pending span or not (`seq` moves on, as for any lease). */
const holdForErasureStatement = (db: D1Database, k: DeviceKey, token: string, nowMs: number) =>
  db
    .prepare(
      `UPDATE fleet_cursors SET lease_token = ?3, lease_until = ?4, seq = seq + 1
        WHERE project_id = ?1 AND device_id = ?2 AND lease_until < ?5
        RETURNING device_id`,
    )
    .bind(k.projectId, k.deviceId, token, nowMs + ERASURE_LEASE_MS, nowMs);

const cursorExistsStatement = (db: D1Database, k: DeviceKey) =>
  db.prepare('SELECT device_id FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2').bind(k.projectId, k.deviceId);

/**
 * Runs `fn` while holding the fleet leases of `devices` (those that have a cursor): no recompute
 * pass is under way for any of them meanwhile and none starts, so nothing derived from positions
 * read before an erasure is written after it. A device held by a pass is waited for (a pass takes
 * seconds); one still held after about 15 s fails with DeviceHeldError, for the job to retry. The
 * leases are let go afterwards, pending spans kept (`fn` may delete the cursors instead).
 */
export async function withFleetLeases<T>(db: D1Database, devices: readonly DeviceKey[], fn: () => Promise<T>): Promise<T> {
  const token = crypto.randomUUID();
  const held: DeviceKey[] = [];
  try {
    let waiting = [...devices];
    for (let wait = 500; waiting.length; wait *= 2) {
      const busy: DeviceKey[] = [];
      // DEVICES_PER_RUN devices (two statements each) per D1 batch: a profile may span many devices.
      for (let i = 0; i < waiting.length; i += DEVICES_PER_RUN) {
        const run = waiting.slice(i, i + DEVICES_PER_RUN);
        const at = Date.now();
        const took = await db.batch(run.flatMap((d) => [holdForErasureStatement(db, d, token, at), cursorExistsStatement(db, d)]));
        run.forEach((d, k) => {
          if (took[2 * k]!.results.length) held.push(d);
          else if (took[2 * k + 1]!.results.length) busy.push(d);
        });
      }
      waiting = busy;
      if (!waiting.length) break;
      if (wait > 8000) throw new DeviceHeldError(waiting[0]!.deviceId);
      await new Promise((r) => setTimeout(r, wait));
    }
    return await fn();
  } finally {
    await release(db, held, token).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// One pass over many devices

export interface PassResult {
  range: RecomputeRange | null;
  fixesRead: number;
  tripsWritten: number;
  tripsRemoved: number;
  daysWritten: number;
  liveWritten: boolean;
}

/** A device's pass: fixes stored in [fromMs, toMs] are recomputed under `rules` and written with `v.version`. */
export interface PassInput {
  v: Versioned;
  span: { fromMs: number; toMs: number };
  rules: FleetRules;
  /** How its daily mileage rows are written (default: UTC days, only those whose trips changed). */
  days?: DayRowsOf;
}

/**
 * The days a device's mileage rows are keyed by: calendar days of its registry zone. `rebuild`
 * rewrites the day rows of every trip in the window, changed or not (its zone changed: see
 * rebuildDeviceDays).
 */
export interface DayRowsOf {
  zone: string;
  rebuild?: boolean;
}
const UTC_DAYS: DayRowsOf = { zone: 'UTC' };

interface Writes {
  stretches: object[];
  trips: object[];
  days: object[];
  live: object | null;
  /** The live position for the device object (null: none is left); undefined when this pass sets none. */
  liveState: LivePosition | null | undefined;
  result: PassResult;
}

const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
/** Start of the local day holding `ms` in the zone of the device's day rows. */
const dayStartMs = (days: DayRowsOf, ms: number) => (days.zone === 'UTC' ? Math.floor(ms / DAY_MS) * DAY_MS : localDayOf(days.zone, ms).startMs);

const sameStretch = (a: StoredStretch | undefined, b: StoredStretch) =>
  a !== undefined && a.endMs === b.endMs && a.lastAcceptedMs === b.lastAcceptedMs && a.countedM === b.countedM && a.end === b.end && a.resume === b.resume;

/**
 * What a device's recompute writes, from what was read: `stretches` (stretchesFrom its span's start),
 * `around` (its trips ending on or after the start of the local day, in `days.zone`, of
 * `range.fromMs`) and `fresh` (the analysis of the fixes of `range`). Stretches and trips are
 * compared with what is stored; the daily rows of the local days whose trips changed (of every trip
 * of the window, with `days.rebuild`) are rebuilt from every trip touching them, and the live
 * position and the resume point are set when the window holds the device's last stretch — written
 * as they are, unread.
 */
export function passWrites(
  v: Versioned,
  stretches: readonly StoredStretch[],
  around: readonly StoredTrip[],
  range: RecomputeRange,
  fresh: Analysis,
  fixesRead: number,
  rules: FleetRules,
  days: DayRowsOf = UTC_DAYS,
): Writes {
  const { deviceId } = v;
  const inRange = (t: number) => t >= range.fromMs && t <= range.toMs;
  // `range.fromMs` is the start of the last stretch before the span (or the span's start): trips
  // starting from it are the history a recompute can change.
  const history: FleetHistory = { stretches, trips: around.filter((t) => t.startAt >= range.fromMs).map(historyTrip) };
  const next = applyRecompute(history, range, fresh);

  // Stretches and trips of the window: changed ones rewritten, vanished ones marked deleted. The
  // device's last stretch carries where its analysis stopped, for the next in-order batch.
  const lastFresh = fresh.stretches[fresh.stretches.length - 1];
  const resume = resumeText(resumeAfter(range, fresh, null), rules);
  const freshStretches: StoredStretch[] = fresh.stretches.map((s) => ({ ...s, resume: s === lastFresh ? resume : '' }));
  const oldStretches = new Map(stretches.filter((s) => inRange(s.startMs)).map((s) => [s.startMs, s]));
  const newStretches = freshStretches.filter((s) => !sameStretch(oldStretches.get(s.startMs), s));
  const freshStarts = new Set(fresh.stretches.map((s) => s.startMs));
  const goneStretches = [...oldStretches.keys()].filter((t) => !freshStarts.has(t));
  const oldInRange = new Map(around.filter((t) => inRange(t.startAt)).map((t) => [t.startAt, t]));
  const freshTrips = fresh.trips.map((t) => storedTrip(deviceId, t));
  const changedTrips = freshTrips.filter((t) => !sameJson(oldInRange.get(t.startAt), t));
  const freshTripStarts = new Set(freshTrips.map((t) => t.startAt));
  const goneTrips = [...oldInRange.keys()].filter((t) => !freshTripStarts.has(t));

  // Daily rows of the local days (of the registry zone) whose trips changed, rebuilt from every
  // trip touching them. Every trip touched starts in the window, so its days are on or after the
  // day `around` starts from.
  const dayOf = localDates(days.zone);
  const touched = new Set<string>();
  const touch = (t: StoredTrip) => {
    touched.add(dayOf(t.startAt));
    for (const b of t.buckets) touched.add(dayOf(b.startMs));
  };
  (days.rebuild ? freshTrips : changedTrips).forEach(touch);
  for (const t of goneTrips) touch(oldInRange.get(t)!);
  if (days.rebuild) oldInRange.forEach(touch);
  else {
    for (const t of changedTrips) {
      const old = oldInRange.get(t.startAt);
      if (old) touch(old);
    }
  }
  let dayRows: MileageDayRow[] = [];
  if (touched.size) {
    const sorted = [...touched].sort();
    const firstMs = localMidnights(days.zone, sorted[0]!, sorted[0]!)[0]!.startMs;
    const lastDay = sorted[sorted.length - 1]!;
    const lastMs = localMidnights(days.zone, lastDay, lastDay)[0]!.endMs - 1;
    const others = around.filter((t) => !inRange(t.startAt) && t.endAt >= firstMs && t.startAt <= lastMs);
    dayRows = mileageRows(deviceId, sorted, [...others, ...freshTrips], days.zone);
  }

  // Live: what the device's last stretch gives, when this window holds it; when its stored stretches
  // all went (the rules now ignore every fix), a deletion over the live position they left.
  const last = next.stretches[next.stretches.length - 1];
  const live = last && inRange(last.startMs) ? fresh.live : null;
  const liveGone = stretches.length > 0 && next.stretches.length === 0;

  return {
    stretches: stretchRows(v, newStretches, goneStretches),
    trips: tripRows(v, changedTrips, goneTrips),
    days: mileageInsertRows(v, dayRows),
    live: live ? liveRow(v, live) : liveGone ? liveDeletion(v) : null,
    liveState: live ?? (liveGone ? null : undefined),
    result: { range, fixesRead, tripsWritten: changedTrips.length, tripsRemoved: goneTrips.length, daysWritten: dayRows.length, liveWritten: live !== null || liveGone },
  };
}

interface DevicePass {
  input: PassInput;
  key: string;
  stretches: StoredStretch[];
  range: RecomputeRange;
  fixes: Fix[];
  fresh: Analysis | null;
}

/** Hands each device object the live position its pass derived: an Error for each object that did not take it. */
export type LiveWriter = (updates: readonly FleetLiveUpdate[]) => Promise<Array<Error | null>>;

/** The LiveWriter of the device objects: one RPC per device, a bounded number at once. */
export const deviceObjectsLive =
  (env: FleetEnv): LiveWriter =>
  (updates) =>
    mapPool(updates, OBJECT_CALL_CONCURRENCY, async (u) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${OBJECT_CALL_TIMEOUT_MS} ms`)), OBJECT_CALL_TIMEOUT_MS);
        });
        await Promise.race([deviceStub(env, u.projectId, u.deviceId).setFleetLive(u), timeout]);
        return null;
      } catch (err) {
        return err instanceof Error ? err : new Error(String(err));
      } finally {
        clearTimeout(timer);
      }
    });

/**
 * Recomputes every device for the fixes stored in its span, reading and writing all of them
 * together. `beforeWrite` answers, once the analyses are done, which devices may still write (their
 * leases still held); the others get an error. `writeLive` hands the live positions to the device
 * objects (none: ClickHouse only); a device whose object refused gets an error too. Answers a
 * PassResult or an Error per input.
 */
export async function recomputePasses(
  ch: ClickHouse,
  inputs: readonly PassInput[],
  beforeWrite: (devices: readonly DeviceKey[]) => Promise<boolean[]> = async (ds) => ds.map(() => true),
  writeLive?: LiveWriter,
): Promise<Array<PassResult | Error>> {
  const outcomes: Array<PassResult | Error> = inputs.map(() => ({ range: null, fixesRead: 0, tripsWritten: 0, tripsRemoved: 0, daysWritten: 0, liveWritten: false }));
  const stretches = await stretchesFrom(ch, inputs.map((i) => ({ projectId: i.v.projectId, deviceId: i.v.deviceId, fromMs: i.span.fromMs })));
  const passes: Array<DevicePass & { index: number }> = [];
  inputs.forEach((input, index) => {
    const key = deviceKey(input.v);
    const own = stretches.get(key) ?? [];
    // An in-order span goes on from where the last stretch's analysis stopped.
    const resume = own.length ? parseResume(own[own.length - 1]!.resume, input.rules) : null;
    const range = planRecompute(own, [input.span.fromMs, input.span.toMs], resume);
    if (range) passes.push({ input, index, key, stretches: own, range, fixes: [], fresh: null });
  });
  if (passes.length === 0) return outcomes;

  const window = (p: DevicePass, fromMs: number, toMs: number): DeviceWindow => ({ projectId: p.input.v.projectId, deviceId: p.input.v.deviceId, fromMs, toMs });
  // The trips a pass compares with and rebuilds daily rows from, read beside the first fixes.
  const around = tripsEndingFrom(ch, passes.map((p) => window(p, dayStartMs(p.input.days ?? UTC_DAYS, p.range.fromMs), p.range.toMs)));
  around.catch(() => {});
  // Fixes of each window (after the resume point: the new ones only); when an analysis runs on into
  // the next stored stretch, only the added part of the wider window is read (a set of fixes: the
  // union is the wider window's).
  let reads = passes.map((p) => {
    const r = readWindow(p.range);
    return { p, w: window(p, r.fromMs, r.toMs) };
  });
  while (reads.length) {
    const got = await readFixesOf(ch, reads.map((r) => r.w));
    const wider: typeof reads = [];
    for (const { p } of reads) {
      const add = got.get(p.key);
      if (add) for (const f of add) p.fixes.push(f);
      p.fresh = analyseRange(p.range, p.fixes, p.input.rules);
      // A resumed range runs to the end of the history: nothing follows it to widen into.
      const next = p.range.resume ? null : widenRecompute(p.stretches, p.range, p.fresh);
      if (!next) continue;
      wider.push({ p, w: window(p, p.range.toMs + 1, next.toMs) });
      p.range = next;
    }
    reads = wider;
  }
  const tripsAround = await around;

  const writes: Array<{ p: (typeof passes)[number]; w: Writes }> = [];
  for (const p of passes) {
    try {
      writes.push({ p, w: passWrites(p.input.v, p.stretches, tripsAround.get(p.key) ?? [], p.range, p.fresh!, p.fixes.length, p.input.rules, p.input.days) });
    } catch (err) {
      outcomes[p.index] = err instanceof Error ? err : new Error(String(err));
    }
  }
  const allowed = await beforeWrite(writes.map(({ p }) => p.input.v));
  const go = writes.filter((w, k) => {
    if (allowed[k]) return true;
    outcomes[w.p.index] = new Error(`fleet lease of ${w.p.input.v.deviceId} ran out before its recompute could write`);
    return false;
  });
  // The device objects first: a device whose object does not take its live position writes
  // nothing else (its span stays pending, and the retry finds nothing of this pass to compare
  // with). Then the daily rows and ClickHouse's copy of the live position (for fleet-wide lists)
  // before the trips and stretches they derive from: a retry compares with the stored trips and
  // stretches (and goes on from the stretch's state), so those are written last, once nothing
  // derived from them can be left behind.
  const toObjects = writeLive ? go.filter(({ w }) => w.liveState !== undefined) : [];
  const refused = toObjects.length ? await writeLive!(toObjects.map(({ p, w }) => ({ ...p.input.v, live: w.liveState! }))) : [];
  const refusedOf = new Map(toObjects.map(({ p }, k) => [p, refused[k]]));
  const written = go.filter(({ p }) => {
    const err = refusedOf.get(p);
    if (err) outcomes[p.index] = new Error(`device object of ${p.input.v.deviceId} did not take its live position: ${err.message}`);
    return !err;
  });
  await Promise.all([ch.insert('fleet_mileage_days', written.flatMap(({ w }) => w.days)), ch.insert('fleet_live', written.flatMap(({ w }) => (w.live ? [w.live] : [])))]);
  await Promise.all([ch.insert('fleet_stretches', written.flatMap(({ w }) => w.stretches)), ch.insert('fleet_trips', written.flatMap(({ w }) => w.trips))]);
  for (const { p, w } of written) outcomes[p.index] = w.result;
  return outcomes;
}

// ---------------------------------------------------------------------------------------------
// Devices under their leases

interface Held extends DeviceKey {
  key: string;
  seq: number;
  pending: Pending;
  passes: number;
  rebuildDays?: boolean;
}

/** A device to recompute, with the span of its new fixes to mark pending first (if any). */
type Due = DeviceKey & { span?: { fromMs: number; toMs: number }; rebuildDays?: boolean };

/**
 * Marks the devices' spans pending, then runs the pending recompute of every device that no one
 * else holds: the lease holder loops until nothing new was marked while it worked, so every marked
 * span is recomputed by someone. Each pass reads its projects' rules once it holds the leases (or
 * uses `fixedRules`): a span marked after a rule change is recomputed under the new rules, by
 * whichever holder runs it. `failed` hears of each device whose recompute failed (its span stays
 * pending); an error that fails them all (D1 or ClickHouse down) is thrown after the leases are let
 * go. Answers the passes run per device (0: another consumer holds it, or nothing was pending).
 */
async function recomputeHeld(ch: ClickHouse, env: FleetEnv, devices: readonly Due[], fixedRules: FleetRules | null, failed: (k: DeviceKey, err: Error) => void): Promise<Map<string, number>> {
  return runClaimed(ch, env, await claimDevices(env.DB, devices, fixedRules === null), fixedRules, failed);
}

/** Devices marked and leased in one D1 batch, with what their first pass needs from D1. */
export interface FleetClaim {
  token: string;
  devices: readonly Due[];
  held: Held[];
  /** Registry zones of the devices, read in the same batch: under the leases. */
  zones: Map<string, string>;
  /** Their projects' rules, read in the same batch (null: the caller fixes the rules). */
  rules: Map<string, FleetRules> | null;
}

/**
 * Marks the devices' spans pending and takes the lease of each that no one else holds, reading
 * their registry zones and (with `readRules`) their projects' rules in the same D1 batch: one round
 * trip, and the zones and rules are read once the leases are held, as a pass needs them.
 */
async function claimDevices(db: D1Database, devices: readonly Due[], readRules: boolean, extra?: DueTake): Promise<FleetClaim> {
  const token = crypto.randomUUID();
  const nowMs = Date.now();
  const projectIds = [...new Set(devices.map((d) => d.projectId))];
  const leases = devices.map((d) => (d.span ? markAndAcquireStatement(db, { projectId: d.projectId, deviceId: d.deviceId, ...d.span }, token, nowMs) : acquireStatement(db, d, token, nowMs)));
  const zoneReads = zoneStatements(db, devices);
  const ruleReads = readRules ? rulesStatements(db, projectIds) : [];
  const results = devices.length ? await db.batch([...leases, ...zoneReads, ...ruleReads, ...(extra ? [extra.statement] : [])]) : [];
  if (extra) extra.rows = (results.at(-1)?.results ?? []) as DueRow[];
  const held: Held[] = [];
  devices.forEach((d, i) => {
    const row = results[i]!.results[0] as (CursorRow & { lease_token: string | null }) | undefined;
    const pending = row && row.lease_token === token ? pendingOf(row) : null;
    if (pending) held.push({ projectId: d.projectId, deviceId: d.deviceId, key: deviceKey(d), seq: pending.seq, pending, passes: 0, rebuildDays: d.rebuildDays });
  });
  const zones = zonesFrom(results.slice(leases.length, leases.length + zoneReads.length));
  const rules = readRules ? analysisRulesFrom(projectIds, results.slice(leases.length + zoneReads.length, leases.length + zoneReads.length + ruleReads.length)) : null;
  return { token, devices, held, zones, rules };
}

/** Runs the recompute of a claim's held devices (see recomputeHeld); the leases are let go or finished. */
async function runClaimed(ch: ClickHouse, env: FleetEnv, claim: FleetClaim, fixedRules: FleetRules | null, failed: (k: DeviceKey, err: Error) => void): Promise<Map<string, number>> {
  const db = env.DB;
  const writeLive = deviceObjectsLive(env);
  const { token, zones } = claim;
  const passes = new Map(claim.devices.map((d) => [deviceKey(d), 0]));
  let held = claim.held;
  let claimedRules = claim.rules;
  try {
    // Zones are looked up once under the leases: a zone changed later is rebuilt by its job, which
    // waits for the lease and rewrites the recent days after this holder (see createRezoneJob).
    while (held.length) {
      // Rules are read each pass (the first pass's with the leases): a rules job's span marked while
      // this holder works is recomputed by it, under the rules as they are now.
      const rulesOf = fixedRules ? null : (claimedRules ?? (await analysisRules(db, held.map((h) => h.projectId))));
      claimedRules = null;
      // Versions grow across leases (seq) and across the passes of one lease.
      const inputs = held.map((h) => ({
        v: { projectId: h.projectId, deviceId: h.deviceId, version: h.seq * 1000 + h.passes },
        span: h.pending,
        rules: fixedRules ?? rulesOf!.get(h.projectId)!,
        days: { zone: zones.get(h.key) ?? 'UTC', rebuild: h.rebuildDays },
      }));
      const outcomes = await recomputePasses(
        ch,
        inputs,
        async (ds) => {
          if (ds.length === 0) return [];
          const at = Date.now();
          const r = await db.batch(ds.map((d) => holdsStatement(db, d, token, at)));
          return r.map((x) => x.meta.changes === 1);
        },
        writeLive,
      );
      const done: Held[] = [];
      const lost: Held[] = [];
      held.forEach((h, i) => {
        const o = outcomes[i]!;
        if (o instanceof Error) {
          failed(h, o);
          lost.push(h);
        } else done.push(h);
      });
      // The pending span stays for whoever comes next (the device's next batch or a recompute job).
      await release(db, lost, token, true);
      const at = Date.now();
      const finished = done.length ? await db.batch<CursorRow & { lease_token: string | null }>(done.map((h) => finishStatement(db, h, token, h.pending, at))) : [];
      const again: Held[] = [];
      const over: Held[] = [];
      done.forEach((h, i) => {
        h.passes++;
        passes.set(h.key, h.passes);
        const row = finished[i]!.results[0];
        if (!row) {
          failed(h, new Error(`fleet lease of ${h.deviceId} was lost`));
          return;
        }
        if (row.lease_token === null) return;
        const pending = pendingOf(row);
        if (!pending) over.push(h);
        else {
          h.pending = pending;
          // Other batches keep widening the span: the rest waits for the device's next batch.
          (h.passes >= MAX_PASSES ? over : again).push(h);
        }
      });
      await release(db, over, token);
      held = again;
    }
    return passes;
  } catch (err) {
    await release(db, held, token).catch(() => {});
    throw err;
  }
}

/**
 * Marks `span` pending (if given), then runs the device's pending recompute if no one else is (see
 * recomputeHeld), under its project's rules unless `rules` are given. Returns the passes run (0:
 * another consumer holds the device, or nothing was pending); throws if the recompute failed.
 */
export async function recomputeDevice(
  ch: ClickHouse,
  env: FleetEnv,
  projectId: string,
  deviceId: string,
  rules?: FleetRules,
  span?: { fromMs: number; toMs: number },
): Promise<number> {
  let failure: Error | null = null;
  const passes = await recomputeHeld(ch, env, [{ projectId, deviceId, span }], rules ?? null, (_k, err) => (failure = err));
  if (failure) throw failure;
  return passes.get(deviceKey({ projectId, deviceId })) ?? 0;
}

/**

 * Marks `span` pending and recomputes the device with the day rows of every trip of it rewritten in
 * the device's registry zone, changed or not: the step of a rebuild after the zone changed. Throws
 * when another consumer holds the device (it would write only the days whose trips changed): the
 * caller tries again later.
 */
export async function rebuildDeviceDays(ch: ClickHouse, env: FleetEnv, projectId: string, deviceId: string, span: { fromMs: number; toMs: number }, rules?: FleetRules): Promise<number> {
  let failure: Error | null = null;
  const passes = await recomputeHeld(ch, env, [{ projectId, deviceId, span, rebuildDays: true }], rules ?? null, (_k, err) => (failure = err));
  if (failure) throw failure;
  const n = passes.get(deviceKey({ projectId, deviceId })) ?? 0;
  if (n === 0) throw new DeviceHeldError(deviceId);
  return n;
}

/** A rebuild or an erasure found its device held by another consumer (which would not rewrite unchanged days, or could write after an erasure). */
export class DeviceHeldError extends Error {
  override name = 'DeviceHeldError';
  constructor(readonly deviceId: string) {
    super(`fleet recompute of ${deviceId} is held by another consumer; the step is tried again later`);
  }
}

/** Waits for a held device a few times within the chunk (a consumer's pass takes seconds), then gives up to the job's retry. */
async function rebuildWhenFree(ch: ClickHouse, env: FleetEnv, projectId: string, deviceId: string, span: { fromMs: number; toMs: number }): Promise<void> {
  for (let wait = 500; ; wait *= 2) {
    try {
      await rebuildDeviceDays(ch, env, projectId, deviceId, span);
      return;
    } catch (err) {
      if (!(err instanceof DeviceHeldError) || wait > 8000) throw err;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/**
 * Marks the spans pending and recomputes their devices together (DEVICES_PER_RUN at a time), each
 * under its project's rules. A failure leaves the spans pending and is logged: the next batch of a
 * device (or the watchdog) retries it. Answers the passes run per deviceKey.
 */
export async function recomputeDevices(ch: ClickHouse, env: FleetEnv, spans: readonly PositionSpan[]): Promise<Map<string, number>> {
  const passes = new Map<string, number>();
  const log = logFailure;
  for (let i = 0; i < spans.length; i += DEVICES_PER_RUN) {
    const run = spans.slice(i, i + DEVICES_PER_RUN);
    try {
      const due = run.map((s) => ({ projectId: s.projectId, deviceId: s.deviceId, span: { fromMs: s.fromMs, toMs: s.toMs } }));
      for (const [k, n] of await recomputeHeld(ch, env, due, null, log)) passes.set(k, n);
    } catch (err) {
      for (const s of run) log(s, err);
    }
  }
  return passes;
}

/** The ingest consumer's step after a durable insert: mark and recompute every device with new positions. */
export async function recomputeAfterWrite(ch: ClickHouse, env: FleetEnv, spans: readonly PositionSpan[]): Promise<void> {
  await recomputeDevices(ch, env, spans);
}

/**
 * The ingest consumer's step before it acks a durable insert: marks the positions' spans pending
 * and takes the leases of the devices no one else holds, in one D1 batch per DEVICES_PER_RUN
 * devices (see claimDevices). Positions it stored are never acked without a trace: if the
 * recompute after the ack fails or never runs, the leases run out and the watchdog finds the spans
 * still pending.
 *
 * With `defer` (more messages are queued behind the batch) the spans are only marked, as deferred.
 * With `dueBeforeMs`, the same round trip also takes the leases of up to DEVICES_PER_RUN devices
 * deferred before then (by any consumer), as one more claim.
 */
export async function claimPositions(db: D1Database, spans: readonly PositionSpan[], opts: { defer?: boolean; dueBeforeMs?: number } = {}): Promise<FleetClaim[]> {
  const nowMs = Date.now();
  const due = opts.dueBeforeMs === undefined ? undefined : takeDueStatement(db, opts.dueBeforeMs, nowMs);
  const claims: FleetClaim[] = [];
  try {
    if (opts.defer) {
      for (let i = 0; i < spans.length; i += DEVICES_PER_RUN) {
        const last = i + DEVICES_PER_RUN >= spans.length;
        const marks = spans.slice(i, i + DEVICES_PER_RUN).map((s) => deferStatement(db, s, nowMs));
        const results = await db.batch([...marks, ...(last && due ? [due.statement] : [])]);
        if (last && due) due.rows = (results.at(-1)?.results ?? []) as DueRow[];
      }
      if (!spans.length && due) due.rows = (await due.statement.all<DueRow>()).results;
    } else {
      for (let i = 0; i < spans.length; i += DEVICES_PER_RUN) {
        const run = spans.slice(i, i + DEVICES_PER_RUN).map((s) => ({ projectId: s.projectId, deviceId: s.deviceId, span: { fromMs: s.fromMs, toMs: s.toMs } }));
        // The due take rides on the last batch: it cannot take a device a later batch marks.
        claims.push(await claimDevices(db, run, true, i + DEVICES_PER_RUN >= spans.length ? due : undefined));
      }
      if (!spans.length && due) due.rows = (await due.statement.all<DueRow>()).results;
    }
    if (due?.rows?.length) claims.push(await claimTaken(db, due.token, due.rows));
  } catch (err) {
    // Leases taken by a batch that went through before another failed are let go, not left to run out.
    const taken = [...claims.map((c) => ({ token: c.token, keys: c.held })), ...(due?.rows?.length ? [{ token: due.token, keys: due.rows.map((r) => ({ projectId: r.project_id, deviceId: r.device_id })) }] : [])];
    await Promise.all(taken.map((t) => release(db, t.keys, t.token))).catch(() => {});
    throw err;
  }
  return claims;
}

// ---------------------------------------------------------------------------------------------
// Deferral while the ingest queue has a backlog

/**
 * The longest a deferred span waits while batches keep arriving with a backlog behind them: then
 * the next batch with positions takes it (the watchdog, within its minute, if none comes).
 */
export const FLEET_DEFER_MAX_MS = 10_000;

/** Widens the pending span as markStatement does, and records when its recompute was first deferred. */
const deferStatement = (db: D1Database, s: PositionSpan, nowMs: number) =>
  db
    .prepare(
      `INSERT INTO fleet_cursors (project_id, device_id, pending_from_ms, pending_to_ms, dirty, lease_until, seq, updated_at, deferred_since)
       VALUES (?1, ?2, ?3, ?4, 1, 0, 0, ?5, ?5)
       ON CONFLICT (project_id, device_id) DO UPDATE SET
         pending_from_ms = min(coalesce(pending_from_ms, excluded.pending_from_ms), excluded.pending_from_ms),
         pending_to_ms = max(coalesce(pending_to_ms, excluded.pending_to_ms), excluded.pending_to_ms),
         dirty = dirty + 1,
         updated_at = excluded.updated_at,
         deferred_since = coalesce(deferred_since, excluded.deferred_since)`,
    )
    .bind(s.projectId, s.deviceId, Math.trunc(s.fromMs), Math.trunc(s.toMs), nowMs);

interface DueRow extends CursorRow {
  project_id: string;
  device_id: string;
}

/** A statement taking the leases of deferred devices, with its token and (once run) the rows it took. */
interface DueTake {
  token: string;
  statement: D1PreparedStatement;
  rows?: DueRow[];
}

/**
 * Takes the leases of up to DEVICES_PER_RUN devices whose span was deferred at or before
 * `dueBeforeMs`, oldest first, that no one holds (the partial index on deferred_since finds them).
 */
function takeDueStatement(db: D1Database, dueBeforeMs: number, nowMs: number): DueTake {
  const token = crypto.randomUUID();
  const statement = db
    .prepare(
      `UPDATE fleet_cursors SET lease_token = ?1, lease_until = ?2, seq = seq + 1
        WHERE rowid IN (
          SELECT rowid FROM fleet_cursors
           WHERE deferred_since IS NOT NULL AND deferred_since <= ?3 AND lease_until < ?4 AND pending_from_ms IS NOT NULL
           ORDER BY deferred_since LIMIT ?5)
        RETURNING project_id, device_id, pending_from_ms, pending_to_ms, dirty, seq, lease_token`,
    )
    .bind(token, nowMs + FLEET_LEASE_MS, Math.trunc(dueBeforeMs), nowMs, DEVICES_PER_RUN);
  return { token, statement };
}

/** A claim of devices whose leases `token` took: their zones and projects' rules read now (under the leases). */
async function claimTaken(db: D1Database, token: string, rows: readonly DueRow[]): Promise<FleetClaim> {
  const devices = rows.map((r) => ({ projectId: r.project_id, deviceId: r.device_id }));
  const projectIds = [...new Set(devices.map((d) => d.projectId))];
  const zoneReads = zoneStatements(db, devices);
  const results = await db.batch([...zoneReads, ...rulesStatements(db, projectIds)]);
  const held: Held[] = [];
  rows.forEach((r, i) => {
    const pending = pendingOf(r);
    if (pending) held.push({ ...devices[i]!, key: deviceKey(devices[i]!), seq: pending.seq, pending, passes: 0 });
  });
  return {
    token,
    devices,
    held,
    zones: zonesFrom(results.slice(0, zoneReads.length)),
    rules: analysisRulesFrom(projectIds, results.slice(zoneReads.length)),
  };
}

/** The consumer's step after the ack: recomputes what claimPositions leased. A failure is logged and leaves the spans pending. */
export async function recomputeClaimed(ch: ClickHouse, env: FleetEnv, claims: readonly FleetClaim[]): Promise<void> {
  for (const claim of claims) {
    try {
      await runClaimed(ch, env, claim, null, logFailure);
    } catch (err) {
      for (const d of claim.devices) logFailure(d, err);
    }
  }
}

const logFailure = (k: DeviceKey, err: unknown) =>
  console.error(JSON.stringify({ msg: 'fleet recompute failed; the next batch of the device retries it', projectId: k.projectId, deviceId: k.deviceId, error: String(err) }));

// ---------------------------------------------------------------------------------------------
// The `fleet_recompute` job: history that arrived without the ingest consumer (a legacy import)

export const FleetRecomputeParams = z.object({
  projectId: z.string().min(1).max(128),
  deviceId: z.string().min(1).max(128).optional(),
  sinceMs: z.number().int(),
  untilMs: z.number().int(),
  /** Why it runs, for operators (`rules`: the project's fleet rules changed; `zone`: a vehicle's time zone did). */
  reason: z.enum(['rules', 'zone', 'import', 'erasure', 'operator']).optional(),
  /**
   * A rebuild of the daily mileage rows in this zone (the device's new registry zone; 'UTC' for
   * none): every window's day rows are rewritten, and once a device is done its rows of other
   * zones are deleted.
   */
  zone: z.string().min(1).max(64).optional(),
});
export type FleetRecomputeParams = z.infer<typeof FleetRecomputeParams>;

interface RecomputeCursor {
  deviceId: string;
  /** Start of the next day window of `deviceId` to recompute. */
  atMs: number;
  /**
   * A rebuild: every day row of `deviceId` below this version was written before the rebuild began
   * (by a recompute that may have looked its zone up before the change).
   */
  belowVersion?: number;
}

/** The first version a recompute of the device that starts from now on writes with (see recomputeHeld). */
async function nextVersion(db: D1Database, projectId: string, deviceId: string): Promise<number> {
  const row = await db.prepare('SELECT seq FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2').bind(projectId, deviceId).first<{ seq: number }>();
  return ((row?.seq ?? 0) + 1) * 1000;
}

/**
 * The end of a device's rebuild in `zone`: its day rows of other zones written before the rebuild
 * began are deleted. Every trip they counted was rewritten in `zone` by the rebuild, at a higher
 * version, so nothing they held is lost (and a reader never double-counts meanwhile: see
 * mileageSpans). Skipped when the zone changed again since: the rebuild for that zone does it.
 */
async function dropOtherZones(ch: ClickHouse, db: D1Database, jobId: string, p: FleetRecomputeParams, deviceId: string, zone: string, belowVersion: number): Promise<void> {
  const now = (await registryZones(db, [{ projectId: p.projectId, deviceId }])).get(deviceKey({ projectId: p.projectId, deviceId })) ?? 'UTC';
  if (now !== zone) return;
  // Only the days the rebuild went over (a local day lies within a day of its UTC date); counted
  // first, as on 18.16 each delete is a mutation rewriting parts.
  const where = 'project_id = {p:String} AND device_id = {d:String} AND zone != {z:String} AND version < {v:UInt64} AND day >= toDate({lo:String}) AND day <= toDate({hi:String})';
  const params = { p: p.projectId, d: deviceId, z: storedZone(zone), v: belowVersion, lo: utcDay(p.sinceMs + DAY_MS), hi: utcDay(p.untilMs - DAY_MS) };
  const [stale] = await ch.query<{ n: string }>(`SELECT count() AS n FROM fleet_mileage_days WHERE ${where}`, params);
  if (Number(stale?.n ?? 0) > 0) await deleteRows(ch, 'fleet_mileage_days', where, params);
  // Only once they are gone: reads stop looking for them (unless a later zone change named another rebuild).
  await finishMileageRebuild(db, p.projectId, deviceId, jobId);
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

/** The time of the device's first position in [fromMs, toMs]; null when there is none. */
async function nextFixAt(ch: ClickHouse, projectId: string, deviceId: string, fromMs: number, toMs: number): Promise<number | null> {
  const [row] = await ch.query<{ n: string; at_ms: string }>(
    `SELECT count() AS n, min(created_at_ms) AS at_ms FROM events
      WHERE project_id = {p:String} AND device_id = {d:String} AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
        AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64} AND type = 'track' AND name = {name:String}`,
    { p: projectId, d: deviceId, ...dateTimeBounds(fromMs, toMs), from: fromMs, to: toMs, name: POSITION_EVENT_NAME },
  );
  return row && Number(row.n) > 0 ? Number(row.at_ms) : null;
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
    const startAt = async (deviceId: string): Promise<RecomputeCursor> =>
      p.zone === undefined ? { deviceId, atMs: p.sinceMs } : { deviceId, atMs: p.sinceMs, belowVersion: await nextVersion(env.DB, p.projectId, deviceId) };
    if (!cursor) {
      const first = await nextDevice(ch, p, null);
      if (first === null) return { cursor: null, maxKey: null, rowsTotal, rowsBefore: 0, rows: 0, skippedBefore: 0, skipped: 0, done: true };
      cursor = await startAt(first);
    }
    let rows = 0;
    for (let k = 0; k < DAYS_PER_CHUNK && cursor; k++) {
      // Days without a fix of the device are passed over (counted as done): nothing of it lies there.
      const nextFixMs = await nextFixAt(ch, p.projectId, cursor.deviceId, cursor.atMs, p.untilMs);
      const fromMs = nextFixMs === null ? p.untilMs + 1 : Math.max(cursor.atMs, cursor.atMs + Math.floor((nextFixMs - cursor.atMs) / DAY_MS) * DAY_MS);
      rows += Math.ceil((Math.min(fromMs, p.untilMs + 1) - cursor.atMs) / DAY_MS);
      const toMs = Math.min(fromMs + DAY_MS - 1, p.untilMs);
      if (nextFixMs !== null) {
        const span = { fromMs, toMs };
        // Marked first: if the ingest consumer holds the device, it recomputes this span before it
        // lets go (under the project's rules as they are when its pass starts) — but a rebuild's
        // rows only the rebuild writes, so it tries the chunk again.
        if (p.zone === undefined) await recomputeDevice(ch, env, p.projectId, cursor.deviceId, undefined, span);
        else await rebuildWhenFree(ch, env, p.projectId, cursor.deviceId, span);
        rows++;
      }
      if (toMs < p.untilMs) cursor = { ...cursor, atMs: toMs + 1 };
      else {
        if (p.zone !== undefined && cursor.belowVersion !== undefined) await dropOtherZones(ch, env.DB, job.id, p, cursor.deviceId, p.zone, cursor.belowVersion);
        const next = await nextDevice(ch, p, cursor.deviceId);
        cursor = next === null ? null : await startAt(next);
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
