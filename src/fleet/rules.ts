// Fleet rules: the thresholds that turn raw fixes into a track, trips and mileage. Defaults follow
// Traccar's filter and report settings; a project may override any of them within sane bounds.
import { z } from 'zod';

export interface FleetRules {
  /** Fixes reporting a worse accuracy (metres) are ignored. */
  maxAccuracyM: number;
  /** A fix implying a faster speed (km/h) from its accepted predecessor is an outlier. */
  maxSpeedKmh: number;
  /** While slower than `movingSpeedKmh`, a fix counts as movement only beyond this many metres from the last counted point. */
  driftM: number;
  /** A reported speed (km/h) at or above this is movement whatever the distance. */
  movingSpeedKmh: number;
  /** Seconds stopped after which a trip ends (at the fix where the vehicle stopped). */
  stopS: number;
  /** Seconds without an accepted fix after which a trip ends and the next fix starts afresh. */
  noDataS: number;
  /** Trips shorter than this (metres) are dropped. */
  minTripM: number;
  /** Seconds without a fix after which the live status is `offline`. */
  offlineAfterS: number;
}

export const DEFAULT_FLEET_RULES: Readonly<FleetRules> = Object.freeze({
  maxAccuracyM: 100,
  maxSpeedKmh: 250,
  driftM: 25,
  movingSpeedKmh: 3,
  stopS: 300,
  noDataS: 3600,
  minTripM: 300,
  offlineAfterS: 3600,
});

const DAY_S = 86_400;

function bounded(name: string, unit: string, max: number, opts: { allowZero?: boolean } = {}) {
  const positive = opts.allowZero ? `${name} must be ≥ 0 ${unit}` : `${name} must be > 0 ${unit}`;
  const base = z.number({ error: `${name} must be a number (${unit})` });
  return (opts.allowZero ? base.min(0, positive) : base.positive(positive)).max(max, `${name} must be ≤ ${max} ${unit}`);
}

/** Per-project overrides: every field optional, unknown fields refused, each value bounded. */
export const FleetRulesOverridesSchema = z.strictObject({
  maxAccuracyM: bounded('maxAccuracyM', 'm', 10_000).optional(),
  maxSpeedKmh: bounded('maxSpeedKmh', 'km/h', 2_000).optional(),
  driftM: bounded('driftM', 'm', 1_000).optional(),
  movingSpeedKmh: bounded('movingSpeedKmh', 'km/h', 100).optional(),
  stopS: bounded('stopS', 's', DAY_S).optional(),
  noDataS: bounded('noDataS', 's', 7 * DAY_S).optional(),
  // 0 keeps every trip, however short.
  minTripM: bounded('minTripM', 'm', 1_000_000, { allowZero: true }).optional(),
  // Whole seconds, as FLEET_OFFLINE_AFTER_S.
  offlineAfterS: bounded('offlineAfterS', 's', 30 * DAY_S).int('offlineAfterS must be a whole number of seconds').optional(),
});

export type FleetRulesOverrides = z.infer<typeof FleetRulesOverridesSchema>;

/** The defaults with a project's overrides applied; throws a ZodError naming the bad field. */
export function resolveFleetRules(overrides?: unknown): FleetRules {
  if (overrides === undefined || overrides === null) return { ...DEFAULT_FLEET_RULES };
  return applyOverrides(DEFAULT_FLEET_RULES, FleetRulesOverridesSchema.parse(overrides));
}

/** `base` with the (already validated) overrides applied. */
export function applyOverrides(base: Readonly<FleetRules>, overrides: FleetRulesOverrides): FleetRules {
  const rules = { ...base };
  for (const [key, value] of Object.entries(overrides) as Array<[keyof FleetRules, number | undefined]>) {
    if (value !== undefined) rules[key] = value;
  }
  return rules;
}

/** The rules an analysis depends on, as a key: a state analysed under other rules is not continued. */
export function analysisRulesKey(r: FleetRules): string {
  return [r.maxAccuracyM, r.maxSpeedKmh, r.driftM, r.movingSpeedKmh, r.stopS, r.noDataS, r.minTripM].join(',');
}
