// A profile's current state (see src/profiles/fold.ts), folded without reading all its operations:
// ClickHouse counts them and sums the counters per property; only the newest identify operations
// are read (each operation once: copies collapse by id with LIMIT 1 BY id).
import type { ClickHouse } from '../clickhouse/client';
import type { QueryParams } from '../clickhouse/params';
import { assembleProperties, latestIdentified, type CounterSum, type Profile } from '../profiles/fold';

/** Identify operations folded, newest first: a property only older ones set is not shown. */
export const MAX_IDENTIFY_OPS = 500;
/** Counter properties folded (in name order). */
export const MAX_COUNTER_PROPERTIES = 1000;
const BOUNDARIES_PER_QUERY = 50;

const OPS = `FROM profile_ops WHERE project_id = {projectId:String} AND profile_id = {profileId:String}`;

/**
 * Each counter operation once, with its property and signed value. The normaliser writes
 * `property` and `value` as the last two keys, so they are read from that tail when it is there
 * (a client's nested object holding a `property` key cannot shadow them); otherwise from the first
 * occurrence (visitParam*, which reads raw JSON on every ClickHouse we support).
 */
const COUNTER_OPS = `
  SELECT visitParamExtractString(counter_json, 'property') AS property,
         if(type = 'decrement', -1, 1) * visitParamExtractFloat(counter_json, 'value') AS delta,
         created_at_ms, op_id
    FROM (SELECT type, created_at_ms, toString(id) AS op_id,
                 if(extract(properties, {counterTail:String}) != '', extract(properties, {counterTail:String}), properties) AS counter_json
            ${OPS} AND type IN ('increment', 'decrement')
           LIMIT 1 BY id)`;
const COUNTER_TAIL_RE = '"property":"(?:[^"\\\\]|\\\\.)*","value":-?[0-9][0-9.eE+-]*}$';

export async function readProfile(ch: ClickHouse, projectId: string, profileId: string): Promise<Profile | null> {
  const params: QueryParams = { projectId, profileId, counterTail: COUNTER_TAIL_RE };
  const [summary, identifies, counterRows] = await Promise.all([
    ch.query<{ ops: number; first_ms: number; last_ms: number }>(
      `SELECT count() AS ops, min(created_at_ms) AS first_ms, max(created_at_ms) AS last_ms
         FROM (SELECT created_at_ms ${OPS} LIMIT 1 BY id)`,
      params,
    ),
    ch.query<{ op_id: string; created_at_ms: number; properties: string }>(
      `SELECT toString(id) AS op_id, created_at_ms, properties ${OPS} AND type = 'identify'
        ORDER BY created_at_ms DESC, op_id DESC
        LIMIT 1 BY op_id
        LIMIT {maxIdentify:UInt32}`,
      { ...params, maxIdentify: MAX_IDENTIFY_OPS },
    ),
    ch.query<{ property: string; n: number; total: number }>(
      `SELECT property, count() AS n, sum(delta) AS total FROM (${COUNTER_OPS})
        WHERE property != ''
        GROUP BY property ORDER BY property LIMIT {maxCounters:UInt32}`,
      { ...params, maxCounters: MAX_COUNTER_PROPERTIES },
    ),
  ]);
  const s = summary[0];
  if (!s || Number(s.ops) === 0) return null;

  const identified = latestIdentified(
    identifies.map((r) => ({ id: r.op_id, createdAtMs: Number(r.created_at_ms), properties: JSON.parse(r.properties) as Record<string, unknown> })),
  );
  const counters = new Map<string, CounterSum>(counterRows.map((r) => [r.property, { count: Number(r.n), sum: Number(r.total) }]));
  // Counters an identify also set count from that identify: sum only what came after it.
  const sinceIdentify = new Map<string, CounterSum>();
  const reset = [...counters.keys()].filter((k) => identified.has(k));
  for (let i = 0; i < reset.length; i += BOUNDARIES_PER_QUERY) {
    const chunk = reset.slice(i, i + BOUNDARIES_PER_QUERY);
    const bound: QueryParams = { ...params };
    const conditions = chunk.map((k, j) => {
      const at = identified.get(k)!;
      Object.assign(bound, { [`p${j}`]: k, [`t${j}`]: at.atMs, [`i${j}`]: at.id });
      return `(property = {p${j}:String} AND (created_at_ms > {t${j}:Int64} OR (created_at_ms = {t${j}:Int64} AND op_id > {i${j}:String})))`;
    });
    const rows = await ch.query<{ property: string; n: number; total: number }>(
      `SELECT property, count() AS n, sum(delta) AS total FROM (${COUNTER_OPS})
        WHERE ${conditions.join(' OR ')}
        GROUP BY property`,
      bound,
    );
    for (const r of rows) sinceIdentify.set(r.property, { count: Number(r.n), sum: Number(r.total) });
  }
  return {
    properties: assembleProperties(identified, counters, sinceIdentify),
    firstSeenMs: Number(s.first_ms),
    lastUpdatedMs: Number(s.last_ms),
    operations: Number(s.ops),
  };
}
