// Pure core of the self-throttling import: how the controller turns probe latencies into the next
// steps and rests, and where it settles under readers that the import slows down.
import { describe, expect, it } from 'vitest';
import {
  BACKOFF_ABOVE,
  BASELINE_TTL_MS,
  initialThrottle,
  MIN_STEP_ROWS,
  MIN_DUTY,
  needsBaseline,
  nextThrottle,
  observeWindow,
  quantile,
  restFor,
  restoreThrottle,
  splitThrottleState,
  TARGET_RATIO,
  throttleView,
  withBaseline,
  type ThrottleLimits,
  type ThrottleState,
} from '../src/jobs/throttle';

const limits: ThrottleLimits = { maxStepRows: 5000, maxPauseMs: 2000 };
/** A state with a 10 ms baseline, as after the first idle probes. */
const measured = (l: ThrottleLimits = limits): ThrottleState => withBaseline(initialThrottle(l), [9, 10, 10, 10, 10, 10, 10, 10], 0);
/** A window whose probes all took `probeMs`. */
const window = (probeMs: number, longestRestMs = 0) => ({ probesMs: Array.from({ length: 10 }, () => probeMs), longestRestMs, workedMs: 0, restedMs: 0 });

/**
 * A model system: while the import works, reads take `slowMs`, while it rests 10 ms; probes sample
 * time evenly, so a share `duty` of a window's 40 probes are slow.
 */
const probesAt = (duty: number, slowMs: number) => Array.from({ length: 40 }, (_, i) => (i < Math.round(40 * duty) ? slowMs : 10));

describe('throttle controller', () => {
  it('starts gently within the operator bounds', () => {
    const s = initialThrottle(limits);
    expect(s.stepRows).toBeLessThan(limits.maxStepRows);
    expect(s.duty).toBeLessThan(1);
    expect(initialThrottle({ maxStepRows: 40, maxPauseMs: 1500 }).stepRows).toBe(40);
    expect(needsBaseline(s, 0)).toBe(true);
  });

  it('grows to full speed while readers do not notice: the biggest steps, no rests', () => {
    let s = measured();
    for (let i = 0; i < 8; i++) s = nextThrottle(s, window(11), limits);
    expect(s).toMatchObject({ stepRows: limits.maxStepRows, duty: 1, congested: false });
    expect(s.ratio).toBeLessThan(1.3);
    expect(restFor(500, s.duty, limits.maxPauseMs)).toBe(0);
  });

  it('backs off multiplicatively when reads slow beyond the target', () => {
    const s = nextThrottle(measured(), window(11), limits);
    expect(s).toMatchObject({ stepRows: 5000, duty: 1 });
    const slowed = nextThrottle(s, window(35), limits);
    expect(slowed.ratio).toBeGreaterThan(BACKOFF_ABOVE);
    expect(slowed).toMatchObject({ stepRows: 2500, duty: 0.5, congested: true });
    // However loaded the readers, steps keep a floor and the duty cycle too.
    let worst = slowed;
    for (let i = 0; i < 12; i++) worst = nextThrottle(worst, window(80), limits);
    expect(worst).toMatchObject({ stepRows: MIN_STEP_ROWS, duty: MIN_DUTY });
  });

  it('rests in proportion to the work, never longer than the operator allows', () => {
    // Half the time: as long a rest as the step worked.
    expect(restFor(20, 0.5, 2000)).toBe(20);
    expect(restFor(100, 0.1, 2000)).toBe(900);
    expect(restFor(100, 0.1, 300)).toBe(300);
    expect(restFor(100, 0.1, 0)).toBe(0);
    // Rests too short to matter are skipped.
    expect(restFor(3, 0.5, 2000)).toBe(0);
    // The longest rest of the window is reported as taken (restFor is what bounds it).
    expect(nextThrottle(measured(), window(11, 250), { maxStepRows: 5000, maxPauseMs: 300 }).pauseMs).toBe(250);
  });

  it('judges the duty cycle it actually had when rests were cut to the operator bound', () => {
    const s = { ...measured(), duty: 0.05, congested: true };
    // Asked to work 5 % of the time, it worked half of it: its rests were cut to the bound.
    const capped = { probesMs: Array.from({ length: 10 }, () => 11), longestRestMs: 1000, workedMs: 4000, restedMs: 4000 };
    expect(nextThrottle(s, capped, limits).duty).toBe(0.65);
    expect(nextThrottle(s, { ...capped, probesMs: Array.from({ length: 10 }, () => 30) }, limits).duty).toBe(0.025);
  });

  it('after a back-off grows by steps: the duty cycle by 0.15 (half at most), the step by a quarter', () => {
    let s = nextThrottle(nextThrottle(measured(), window(11), limits), window(40), limits);
    expect(s).toMatchObject({ stepRows: 2500, duty: 0.5, congested: true });
    const paces: Array<[number, number]> = [];
    for (let i = 0; i < 5; i++) {
      s = nextThrottle(s, window(11), limits);
      paces.push([s.duty, s.stepRows]);
    }
    expect(paces).toEqual([
      [0.65, 3125],
      [0.8, 3907],
      [0.95, 4884],
      [1, 5000],
      [1, 5000],
    ]);
    // A small duty cycle grows by half, not by a step many times its size.
    expect(nextThrottle({ ...s, duty: 0.04 }, window(11), limits).duty).toBe(0.06);
  });

  it('holds its pace between the grow and back-off thresholds, and when no probe answered', () => {
    const s = { ...nextThrottle(measured(), window(11), limits), congested: true };
    const between = nextThrottle(s, window(14), limits);
    expect(between).toMatchObject({ stepRows: s.stepRows, duty: s.duty, ratio: 1.4 });
    const blind = nextThrottle(s, { probesMs: [], longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits);
    expect(blind).toMatchObject({ stepRows: s.stepRows, duty: s.duty, probeMs: s.probeMs });
  });

  it('reports what readers saw in a window too short to judge, without changing its pace', () => {
    const s = measured();
    const seen = observeWindow(s, [30, 20]);
    expect(seen).toMatchObject({ stepRows: s.stepRows, duty: s.duty, probeMs: 30, ratio: 3 });
    expect(observeWindow(s, [])).toEqual(s);
    // Nothing to compare with before the idle latency is known.
    expect(observeWindow(initialThrottle(limits), [30])).toMatchObject({ probeMs: null, ratio: null });
  });

  it('judges a window by the upper quartile of its probes: a few slow reads pass, a third do not', () => {
    expect(quantile([5, 1, 4, 2, 3], 0.95)).toBe(5);
    expect(quantile([5, 1, 4, 2, 3], 0.5)).toBe(3);
    const s = { ...measured(), duty: 0.5, congested: true };
    expect(nextThrottle(s, { probesMs: probesAt(0.2, 50), longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits).duty).toBeGreaterThan(0.5);
    expect(nextThrottle(s, { probesMs: probesAt(0.3, 50), longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits).duty).toBe(0.25);
  });

  it('is not fooled by noise: reads as noisy idle as working let it run at full speed', () => {
    // Latencies from one heavy-tailed distribution (other load on the machine), import or not.
    let seed = 42;
    const uniform = () => {
      seed = (seed * 1664525 + 1013904223) % 2 ** 32;
      return (seed + 0.5) / 2 ** 32;
    };
    // Log-normal (σ 0.6) around 10 ms, by Box-Muller.
    const noisy = () => 10 * Math.exp(0.6 * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()));
    let s = withBaseline(initialThrottle(limits), Array.from({ length: 5 }, noisy), 0);
    const duties: number[] = [];
    for (let i = 0; i < 300; i++) {
      if (i % 10 === 0) s = withBaseline(s, Array.from({ length: 5 }, noisy), i);
      s = nextThrottle(s, { probesMs: Array.from({ length: 10 }, noisy), longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits);
      if (i >= 100) duties.push(s.duty);
    }
    expect(duties.reduce((a, b) => a + b, 0) / duties.length).toBeGreaterThan(0.8);
  });

  it('keeps its idle baseline from its latest idle probes: stale after a while, lowered at once, raised only gradually', () => {
    const s = measured();
    expect(s.baselineMs).toBe(10);
    expect(needsBaseline(s, BASELINE_TTL_MS - 1)).toBe(false);
    expect(needsBaseline(s, BASELINE_TTL_MS)).toBe(true);
    // The quartile of the latest ten: quieter probes lower it at once.
    expect(withBaseline(s, [4, 4, 4, 4, 4, 4, 4, 4], BASELINE_TTL_MS).baselineMs).toBe(4);
    // Load of its own must not raise the bar in one step: a probe counts at most 1.5× the baseline,
    // so a lasting rise (load of others) is followed over a few windows.
    const raised = withBaseline(s, [40, 40, 40, 40, 40, 40, 40, 40, 40, 40], BASELINE_TTL_MS);
    expect(raised.baselineMs).toBe(15);
    expect(withBaseline(raised, [40, 40, 40, 40, 40], 2 * BASELINE_TTL_MS).baselineMs).toBe(22.5);
    expect(withBaseline(s, [], BASELINE_TTL_MS)).toBe(s);
  });

  it('imports as fast as readers allow when every read slows with the share of time the import works', () => {
    // Work finely interleaved with reads: they take 10 ms × (1 + 2 × duty), so the controller's
    // bound (1.6×) holds up to 30 % of the time.
    let s = measured();
    const duties: number[] = [];
    let over = 0;
    for (let i = 0; i < 300; i++) {
      const ms = 10 * (1 + 2 * s.duty);
      s = nextThrottle(s, { probesMs: Array.from({ length: 20 }, () => ms), longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits);
      if (i >= 50) {
        duties.push(s.duty);
        if (ms > 10 * TARGET_RATIO) over += 1;
      }
    }
    const meanDuty = duties.reduce((a, b) => a + b, 0) / duties.length;
    expect(over).toBe(0);
    expect(meanDuty).toBeGreaterThanOrEqual(0.25);
    expect(meanDuty).toBeLessThanOrEqual(0.3);
  });

  it('under readers that any work slows fivefold, works a small share of the time', () => {
    let s = measured();
    const duties: number[] = [];
    for (let i = 0; i < 200; i++) {
      s = nextThrottle(s, { probesMs: probesAt(s.duty, 50), longestRestMs: 0, workedMs: 0, restedMs: 0 }, limits);
      if (i >= 50) duties.push(s.duty);
    }
    // The quartile turns slow once over a quarter of the reads are: the duty cycle settles below
    // that, overshooting it by one step (half of it at most) before it backs off.
    expect(Math.max(...duties)).toBeLessThanOrEqual(0.4);
    expect(duties.reduce((a, b) => a + b, 0) / duties.length).toBeLessThan(0.3);
  });

  it('keeps its state beside the operator params and shows it', () => {
    const s = measured();
    const stored = JSON.stringify({ type: 'legacy_import', chunkSize: 5000, throttleState: s });
    expect(splitThrottleState(JSON.parse(stored))).toEqual({ params: { type: 'legacy_import', chunkSize: 5000 }, stored: s });
    expect(splitThrottleState({ chunkSize: 1 })).toEqual({ params: { chunkSize: 1 }, stored: undefined });
    expect(throttleView(stored)).toEqual({ stepRows: s.stepRows, pauseMs: 0, duty: s.duty, probeMs: null, baselineMs: 10, ratio: null, targetRatio: BACKOFF_ABOVE });
    expect(throttleView(JSON.stringify({ type: 'archive' }))).toBeNull();
    // A state from an older shape, or params edited to smaller bounds, never breaks the job.
    expect(restoreThrottle({ stepRows: 'x' }, limits)).toEqual(initialThrottle(limits));
    expect(restoreThrottle({ ...s, stepRows: 50_000, pauseMs: 9000 }, { maxStepRows: 800, maxPauseMs: 100 })).toMatchObject({ stepRows: 800, pauseMs: 100 });
  });
});
