// Deleting rows, the one place where the two ClickHouse generations differ in kind: a lightweight
// `DELETE FROM` that returns when done (22.8+), or an `ALTER TABLE … DELETE` mutation (18.16) whose
// end is awaited in `system.mutations`. Either way the caller's rows are gone when this returns. A
// partition that holds nothing but the rows to delete is dropped instead where that can be done
// without racing a writer (20.1+: `MOVE PARTITION … TO TABLE`).
import type { ClickHouse } from './client';
import type { QueryParams } from './params';

/** Tables rows may be deleted from (a table name cannot be a query parameter). */
export const DELETABLE_TABLES = ['events', 'event_payloads', 'sessions', 'profile_ops', 'legacy_id_map', 'fleet_stretches', 'fleet_trips', 'fleet_mileage_days', 'fleet_live'] as const;
export type DeletableTable = (typeof DELETABLE_TABLES)[number];

/** A mutation that has not finished in this long fails the caller (the job retries it; it is idempotent). */
export const MUTATION_TIMEOUT_MS = 10 * 60_000;

export class MutationFailed extends Error {
  override name = 'MutationFailed';
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polling `system.mutations`: every 50 ms at most for the first seconds, where most deletes of a
 * job end (a coarser step would leave the caller waiting up to twice a mutation's own time), then
 * up to once a second for the long ones. The poll itself is a cheap system-table read.
 */
const POLL_FIRST_MS = 10;
const QUICK_POLL_MAX_MS = 50;
const QUICK_POLL_FOR_MS = 5_000;
const POLL_MAX_MS = 1000;

/**
 * Deletes the rows of `table` matching `where` (SQL with `{name:Type}` parameters; subqueries on
 * other tables allowed, no external data: an 18.16 mutation runs after the request has ended).
 */
export async function deleteRows(ch: ClickHouse, table: DeletableTable, where: string, params: QueryParams, timeoutMs = MUTATION_TIMEOUT_MS): Promise<void> {
  if (!DELETABLE_TABLES.includes(table)) throw new TypeError(`rows cannot be deleted from ${table}`);
  const v = await ch.version();
  // A parked partition is still the table's (it goes back unless it is dropped): its rows go too,
  // first, so that none can be moved back behind this delete.
  const parking = v.movePartition ? PARKING[table as PartitionedTable] : undefined;
  for (const t of parking ? [parking, table] : [table]) await deleteFrom(ch, t, where, params, timeoutMs);
}

async function deleteFrom(ch: ClickHouse, table: string, where: string, params: QueryParams, timeoutMs = MUTATION_TIMEOUT_MS): Promise<void> {
  if ((await ch.version()).lightweightDelete) {
    // Synchronous on every replica before the statement returns.
    await ch.command(`DELETE FROM ${table} WHERE ${where}`, params, { lightweight_deletes_sync: 2, mutations_sync: 2 });
    return;
  }
  await ch.command(`ALTER TABLE ${table} DELETE WHERE ${where}`, params);
  await waitForMutations(ch, table, timeoutMs);
}

/** Tables whose partitions `dropPartitionsOf` may drop, each with the table where a partition waits meanwhile. */
const PARKING = { event_payloads: 'event_payloads_parked' } as const;
export type PartitionedTable = keyof typeof PARKING;
/** Where `event_payloads` rows wait while a partition drop is under way. */
export const PARKED_PAYLOADS = PARKING.event_payloads;
/** The partition key of each such table (as its DDL declares it). */
const PARTITION_KEY: Record<PartitionedTable, string> = { event_payloads: 'toYYYYMM(created_at)' };

/**
 * `table`'s rows that match `where` as a FROM source, parked ones included: a row waits in the
 * parking table only while a partition drop is under way or after one was cut short, and is still
 * the table's. (The parking table exists, empty, on servers that never park.) `where` goes into
 * each branch, where the table's sorting key and partitions serve it.
 */
export function withParked(table: PartitionedTable, columns: string, where: string): string {
  return `(SELECT ${columns} FROM ${table} WHERE ${where} UNION ALL SELECT ${columns} FROM ${PARKING[table]} WHERE ${where})`;
}

/** What `dropPartitionsOf` did: the partitions it dropped, or why it dropped none (the caller deletes rows instead). */
export type PartitionDrop = { dropped: number[] } | { dropped: null; reason: 'unsupported' | 'shared' | 'empty' | 'raced' };

/**
 * Deletes the rows of `table` matching `where` by dropping their partitions, when each partition
 * holding one of them holds nothing else; otherwise does nothing and says why. Nothing but rows
 * matching `where` is ever destroyed, whatever writes or other drops run beside it:
 *
 * 1. each such partition is moved, at once, to the table's parking table (`MOVE PARTITION … TO
 *    TABLE`: a write that lands after the move goes into a new part of `table`);
 * 2. the parts that arrived there are read by name, and dropped part by part (`DROP PART`) only if
 *    none of their rows fails `where` (a write that landed between the check and the move would).
 *    A part merged meanwhile (no longer there by its name) sends the drop back to reading and
 *    checking the parts, up to `PART_DROP_TRIES` times in all;
 * 3. otherwise the matching rows are deleted from the parking table and the partition is moved
 *    back, at once.
 *
 * `hooks` (tests) run after 1 and just before the parts are dropped. A crash anywhere leaves rows
 * parked, and `unparkPartitions` (run first by every drop, by the caller's next run and by every
 * erasure's count) moves them back. `where` may name other tables, not external data.
 */
export async function dropPartitionsOf(
  ch: ClickHouse,
  table: PartitionedTable,
  where: string,
  params: QueryParams,
  hooks: { afterMove?: (partitions: number[]) => Promise<void> | void; beforeDrop?: (part: number, names: readonly string[]) => Promise<void> | void } = {},
): Promise<PartitionDrop> {
  const parking = PARKING[table];
  if (!parking) throw new TypeError(`partitions of ${table} cannot be dropped`);
  if (!(await ch.version()).movePartition) return { dropped: null, reason: 'unsupported' };
  const key = PARTITION_KEY[table];
  const holding = await ch.query<{ part: number | string }>(`SELECT DISTINCT ${key} AS part FROM ${table} WHERE ${where}`, params);
  if (!holding.length) return { dropped: null, reason: 'empty' };
  const partitions = holding.map((p) => Number(p.part)).sort((a, b) => a - b);
  // Rows a cut-short drop left parked come back first, and count in the check like any other.
  await unparkPartitions(ch, table, { partitions });
  // One row outside the clear is enough to say no, and in a shared partition one comes soon.
  const other = await ch.query<{ one: number }>(`SELECT 1 AS one FROM ${table} WHERE ${key} IN {parts:Array(UInt32)} AND NOT (${where}) LIMIT 1`, {
    ...params,
    parts: partitions,
  });
  if (other.length) return { dropped: null, reason: 'shared' };
  for (const part of partitions) await ch.command(`ALTER TABLE ${table} MOVE PARTITION {part:UInt32} TO TABLE ${parking}`, { part });
  await hooks.afterMove?.(partitions);
  let raced = false;
  for (const part of partitions) {
    if (!(await dropParkedParts(ch, parking, part, where, params, hooks.beforeDrop))) {
      raced = true;
      await deleteFrom(ch, parking, where, params);
      await ch.command(`ALTER TABLE ${parking} MOVE PARTITION {part:UInt32} TO TABLE ${table}`, { part });
    }
  }
  return raced ? { dropped: null, reason: 'raced' } : { dropped: partitions };
}

/**
 * A background merge of the parked parts may replace a part between the read of its name and its
 * drop; the parts are then read and checked again, up to this many times in all, before the clear
 * goes the long way. Parked parts are merged like any others, so a single try loses the drop now
 * and then for nothing.
 */
export const PART_DROP_TRIES = 3;

/**
 * Drops the parts of partition `part` in `parking` when none of their rows fails `where`; true
 * when the parts read last are all gone. False (nothing outside the clear dropped; the caller goes
 * the long way) when a row fails `where`, when no part is there (the partition was moved back
 * meanwhile), or when parts kept changing under the drop.
 */
async function dropParkedParts(
  ch: ClickHouse,
  parking: string,
  part: number,
  where: string,
  params: QueryParams,
  beforeDrop?: (part: number, names: readonly string[]) => Promise<void> | void,
): Promise<boolean> {
  for (let attempt = 1; attempt <= PART_DROP_TRIES; attempt++) {
    const names = (
      await ch.query<{ name: string }>(
        `SELECT name FROM system.parts WHERE database = currentDatabase() AND table = {t:String} AND partition_id = toString({part:UInt32}) AND active`,
        { t: parking, part },
      )
    ).map((r) => r.name);
    // No part: another run of the same clear (or an erasure) moved the partition back meanwhile.
    if (!names.length) return false;
    const [outside] = await ch.query<{ n: number | string }>(`SELECT count() AS n FROM ${parking} WHERE _part IN {names:Array(String)} AND NOT (${where})`, {
      ...params,
      names,
    });
    if (Number(outside?.n ?? 1) !== 0) return false;
    await beforeDrop?.(part, names);
    try {
      for (const name of names) await ch.command(`ALTER TABLE ${parking} DROP PART {name:String}`, { name });
      return true;
    } catch {
      // A part merged or rewritten since it was read: what is there now is read and checked again.
    }
  }
  return false;
}

/** Which parked partitions `unparkPartitions` moves back: these, those holding rows of an event-time range (epoch seconds), or all. */
export type ParkedScope = { partitions: readonly number[] } | { fromSec: number; toSec: number } | 'all';

/**
 * Moves back, at once (`MOVE PARTITION`), every parked partition in `scope` that holds rows: a
 * cut-short `dropPartitionsOf` left them there. Nothing parked is lost, and what should have gone
 * is deleted again by the caller's next run. Returns the rows moved back.
 */
export async function unparkPartitions(ch: ClickHouse, table: PartitionedTable, scope: ParkedScope): Promise<number> {
  if (!(await ch.version()).movePartition) return 0;
  const parking = PARKING[table];
  const key = PARTITION_KEY[table];
  const [where, params] =
    scope === 'all'
      ? ['1', {}]
      : 'partitions' in scope
        ? [`${key} IN {parts:Array(UInt32)}`, { parts: [...scope.partitions] }]
        : ['created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})', scope];
  const left = await ch.query<{ part: number | string; rows: number | string }>(`SELECT ${key} AS part, count() AS rows FROM ${parking} WHERE ${where} GROUP BY part`, params);
  let moved = 0;
  for (const { part, rows } of left) {
    await ch.command(`ALTER TABLE ${parking} MOVE PARTITION {part:UInt32} TO TABLE ${table}`, { part: Number(part) });
    moved += Number(rows);
  }
  return moved;
}

/** Waits until `table` has no unfinished mutation (18.16 has no `mutations_sync`). */
export async function waitForMutations(ch: ClickHouse, table: string, timeoutMs = MUTATION_TIMEOUT_MS): Promise<void> {
  const started = Date.now();
  const deadline = started + timeoutMs;
  for (let delay = POLL_FIRST_MS; ; delay = Math.min(delay * 2, Date.now() - started < QUICK_POLL_FOR_MS ? QUICK_POLL_MAX_MS : POLL_MAX_MS)) {
    const [row] = await ch.query<{ pending: number }>(
      'SELECT toUInt32(count()) AS pending FROM system.mutations WHERE database = currentDatabase() AND table = {t:String} AND is_done = 0',
      { t: table },
    );
    if (!row || row.pending === 0) return;
    if (Date.now() > deadline) throw new MutationFailed(`${row.pending} mutation(s) on ${table} still running after ${Math.round(timeoutMs / 1000)} s`);
    await sleep(delay);
  }
}
