// Seeded histories for the session tests: several sessions with gaps just under, at and just over
// the session gap, delivered in shuffled orders and batch splits with duplicates mixed in.

export const GAP_MS = 30 * 60 * 1000;

/** mulberry32: a small deterministic PRNG. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shuffle<T>(items: readonly T[], rand: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Sorted event times from `startMs`: runs of events, separated by gaps around `gapMs`. */
export function generateHistory(rand: () => number, startMs: number, count: number, gapMs = GAP_MS): number[] {
  const inside = [0, 1_000, 60_000, 5 * 60_000, gapMs - 60_000, gapMs - 1];
  const between = [gapMs, gapMs + 1, gapMs + 60_000, 2 * gapMs, 3 * 60 * 60_000];
  const times: number[] = [];
  let t = startMs;
  while (times.length < count) {
    const runLength = 5 + Math.floor(rand() * 60);
    for (let i = 0; i < runLength && times.length < count; i++) {
      times.push(t);
      // Mostly small steps, sometimes a gap just under the session gap.
      const step = rand() < 0.85 ? Math.floor(rand() * 4 * 60_000) : inside[Math.floor(rand() * inside.length)]!;
      t += step;
    }
    t += between[Math.floor(rand() * between.length)]!;
  }
  return times;
}

/** Splits `items` into consecutive batches of 1..maxBatch. */
export function splitBatches<T>(items: readonly T[], rand: () => number, maxBatch: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; ) {
    const n = 1 + Math.floor(rand() * maxBatch);
    out.push(items.slice(i, i + n));
    i += n;
  }
  return out;
}

/** A delivery plan: every item once in shuffled order, plus about `dupShare` of them again. */
export function deliveryOrder<T>(items: readonly T[], rand: () => number, dupShare = 0.2): T[] {
  const dups = items.filter(() => rand() < dupShare);
  return shuffle([...items, ...dups], rand);
}
