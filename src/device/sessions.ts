// Pure sessionization by event time: a session is a run of events whose gaps are under `gapMs`.
// Sessions of one device never overlap and are always at least `gapMs` apart.

export interface Session {
  id: string;
  startMs: number;
  endMs: number;
  eventCount: number;
}

export interface Assignment {
  /** Final state of every session created or changed by this call. */
  changed: Map<string, Session>;
  /** Sessions absorbed by a bridging event, mapped to the session that survives. */
  merged: Map<string, string>;
  /** Session id for each input time, in input order, after all merges. */
  sessionIds: string[];
}

/** Index of the last session whose start is <= t, or -1. */
function lastStartingAtOrBefore(sorted: Session[], t: number): number {
  let lo = 0;
  let hi = sorted.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]!.startMs <= t) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/**
 * Places each event time into the sessions of `existing` (which must hold every session within
 * `gapMs` of the times), extending, back-dating, creating or merging sessions as needed.
 */
export function assignSessions(existing: readonly Session[], times: readonly number[], gapMs: number, newId: () => string): Assignment {
  const sorted = existing.map((s) => ({ ...s })).sort((a, b) => a.startMs - b.startMs);
  const changed = new Map<string, Session>();
  const merged = new Map<string, string>();
  const order = times.map((_, i) => i).sort((a, b) => times[a]! - times[b]!);
  const raw: string[] = new Array(times.length);

  for (const i of order) {
    const t = times[i]!;
    const k = lastStartingAtOrBefore(sorted, t);
    const before = k >= 0 ? sorted[k] : undefined;
    const after = sorted[k + 1];
    const joinsBefore = before !== undefined && t - before.endMs < gapMs;
    const joinsAfter = after !== undefined && after.startMs - t < gapMs;
    let target: Session;
    if (joinsBefore && joinsAfter) {
      // A bridge: the earlier session survives and absorbs the later one.
      target = before!;
      target.endMs = Math.max(target.endMs, after!.endMs);
      target.eventCount += after!.eventCount;
      merged.set(after!.id, target.id);
      for (const [from, to] of merged) if (to === after!.id) merged.set(from, target.id);
      changed.delete(after!.id);
      sorted.splice(k + 1, 1);
    } else if (joinsBefore) {
      target = before!;
    } else if (joinsAfter) {
      target = after!;
    } else {
      target = { id: newId(), startMs: t, endMs: t, eventCount: 0 };
      sorted.splice(k + 1, 0, target);
    }
    target.startMs = Math.min(target.startMs, t);
    target.endMs = Math.max(target.endMs, t);
    target.eventCount += 1;
    changed.set(target.id, target);
    raw[i] = target.id;
  }
  return { changed, merged, sessionIds: raw.map((id) => merged.get(id) ?? id) };
}

/** Offline reference: sessions of a complete, sorted history. */
export function sessionsOf(sortedTimes: readonly number[], gapMs: number): Array<Omit<Session, 'id'>> {
  const out: Array<Omit<Session, 'id'>> = [];
  for (const t of sortedTimes) {
    const last = out[out.length - 1];
    if (last && t - last.endMs < gapMs) {
      last.endMs = t;
      last.eventCount += 1;
    } else out.push({ startMs: t, endMs: t, eventCount: 1 });
  }
  return out;
}
