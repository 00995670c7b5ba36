// The pure session core: incremental assignment over any arrival order equals the offline answer.
import { describe, expect, it } from 'vitest';
import { assignSessions, sessionsOf, type Session } from '../src/device/sessions';
import { deliveryOrder, GAP_MS, generateHistory, rng, splitBatches } from './session-history';

/** Replays the object's use of the core: load sessions near the batch, assign, persist. */
function replay(batches: number[][], gapMs: number) {
  const store = new Map<string, Session>();
  const mergedInto = new Map<string, string>();
  const assigned: Array<{ t: number; id: string }> = [];
  let n = 0;
  for (const times of batches) {
    const minT = Math.min(...times);
    const maxT = Math.max(...times);
    // Same window as DeviceObject.loadSessions: start < max + gap AND end > min - gap.
    const existing = [...store.values()].filter((s) => s.startMs < maxT + gapMs && s.endMs > minT - gapMs);
    const a = assignSessions(existing, times, gapMs, () => `s${n++}`);
    for (const [from, to] of a.merged) {
      store.delete(from);
      for (const [k, v] of mergedInto) if (v === from) mergedInto.set(k, to);
      mergedInto.set(from, to);
    }
    for (const s of a.changed.values()) store.set(s.id, { ...s });
    times.forEach((t, i) => assigned.push({ t, id: a.sessionIds[i]! }));
  }
  const sessions = [...store.values()].sort((x, y) => x.startMs - y.startMs);
  const resolve = (id: string) => mergedInto.get(id) ?? id;
  return { sessions, assigned: assigned.map((x) => ({ t: x.t, id: resolve(x.id) })) };
}

const shape = (s: Omit<Session, 'id'>) => ({ startMs: s.startMs, endMs: s.endMs, eventCount: s.eventCount });

describe('sessionsOf (offline reference)', () => {
  it('splits at a gap of exactly the session gap and joins just under it', () => {
    expect(sessionsOf([0, GAP_MS - 1, 2 * GAP_MS - 2], GAP_MS)).toEqual([{ startMs: 0, endMs: 2 * GAP_MS - 2, eventCount: 3 }]);
    expect(sessionsOf([0, GAP_MS], GAP_MS)).toEqual([
      { startMs: 0, endMs: 0, eventCount: 1 },
      { startMs: GAP_MS, endMs: GAP_MS, eventCount: 1 },
    ]);
  });
});

describe('assignSessions', () => {
  it('a 2-hour sequence delivered newest first is one session', () => {
    const times = Array.from({ length: 121 }, (_, i) => i * 60_000).reverse();
    const { sessions } = replay(times.map((t) => [t]), GAP_MS);
    expect(sessions.map(shape)).toEqual([{ startMs: 0, endMs: 120 * 60_000, eventCount: 121 }]);
  });

  it('an event bridging two sessions merges them, the earlier id surviving', () => {
    const { sessions, assigned } = replay([[0], [40 * 60_000], [20 * 60_000]], GAP_MS);
    expect(sessions.map(shape)).toEqual([{ startMs: 0, endMs: 40 * 60_000, eventCount: 3 }]);
    expect(new Set(assigned.map((a) => a.id))).toEqual(new Set([sessions[0]!.id]));
  });

  it('chained merges (later into earlier, twice) resolve every event to the survivor', () => {
    const { sessions, assigned } = replay([[0], [40 * 60_000], [80 * 60_000], [60 * 60_000], [20 * 60_000]], GAP_MS);
    expect(sessions).toHaveLength(1);
    expect(sessions[0]!.eventCount).toBe(5);
    for (const a of assigned) expect(a.id).toBe(sessions[0]!.id);
  });

  it('equals the offline sessions for 300 random histories, orders and batch splits', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const rand = rng(seed);
      const gapMs = seed % 3 === 0 ? 10 * 60_000 : GAP_MS;
      const times = generateHistory(rand, 1_700_000_000_000, 50 + Math.floor(rand() * 250), gapMs);
      // The core sees only new events (the object drops duplicates first), in any order.
      const order = deliveryOrder(times.map((t, i) => ({ t, i })), rand, 0);
      const batches = splitBatches(order, rand, 1 + Math.floor(rand() * 80)).map((b) => b.map((x) => x.t));
      const { sessions, assigned } = replay(batches, gapMs);
      expect(sessions.map(shape), `seed ${seed}`).toEqual(sessionsOf(times, gapMs));
      // Every event resolves to the current session that covers its time.
      for (const a of assigned) {
        const s = sessions.find((x) => x.id === a.id);
        expect(s && s.startMs <= a.t && a.t <= s.endMs, `seed ${seed} t=${a.t}`).toBe(true);
      }
    }
  });
});
