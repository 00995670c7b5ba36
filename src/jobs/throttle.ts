// Pure core of a job that throttles itself on the read latency it causes, as gh-ost throttles on
// replica lag: from the probe reads timed while it works, the size of its steps and its rests.
import { z } from 'zod';

/** What readers are promised: their p95 stays within this multiple of its idle value while a job runs. */
export const TARGET_RATIO = 2;
/**
 * Probe latencies are compared at their upper quartile, idle against working: the same statistic on
 * both sides, so noise alone (other load on the machine) gives a ratio near 1, and robust where a
 * p95 of a dozen reads would be their maximum.
 */
export const PROBE_QUANTILE = 0.75;
/**
 * The controller grows below GROW_BELOW and backs off above BACKOFF_ABOVE, holding in between:
 * below the target, as a read's tail grows with the load a little more than its quartile does.
 */
export const GROW_BELOW = 1.3;
export const BACKOFF_ABOVE = 1.6;
/** An idle read faster than this is timer noise: a 1 ms baseline must not turn 2 ms of jitter into a back-off. */
export const MIN_BASELINE_MS = 5;
/**
 * Steps (rows written between two rests) never shrink below this: a step's page query and inserts
 * cost nearly as much for fewer rows, so the rests, not the steps, are what throttles.
 */
export const MIN_STEP_ROWS = 2500;
/** Steps never grow beyond this: a longer one keeps a reader waiting behind it. */
export const MAX_STEP_ROWS = 10_000;
/** A job starts gently and doubles while readers do not notice (slow start). */
export const START_STEP_ROWS = 2500;
export const START_DUTY = 0.5;
/** The smallest share of wall time the job keeps working, however loaded the readers are. */
export const MIN_DUTY = 0.02;
/**
 * After the first back-off the duty cycle grows by this much per quiet window, by half at most: a
 * back-off answers a burst others may have caused too (a merge, a chunk's start), and a quarter
 * per window took a 300k-row import most of its run to climb back from 0.02.
 */
export const DUTY_STEP = 0.15;
/** Rests shorter than this are not worth their timer. */
export const MIN_PAUSE_MS = 5;
/** Probes per judgement: the controller re-judges its pace whenever this many have answered. */
export const WINDOW_PROBES = 10;
/** A chunk's last, shorter window is judged when it has at least this many probes. */
export const MIN_WINDOW_PROBES = 3;
/**
 * Idle probes taken before a chunk when the baseline is missing or stale (no probe fell inside a
 * rest for a while: the job works nearly all the time).
 */
export const IDLE_PROBES = 5;
export const BASELINE_TTL_MS = 30_000;
/** The baseline is the quartile of this many of the latest idle probes. */
export const BASELINE_SAMPLES = 10;
/**
 * An idle probe counts at most this multiple of the last baseline: in a rest, ClickHouse may still
 * merge what the job wrote, and that load of its own must not raise the bar at once (load of
 * others raises it over a few windows).
 */
const BASELINE_MAX_RISE = 1.5;

/** The operator's bounds: steps of at most `maxStepRows`, no rest longer than `maxPauseMs`. */
export interface ThrottleLimits {
  maxStepRows: number;
  maxPauseMs: number;
}

export const ThrottleState = z.object({
  /** Rows the job writes between two rests. */
  stepRows: z.number().int().positive(),
  /** Share of wall time the job works; rests fill the rest (each within the operator's bound). */
  duty: z.number().positive().max(1),
  /** The longest rest of the last judged window (ms). */
  pauseMs: z.number().int().min(0),
  /** Probe latency with the job quiet (ms): the quartile of the latest idle probes, kept beside it; null until measured. */
  baselineMs: z.number().nullable(),
  baselineAtMs: z.number().nullable(),
  idleProbesMs: z.array(z.number()).max(BASELINE_SAMPLES).default([]),
  /** The last window's probe quartile (ms) and its ratio to the baseline; null until a window was judged. */
  probeMs: z.number().nullable(),
  ratio: z.number().nullable(),
  /** Set at the first back-off: from then on growth is additive instead of doubling. */
  congested: z.boolean(),
});
export type ThrottleState = z.infer<typeof ThrottleState>;

/**
 * What one window of work showed: its probe latencies (ms, rests included), its longest rest, and
 * the time it worked and rested (ms) — its actual duty cycle, which a rest cut to the operator's
 * bound makes higher than the one asked for.
 */
export interface ProbeWindow {
  probesMs: readonly number[];
  longestRestMs: number;
  workedMs: number;
  restedMs: number;
}

const maxStepRows = (l: ThrottleLimits) => Math.max(1, Math.min(MAX_STEP_ROWS, l.maxStepRows));
const minStepRows = (l: ThrottleLimits) => Math.min(MIN_STEP_ROWS, maxStepRows(l));
const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));
const round1 = (x: number) => Math.round(x * 10) / 10;

/** The nearest-rank quantile `q` of `xs` (0 < q ≤ 1); NaN when empty. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[clamp(Math.ceil(q * sorted.length) - 1, 0, sorted.length - 1)]!;
}

export function initialThrottle(limits: ThrottleLimits): ThrottleState {
  return {
    stepRows: clamp(START_STEP_ROWS, minStepRows(limits), maxStepRows(limits)),
    duty: START_DUTY,
    pauseMs: 0,
    baselineMs: null,
    baselineAtMs: null,
    idleProbesMs: [],
    probeMs: null,
    ratio: null,
    congested: false,
  };
}

/** A state read back from storage, fitted to the limits; anything unreadable starts afresh. */
export function restoreThrottle(stored: unknown, limits: ThrottleLimits): ThrottleState {
  const parsed = ThrottleState.safeParse(stored);
  if (!parsed.success) return initialThrottle(limits);
  const s = parsed.data;
  return { ...s, stepRows: clamp(s.stepRows, minStepRows(limits), maxStepRows(limits)), pauseMs: Math.min(s.pauseMs, limits.maxPauseMs) };
}

/** Whether the job must first measure the idle latency: none yet, or the last one is stale. */
export function needsBaseline(s: ThrottleState, nowMs: number): boolean {
  return s.baselineMs === null || s.baselineAtMs === null || nowMs - s.baselineAtMs >= BASELINE_TTL_MS || nowMs < s.baselineAtMs;
}

/**
 * The baseline after more probes taken while the job was quiet: the quartile of the latest ones.
 * A probe may lower it at once but raise it only gradually. No probes answered: it stays.
 */
export function withBaseline(s: ThrottleState, idleProbesMs: readonly number[], nowMs: number): ThrottleState {
  if (idleProbesMs.length === 0) return s;
  const ceiling = s.baselineMs === null ? Infinity : s.baselineMs * BASELINE_MAX_RISE;
  const samples = [...s.idleProbesMs, ...idleProbesMs.map((ms) => round1(Math.min(ms, ceiling)))].slice(-BASELINE_SAMPLES);
  return { ...s, idleProbesMs: samples, baselineMs: round1(quantile(samples, PROBE_QUANTILE)), baselineAtMs: nowMs };
}

/**
 * How long to rest after a step that worked `workedMs`, so the job works `duty` of the time: none
 * when that is too short to matter, never more than the operator's maxPauseMs.
 */
export function restFor(workedMs: number, duty: number, maxPauseMs: number): number {
  const ms = Math.max(0, workedMs) * (1 / clamp(duty, MIN_DUTY, 1) - 1);
  return ms < MIN_PAUSE_MS ? 0 : Math.round(Math.min(ms, maxPauseMs));
}

/**
 * The pace after a window of work: AIMD on the quartile of the probe reads timed meanwhile, rests
 * included (what readers saw), against the same with the job quiet. Readers slowed beyond
 * BACKOFF_ABOVE: halve the duty cycle and the step (multiplicative decrease). Readers unbothered
 * (below GROW_BELOW): double both until the first back-off (slow start), then raise the duty cycle
 * by DUTY_STEP (by half at most) and the step by a quarter. In between, or with nothing
 * measured, hold. Both directions start from the duty cycle the window actually had where rests
 * were cut to the operator's bound.
 */
export function nextThrottle(s: ThrottleState, w: ProbeWindow, limits: ThrottleLimits): ThrottleState {
  const lo = minStepRows(limits);
  const hi = maxStepRows(limits);
  let { stepRows, duty, congested } = s;
  let probeMs: number | null = null;
  let ratio: number | null = null;
  if (w.probesMs.length > 0 && s.baselineMs !== null) {
    probeMs = quantile(w.probesMs, PROBE_QUANTILE);
    ratio = probeMs / Math.max(s.baselineMs, MIN_BASELINE_MS);
    // Judge the pace the readers actually saw: rests cut to the bound worked more than asked.
    const actual = w.workedMs + w.restedMs > 0 ? w.workedMs / (w.workedMs + w.restedMs) : duty;
    if (ratio > BACKOFF_ABOVE) {
      stepRows = Math.floor(stepRows / 2);
      duty = Math.min(duty, actual) / 2;
      congested = true;
    } else if (ratio < GROW_BELOW) {
      const from = Math.max(duty, actual);
      if (!congested) {
        stepRows *= 2;
        duty = from * 2;
      } else {
        // A fixed step would overshoot a small duty cycle many times over: at most half as much again.
        duty = from + Math.min(DUTY_STEP, from / 2);
        stepRows += Math.ceil(stepRows / 4);
      }
    }
  }
  return {
    ...s,
    stepRows: clamp(stepRows, lo, hi),
    duty: Math.round(clamp(duty, MIN_DUTY, 1) * 1000) / 1000,
    // The longest rest taken, as taken (restFor bounds it): what shows the operator's bound holds.
    pauseMs: Math.round(w.longestRestMs),
    probeMs: probeMs === null ? s.probeMs : round1(probeMs),
    ratio: ratio === null ? s.ratio : Math.round(ratio * 100) / 100,
    congested,
  };
}

/**
 * What a window too short to judge still shows: the readers' latency meanwhile, recorded without
 * changing the pace. A chunk that ends before its first full window (a small import, slow reads)
 * reports what its readers saw instead of nothing.
 */
export function observeWindow(s: ThrottleState, probesMs: readonly number[]): ThrottleState {
  if (probesMs.length === 0 || s.baselineMs === null) return s;
  const probeMs = quantile(probesMs, PROBE_QUANTILE);
  return { ...s, probeMs: round1(probeMs), ratio: Math.round((probeMs / Math.max(s.baselineMs, MIN_BASELINE_MS)) * 100) / 100 };
}

/** What the job's answer shows of its controller. */
export interface ThrottleView {
  stepRows: number;
  pauseMs: number;
  duty: number;
  probeMs: number | null;
  baselineMs: number | null;
  ratio: number | null;
  targetRatio: number;
}

export const ThrottleViewSchema = z
  .object({
    stepRows: z.number().describe('rows the import writes between two rests'),
    pauseMs: z.number().describe("the longest rest it took lately (at most the job's pauseMs)"),
    duty: z.number().describe('share of wall time it works (0-1); rests fill the rest'),
    probeMs: z.number().nullable().describe('upper-quartile latency of the probe reads timed lately while it worked'),
    baselineMs: z.number().nullable().describe('the same with the import quiet'),
    ratio: z.number().nullable().describe('probeMs over baselineMs'),
    targetRatio: z.number().describe('the bound it keeps that ratio under'),
  })
  .describe('the self-throttling controller of a legacy import; null for other jobs, or with throttle off');

/** Key of the controller's state in a job's params (JSON): it outlives chunk messages and restarts. */
export const THROTTLE_STATE_KEY = 'throttleState';

/** A job's params as the operator gave them, and the controller's stored state beside them. */
export function splitThrottleState(params: unknown): { params: unknown; stored: unknown } {
  if (params === null || typeof params !== 'object' || Array.isArray(params) || !(THROTTLE_STATE_KEY in params)) return { params, stored: undefined };
  const { [THROTTLE_STATE_KEY]: stored, ...rest } = params as Record<string, unknown>;
  return { params: rest, stored };
}

/** The controller's view from a job's params JSON, or null when the job has none. */
export function throttleView(paramsJson: string): ThrottleView | null {
  let stored: unknown;
  try {
    stored = splitThrottleState(JSON.parse(paramsJson)).stored;
  } catch {
    return null;
  }
  const parsed = ThrottleState.safeParse(stored);
  if (!parsed.success) return null;
  const s = parsed.data;
  return { stepRows: s.stepRows, pauseMs: s.pauseMs, duty: s.duty, probeMs: s.probeMs, baselineMs: s.baselineMs, ratio: s.ratio, targetRatio: BACKOFF_ABOVE };
}
