// Deleting rows, the one place where the two ClickHouse generations differ in kind: a lightweight
// `DELETE FROM` that returns when done (22.8+), or an `ALTER TABLE … DELETE` mutation (18.16) whose
// end is awaited in `system.mutations`. Either way the caller's rows are gone when this returns.
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
  if (v.lightweightDelete) {
    // Synchronous on every replica before the statement returns.
    await ch.command(`DELETE FROM ${table} WHERE ${where}`, params, { lightweight_deletes_sync: 2, mutations_sync: 2 });
    return;
  }
  await ch.command(`ALTER TABLE ${table} DELETE WHERE ${where}`, params);
  await waitForMutations(ch, table, timeoutMs);
}

/** Waits until `table` has no unfinished mutation (18.16 has no `mutations_sync`). */
export async function waitForMutations(ch: ClickHouse, table: DeletableTable, timeoutMs = MUTATION_TIMEOUT_MS): Promise<void> {
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
