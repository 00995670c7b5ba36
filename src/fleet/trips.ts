// Trip detection and distance from a device's fixes: a pure function of the SET of fixes, so any
// arrival order and any duplication give the same track, trips and mileage (DESIGN "Fleet telemetry").
// An analysis can be continued with later fixes from the state it ended in (`resumeAnalysis`).
import { averageSpeedKmh, haversineM, impliedSpeedKmh, isValidLatLon, MIN_IMPLIED_INTERVAL_MS, type LatLon } from './geo';
import { MILEAGE_BUCKET_MS, type MileageSpan } from './mileage';
import type { Fix } from './position';
import type { FleetRules } from './rules';
import { liveAfter, type LivePosition } from './status';

/**
 * Why a trip ended: `stop` (stopped for `stopS`), `ignition` (ignition went off), `no_data` (no
 * accepted fix for `noDataS`), `open` (the data ends while the trip has not ended yet).
 */
export type TripEndReason = 'stop' | 'ignition' | 'no_data' | 'open';

/** Why a stretch ended; `idle` closes a long stretch without a trip so recomputes stay short. */
export type StretchEnd = 'stop' | 'ignition' | 'idle' | 'no_data' | 'open';

export interface Trip {
  /** Epoch ms of the first moving fix. */
  startAt: number;
  /** Epoch ms of the fix at which the vehicle stopped (not when `stopS` ran out). */
  endAt: number;
  durationMs: number;
  distanceM: number;
  /** Highest reported speed of the trip's fixes (derived from the counted distance where none is reported). */
  maxSpeedKmh: number;
  /** distanceM over durationMs. */
  avgSpeedKmh: number;
  start: LatLon;
  end: LatLon;
  endReason: TripEndReason;
  /**
   * The trip's distance and moving time in UTC-aligned 15-minute buckets (MILEAGE_BUCKET_MS), in
   * time order; the first holds `tripStarts: 1`. Each step between consecutive fixes is split over
   * the buckets it spans in proportion to time, so the buckets sum to distanceM and durationMs.
   */
  buckets: MileageSpan[];
}

/**
 * A run of fixes analysed from a fresh state: nothing before `startMs` influences anything in it.
 * The incremental recompute re-reads whole stretches (see incremental.ts).
 */
export interface Stretch {
  /** Time of its first fix passing the accuracy rule. */
  startMs: number;
  /** Time of its last fix passing the accuracy rule. */
  endMs: number;
  lastAcceptedMs: number;
  /** Movement counted by the drift rule inside the stretch, trip or not (an odometer). */
  countedM: number;
  end: StretchEnd;
}

/** Fixes left out, by reason (duplicates of an id are one element of the set and not counted). */
export interface IgnoredCounts {
  /** Non-finite time, coordinates out of range, malformed optional fields. */
  invalid: number;
  /** Same time and coordinates as a fix with a smaller id. */
  samePosition: number;
  /** Worse accuracy than `maxAccuracyM`. */
  accuracy: number;
  /** Implausible speed from the accepted predecessor. */
  outlier: number;
}

export interface Analysis {
  /** Fixes passing the accuracy and outlier rules, in (atMs, id) order: the track (parked jitter included). */
  accepted: Fix[];
  trips: Trip[];
  /** Trips shorter than `minTripM`, left out of `trips`. */
  droppedTrips: number;
  ignored: IgnoredCounts;
  stretches: Stretch[];
  /** The live position the last stretch's accepted fixes give (see liveFromAccepted); null without a stretch. */
  live: LivePosition | null;
  /**
   * The state the analysis ended in, to continue it with later fixes (`resumeAnalysis`); null while
   * the last stretch's first fix may still turn out to be the outlier (it has one accepted fix).
   */
  resume: AnalysisState | null;
}

export interface AnalyseOptions {
  /**
   * Time of the first accuracy-passing fix after the input, when the input is a window of a longer
   * history: lets the last stretch end exactly as it would in the whole history.
   */
  followingFixMs?: number;
}

/** A lone first fix contradicted by this many mutually consistent successors was the outlier. */
export const ANCHOR_RECOVERY_FIXES = 3;

function validFix(f: Fix): boolean {
  if (f === null || typeof f !== 'object' || typeof f.id !== 'string' || f.id === '') return false;
  if (typeof f.atMs !== 'number' || !Number.isFinite(f.atMs) || !isValidLatLon(f)) return false;
  const optional = (v: unknown, ok: (n: number) => boolean) => v === undefined || (typeof v === 'number' && Number.isFinite(v) && ok(v));
  return (
    optional(f.speedKmh, (n) => n >= 0) &&
    optional(f.heading, (n) => n >= 0 && n <= 360) &&
    optional(f.accuracyM, (n) => n >= 0) &&
    optional(f.altitudeM, () => true) &&
    (f.ignition === undefined || typeof f.ignition === 'boolean')
  );
}

function contentKey(f: Fix): string {
  return JSON.stringify([f.atMs, f.lat, f.lon, f.speedKmh, f.heading, f.accuracyM, f.altitudeM, f.ignition]);
}

function byTimeThenId(a: Fix, b: Fix): number {
  return a.atMs - b.atMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * The canonical sequence of a set of fixes: one fix per id (copies of an id that differ keep the
 * smallest content), invalid ones out, then one fix per (atMs, lat, lon) (the smallest id), sorted
 * by (atMs, id).
 */
export function canonicalFixes(fixes: readonly Fix[]): { fixes: Fix[]; invalid: number; samePosition: number } {
  const byId = new Map<string, Fix>();
  let invalid = 0;
  for (const f of fixes) {
    if (f === null || typeof f !== 'object' || typeof f.id !== 'string') {
      invalid++;
      continue;
    }
    const seen = byId.get(f.id);
    if (seen === undefined || (seen !== f && contentKey(f) < contentKey(seen))) byId.set(f.id, f);
  }
  const valid: Fix[] = [];
  for (const f of byId.values()) {
    if (validFix(f)) valid.push(f);
    else invalid++;
  }
  valid.sort(byTimeThenId);
  const out: Fix[] = [];
  let samePosition = 0;
  let groupStart = 0;
  for (const f of valid) {
    const last = out[out.length - 1];
    if (last === undefined || last.atMs !== f.atMs) groupStart = out.length;
    let dup = false;
    for (let k = groupStart; k < out.length; k++) {
      if (out[k]!.lat === f.lat && out[k]!.lon === f.lon) {
        dup = true;
        break;
      }
    }
    if (dup) samePosition++;
    else out.push(f);
  }
  return { fixes: out, invalid, samePosition };
}

/** A trip not finished yet, as running totals: what later fixes can still change of it. */
interface OpenTrip {
  first: Fix;
  /** Its latest fix. */
  last: Fix;
  /** The first fix of the current stop (null while moving): the trip ends here unless it moves on. */
  stop: Fix | null;
  /** Counted distance so far (fixes that are not movement add none). */
  distanceM: number;
  /** Highest speed of its fixes up to `stop` (all of them while moving). */
  maxSpeedKmh: number;
  /** Times and highest speed of the fixes after `stop`: part of the trip only if it moves on. */
  tailMs: number[];
  tailMaxSpeedKmh: number;
  /** Buckets of the steps up to `stop` (all of them while moving). */
  buckets: MileageSpan[];
  ignitionSeenOn: boolean;
}

/**
 * Where an analysis stands between two time groups: the open stretch's running state, enough to
 * continue with later fixes exactly as if all had been analysed together. Plain data (JSON).
 */
export interface AnalysisState {
  recordStartMs: number;
  /** When the stretch (or its restart) began, for the idle close. */
  idleSinceMs: number;
  accepted: number;
  lastAccepted: Fix | null;
  /** Time of the last fix passing the accuracy rule seen: a continuation takes later fixes only. */
  lastMs: number;
  /** The last counted point: the drift rule measures from here. */
  counted: Fix | null;
  countedM: number;
  trip: OpenTrip | null;
  /** The trip ended on ignition; the stretch closes before the next time group. */
  ignitionClosed: boolean;
  /** The trip that ignition ended (null if it was too short): a continuation still reports it. */
  ignitionTrip: Trip | null;
  live: LivePosition | null;
}

function freshState(startMs: number): AnalysisState {
  return {
    recordStartMs: startMs,
    idleSinceMs: startMs,
    accepted: 0,
    lastAccepted: null,
    lastMs: startMs,
    counted: null,
    countedM: 0,
    trip: null,
    ignitionClosed: false,
    ignitionTrip: null,
    live: null,
  };
}

/** A copy a continuation may change: fixes and live positions are never changed in place, the trip's totals are. */
function copyState(s: AnalysisState): AnalysisState {
  const t = s.trip;
  return { ...s, trip: t && { ...t, tailMs: [...t.tailMs], buckets: t.buckets.map((b) => ({ ...b })) } };
}

function copyTrip(t: Trip): Trip {
  return { ...t, start: { ...t.start }, end: { ...t.end }, buckets: t.buckets.map((b) => ({ ...b })) };
}

function bucketAt(buckets: MileageSpan[], startMs: number): MileageSpan {
  const last = buckets[buckets.length - 1];
  // Steps arrive in time order, so a step's buckets are the last one or new ones after it.
  if (last && last.startMs === startMs) return last;
  const b = { startMs, endMs: startMs + MILEAGE_BUCKET_MS, distanceM: 0, movingMs: 0, tripStarts: 0 };
  buckets.push(b);
  return b;
}

/** Adds the step [startMs, endMs] of `distanceM` to the buckets it spans, in proportion to time. */
function addStep(buckets: MileageSpan[], startMs: number, endMs: number, distanceM: number): void {
  const startBucket = Math.floor(startMs / MILEAGE_BUCKET_MS) * MILEAGE_BUCKET_MS;
  const lengthMs = endMs - startMs;
  if (lengthMs <= 0) {
    bucketAt(buckets, startBucket).distanceM += distanceM;
    return;
  }
  for (let b = startBucket; b < endMs; b += MILEAGE_BUCKET_MS) {
    const overlap = Math.min(endMs, b + MILEAGE_BUCKET_MS) - Math.max(startMs, b);
    if (overlap <= 0) continue;
    const bucket = bucketAt(buckets, b);
    bucket.distanceM += overlap === lengthMs ? distanceM : (distanceM * overlap) / lengthMs;
    bucket.movingMs! += overlap;
  }
}

function startTrip(f: Fix, speedKmh: number): OpenTrip {
  const buckets: MileageSpan[] = [];
  bucketAt(buckets, Math.floor(f.atMs / MILEAGE_BUCKET_MS) * MILEAGE_BUCKET_MS).tripStarts = 1;
  return { first: f, last: f, stop: null, distanceM: 0, maxSpeedKmh: Math.max(0, speedKmh), tailMs: [], tailMaxSpeedKmh: 0, buckets, ignitionSeenOn: f.ignition === true };
}

/** The steps after the stop become the trip's: it moved on, or ended on ignition with them. */
function takeTail(t: OpenTrip): void {
  if (!t.stop) return;
  let fromMs = t.stop.atMs;
  for (const atMs of t.tailMs) {
    addStep(t.buckets, fromMs, atMs, 0);
    fromMs = atMs;
  }
  t.maxSpeedKmh = Math.max(t.maxSpeedKmh, t.tailMaxSpeedKmh);
  t.tailMs = [];
  t.tailMaxSpeedKmh = 0;
  t.stop = null;
}

/** The next fix of a trip: `stepM` counted from the last counted point (0 unless it is movement). */
function extendTrip(t: OpenTrip, f: Fix, moving: boolean, stepM: number, speedKmh: number): void {
  if (moving) takeTail(t);
  if (moving || !t.stop) {
    addStep(t.buckets, t.last.atMs, f.atMs, stepM);
    t.distanceM += stepM;
    t.maxSpeedKmh = Math.max(t.maxSpeedKmh, speedKmh);
    if (!moving) t.stop = f;
  } else {
    t.tailMs.push(f.atMs);
    t.tailMaxSpeedKmh = Math.max(t.tailMaxSpeedKmh, speedKmh);
  }
  t.last = f;
}

/**
 * Accuracy → outlier → drift → trips, over the canonical sequence. Every reset happens between two
 * time groups (fixes sharing atMs), decided by the state and the time of the group that follows.
 *
 * - Outlier: a fix whose implied speed from the last ACCEPTED fix exceeds `maxSpeedKmh` is ignored,
 *   so a teleport followed by a correct fix leaves the correct one accepted. The first fix of a
 *   stretch has no predecessor; if it is contradicted by ANCHOR_RECOVERY_FIXES consecutive fixes that
 *   agree with one another, it is the outlier and the stretch restarts from them.
 * - Drift: a fix counts as movement when its speed is ≥ `movingSpeedKmh` or it lies more than `driftM`
 *   from the last counted point; distance is the sum of the steps between counted points.
 * - Trips: start at the first moving fix; end at the first fix of the stop once a later fix comes
 *   ≥ `stopS` after it (every fix in between stationary), at a fix reporting ignition off after
 *   ignition was on during the trip, or when no fix is accepted for `noDataS` (a gap of `noDataS` or
 *   more also makes the next fix plausible wherever it is). Shorter than `minTripM`: dropped.
 */
export function analyse(input: readonly Fix[], rules: FleetRules, options: AnalyseOptions = {}): Analysis {
  return run(null, input, rules, options);
}

/**
 * Continues the analysis that ended in `state` with fixes all later than the last it saw
 * (`state.lastMs`): the result is the part of the whole analysis from the state's stretch on — that
 * stretch and its trip as they are now, with every accepted fix, trip and stretch after — exactly as
 * analysing every fix again would give it. `state` itself is left as it was.
 */
export function resumeAnalysis(state: AnalysisState, input: readonly Fix[], rules: FleetRules): Analysis {
  return run(state, input, rules, {});
}

function run(from: AnalysisState | null, input: readonly Fix[], rules: FleetRules, options: AnalyseOptions): Analysis {
  const canon = canonicalFixes(input);
  const usable: Fix[] = [];
  let accuracy = 0;
  for (const f of canon.fixes) {
    if (f.accuracyM !== undefined && f.accuracyM > rules.maxAccuracyM) accuracy++;
    else usable.push(f);
  }
  if (from && usable.length && usable[0]!.atMs <= from.lastMs) {
    throw new RangeError(`a continued analysis takes fixes after ${from.lastMs} only, got one at ${usable[0]!.atMs}`);
  }
  const stopMs = rules.stopS * 1000;
  const noDataMs = rules.noDataS * 1000;
  const accepted = new Uint8Array(usable.length);
  const trips: Trip[] = [];
  const stretches: Stretch[] = [];
  let droppedTrips = 0;

  const finishTrip = (t: OpenTrip, reason: TripEndReason): Trip | null => {
    if (t.distanceM < rules.minTripM) {
      droppedTrips++;
      return null;
    }
    const first = t.first;
    const last = t.stop ?? t.last;
    const durationMs = last.atMs - first.atMs;
    const trip: Trip = {
      startAt: first.atMs,
      endAt: last.atMs,
      durationMs,
      distanceM: t.distanceM,
      maxSpeedKmh: t.maxSpeedKmh,
      avgSpeedKmh: averageSpeedKmh(t.distanceM, durationMs),
      start: { lat: first.lat, lon: first.lon },
      end: { lat: last.lat, lon: last.lon },
      endReason: reason,
      buckets: t.buckets.map((b) => ({ ...b })),
    };
    trips.push(trip);
    return trip;
  };

  /** The reason a stretch in state `st` closes before a time group at `atMs`, or null. */
  const closeBefore = (st: AnalysisState, atMs: number): StretchEnd | null => {
    if (st.ignitionClosed) return 'ignition';
    const t = st.trip;
    if (t && t.stop && atMs - t.stop.atMs >= stopMs) return 'stop';
    if (st.lastAccepted && atMs - st.lastAccepted.atMs >= noDataMs) return 'no_data';
    if (!t && atMs - st.idleSinceMs >= noDataMs) return 'idle';
    return null;
  };

  const closeStretch = (st: AnalysisState, end: StretchEnd) => {
    if (st.trip) finishTrip(st.trip, end === 'stop' ? 'stop' : end === 'open' ? 'open' : 'no_data');
    stretches.push({ startMs: st.recordStartMs, endMs: st.lastMs, lastAcceptedMs: st.lastAccepted!.atMs, countedM: st.countedM, end });
  };

  // The caller's state stays as it was: the continuation works on a copy.
  let st: AnalysisState | null = from ? copyState(from) : null;
  if (st?.ignitionTrip) trips.push(copyTrip(st.ignitionTrip));
  // While the stretch has one accepted fix: where it is, and the consistent outliers after it.
  let anchorIndex = -1;
  let chain: number[] = [];
  let i = 0;
  while (i < usable.length) {
    const f = usable[i]!;
    const groupStart = i === 0 || usable[i - 1]!.atMs !== f.atMs;
    if (st && groupStart) {
      const end = closeBefore(st, f.atMs);
      if (end) {
        closeStretch(st, end);
        st = null;
      }
    }
    if (!st) {
      st = freshState(f.atMs);
      chain = [];
    }
    st.lastMs = f.atMs;

    // Outlier rule, relative to the last accepted fix.
    if (st.lastAccepted && impliedSpeedKmh(st.lastAccepted, f) > rules.maxSpeedKmh) {
      const prev = chain[chain.length - 1];
      if (prev !== undefined && impliedSpeedKmh(usable[prev]!, f) <= rules.maxSpeedKmh) chain.push(i);
      else chain = [i];
      if (st.accepted === 1 && chain.length >= ANCHOR_RECOVERY_FIXES) {
        // The lone first fix was the outlier: restart the stretch from the consistent run.
        accepted[anchorIndex] = 0;
        const restartAt: number = chain[0]!;
        st = { ...freshState(st.recordStartMs), idleSinceMs: usable[restartAt]!.atMs };
        chain = [];
        i = restartAt;
        continue;
      }
      i++;
      continue;
    }

    accepted[i] = 1;
    if (st.accepted === 0) anchorIndex = i;
    st.accepted++;
    st.lastAccepted = f;
    st.live = liveAfter(st.live, f, rules);
    chain = [];
    if (st.ignitionClosed) {
      // The rest of a time group after an ignition-off fix is track only.
      i++;
      continue;
    }

    // Drift rule.
    const reportsMoving = f.speedKmh !== undefined && f.speedKmh >= rules.movingSpeedKmh;
    let moving = reportsMoving;
    let stepM = 0;
    let derivedKmh = 0;
    if (st.counted === null) {
      st.counted = f;
    } else {
      const d = haversineM(st.counted, f);
      if (reportsMoving || d > rules.driftM) {
        moving = true;
        stepM = d;
        derivedKmh = (d / Math.max(f.atMs - st.counted.atMs, MIN_IMPLIED_INTERVAL_MS)) * 3600;
        st.countedM += d;
        st.counted = f;
      }
    }
    const speedKmh = f.speedKmh ?? derivedKmh;

    const t = st.trip;
    if (!t) {
      if (moving) st.trip = startTrip(f, speedKmh);
    } else {
      extendTrip(t, f, moving, stepM, speedKmh);
      if (f.ignition === true) t.ignitionSeenOn = true;
      else if (f.ignition === false && t.ignitionSeenOn) {
        takeTail(t);
        st.ignitionTrip = finishTrip(t, 'ignition');
        st.trip = null;
        st.ignitionClosed = true;
      }
    }
    i++;
  }
  if (st) {
    const end = options.followingFixMs !== undefined && options.followingFixMs > st.lastMs ? closeBefore(st, options.followingFixMs) : null;
    // The state before the close (which only reads it): what a continuation starts from.
    const resume = !end && st.accepted >= 2 ? st : null;
    closeStretch(st, end ?? 'open');
    return result(usable, accepted, canon, accuracy, trips, droppedTrips, stretches, st.live, resume);
  }
  return result(usable, accepted, canon, accuracy, trips, droppedTrips, stretches, null, null);
}

function result(
  usable: readonly Fix[],
  accepted: Uint8Array,
  canon: { invalid: number; samePosition: number },
  accuracy: number,
  trips: Trip[],
  droppedTrips: number,
  stretches: Stretch[],
  live: LivePosition | null,
  resume: AnalysisState | null,
): Analysis {
  const acceptedFixes: Fix[] = [];
  let outlier = 0;
  for (let k = 0; k < usable.length; k++) {
    if (accepted[k]) acceptedFixes.push(usable[k]!);
    else outlier++;
  }
  return {
    accepted: acceptedFixes,
    trips,
    droppedTrips,
    ignored: { invalid: canon.invalid, samePosition: canon.samePosition, accuracy, outlier },
    stretches,
    live,
    resume,
  };
}
