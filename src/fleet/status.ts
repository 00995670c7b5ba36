// Live position and status of a vehicle: the newest accepted fix by event time (a late fix never
// replaces a newer one) and moving / idle / parked / offline from it and the current time.
import { haversineM, impliedSpeedKmh, isValidLatLon } from './geo';
import type { Fix } from './position';
import type { FleetRules } from './rules';

export const LIVE_STATUSES = ['moving', 'idle', 'parked', 'offline'] as const;
export type LiveStatus = (typeof LIVE_STATUSES)[number];

/** What a device keeps as its live state (plain data, storable as JSON). */
export interface LivePosition {
  /** The newest accepted fix by event time. */
  fix: Fix;
  /** The last point counted as movement: the drift rule measures from here. */
  countedPoint: { lat: number; lon: number; atMs: number };
  /** The fix lay more than `driftM` from the previous counted point. */
  movedByDrift: boolean;
}

export type LiveIgnoredReason = 'older' | 'invalid' | 'accuracy' | 'outlier';

export interface LiveUpdate {
  live: LivePosition | null;
  changed: boolean;
  ignored?: LiveIgnoredReason;
}

/**
 * The fix to show as live: the later by event time; on equal times the larger id (the same order
 * as the analysis, so the live fix is the last accepted one); the same id keeps `current`.
 */
export function newerFix(current: Fix | null | undefined, candidate: Fix): Fix {
  if (!current) return candidate;
  if (candidate.atMs !== current.atMs) return candidate.atMs > current.atMs ? candidate : current;
  return candidate.id > current.id ? candidate : current;
}

/**
 * Folds one fix into the live state: fixes ignored by the accuracy or outlier rules never become the
 * live position, nor do fixes older than the current one. The outlier check is against the current
 * live fix, unless that is `noDataS` or more older (a jump after a long gap is plausible).
 */
export function advanceLive(current: LivePosition | null, candidate: Fix, rules: FleetRules): LiveUpdate {
  const keep = (ignored: LiveIgnoredReason): LiveUpdate => ({ live: current, changed: false, ignored });
  if (!candidate || typeof candidate.atMs !== 'number' || !Number.isFinite(candidate.atMs) || !isValidLatLon(candidate)) return keep('invalid');
  if (candidate.accuracyM !== undefined && candidate.accuracyM > rules.maxAccuracyM) return keep('accuracy');
  if (!current) {
    return { live: { fix: candidate, countedPoint: { lat: candidate.lat, lon: candidate.lon, atMs: candidate.atMs }, movedByDrift: false }, changed: true };
  }
  if (newerFix(current.fix, candidate) !== candidate) return keep('older');
  const gapMs = candidate.atMs - current.fix.atMs;
  if (gapMs < rules.noDataS * 1000 && impliedSpeedKmh(current.fix, candidate) > rules.maxSpeedKmh) return keep('outlier');
  const movedByDrift = haversineM(current.countedPoint, candidate) > rules.driftM;
  const counts = movedByDrift || (candidate.speedKmh ?? 0) >= rules.movingSpeedKmh || gapMs >= rules.noDataS * 1000;
  return {
    live: {
      fix: candidate,
      countedPoint: counts ? { lat: candidate.lat, lon: candidate.lon, atMs: candidate.atMs } : current.countedPoint,
      movedByDrift: movedByDrift && gapMs < rules.noDataS * 1000,
    },
    changed: true,
  };
}

/**
 * `offline` when the newest fix is `offlineAfterS` or more old (or there is none); else `moving`
 * (reported speed ≥ `movingSpeedKmh` or moved by the drift rule), `idle` (ignition on, not moving)
 * or `parked`.
 */
export function liveStatus(live: LivePosition | null | undefined, nowMs: number, rules: FleetRules): LiveStatus {
  if (!live || nowMs - live.fix.atMs >= rules.offlineAfterS * 1000) return 'offline';
  if ((live.fix.speedKmh !== undefined && live.fix.speedKmh >= rules.movingSpeedKmh) || live.movedByDrift) return 'moving';
  if (live.fix.ignition === true) return 'idle';
  return 'parked';
}

/**
 * The live state after accepted fix `f`, the drift rule replayed from `live` (the state after the
 * stretch's previous accepted fix, null for its first).
 */
export function liveAfter(live: LivePosition | null, f: Fix, rules: FleetRules): LivePosition {
  if (!live) return { fix: f, countedPoint: { lat: f.lat, lon: f.lon, atMs: f.atMs }, movedByDrift: false };
  const movedByDrift = haversineM(live.countedPoint, f) > rules.driftM;
  const counts = movedByDrift || (f.speedKmh ?? 0) >= rules.movingSpeedKmh;
  return { fix: f, countedPoint: counts ? { lat: f.lat, lon: f.lon, atMs: f.atMs } : live.countedPoint, movedByDrift };
}

/**
 * The live state an analysis implies: its newest accepted fix, with the drift rule replayed over the
 * accepted fixes given (pass at least the last stretch's, in analysis order). An analysis carries
 * this for its last stretch (`Analysis.live`).
 */
export function liveFromAccepted(accepted: readonly Fix[], rules: FleetRules): LivePosition | null {
  let live: LivePosition | null = null;
  for (const f of accepted) live = liveAfter(live, f, rules);
  return live;
}
