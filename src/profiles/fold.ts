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
