// Pure fleet core: fix validation, filters, trips, mileage across local midnight, incremental
// recompute and live status. Inputs come from seeded generators, so every run sees the same data.
import { describe, expect, it } from 'vitest';
import { EARTH_RADIUS_M, haversineM, isValidLatLon, simplifyTrack, type LatLon } from '../src/fleet/geo';
import { EMPTY_HISTORY, planRecompute, planTrackRead, recomputeHistory, type FleetHistory } from '../src/fleet/incremental';
import {
  assertTimeZone,
  dailyMileage,
  InvalidDateError,
  InvalidTimeZoneError,
  localMidnights,
  mileageBuckets,
  type MileageDay,
  type MileageTrip,
} from '../src/fleet/mileage';
import { checkPositionProperties, fixFromPosition, type Fix } from '../src/fleet/position';
import { DEFAULT_FLEET_RULES, resolveFleetRules, type FleetRules } from '../src/fleet/rules';
import { advanceLive, liveFromAccepted, liveStatus, newerFix, type LivePosition } from '../src/fleet/status';
import { analyse, canonicalFixes, resumeAnalysis, type Analysis, type AnalysisState, type Trip } from '../src/fleet/trips';
import { FixLog, HOME, HOUR, MIN, destination, jitter, makeRoute, prng, shuffledWithDuplicates, straightDrive, syntheticDay as syntheticDayOn, type Rng, type SyntheticDay } from './fleet-fixtures';

const RULES: FleetRules = { ...DEFAULT_FLEET_RULES };
const DAY = Date.UTC(2024, 5, 15); // 2024-06-15T00:00Z

// ---------------------------------------------------------------------------------------------
// Seeded generators

/** One vehicle's day (see fleet-fixtures) on DAY. */
const syntheticDay = (seed: number): SyntheticDay => syntheticDayOn(seed, DAY);

function totalDistance(trips: readonly Trip[]) {
  return trips.reduce((s, t) => s + t.distanceM, 0);
}

// ---------------------------------------------------------------------------------------------

describe('a synthetic day', () => {
  const day = syntheticDay(20240615);

  it('finds exactly three trips, each within 1 % of its route, from a shuffled and duplicated delivery', () => {
    const inOrder = analyse(day.fixes, RULES);
    const shuffled = analyse(shuffledWithDuplicates(day.fixes, 7), RULES);
    expect(shuffled).toEqual(inOrder);

    expect(inOrder.trips).toHaveLength(3);
    inOrder.trips.forEach((trip, k) => {
      const route = day.routes[k]!;
      expect(Math.abs(trip.distanceM - route.lengthM) / route.lengthM, `trip ${k}: ${trip.distanceM} m vs route ${route.lengthM} m`).toBeLessThan(0.01);
      expect(trip.endReason).toBe(k === 2 ? 'ignition' : 'stop');
      expect(trip.avgSpeedKmh).toBeCloseTo((trip.distanceM / trip.durationMs) * 3600, 9);
      expect(trip.maxSpeedKmh).toBeGreaterThan(k === 2 ? 60 : 45);
      expect(trip.maxSpeedKmh).toBeLessThan(k === 2 ? 75 : 55);
    });
    // Starts at the first moving fix (5 s after departure), ends where the vehicle stopped.
    expect(inOrder.trips[0]!.startAt).toBe(DAY + 7 * HOUR + 5000);
    expect(haversineM(inOrder.trips[0]!.end, day.routes[0]!.vertices.at(-1)!)).toBeLessThan(30);
    expect(haversineM(inOrder.trips[2]!.end, day.routes[2]!.vertices.at(-1)!)).toBeLessThan(30);

    // Both teleports and all eight low-accuracy fixes are out of the track.
    expect(inOrder.ignored).toEqual({ invalid: 0, samePosition: 0, accuracy: 8, outlier: 2 });
    expect(inOrder.accepted).toHaveLength(day.fixes.length - 10);

    const [utc] = dailyMileage(inOrder.trips, 'UTC', '2024-06-15', '2024-06-15');
    expect(utc!.trips).toBe(3);
    expect(utc!.distanceM).toBeCloseTo(totalDistance(inOrder.trips), 6);
    expect(utc!.movingMs).toBe(inOrder.trips.reduce((s, t) => s + t.durationMs, 0));
  });

  it('adds at most 50 m for all the parked hours of 3–5 m jitter', () => {
    expect(day.parkedPeriods.reduce((n, p) => n + p.length, 0)).toBeGreaterThan(1000); // ~20 parked hours
    let countedM = 0;
    for (const period of day.parkedPeriods) {
      const parked = analyse(shuffledWithDuplicates(period, 3), RULES);
      expect(parked.trips).toEqual([]);
      expect(parked.droppedTrips).toBe(0);
      countedM += parked.stretches.reduce((s, x) => s + x.countedM, 0);
      expect(dailyMileage(parked.trips, 'Europe/Berlin', '2024-06-15', '2024-06-15')).toEqual([{ date: '2024-06-15', distanceM: 0, movingMs: 0, trips: 0 }]);
    }
    expect(countedM).toBeLessThanOrEqual(50);
  });
});

describe('canonical order and dedup', () => {
  const base = { lat: 10, lon: 20 };

  it('keeps one fix per id and per (time, coordinates), whatever the order', () => {
    const a: Fix = { id: 'a', atMs: 1000, ...base, speedKmh: 5 };
    const aChanged: Fix = { id: 'a', atMs: 1000, ...base, speedKmh: 4 };
    const b: Fix = { id: 'b', atMs: 1000, ...base };
    const c: Fix = { id: 'c', atMs: 500, lat: 10.001, lon: 20 };
    const one = canonicalFixes([a, aChanged, b, c, a]);
    const two = canonicalFixes([c, b, a, a, aChanged]);
    expect(one).toEqual(two);
    // id "a": the copy with the smallest content wins; (1000, 10, 20): the smallest id ("a") wins.
    expect(one.fixes).toEqual([c, aChanged]);
    expect(one.samePosition).toBe(1);
  });

  it('gives an empty analysis for no fixes', () => {
    expect(analyse([], RULES)).toEqual({ accepted: [], trips: [], droppedTrips: 0, ignored: { invalid: 0, samePosition: 0, accuracy: 0, outlier: 0 }, stretches: [], live: null, resume: null });
  });

  it('counts invalid fixes and leaves them out', () => {
    const bad = [
      { id: 'x1', atMs: Number.NaN, ...base },
      { id: 'x2', atMs: 1, lat: 91, lon: 0 },
      { id: 'x3', atMs: 1, lat: 0, lon: -181 },
      { id: 'x4', atMs: 1, ...base, speedKmh: -1 },
      { id: 'x5', atMs: 1, ...base, ignition: 'yes' as unknown as boolean },
    ] as Fix[];
    const r = analyse([...bad, { id: 'ok', atMs: 1, ...base }], RULES);
    expect(r.ignored.invalid).toBe(5);
    expect(r.accepted.map((f) => f.id)).toEqual(['ok']);
  });
});

describe('outliers', () => {
  it('ignores a single spike and keeps the fix after it', () => {
    const log = new FixLog(prng(1));
    straightDrive(log, HOME, DAY, 40, 50);
    const spike = log.add({ atMs: DAY + 100_000 + 2500, ...destination(HOME, 0, 20_000), speedKmh: 50 });
    const r = analyse(log.fixes, RULES);
    expect(r.ignored.outlier).toBe(1);
    expect(r.accepted.find((f) => f.id === spike.id)).toBeUndefined();
    expect(r.accepted).toHaveLength(40);
    expect(r.trips[0]!.distanceM).toBeCloseTo((50 / 3.6) * 5 * 39, 0);
  });

  it('ignores a teleport pair without taking the correct fix after it for an outlier', () => {
    const log = new FixLog(prng(2));
    straightDrive(log, HOME, DAY, 40, 50);
    const far = destination(HOME, 180, 15_000);
    log.add({ atMs: DAY + 100_000 + 1000, ...far, speedKmh: 50 });
    log.add({ atMs: DAY + 100_000 + 3000, ...destination(far, 90, 30), speedKmh: 50 });
    const r = analyse(log.fixes, RULES);
    expect(r.ignored.outlier).toBe(2);
    expect(r.accepted).toHaveLength(40);
    expect(r.trips).toHaveLength(1);
    expect(r.trips[0]!.distanceM).toBeCloseTo((50 / 3.6) * 5 * 39, 0);
  });

  it('accepts a genuine jump after more than noDataS without data, and not after less', () => {
    const log = new FixLog(prng(3));
    log.park(HOME, DAY, DAY + 10 * MIN);
    const far = destination(HOME, 90, 300_000); // 300 km
    log.park(far, DAY + 10 * MIN + RULES.noDataS * 1000 + 1000, DAY + 2 * HOUR);
    const r = analyse(log.fixes, RULES);
    expect(r.ignored.outlier).toBe(0);
    expect(r.stretches.map((s) => s.end)).toContain('no_data');
    expect(r.trips).toEqual([]); // a jump is no trip: nothing was seen moving

    const soon = new FixLog(prng(3));
    soon.park(HOME, DAY, DAY + 10 * MIN);
    soon.add({ atMs: DAY + 40 * MIN, ...far }); // 300 km in 30 min: 600 km/h
    soon.park(HOME, DAY + 41 * MIN, DAY + 50 * MIN);
    const s = analyse(soon.fixes, RULES);
    expect(s.ignored.outlier).toBe(1);
  });

  it('recovers when the first fix of a stretch is the teleport', () => {
    const log = new FixLog(prng(4));
    log.add({ atMs: DAY, ...destination(HOME, 0, 50_000), speedKmh: 0 });
    log.park(HOME, DAY + 10_000, DAY + 30 * MIN);
    const r = analyse(log.fixes, RULES);
    expect(r.ignored.outlier).toBe(1);
    expect(r.accepted[0]!.id).toBe(log.fixes[1]!.id);
    expect(r.trips).toEqual([]);
    expect(analyse(prng(9).shuffle([...log.fixes]), RULES)).toEqual(r);
  });

  it('ignores fixes with an accuracy worse than maxAccuracyM, per project', () => {
    const fixes: Fix[] = [
      { id: 'a', atMs: DAY, ...HOME, accuracyM: 100 },
      { id: 'b', atMs: DAY + 1000, ...HOME, accuracyM: 100.5 },
    ];
    expect(analyse(fixes, RULES).ignored.accuracy).toBe(1);
    expect(analyse(fixes, resolveFleetRules({ maxAccuracyM: 200 })).ignored.accuracy).toBe(0);
  });
});

describe('trip ends', () => {
  it('keeps a trip through a stop shorter than stopS and ends it at the stop that lasts', () => {
    const log = new FixLog(prng(5));
    let p = straightDrive(log, HOME, DAY, 60, 40);
    log.park(p, DAY + 300_000, DAY + 300_000 + 200_000, { intervalMs: 10_000 }); // 200 s at a light
    p = straightDrive(log, p, DAY + 500_000, 60, 40);
    const stopAt = DAY + 800_000;
    log.park(p, stopAt, stopAt + 20 * MIN, { intervalMs: 30_000 });
    const r = analyse(log.fixes, RULES);
    expect(r.trips).toHaveLength(1);
    expect(r.trips[0]!.startAt).toBe(DAY);
    expect(r.trips[0]!.endAt).toBe(stopAt); // the fix where it stopped, not when the 300 s ran out
    expect(r.trips[0]!.endReason).toBe('stop');
  });

  it('ends a trip at ignition off, only once ignition was seen on', () => {
    const log = new FixLog(prng(6));
    let p = straightDrive(log, HOME, DAY, 60, 40, 5, { ignition: true });
    const offAt = DAY + 300_000;
    log.add({ atMs: offAt, ...p, speedKmh: 0, ignition: false });
    p = straightDrive(log, destination(p, 90, 20), offAt + 30_000, 60, 40, 5, { ignition: true });
    const r = analyse(log.fixes, RULES);
    expect(r.trips.map((t) => [t.endAt, t.endReason])).toEqual([
      [offAt, 'ignition'],
      [offAt + 30_000 + 59 * 5000, 'open'],
    ]);

    // A device that always reports ignition off (no ignition wire) still has trips.
    const wireless = new FixLog(prng(6));
    straightDrive(wireless, HOME, DAY, 60, 40, 5, { ignition: false });
    expect(analyse(wireless.fixes, RULES).trips).toHaveLength(1);
  });

  it('ends a trip after noDataS without data, and drops trips shorter than minTripM', () => {
    const log = new FixLog(prng(7));
    const p = straightDrive(log, HOME, DAY, 60, 40);
    straightDrive(log, destination(p, 90, 1000), DAY + 300_000 + RULES.noDataS * 1000, 60, 40);
    const r = analyse(log.fixes, RULES);
    expect(r.trips.map((t) => t.endReason)).toEqual(['no_data', 'open']);

    const short = new FixLog(prng(7));
    const q = straightDrive(short, HOME, DAY, 10, 40); // 9 steps of 55.6 m = 500 m
    short.park(q, DAY + 50_000, DAY + 20 * MIN);
    expect(analyse(short.fixes, RULES).trips).toHaveLength(1);
    const strict = analyse(short.fixes, resolveFleetRules({ minTripM: 600 }));
    expect(strict.trips).toEqual([]);
    expect(strict.droppedTrips).toBe(1);
  });

  it('counts slow movement only beyond the drift threshold (trackers without speed)', () => {
    const log = new FixLog(prng(8));
    // 20 m steps every 60 s, no speed: below driftM each, so only every second step counts: the
    // trip starts at 40 m (the first fix beyond driftM) and counts 40 m steps up to 760 m.
    let p = HOME;
    for (let i = 0; i < 40; i++) {
      log.add({ atMs: DAY + i * MIN, ...p });
      p = destination(p, 90, 20);
    }
    const r = analyse(log.fixes, RULES);
    expect(r.trips).toHaveLength(1);
    expect(r.trips[0]!.startAt).toBe(DAY + 2 * MIN);
    expect(r.trips[0]!.distanceM).toBeCloseTo(720, 6);
  });
});

describe('mileage per local calendar day', () => {
  /** The fixes of a drive at constant speed through [fromMs, toMs], then parked. */
  function driveFixes(fromMs: number, toMs: number): Fix[] {
    const log = new FixLog(prng(11));
    const count = (toMs - fromMs) / 10_000 + 1;
    const p = straightDrive(log, { lat: 35.68, lon: 139.76 }, fromMs, count, 60, 10);
    log.park(p, toMs + 10_000, toMs + 30 * MIN);
    return log.fixes;
  }

  /** A drive at constant speed through [fromMs, toMs], analysed into trips. */
  function driveThrough(fromMs: number, toMs: number): Trip[] {
    return analyse(driveFixes(fromMs, toMs), RULES).trips;
  }

  /**
   * The drive's trip as mileage sees it with its steps, from the fixes: a counted step between
   * consecutive moving fixes, then a still one to the first parked fix, where it stopped.
   */
  function driveSegments(fromMs: number, toMs: number): MileageTrip {
    const moving = driveFixes(fromMs, toMs).filter((f) => f.atMs <= toMs);
    const segments = moving.slice(1).map((f, k) => ({ startMs: moving[k]!.atMs, endMs: f.atMs, distanceM: haversineM(moving[k]!, f) }));
    segments.push({ startMs: toMs, endMs: toMs + 10_000, distanceM: 0 });
    return { startAt: fromMs, endAt: toMs + 10_000, distanceM: segments.reduce((sum, x) => sum + x.distanceM, 0), segments };
  }

  it('splits a drive across local midnight in Asia/Tokyo at that midnight, and not in UTC', () => {
    // 14:40–15:20 UTC is 23:40–00:20 in Tokyo (UTC+9).
    const drive = [Date.UTC(2024, 5, 15, 14, 40), Date.UTC(2024, 5, 15, 15, 20)] as const;
    const trips = driveThrough(...drive);
    expect(trips).toHaveLength(1);
    const trip = trips[0]!;
    const midnight = Date.UTC(2024, 5, 15, 15, 0);
    expect(localMidnights('Asia/Tokyo', '2024-06-16', '2024-06-16')[0]!.startMs).toBe(midnight);

    // Every step before midnight counts to the 15th: the steps between fixes up to it, from the fixes themselves.
    const steps = driveSegments(...drive).segments!;
    expect([trip.startAt, trip.endAt]).toEqual([steps[0]!.startMs, steps.at(-1)!.endMs]);
    const before = steps.reduce((s, seg) => s + seg.distanceM * Math.max(0, Math.min(1, (midnight - seg.startMs) / (seg.endMs - seg.startMs))), 0);
    expect(trip.distanceM).toBeCloseTo(steps.reduce((s, seg) => s + seg.distanceM, 0), 6);
    const tokyo = dailyMileage(trips, 'Asia/Tokyo', '2024-06-15', '2024-06-17');
    expect(tokyo.map((d) => d.date)).toEqual(['2024-06-15', '2024-06-16', '2024-06-17']);
    expect(tokyo[0]!.distanceM).toBeCloseTo(before, 6);
    expect(tokyo[1]!.distanceM).toBeCloseTo(trip.distanceM - before, 6);
    expect(tokyo[0]!.distanceM / trip.distanceM).toBeCloseTo(0.5, 1);
    expect(tokyo[0]!.movingMs).toBe(midnight - trip.startAt);
    expect(tokyo[1]!.movingMs).toBe(trip.endAt - midnight);
    expect(tokyo.map((d) => d.trips)).toEqual([1, 0, 0]);
    expect(tokyo[2]).toEqual({ date: '2024-06-17', distanceM: 0, movingMs: 0, trips: 0 });

    const utc = dailyMileage(trips, 'UTC', '2024-06-15', '2024-06-16');
    expect(utc[0]!.distanceM).toBeCloseTo(trip.distanceM, 6);
    expect(utc[0]!.movingMs).toBe(trip.durationMs);
    expect(utc[1]!.distanceM).toBe(0);
  });

  it('has 23- and 25-hour days across the America/New_York DST changes', () => {
    const spring = localMidnights('America/New_York', '2024-03-09', '2024-03-11');
    expect(spring.map((d) => (d.endMs - d.startMs) / HOUR)).toEqual([24, 23, 24]);
    expect(spring[1]!.startMs).toBe(Date.UTC(2024, 2, 10, 5));
    expect(spring[2]!.startMs).toBe(Date.UTC(2024, 2, 11, 4));
    const autumn = localMidnights('America/New_York', '2024-11-02', '2024-11-04');
    expect(autumn.map((d) => (d.endMs - d.startMs) / HOUR)).toEqual([24, 25, 24]);
    expect(autumn[2]!.startMs).toBe(Date.UTC(2024, 10, 4, 5));

    // A drive over local midnight after the autumn change splits at 05:00 UTC, not at 04:00.
    const trips = driveThrough(Date.UTC(2024, 10, 4, 4, 30), Date.UTC(2024, 10, 4, 5, 30));
    const days = dailyMileage(trips, 'America/New_York', '2024-11-03', '2024-11-04');
    expect(trips[0]!.startAt).toBe(Date.UTC(2024, 10, 4, 4, 30));
    expect(days[0]!.movingMs).toBe(30 * MIN);
    expect(days[1]!.movingMs).toBe(trips[0]!.endAt - Date.UTC(2024, 10, 4, 5));
    // A zone whose midnight is skipped (Santiago springs forward at 00:00): the day starts at 01:00.
    expect(localMidnights('America/Santiago', '2024-09-08', '2024-09-08')[0]!.startMs).toBe(Date.UTC(2024, 8, 8, 4));
  });

  it('gives the same days from 15-minute buckets as from the steps of the trips, in any zone', () => {
    const drives: Array<[number, number]> = [
      [Date.UTC(2024, 5, 15, 14, 40), Date.UTC(2024, 5, 15, 15, 20)],
      [Date.UTC(2024, 5, 16, 18, 7), Date.UTC(2024, 5, 16, 18, 52)],
    ];
    const steps = drives.map(([from, to]) => driveSegments(from, to));
    const analysed = drives.flatMap(([from, to]) => driveThrough(from, to));
    // An analysed trip carries the buckets of its steps.
    analysed.forEach((trip, k) => {
      const expected = mileageBuckets([steps[k]!]);
      expect(trip.buckets.map((b) => [b.startMs, b.movingMs, b.tripStarts])).toEqual(expected.map((b) => [b.startMs, b.movingMs, b.tripStarts]));
      trip.buckets.forEach((b, j) => expect(b.distanceM).toBeCloseTo(expected[j]!.distanceM, 6));
    });
    const buckets = mileageBuckets(steps);
    const round = (days: MileageDay[]) => days.map((d) => ({ ...d, distanceM: Math.round(d.distanceM * 1e6) / 1e6 }));
    for (const tz of ['Asia/Tokyo', 'America/New_York', 'Asia/Kathmandu', 'UTC']) {
      const fromSteps = dailyMileage(steps, tz, '2024-06-14', '2024-06-17');
      expect(round(dailyMileage(buckets, tz, '2024-06-14', '2024-06-17')), tz).toEqual(round(fromSteps));
      expect(round(dailyMileage(analysed, tz, '2024-06-14', '2024-06-17')), tz).toEqual(round(fromSteps));
    }
  });

  it('refuses unknown time zones and malformed dates with typed errors', () => {
    expect(() => dailyMileage([], 'Mars/Olympus_Mons', '2024-06-15', '2024-06-15')).toThrow(InvalidTimeZoneError);
    expect(() => assertTimeZone('')).toThrow(/unknown time zone/);
    expect(() => assertTimeZone(42)).toThrow(InvalidTimeZoneError);
    expect(assertTimeZone('Asia/Tokyo')).toBe('Asia/Tokyo');
    try {
      dailyMileage([], 'Not/AZone', '2024-06-15', '2024-06-15');
    } catch (e) {
      expect((e as InvalidTimeZoneError).code).toBe('invalid_time_zone');
    }
    for (const bad of ['2024-02-30', '2024-2-01', '20240201', '2024-13-01', '', '0999-01-01']) {
      expect(() => dailyMileage([], 'UTC', bad, '2024-06-15'), bad).toThrow(InvalidDateError);
    }
    expect(() => dailyMileage([], 'UTC', '2024-06-16', '2024-06-15')).toThrow(/after/);
    expect(() => dailyMileage([], 'UTC', '2000-01-01', '2024-06-15')).toThrow(/at most/);
    expect(dailyMileage([], 'UTC', '2024-02-28', '2024-03-01').map((d) => d.date)).toEqual(['2024-02-28', '2024-02-29', '2024-03-01']);
  });
});

// ---------------------------------------------------------------------------------------------
// Incremental recompute

/** A random history: parking, drives with and without speed or ignition, waits, gaps, spikes, noise. */
function randomHistory(seed: number): Fix[] {
  const rng = prng(seed);
  const log = new FixLog(rng, `s${seed}-`);
  let at = HOME;
  let t = DAY + rng.int(0, 3600) * 1000;
  const withSpeed = rng.chance(0.7);
  const withIgnition = rng.chance(0.4);
  const phases = rng.int(6, 12);
  for (let k = 0; k < phases; k++) {
    const roll = rng.next();
    if (roll < 0.4) {
      const end = t + rng.int(2, 80) * MIN;
      log.park(at, t, end, { intervalMs: rng.int(20, 150) * 1000, speed: withSpeed, ...(withIgnition ? { ignition: rng.chance(0.3) } : {}) });
      t = end;
    } else if (roll < 0.85) {
      const legs: Array<[number, number]> = [];
      for (let l = rng.int(1, 4); l > 0; l--) legs.push([rng.between(0, 360), rng.between(100, 3000)]);
      const route = makeRoute(at, legs);
      const waits: Array<[number, number]> = rng.chance(0.4) ? [[route.lengthM * rng.between(0.3, 0.7), rng.int(20, 400)]] : [];
      t = log.drive(route, t, { intervalMs: rng.int(2, 20) * 1000, speed: withSpeed, waits, cruiseKmh: rng.between(20, 110), ...(withIgnition ? { ignition: true } : {}) });
      at = route.vertices[route.vertices.length - 1]!;
      if (withIgnition && rng.chance(0.6)) log.add({ atMs: (t += 1000), ...at, ignition: false });
      t += rng.int(10, 120) * 1000;
    } else {
      t += rng.int(20, 200) * MIN; // sometimes past noDataS, sometimes not
    }
  }
  // Spikes, low-accuracy fixes and fixes sharing a time with another.
  const real = [...log.fixes];
  for (const f of real) {
    if (rng.chance(0.015)) log.add({ atMs: f.atMs + rng.int(1, 999), ...destination(f, rng.between(0, 360), rng.between(5000, 80_000)) });
    if (rng.chance(0.02)) log.add({ atMs: f.atMs + 1, ...jitter(rng, f, 200, 1500), accuracyM: rng.between(120, 2000) });
    if (rng.chance(0.01)) log.add({ atMs: f.atMs, ...jitter(rng, f, 1, 10), speedKmh: f.speedKmh ?? 0 });
    if (rng.chance(0.01)) log.add({ atMs: f.atMs, lat: f.lat, lon: f.lon, speedKmh: 3 }); // same fix, another id
  }
  return log.fixes;
}

/** Batches in which a device's fixes reach the gateway: mostly live, some buffered offline for hours, some resent. */
function arrivalBatches(fixes: readonly Fix[], rng: Rng, mode: 'live' | 'shuffled'): Fix[][] {
  let order: Fix[];
  if (mode === 'shuffled') order = rng.shuffle([...fixes]);
  else {
    const arrival = fixes.map((f) => ({ f, at: f.atMs + (rng.chance(0.25) ? rng.int(1, 6 * 3600) * 1000 : rng.int(0, 20) * 1000) }));
    for (const f of fixes) if (rng.chance(0.05)) arrival.push({ f: { ...f }, at: f.atMs + rng.int(1, 8 * 3600) * 1000 });
    order = arrival.sort((a, b) => a.at - b.at).map((x) => x.f);
  }
  const batches: Fix[][] = [];
  for (let i = 0; i < order.length; ) {
    const n = rng.int(1, 30);
    batches.push(order.slice(i, i + n));
    i += n;
  }
  return batches;
}

/** Feeds batches through the incremental recompute over an in-memory fix store, checking against a full analysis. */
async function replay(batches: Fix[][], rules: FleetRules, rng: Rng, check: 'each' | 'end') {
  const store = new Map<string, Fix>();
  let history: FleetHistory = EMPTY_HISTORY;
  let fixesRead = 0;
  let reads = 0;
  for (const batch of batches) {
    for (const f of batch) if (!store.has(f.id)) store.set(f.id, f);
    const result = await recomputeHistory(history, batch, (fromMs, toMs) => {
      const window = rng.shuffle([...store.values()].filter((f) => f.atMs >= fromMs && f.atMs <= toMs));
      fixesRead += window.length;
      return window;
    }, rules);
    history = result.history;
    reads += result.reads;
    if (check === 'each') {
      const full = analyse([...store.values()], rules);
      expect(history.trips).toEqual(full.trips);
      expect(history.stretches).toEqual(full.stretches);
      expect(history.resume?.state ?? null).toEqual(full.resume);
    }
  }
  const full = analyse([...store.values()], rules);
  expect(history).toEqual({ stretches: full.stretches, trips: full.trips, resume: history.resume });
  // Where the last stretch's analysis stands is where a full analysis of every fix ends.
  expect(history.resume?.state ?? null).toEqual(full.resume);
  return { fixesRead, reads, total: store.size, trips: full.trips.length };
}

describe('incremental recompute', () => {
  it('equals the full analysis after every batch, for random histories and arrival orders', async () => {
    let trips = 0;
    for (let seed = 1; seed <= 24; seed++) {
      const fixes = randomHistory(seed);
      const rng = prng(seed * 7919);
      const r = await replay(arrivalBatches(fixes, rng, seed % 4 === 0 ? 'shuffled' : 'live'), RULES, rng, 'each');
      trips += r.trips;
    }
    expect(trips).toBeGreaterThan(40); // the histories do have trips to get right
  });

  it('holds with other rules too (short stops, long gaps, strict outliers)', async () => {
    const rules = resolveFleetRules({ stopS: 60, noDataS: 900, maxSpeedKmh: 130, driftM: 10, minTripM: 100 });
    for (let seed = 101; seed <= 110; seed++) {
      const rng = prng(seed);
      await replay(arrivalBatches(randomHistory(seed), rng, 'live'), rules, rng, 'each');
    }
  });

  it('re-reads only the affected stretches of a live device', async () => {
    const day = syntheticDay(42);
    const rng = prng(42);
    const inOrder = [...day.fixes].sort((a, b) => a.atMs - b.atMs);
    const batches: Fix[][] = [];
    for (let i = 0; i < inOrder.length; i += 10) batches.push(inOrder.slice(i, i + 10));
    const r = await replay(batches, RULES, rng, 'end');
    expect(r.trips).toBe(3);
    // Each batch re-reads its own stretch, not the day: ~1 h of parking or one trip at most.
    expect(r.fixesRead / batches.length).toBeLessThan(300);
    expect(r.reads).toBeLessThan(batches.length * 1.2);

    // One late fix in the middle of the day re-reads the stretch around it only.
    const full = analyse(day.fixes, RULES);
    const late = { id: 'late', atMs: DAY + 10 * HOUR + 7, lat: 52.4, lon: 13.5, accuracyM: 500 };
    const range = planRecompute(full.stretches, [late.atMs])!;
    expect(range.toMs - range.fromMs).toBeLessThan(2 * HOUR);
    expect(range.fromMs).toBeLessThanOrEqual(late.atMs);
    expect(range.toMs).toBeGreaterThanOrEqual(late.atMs);
  });

  it('re-reads one window for a late fix in the middle of the day, and widens when a stop turns out shorter', async () => {
    const day = syntheticDay(43);
    const read = (store: Fix[]) => (fromMs: number, toMs: number) => store.filter((f) => f.atMs >= fromMs && f.atMs <= toMs);
    const before = analyse(day.fixes, RULES);
    const history: FleetHistory = { stretches: before.stretches, trips: before.trips };
    // A late fix during trip B (10:00 UTC) that the rules accept.
    const tripB = before.trips[1]!;
    const near = before.accepted.find((f) => f.atMs > tripB.startAt + 10 * MIN)!;
    const late: Fix = { id: 'late-1', atMs: near.atMs + 1500, lat: near.lat, lon: near.lon, speedKmh: 50 };
    const store = [...day.fixes, late];
    const r = await recomputeHistory(history, [late], read(store), RULES);
    expect(r.reads).toBe(1);
    expect(r.range!.fromMs).toBe(before.stretches.find((s) => s.startMs <= tripB.startAt && s.endMs >= tripB.startAt)!.startMs);
    expect(r.range!.toMs).toBeLessThan(DAY + 12 * HOUR);
    const after = analyse(store, RULES);
    expect({ stretches: r.history.stretches, trips: r.history.trips }).toEqual({ stretches: after.stretches, trips: after.trips });

    // Two drives with an 8-minute stop between (stopped from t0 + 1 min); late fixes show the
    // vehicle crept on until t0 + 4.5 min, so the stop lasted under stopS: the trips merge and the
    // recompute runs on into the stretch after the old stop.
    const log = new FixLog(prng(44));
    const stopAt = straightDrive(log, HOME, DAY, 80, 40);
    const t0 = DAY + 79 * 5000;
    log.park(stopAt, t0 + MIN, t0 + 9 * MIN, { intervalMs: MIN });
    straightDrive(log, destination(stopAt, 90, 5), t0 + 9 * MIN, 80, 40);
    log.park(destination(stopAt, 90, 5 + (40 / 3.6) * 5 * 79), t0 + 9 * MIN + 80 * 5000, t0 + 40 * MIN);
    const first = analyse(log.fixes, RULES);
    expect(first.trips).toHaveLength(2);
    const creep: Fix[] = [1.5, 2.5, 3.5, 4.5].map((m, k) => ({ id: `creep-${k}`, atMs: t0 + m * MIN, ...destination(stopAt, 90, 2), speedKmh: 6 }));
    const all = [...log.fixes, ...creep];
    const merged = await recomputeHistory({ stretches: first.stretches, trips: first.trips }, creep, read(all), RULES);
    expect(merged.reads).toBe(2);
    const truth = analyse(all, RULES);
    expect(truth.trips).toHaveLength(1);
    expect({ stretches: merged.history.stretches, trips: merged.history.trips }).toEqual({ stretches: truth.stretches, trips: truth.trips });
  });

  it('plans a track read over whole stretches', () => {
    const full = analyse(syntheticDay(5).fixes, RULES);
    const since = DAY + 7 * HOUR + 5 * MIN;
    const until = DAY + 7 * HOUR + 10 * MIN;
    const read = planTrackRead(full.stretches, since, until);
    expect(read.fromMs).toBeLessThanOrEqual(since);
    expect(read.toMs).toBeGreaterThanOrEqual(until);
    expect(full.stretches.some((s) => s.startMs === read.fromMs)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Continuing an analysis: in-order batches read and analyse only their own fixes

/** The part of a full analysis a continuation from `state` (cut after `cutMs`) answers for. */
function fromState(full: Analysis, state: AnalysisState, cutMs: number) {
  return {
    stretches: full.stretches.filter((s) => s.startMs >= state.recordStartMs),
    trips: full.trips.filter((t) => t.startAt >= state.recordStartMs),
    accepted: full.accepted.filter((f) => f.atMs > cutMs),
    live: full.live,
    resume: full.resume,
  };
}

/** A state as it comes back from storage. */
const stored = (state: AnalysisState): AnalysisState => JSON.parse(JSON.stringify(state));

describe('continuing an analysis', () => {
  const day = syntheticDay(20240615);
  const full = analyse(day.fixes, RULES);
  const times = [...new Set(day.fixes.map((f) => f.atMs))].sort((a, b) => a - b);

  it('gives from any point of a synthetic day exactly what analysing every fix gives', () => {
    // Every 20th time, every time a trip starts or ends or the ignition goes off, and the fixes
    // around the teleports: parked jitter, inside trips, at stops and right after an ignition-off.
    const cuts = new Set(times.filter((_, k) => k % 20 === 0));
    for (const t of full.trips) for (const at of [t.startAt, t.endAt]) for (const d of [-5000, 0, 5000]) cuts.add(at + d);
    for (const f of day.fixes) if (f.ignition === false || f.accuracyM === 6 || f.accuracyM === 5) cuts.add(f.atMs);
    let continued = 0;
    for (const cutMs of cuts) {
      const before = analyse(day.fixes.filter((f) => f.atMs <= cutMs), RULES);
      if (!before.resume) continue;
      continued++;
      const state = stored(before.resume);
      const rest = resumeAnalysis(state, shuffledWithDuplicates(day.fixes.filter((f) => f.atMs > cutMs), cutMs), RULES);
      const { stretches, trips, accepted, live, resume } = rest;
      expect({ stretches, trips, accepted, live, resume }, `cut at ${new Date(cutMs).toISOString()}`).toEqual(fromState(full, state, cutMs));
      // The state given is left as it was.
      expect(state).toEqual(stored(before.resume));
    }
    expect(continued).toBeGreaterThan(cuts.size * 0.95);
    // The ignition-off fix ends trip C; a continuation right after it still reports that trip.
    const off = full.trips[2]!.endAt;
    const afterOff = resumeAnalysis(stored(analyse(day.fixes.filter((f) => f.atMs <= off), RULES).resume!), day.fixes.filter((f) => f.atMs > off), RULES);
    expect(afterOff.trips[0]).toEqual(full.trips[2]);
  });

  it('refuses fixes that are not later than the state', () => {
    const state = analyse(day.fixes.filter((f) => f.atMs <= DAY + 8 * HOUR), RULES).resume!;
    const at = { id: 'zz', atMs: state.lastMs, ...HOME };
    expect(() => resumeAnalysis(state, [at], RULES)).toThrow(RangeError);
  });

  it('replays a live device batch by batch reading only each batch, and re-reads the stretch for a late fix inside it', async () => {
    const inOrder = [...day.fixes].sort((a, b) => a.atMs - b.atMs);
    const store = new Map<string, Fix>();
    let history: FleetHistory = EMPTY_HISTORY;
    const read = (fromMs: number, toMs: number) => [...store.values()].filter((f) => f.atMs >= fromMs && f.atMs <= toMs);
    const deliver = async (batch: Fix[]) => {
      for (const f of batch) store.set(f.id, f);
      let fixesRead = 0;
      const r = await recomputeHistory(history, batch, (fromMs, toMs) => {
        const w = read(fromMs, toMs);
        fixesRead += w.length;
        return w;
      }, RULES);
      history = r.history;
      const truth = analyse([...store.values()], RULES);
      expect({ stretches: history.stretches, trips: history.trips, resume: history.resume?.state ?? null }).toEqual({ stretches: truth.stretches, trips: truth.trips, resume: truth.resume });
      return { range: r.range!, fixesRead };
    };

    // In order, ten fixes a batch, up to the middle of trip B (09:30–09:41 UTC).
    const midB = DAY + 9.5 * HOUR + 5 * MIN;
    let continued = 0;
    let batches = 0;
    for (let i = 0; i < inOrder.length && inOrder[i]!.atMs < midB; i += 10) {
      const batch = inOrder.slice(i, i + 10).filter((f) => f.atMs < midB);
      const { range, fixesRead } = await deliver(batch);
      batches++;
      if (range.resume) {
        continued++;
        expect(fixesRead).toBe(batch.length);
      }
    }
    // Only a stretch's second fix (its first may still prove an outlier) needs its stretch re-read.
    expect(continued).toBeGreaterThan(batches * 0.95);

    // A late fix inside the open stretch, two minutes back in trip B (before what its state has
    // seen): the stretch is re-read from its start, and the state it ends in is kept again.
    const open = history.stretches.at(-1)!;
    const near = inOrder.filter((f) => f.atMs < midB - 2 * MIN).at(-1)!;
    expect(near.atMs).toBeGreaterThan(open.startMs);
    const late: Fix = { id: 'late-in-stretch', atMs: near.atMs + 1500, ...destination(near, 90, 12), speedKmh: 45 };
    const lateRange = (await deliver([late])).range;
    expect(lateRange.resume).toBeUndefined();
    expect(lateRange.fromMs).toBe(open.startMs);
    expect(history.resume!.throughMs).toBeGreaterThanOrEqual(inOrder.filter((f) => f.atMs < midB).at(-1)!.atMs);

    // Then in order again, to the end of the day: continued from the refreshed state.
    const rest = inOrder.filter((f) => f.atMs >= midB);
    let afterLate = 0;
    for (let i = 0; i < rest.length; i += 10) if ((await deliver(rest.slice(i, i + 10))).range.resume) afterLate++;
    expect(afterLate).toBeGreaterThan(rest.length / 10 * 0.95);
    expect(history.trips).toHaveLength(3);
  });
});

// ---------------------------------------------------------------------------------------------

describe('live position and status', () => {
  const fix = (id: string, atMs: number, extra: Partial<Fix> = {}): Fix => ({ id, atMs, ...HOME, ...extra });

  it('never lets a late fix replace a newer live position', () => {
    const newer = fix('b', DAY + 10_000);
    const late = fix('z', DAY + 5_000);
    expect(newerFix(newer, late)).toBe(newer);
    expect(newerFix(late, newer)).toBe(newer);
    expect(newerFix(null, late)).toBe(late);
    // Equal times: the larger id, whichever arrives first.
    const tie = fix('c', DAY + 10_000);
    expect(newerFix(newer, tie)).toBe(tie);
    expect(newerFix(tie, newer)).toBe(tie);

    let live = advanceLive(null, newer, RULES).live;
    const update = advanceLive(live, late, RULES);
    expect(update).toMatchObject({ changed: false, ignored: 'older' });
    expect(update.live!.fix).toBe(newer);
    live = update.live;
    // Fixes the rules ignore never become the live position.
    expect(advanceLive(live, fix('d', DAY + 20_000, { accuracyM: 500 }), RULES).ignored).toBe('accuracy');
    expect(advanceLive(live, fix('e', DAY + 20_000, destination(HOME, 0, 50_000)), RULES).ignored).toBe('outlier');
    // After noDataS a jump is plausible.
    expect(advanceLive(live, fix('f', DAY + 10_000 + RULES.noDataS * 1000, destination(HOME, 0, 50_000)), RULES).changed).toBe(true);
  });

  it('takes the live position from an analysis: its newest accepted fix, never an ignored one', () => {
    const day = syntheticDay(20240615);
    const late = { id: 'zz-late', atMs: DAY + 6 * HOUR, ...HOME };
    const spike = { id: 'zz-spike', atMs: DAY + 24 * HOUR - 1000, ...destination(HOME, 0, 90_000) };
    const r = analyse([...day.fixes, late, spike], RULES);
    const live = liveFromAccepted(r.accepted, RULES)!;
    expect(live.fix).toEqual(r.accepted[r.accepted.length - 1]);
    expect(live.fix.id).not.toBe(spike.id);
    expect(live.fix.atMs).toBeGreaterThan(DAY + 23 * HOUR);
    expect(liveStatus(live, live.fix.atMs + MIN, RULES)).toBe('parked');
  });

  it('reports offline, moving, idle and parked', () => {
    const now = DAY + 2 * HOUR;
    const at = (f: Fix, prev?: LivePosition | null) => advanceLive(prev ?? null, f, RULES).live;
    expect(liveStatus(null, now, RULES)).toBe('offline');
    expect(liveStatus(at(fix('a', now - RULES.offlineAfterS * 1000, { speedKmh: 80 })), now, RULES)).toBe('offline');
    expect(liveStatus(at(fix('a', now - 1000, { speedKmh: 80 })), now, RULES)).toBe('moving');
    expect(liveStatus(at(fix('a', now - 1000, { speedKmh: 1, ignition: true })), now, RULES)).toBe('idle');
    expect(liveStatus(at(fix('a', now - 1000, { speedKmh: 0, ignition: false })), now, RULES)).toBe('parked');
    expect(liveStatus(at(fix('a', now - 1000)), now, RULES)).toBe('parked');

    // Without speed: moving by the drift rule, not by jitter.
    const first = at(fix('a', now - 60_000));
    const jittered = at({ id: 'b', atMs: now - 30_000, ...destination(HOME, 90, 4) }, first);
    expect(liveStatus(jittered, now, RULES)).toBe('parked');
    const moved = at({ id: 'c', atMs: now - 1000, ...destination(HOME, 90, 120) }, jittered);
    expect(liveStatus(moved, now, RULES)).toBe('moving');
  });
});

describe('validation', () => {
  it('accepts a position and maps it to a fix', () => {
    const check = checkPositionProperties({ lat: 52.5, lon: 13.4, speed: 30, heading: 360, accuracy: 0, altitude: -12, ignition: true, battery: 80 });
    expect(check.ok).toBe(true);
    if (!check.ok) return;
    expect(check.properties.battery).toBe(80);
    expect(fixFromPosition('e1', 5, check.properties)).toEqual({ id: 'e1', atMs: 5, lat: 52.5, lon: 13.4, speedKmh: 30, heading: 360, accuracyM: 0, altitudeM: -12, ignition: true });
  });

  it('takes a null optional field as unknown, as an imported NULL column arrives', () => {
    const check = checkPositionProperties({ lat: 52.5, lon: 13.4, speed: null, heading: null, accuracy: null, altitude: null, ignition: null });
    expect(check.ok).toBe(true);
    if (!check.ok) return;
    expect(fixFromPosition('e1', 5, check.properties)).toEqual({ id: 'e1', atMs: 5, lat: 52.5, lon: 13.4 });
    // Coordinates are never optional: null is no position.
    expect(checkPositionProperties({ lat: null, lon: 13.4 }).ok).toBe(false);
  });

  it('refuses out-of-range coordinates and wrong types with a message per field', () => {
    const cases: Array<[unknown, RegExp[]]> = [
      [{ lat: 91, lon: 0 }, [/lat must be between -90 and 90/]],
      [{ lat: 0, lon: -180.5 }, [/lon must be between -180 and 180/]],
      [{ lat: '52.5', lon: 13 }, [/lat must be a finite number/]],
      [{ lon: 13 }, [/lat is required/]],
      [{ lat: Number.NaN, lon: Number.POSITIVE_INFINITY }, [/lat must be a finite number/, /lon must be a finite number/]],
      [{ lat: 1, lon: 1, speed: -3, heading: 400, accuracy: -1, altitude: 'high', ignition: 'yes' }, [/speed must be ≥ 0/, /heading must be between 0 and 360/, /accuracy must be ≥ 0/, /altitude must be a finite number/, /ignition must be true or false/]],
      ['52.5,13.4', [/position properties must be an object/]],
      [null, [/position properties must be an object/]],
    ];
    for (const [input, messages] of cases) {
      const check = checkPositionProperties(input);
      expect(check.ok, JSON.stringify(input)).toBe(false);
      if (check.ok) continue;
      for (const m of messages) expect(check.message).toMatch(m);
      expect(check.issues).toHaveLength(messages.length);
    }
  });

  it('bounds per-project rule overrides', () => {
    expect(resolveFleetRules()).toEqual(DEFAULT_FLEET_RULES);
    expect(resolveFleetRules({ stopS: 120, minTripM: 0 })).toEqual({ ...DEFAULT_FLEET_RULES, stopS: 120, minTripM: 0 });
    expect(() => resolveFleetRules({ driftM: -1 })).toThrow(/driftM must be > 0/);
    expect(() => resolveFleetRules({ maxSpeedKmh: 0 })).toThrow(/maxSpeedKmh must be > 0/);
    expect(() => resolveFleetRules({ stopS: 10 * 86_400 })).toThrow(/stopS must be ≤ 86400/);
    expect(() => resolveFleetRules({ noDataS: '3600' })).toThrow(/noDataS must be a number/);
    expect(() => resolveFleetRules({ minTripM: -5 })).toThrow(/minTripM must be ≥ 0/);
    expect(() => resolveFleetRules({ stopSeconds: 300 })).toThrow(/stopSeconds/);
  });
});

describe('geometry', () => {
  it('measures great-circle distance on the WGS84 mean sphere', () => {
    expect(haversineM({ lat: 0, lon: 0 }, { lat: 1, lon: 0 })).toBeCloseTo((EARTH_RADIUS_M * Math.PI) / 180, 6);
    expect(haversineM(HOME, HOME)).toBe(0);
    expect(haversineM({ lat: 0, lon: 179.9999 }, { lat: 0, lon: -179.9999 })).toBeCloseTo(22.24, 1);
    expect(isValidLatLon({ lat: 90, lon: -180 })).toBe(true);
    expect(isValidLatLon({ lat: 90.0001, lon: 0 })).toBe(false);
    expect(isValidLatLon({ lat: Number.NaN, lon: 0 })).toBe(false);
  });

  it('simplifies with Douglas–Peucker: endpoints kept, points within tolerance dropped, a corner beyond kept', () => {
    // East for 1 km with points wobbling ±2 m, then a corner, then north for 1 km.
    const rng = prng(12);
    const pts: Array<LatLon & { i: number }> = [];
    for (let k = 0; k <= 20; k++) pts.push({ i: pts.length, ...destination(destination(HOME, 90, k * 50), 0, rng.between(-2, 2)) });
    const corner = pts[pts.length - 1]!;
    for (let k = 1; k <= 20; k++) pts.push({ i: pts.length, ...destination(destination(corner, 0, k * 50), 90, rng.between(-2, 2)) });
    const out = simplifyTrack(pts, 5);
    expect(out[0]).toBe(pts[0]);
    expect(out[out.length - 1]).toBe(pts[pts.length - 1]);
    expect(out.map((p) => p.i)).toEqual([0, 20, 40]);
    // A tolerance wider than the corner's offset (~707 m from the diagonal) drops it too.
    expect(simplifyTrack(pts, 800).map((p) => p.i)).toEqual([0, 40]);
    expect(simplifyTrack(pts, 0.5).length).toBeGreaterThan(3);
    expect(simplifyTrack(pts.slice(0, 2), 5)).toHaveLength(2);
    expect(() => simplifyTrack(pts, -1)).toThrow(RangeError);
  });

  it('simplifies 100k points without recursion', () => {
    const n = 100_000;
    const pts: LatLon[] = [];
    for (let k = 0; k < n; k++) {
      const a = (k / n) * Math.PI;
      pts.push({ lat: 48 + 0.05 * Math.sin(a), lon: 11 + 0.05 * Math.cos(a) + k * 1e-9 });
    }
    const out = simplifyTrack(pts, 0.001);
    expect(out[0]).toBe(pts[0]);
    expect(out[out.length - 1]).toBe(pts[n - 1]);
    expect(out.length).toBeGreaterThan(1000);
  });
});
