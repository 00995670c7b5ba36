// Pure core of profiles: a profile is its identify/increment/decrement operations folded in
// event-time order. Identify sets properties (the later event wins); increment/decrement add.

export interface ProfileOp {
  id: string;
  type: string;
  createdAtMs: number;
  properties: Record<string, unknown>;
}

export interface Profile {
  properties: Record<string, unknown>;
  firstSeenMs: number;
  lastUpdatedMs: number;
  operations: number;
}

export function foldProfile(ops: readonly ProfileOp[]): Profile | null {
  if (!ops.length) return null;
  const sorted = [...ops].sort((a, b) => a.createdAtMs - b.createdAtMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const properties: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (const op of sorted) {
    if (seen.has(op.id)) continue;
    seen.add(op.id);
    if (op.type === 'identify') {
      for (const [k, v] of Object.entries(op.properties)) properties[k] = v;
    } else if (op.type === 'increment' || op.type === 'decrement') {
      const key = op.properties.property;
      const raw = op.properties.value;
      if (typeof key !== 'string' || typeof raw !== 'number' || !Number.isFinite(raw)) continue;
      const current = typeof properties[key] === 'number' ? (properties[key] as number) : 0;
      properties[key] = op.type === 'increment' ? current + raw : current - raw;
    }
  }
  return {
    properties,
    firstSeenMs: sorted[0]!.createdAtMs,
    lastUpdatedMs: sorted[sorted.length - 1]!.createdAtMs,
    operations: seen.size,
  };
}

// The same fold in parts, so that ClickHouse does the bulk: counters are summed where they are
// stored, and only identify operations (which set whole property sets) are read.

export interface IdentifiedValue {
  value: unknown;
  /** Fold position of the identify operation that set it. */
  atMs: number;
  id: string;
}

export interface CounterSum {
  count: number;
  sum: number;
}

/** The latest identified value of each property, from identify operations newest first. */
export function latestIdentified(newestFirst: readonly Omit<ProfileOp, 'type'>[]): Map<string, IdentifiedValue> {
  const latest = new Map<string, IdentifiedValue>();
  for (const op of newestFirst) {
    for (const [k, value] of Object.entries(op.properties)) if (!latest.has(k)) latest.set(k, { value, atMs: op.createdAtMs, id: op.id });
  }
  return latest;
}

/**
 * Properties as foldProfile gives them: a counter counts from the identify that last set its
 * property (from that value when it is a number, else from 0) or, never identified, from 0.
 * `counters` holds every counter's increments and decrements summed; `sinceIdentify` those after
 * the identify that last set the property (a counter missing there had none after it).
 */
export function assembleProperties(
  identified: ReadonlyMap<string, IdentifiedValue>,
  counters: ReadonlyMap<string, CounterSum>,
  sinceIdentify: ReadonlyMap<string, CounterSum>,
): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  for (const [k, v] of identified) properties[k] = v.value;
  for (const [k, all] of counters) {
    const base = identified.get(k);
    if (!base) {
      if (all.count > 0) properties[k] = all.sum;
      continue;
    }
    const after = sinceIdentify.get(k);
    if (after && after.count > 0) properties[k] = (typeof base.value === 'number' ? base.value : 0) + after.sum;
  }
  return properties;
}
