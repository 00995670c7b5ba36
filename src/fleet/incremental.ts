// Recompute only the affected stretch: which window of a device's fixes a batch of (possibly late)
// fixes forces to be re-analysed, so the result equals analysing the whole history again. A batch
// later than everything analysed continues the last stretch's analysis from where it stopped.
import { analyse, resumeAnalysis, type Analysis, type AnalysisState, type Stretch, type Trip } from './trips';
import type { Fix } from './position';
import type { FleetRules } from './rules';

/**
 * Where the analysis of a device's last stretch stopped: every stored fix up to `throughMs` (epoch
 * ms, whole) was analysed into `state`.
 */
export interface ResumePoint {
  throughMs: number;
  state: AnalysisState;
}

/** What a device keeps between batches: the stretches and trips of its whole history. */
export interface FleetHistory {
  readonly stretches: readonly Stretch[];
  readonly trips: readonly Trip[];
  /** Where the last stretch's analysis can go on from, when it can. */
  readonly resume?: ResumePoint | null;
}

export const EMPTY_HISTORY: FleetHistory = Object.freeze({ stretches: Object.freeze([]), trips: Object.freeze([]), resume: null });

/**
 * Fixes with `fromMs ≤ atMs ≤ toMs` are re-read and analysed with `followingFixMs` — or, with
 * `resume`, only those after `resume.throughMs`, analysed on from its state (see readWindow).
 */
export interface RecomputeRange {
  fromMs: number;
  toMs: number;
  /** Start of the first stored stretch after `toMs`, if any. */
  followingFixMs?: number;
  /** The device's last stretch goes on from here: every new fix is later than all it analysed. */
  resume?: ResumePoint;
}

/** The fixes a range needs read: the whole window, or only what follows its resume point. */
export function readWindow(range: RecomputeRange): { fromMs: number; toMs: number } {
  return range.resume ? { fromMs: range.resume.throughMs + 1, toMs: range.toMs } : { fromMs: range.fromMs, toMs: range.toMs };
}

/** The analysis of a range from the fixes readWindow gave. */
export function analyseRange(range: RecomputeRange, fixes: readonly Fix[], rules: FleetRules): Analysis {
  return range.resume ? resumeAnalysis(range.resume.state, fixes, rules) : analyse(fixes, rules, { followingFixMs: range.followingFixMs });
}

/**
 * The resume point a recompute of `range` leaves for the device: the fresh one when the range runs
 * to the end of the history (nothing stored follows it), else `kept` — the stretches after the
 * range, and so the state of the last one, are as they were.
 */
export function resumeAfter(range: RecomputeRange, fresh: Analysis, kept: ResumePoint | null): ResumePoint | null {
  if (range.followingFixMs !== undefined) return kept;
  return fresh.resume ? { throughMs: range.toMs, state: fresh.resume } : null;
}

/** Index of the last stretch whose start satisfies `test`, stretches being sorted by start. */
function lastStartingBefore(stretches: readonly Stretch[], test: (startMs: number) => boolean): number {
  let lo = 0;
  let hi = stretches.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (test(stretches[mid]!.startMs)) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

function following(stretches: readonly Stretch[], toMs: number): number | undefined {
  const k = lastStartingBefore(stretches, (s) => s <= toMs);
  return stretches[k + 1]?.startMs;
}

/**
 * The first window to re-read for new fixes at `newFixTimesMs`. When all are later than what
 * `resume` (the last stretch's state) analysed: the rest of that stretch on, from its state. Else
 * from the start of the last stored stretch beginning strictly before the earliest new fix (a point
 * where the analysis starts afresh, decided by older fixes only) to the end of the stretch holding
 * the latest new fix. Null when there is nothing to do.
 */
export function planRecompute(stretches: readonly Stretch[], newFixTimesMs: readonly number[], resume?: ResumePoint | null): RecomputeRange | null {
  let minMs = Infinity;
  let maxMs = -Infinity;
  for (const t of newFixTimesMs) {
    if (!Number.isFinite(t)) continue;
    if (t < minMs) minMs = t;
    if (t > maxMs) maxMs = t;
  }
  if (minMs === Infinity) return null;
  const last = stretches[stretches.length - 1];
  // The state must be the one of the last stretch as stored, and still open.
  if (resume && minMs > resume.throughMs && last && last.end === 'open' && last.startMs === resume.state.recordStartMs && last.endMs === resume.state.lastMs) {
    return { fromMs: last.startMs, toMs: maxMs, resume };
  }
  const before = lastStartingBefore(stretches, (s) => s < minMs);
  const fromMs = before >= 0 ? stretches[before]!.startMs : minMs;
  const holding = lastStartingBefore(stretches, (s) => s <= maxMs);
  const toMs = holding >= 0 ? Math.max(maxMs, stretches[holding]!.endMs) : maxMs;
  const next = following(stretches, toMs);
  return next === undefined ? { fromMs, toMs } : { fromMs, toMs, followingFixMs: next };
}

/**
 * Null when `fresh` (the analysis of `range`) settles the recompute: its last stretch closes before
 * the next stored stretch, which therefore starts afresh as it did before, or nothing follows.
 * Otherwise the wider range to re-read (through the next stored stretch).
 */
export function widenRecompute(stretches: readonly Stretch[], range: RecomputeRange, fresh: Analysis): RecomputeRange | null {
  if (range.followingFixMs === undefined) return null;
  const last = fresh.stretches[fresh.stretches.length - 1];
  // No fix in the window passes the accuracy rule: the next stretch starts afresh as before.
  if (!last || last.end !== 'open') return null;
  const k = lastStartingBefore(stretches, (s) => s <= range.followingFixMs!);
  const toMs = Math.max(range.toMs, stretches[k]!.endMs);
  const next = following(stretches, toMs);
  return next === undefined ? { fromMs: range.fromMs, toMs } : { fromMs: range.fromMs, toMs, followingFixMs: next };
}

/** The history with the stretches and trips of `range` replaced by those of `fresh`. */
export function applyRecompute(history: FleetHistory, range: RecomputeRange, fresh: Analysis): FleetHistory {
  const resume = resumeAfter(range, fresh, history.resume ?? null);
  const inRange = (t: number) => t >= range.fromMs && t <= range.toMs;
  const before = (t: number) => t < range.fromMs;
  return {
    stretches: [
      ...history.stretches.filter((s) => before(s.startMs)),
      ...fresh.stretches,
      ...history.stretches.filter((s) => s.startMs > range.toMs),
    ],
    trips: [
      ...history.trips.filter((t) => before(t.startAt)),
      ...fresh.trips,
      ...history.trips.filter((t) => !before(t.startAt) && !inRange(t.startAt)),
    ],
    resume,
  };
}

export interface RecomputeResult {
  history: FleetHistory;
  /** The window finally re-read; what a caller replaces in its stores (trips and mileage rows starting in it). */
  range: RecomputeRange | null;
  /** How many windows were read (1 unless the change ran on into later stretches). */
  reads: number;
}

/**
 * Brings `history` up to date after `newFixes` were stored. `readFixes(fromMs, toMs)` returns every
 * stored fix of the device with `fromMs ≤ atMs ≤ toMs`, the new ones included.
 */
export async function recomputeHistory(
  history: FleetHistory,
  newFixes: readonly Pick<Fix, 'atMs'>[],
  readFixes: (fromMs: number, toMs: number) => Promise<readonly Fix[]> | readonly Fix[],
  rules: FleetRules,
): Promise<RecomputeResult> {
  let range = planRecompute(history.stretches, newFixes.map((f) => f.atMs), history.resume);
  let reads = 0;
  while (range) {
    reads++;
    const read = readWindow(range);
    const fresh = analyseRange(range, await readFixes(read.fromMs, read.toMs), rules);
    // A resumed range runs to the end of the history: nothing follows it to widen into.
    const wider = range.resume ? null : widenRecompute(history.stretches, range, fresh);
    if (!wider) return { history: applyRecompute(history, range, fresh), range, reads };
    range = wider;
  }
  return { history, range: null, reads };
}

/**
 * The window to read for a consistent track between `sinceMs` and `untilMs`: whole stretches, since
 * whether a fix is accepted depends on the fixes before it in its stretch (and, for a stretch's first
 * fix, on the next few). Analyse it and keep the accepted fixes inside [sinceMs, untilMs].
 */
export function planTrackRead(stretches: readonly Stretch[], sinceMs: number, untilMs: number): { fromMs: number; toMs: number } {
  const a = lastStartingBefore(stretches, (s) => s <= sinceMs);
  const b = lastStartingBefore(stretches, (s) => s <= untilMs);
  return {
    fromMs: a >= 0 ? Math.min(sinceMs, stretches[a]!.startMs) : sinceMs,
    toMs: b >= 0 ? Math.max(untilMs, stretches[b]!.endMs) : untilMs,
  };
}
