// Trip detection and distance from a device's fixes: a pure function of the SET of fixes, so any
// arrival order and any duplication give the same track, trips and mileage (DESIGN "Fleet telemetry").
import { haversineM, isValidLatLon, type LatLon } from './geo';
import type { Fix } from './position';
import type { FleetRules } from './rules';

/**
 * Why a trip ended: `stop` (stopped for `stopS`), `ignition` (ignition went off), `no_data` (no
 * accepted fix for `noDataS`), `open` (the data ends while the trip has not ended yet).
 */
export type TripEndReason = 'stop' | 'ignition' | 'no_data' | 'open';

/** Why a stretch ended; `idle` closes a long stretch without a trip so recomputes stay short. */
export type StretchEnd = 'stop' | 'ignition' | 'idle' | 'no_data' | 'open';

/** The time between two consecutive fixes of a trip and the distance counted over it. */
export interface TripSegment {
  startMs: number;
  endMs: number;
  distanceM: number;
}

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
  /** Consecutive fix pairs from start to end: they tile [startAt, endAt] and their distances sum to distanceM. */
  segments: TripSegment[];
  /** The trip's accepted fixes, only with `{ tripFixes: true }`. */
  fixes?: Fix[];
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
}

export interface AnalyseOptions {
  /** Include each trip's fixes. */
  tripFixes?: boolean;
  /**
   * Time of the first accuracy-passing fix after the input, when the input is a window of a longer
   * history: lets the last stretch end exactly as it would in the whole history.
   */
  followingFixMs?: number;
}

/** A lone first fix contradicted by this many mutually consistent successors was the outlier. */
export const ANCHOR_RECOVERY_FIXES = 3;
/** Implied speeds use at least this interval, so fixes a few ms apart are not judged at infinite speed. */
const MIN_IMPLIED_INTERVAL_MS = 1000;

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

/** Speed in km/h implied by going from `a` to `b`. */
export function impliedSpeedKmh(a: Fix, b: Fix): number {
  const dtMs = Math.max(Math.abs(b.atMs - a.atMs), MIN_IMPLIED_INTERVAL_MS);
  return (haversineM(a, b) / dtMs) * 3600;
}

interface OpenTrip {
  fixes: Fix[];
  /** Counted distance ending at each fix (0 for the first and for fixes not counted). */
  distances: number[];
  speeds: number[];
  /** Index in `fixes` of the fix where the vehicle stopped, -1 while it moves. */
  stopIndex: number;
  ignitionSeenOn: boolean;
}

interface StretchState {
  recordStartMs: number;
  /** When the stretch (or its restart) began, for the idle close. */
  idleSinceMs: number;
  accepted: number;
  anchorIndex: number;
  lastAccepted: Fix | null;
  /** Consecutive outliers since the last accepted fix that are plausible from one another. */
  chain: number[];
  /** The last counted point: the drift rule measures from here. */
  counted: Fix | null;
  countedM: number;
  trip: OpenTrip | null;
  /** The trip ended on ignition; the stretch closes before the next time group. */
  ignitionClosed: boolean;
}

function freshState(startMs: number): StretchState {
  return {
    recordStartMs: startMs,
    idleSinceMs: startMs,
    accepted: 0,
    anchorIndex: -1,
    lastAccepted: null,
    chain: [],
    counted: null,
    countedM: 0,
    trip: null,
    ignitionClosed: false,
  };
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
  const canon = canonicalFixes(input);
  const usable: Fix[] = [];
  let accuracy = 0;
  for (const f of canon.fixes) {
    if (f.accuracyM !== undefined && f.accuracyM > rules.maxAccuracyM) accuracy++;
    else usable.push(f);
  }
  const stopMs = rules.stopS * 1000;
  const noDataMs = rules.noDataS * 1000;
  const accepted = new Uint8Array(usable.length);
  const trips: Trip[] = [];
  const stretches: Stretch[] = [];
  let droppedTrips = 0;

  const finishTrip = (t: OpenTrip, endIndex: number, reason: TripEndReason) => {
    const fixes = t.fixes.slice(0, endIndex + 1);
    let distanceM = 0;
    let maxSpeedKmh = 0;
    const segments: TripSegment[] = [];
    for (let k = 0; k <= endIndex; k++) {
      if (k > 0) {
        distanceM += t.distances[k]!;
        segments.push({ startMs: fixes[k - 1]!.atMs, endMs: fixes[k]!.atMs, distanceM: t.distances[k]! });
      }
      maxSpeedKmh = Math.max(maxSpeedKmh, t.speeds[k]!);
    }
    if (distanceM < rules.minTripM) {
      droppedTrips++;
      return;
    }
    const first = fixes[0]!;
    const last = fixes[endIndex]!;
    const durationMs = last.atMs - first.atMs;
    const trip: Trip = {
      startAt: first.atMs,
      endAt: last.atMs,
      durationMs,
      distanceM,
      maxSpeedKmh,
      avgSpeedKmh: durationMs > 0 ? (distanceM / durationMs) * 3600 : 0,
      start: { lat: first.lat, lon: first.lon },
      end: { lat: last.lat, lon: last.lon },
      endReason: reason,
      segments,
    };
    if (options.tripFixes) trip.fixes = fixes;
    trips.push(trip);
  };

  /** The reason a stretch in state `st` closes before a time group at `atMs`, or null. */
  const closeBefore = (st: StretchState, atMs: number): StretchEnd | null => {
    if (st.ignitionClosed) return 'ignition';
    const t = st.trip;
    if (t && t.stopIndex >= 0 && atMs - t.fixes[t.stopIndex]!.atMs >= stopMs) return 'stop';
    if (st.lastAccepted && atMs - st.lastAccepted.atMs >= noDataMs) return 'no_data';
    if (!t && atMs - st.idleSinceMs >= noDataMs) return 'idle';
    return null;
  };

  const closeStretch = (st: StretchState, end: StretchEnd, endMs: number) => {
    const t = st.trip;
    if (t && !st.ignitionClosed) {
      const endIndex = t.stopIndex >= 0 ? t.stopIndex : t.fixes.length - 1;
      finishTrip(t, endIndex, end === 'stop' ? 'stop' : end === 'open' ? 'open' : 'no_data');
    }
    stretches.push({ startMs: st.recordStartMs, endMs, lastAcceptedMs: st.lastAccepted!.atMs, countedM: st.countedM, end });
  };

  let st: StretchState | null = null;
  let i = 0;
  while (i < usable.length) {
    const f = usable[i]!;
    const groupStart = i === 0 || usable[i - 1]!.atMs !== f.atMs;
    if (st && groupStart) {
      const end = closeBefore(st, f.atMs);
      if (end) {
        closeStretch(st, end, usable[i - 1]!.atMs);
        st = null;
      }
    }
    if (!st) st = freshState(f.atMs);

    // Outlier rule, relative to the last accepted fix.
    if (st.lastAccepted && impliedSpeedKmh(st.lastAccepted, f) > rules.maxSpeedKmh) {
      const prev = st.chain[st.chain.length - 1];
      if (prev !== undefined && impliedSpeedKmh(usable[prev]!, f) <= rules.maxSpeedKmh) st.chain.push(i);
      else st.chain = [i];
      if (st.accepted === 1 && st.chain.length >= ANCHOR_RECOVERY_FIXES) {
        // The lone first fix was the outlier: restart the stretch from the consistent run.
        accepted[st.anchorIndex] = 0;
        const restartAt: number = st.chain[0]!;
        st = { ...freshState(st.recordStartMs), idleSinceMs: usable[restartAt]!.atMs };
        i = restartAt;
        continue;
      }
      i++;
      continue;
    }

    accepted[i] = 1;
    if (st.accepted === 0) st.anchorIndex = i;
    st.accepted++;
    st.lastAccepted = f;
    st.chain = [];
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
      if (moving) st.trip = { fixes: [f], distances: [0], speeds: [speedKmh], stopIndex: -1, ignitionSeenOn: f.ignition === true };
    } else {
      t.fixes.push(f);
      t.distances.push(stepM);
      t.speeds.push(speedKmh);
      if (moving) t.stopIndex = -1;
      else if (t.stopIndex < 0) t.stopIndex = t.fixes.length - 1;
      if (f.ignition === true) t.ignitionSeenOn = true;
      else if (f.ignition === false && t.ignitionSeenOn) {
        finishTrip(t, t.fixes.length - 1, 'ignition');
        st.ignitionClosed = true;
      }
    }
    i++;
  }
  if (st) {
    const end = options.followingFixMs !== undefined && options.followingFixMs > usable[usable.length - 1]!.atMs ? closeBefore(st, options.followingFixMs) : null;
    closeStretch(st, end ?? 'open', usable[usable.length - 1]!.atMs);
  }

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
  };
}
