// Where imported history lands: ClickHouse `events` and `legacy_id_map`, written exactly once per row.
import type { ClickHouse } from '../clickhouse/client';
import type { EventRow } from '../pipeline/messages';
import type { IdMapRow } from './translate';

/** Ids per existence check: keeps the bound query far below ClickHouse's max_query_size. */
const ID_CHECK_BATCH = 2000;

/** Ids among `rows` that the project already holds (a chunk written before a crash, or a re-run). */
async function existingEventIds(ch: ClickHouse, projectId: string, rows: readonly EventRow[]): Promise<Set<string>> {
  const batches: EventRow[][] = [];
  for (let i = 0; i < rows.length; i += ID_CHECK_BATCH) batches.push(rows.slice(i, i + ID_CHECK_BATCH));
  const found = new Set<string>();
  await Promise.all(
    batches.map(async (batch) => {
      let from = Infinity;
      let to = -Infinity;
      for (const r of batch) {
        from = Math.min(from, r.created_at_ms);
        to = Math.max(to, r.created_at_ms);
      }
      const hits = await ch.query<{ id: string }>(
        `SELECT toString(id) AS id FROM events
          WHERE project_id = {p:String}
            AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
            AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
            AND has({ids:Array(String)}, toString(id))`,
        {
          p: projectId,
          fromSec: Math.floor(from / 1000),
          toSec: Math.ceil(to / 1000),
          from,
          to,
          ids: batch.map((r) => r.id),
        },
      );
      for (const h of hits) found.add(h.id);
    }),
  );
  return found;
}

/**
 * Writes one chunk of imported rows. Ids are deterministic, so rows already present are skipped:
 * a replayed chunk or a re-run adds nothing. The mapping goes first — an event is never visible
 * without its mapping — and a mapping row written twice collapses in its ReplacingMergeTree.
 */
export async function writeImportedChunk(ch: ClickHouse, projectId: string, rows: ReadonlyArray<{ event: EventRow; map: IdMapRow }>): Promise<number> {
  if (rows.length === 0) return 0;
  const have = await existingEventIds(
    ch,
    projectId,
    rows.map((r) => r.event),
  );
  const fresh = rows.filter((r) => !have.has(r.event.id));
  if (fresh.length === 0) return 0;
  await ch.insert(
    'legacy_id_map',
    fresh.map((r) => r.map),
  );
  await ch.insert(
    'events',
    fresh.map((r) => r.event),
  );
  return fresh.length;
}

/** New ids of legacy rows of a dataset. */
export async function lookupNewIds(ch: ClickHouse, dataset: string, legacyIds: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (let i = 0; i < legacyIds.length; i += ID_CHECK_BATCH) {
    const rows = await ch.query<{ legacy_id: string; new_id: string }>(
      `SELECT legacy_id, toString(new_id) AS new_id FROM legacy_id_map
        WHERE dataset = {d:String} AND has({ids:Array(String)}, legacy_id)
        LIMIT 1 BY legacy_id`,
      { d: dataset, ids: [...new Set(legacyIds.slice(i, i + ID_CHECK_BATCH))] },
    );
    for (const r of rows) out.set(r.legacy_id, r.new_id);
  }
  return out;
}

/** Legacy rows of a dataset that have a mapping. */
export async function countMapped(ch: ClickHouse, dataset: string): Promise<number> {
  const [r] = await ch.query<{ n: number | string }>('SELECT uniqExact(legacy_id) AS n FROM legacy_id_map WHERE dataset = {d:String}', { d: dataset });
  return Number(r?.n ?? 0);
}
