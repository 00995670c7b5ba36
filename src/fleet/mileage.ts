// Daily mileage per calendar day of an IANA time zone: distance and moving time of trips split at
// local midnight (23- and 25-hour DST days included), through Intl offsets only.
import type { Trip } from './trips';

/** An unknown or malformed IANA time zone name. */
export class InvalidTimeZoneError extends Error {
  override name = 'InvalidTimeZoneError';
  readonly code = 'invalid_time_zone';
  constructor(readonly value: unknown) {
    super(`unknown time zone: ${typeof value === 'string' ? JSON.stringify(value) : String(value)} (expected an IANA name such as "Europe/Berlin")`);
  }
}

/** A malformed calendar date, or a from/to pair that is not a valid range. */
export class InvalidDateError extends Error {
  override name = 'InvalidDateError';
  readonly code = 'invalid_date';
  constructor(message: string, readonly value?: unknown) {
    super(message);
  }
}

/** Longest range of days one call accepts (ten years and change). */
export const MAX_MILEAGE_DAYS = 3700;

/** Time with distance: a trip segment, or an aggregate such as a stored 15-minute bucket. */
export interface MileageSpan {
  startMs: number;
  endMs: number;
  distanceM: number;
  /** Time in trips within the span; defaults to its whole length. */
  movingMs?: number;
  /** Trips starting in the span (counted on the day holding `startMs`). */
  tripStarts?: number;
}

/** The time between two consecutive fixes of a trip and the distance counted over it. */
export interface TripSegment {
  startMs: number;
  endMs: number;
  distanceM: number;
}

/**
 * A trip as mileage needs it: with its segments or its buckets (an analysed trip's) when known,
 * else spread evenly over its time.
 */
export type MileageTrip = Pick<Trip, 'startAt' | 'endAt' | 'distanceM'> & { segments?: readonly TripSegment[]; buckets?: readonly MileageSpan[] };

export interface MileageDay {
  date: string;
  distanceM: number;
  movingMs: number;
  /** Trips that started that day. */
  trips: number;
}

export interface LocalDay {
  date: string;
  /** Epoch ms of the local midnight opening the day (the first instant of the day where midnight is skipped). */
  startMs: number;
  /** Epoch ms of the next day's start. */
  endMs: number;
}

const DAY_MS = 86_400_000;
const DATE_PATTERN = /^(\d{4})-(\d{2})-(\d{2})$/;
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(tz: string): Intl.DateTimeFormat {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
    formatters.set(tz, f);
  }
  return f;
}

/** The canonical name of a valid IANA time zone; throws InvalidTimeZoneError otherwise. */
export function assertTimeZone(tz: unknown): string {
  if (typeof tz !== 'string' || tz.trim() === '' || tz.length > 64) throw new InvalidTimeZoneError(tz);
  let zone = canonicalZones.get(tz);
  if (zone !== undefined) return zone;
  try {
    zone = formatter(tz).resolvedOptions().timeZone;
  } catch {
    throw new InvalidTimeZoneError(tz);
  }
  canonicalZones.set(tz, zone);
  return zone;
}

/** Canonical names of the zones seen valid (each recompute pass asks for its devices' zones). */
const canonicalZones = new Map<string, string>();

export function isValidTimeZone(tz: unknown): boolean {
  try {
    assertTimeZone(tz);
    return true;
  } catch {
    return false;
  }
}

interface Ymd {
  y: number;
  m: number;
  d: number;
}

/** Parses a `YYYY-MM-DD` calendar date (years 1000–9999); throws InvalidDateError otherwise. */
export function parseDate(date: unknown): Ymd {
  const m = typeof date === 'string' ? DATE_PATTERN.exec(date) : null;
  if (!m) throw new InvalidDateError(`not a date (YYYY-MM-DD): ${typeof date === 'string' ? JSON.stringify(date) : String(date)}`, date);
  const ymd = { y: Number(m[1]), m: Number(m[2]), d: Number(m[3]) };
  const check = new Date(Date.UTC(ymd.y, ymd.m - 1, ymd.d));
  if (ymd.y < 1000 || check.getUTCFullYear() !== ymd.y || check.getUTCMonth() !== ymd.m - 1 || check.getUTCDate() !== ymd.d) {
    throw new InvalidDateError(`no such calendar date: ${JSON.stringify(date)}`, date);
  }
  return ymd;
}

function formatYmd({ y, m, d }: Ymd): string {
  return `${String(y).padStart(4, '0')}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`;
}

function nextYmd({ y, m, d }: Ymd): Ymd {
  const t = new Date(Date.UTC(y, m - 1, d) + DAY_MS);
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

/** Local wall-clock fields at an instant, as a UTC timestamp, and the local date. */
function wallClock(tz: string, utcMs: number): { wallMs: number; date: string } {
  // UTC (most devices: no registry zone) without Intl; the same whole-second answer.
  if (tz === 'UTC') return { wallMs: Math.floor(utcMs / 1000) * 1000, date: new Date(utcMs).toISOString().slice(0, 10) };
  const parts: Record<string, string> = {};
  for (const p of formatter(tz).formatToParts(new Date(utcMs))) parts[p.type] = p.value;
  const y = Number(parts.year);
  const mo = Number(parts.month);
  const d = Number(parts.day);
  return {
    wallMs: Date.UTC(y, mo - 1, d, Number(parts.hour), Number(parts.minute), Number(parts.second)),
    date: formatYmd({ y, m: mo, d }),
  };
}

/** Offset of local time from UTC at an instant, ms (positive east of Greenwich). */
export function zoneOffsetMs(tz: string, utcMs: number): number {
  const whole = Math.floor(utcMs / 1000) * 1000;
  return wallClock(tz, whole).wallMs - whole;
}

/** The calendar date in `tz` at an instant. */
export function localDate(tz: string, utcMs: number): string {
  return wallClock(tz, utcMs).date;
}

/** The first instant whose local date in `tz` is `date` or later. */
function dayStartMs(tz: string, ymd: Ymd): number {
  const date = formatYmd(ymd);
  const wall = Date.UTC(ymd.y, ymd.m - 1, ymd.d);
  let t = wall - zoneOffsetMs(tz, wall);
  t = wall - zoneOffsetMs(tz, t);
  if (localDate(tz, t) === date && localDate(tz, t - 1) < date) return t;
  // Midnight skipped or repeated by a transition: search for the first instant of the day.
  let lo = wall - 15 * 3_600_000; // local date before `date` for every offset up to +14 h
  let hi = wall + 13 * 3_600_000; // local date `date` or later for every offset down to -12 h
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (localDate(tz, mid) >= date) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** Every calendar day from `fromDate` to `toDate` inclusive in `tz`, with the instants bounding it. */
export function localMidnights(tz: string, fromDate: string, toDate: string): LocalDay[] {
  const zone = assertTimeZone(tz);
  const from = parseDate(fromDate);
  const to = parseDate(toDate);
  const toKey = formatYmd(to);
  if (formatYmd(from) > toKey) throw new InvalidDateError(`from (${fromDate}) is after to (${toDate})`);
  const span = (Date.UTC(to.y, to.m - 1, to.d) - Date.UTC(from.y, from.m - 1, from.d)) / DAY_MS + 1;
  if (span > MAX_MILEAGE_DAYS) throw new InvalidDateError(`at most ${MAX_MILEAGE_DAYS} days per request, asked for ${span}`);
  const days: LocalDay[] = [];
  let cur = from;
  let startMs = dayStartMs(zone, cur);
  for (;;) {
    const next = nextYmd(cur);
    const endMs = dayStartMs(zone, next);
    days.push({ date: formatYmd(cur), startMs, endMs });
    if (formatYmd(cur) === toKey) break;
    cur = next;
    startMs = endMs;
  }
  return days;
}

/** The calendar day holding an instant in `tz`, with the instants bounding it. */
export function localDayOf(tz: string, utcMs: number): LocalDay {
  const date = localDate(tz, utcMs);
  return localMidnights(tz, date, date)[0]!;
}

/**
 * `localDate` for many instants of one zone, mostly consecutive ones (a trip's buckets): the last
 * day found answers without Intl while the instants stay in it.
 */
export function localDates(tz: string): (utcMs: number) => string {
  if (tz === 'UTC') return (ms) => new Date(Math.floor(ms / DAY_MS) * DAY_MS).toISOString().slice(0, 10);
  let day: LocalDay | null = null;
  return (ms) => {
    if (!day || ms < day.startMs || ms >= day.endMs) day = localDayOf(tz, ms);
    return day.date;
  };
}

/**
 * A trip's spans: one per segment (the first carrying the trip start), else its buckets, else one
 * even span.
 */
export function tripSpans(trip: MileageTrip): MileageSpan[] {
  const segments = trip.segments;
  if (!segments && trip.buckets) return trip.buckets.map((b) => ({ ...b }));
  if (!segments) return [{ startMs: trip.startAt, endMs: trip.endAt, distanceM: trip.distanceM, tripStarts: 1 }];
  if (segments.length === 0) return [{ startMs: trip.startAt, endMs: trip.startAt, distanceM: 0, tripStarts: 1 }];
  return segments.map((s, k) => ({ startMs: s.startMs, endMs: s.endMs, distanceM: s.distanceM, tripStarts: k === 0 ? 1 : 0 }));
}

function isTrip(x: MileageTrip | MileageSpan): x is MileageTrip {
  return 'startAt' in x;
}

function toSpans(input: readonly (MileageTrip | MileageSpan)[]): MileageSpan[] {
  const spans: MileageSpan[] = [];
  for (const x of input) {
    if (isTrip(x)) spans.push(...tripSpans(x));
    else spans.push(x);
  }
  // Sums in one order whatever the input order, so equal sets give equal floats.
  return spans.sort((a, b) => a.startMs - b.startMs || a.endMs - b.endMs || a.distanceM - b.distanceM || (a.movingMs ?? -1) - (b.movingMs ?? -1) || (a.tripStarts ?? 0) - (b.tripStarts ?? 0));
}

/** Index of the day holding instant t, or -1 outside the days. */
function dayIndex(days: readonly LocalDay[], t: number): number {
  let lo = 0;
  let hi = days.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const day = days[mid]!;
    if (t < day.startMs) hi = mid - 1;
    else if (t >= day.endMs) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/**
 * Mileage for every day from `fromDate` to `toDate` inclusive in `tz` (zeros where nothing moved).
 * A span crossing local midnight is split in proportion to its time on either side.
 */
export function dailyMileage(input: readonly (MileageTrip | MileageSpan)[], tz: string, fromDate: string, toDate: string): MileageDay[] {
  const days = localMidnights(tz, fromDate, toDate);
  const out: MileageDay[] = days.map((d) => ({ date: d.date, distanceM: 0, movingMs: 0, trips: 0 }));
  const first = days[0]!.startMs;
  const last = days[days.length - 1]!.endMs;
  for (const s of toSpans(input)) {
    if (s.tripStarts) {
      const k = dayIndex(days, s.startMs);
      if (k >= 0) out[k]!.trips += s.tripStarts;
    }
    const lengthMs = s.endMs - s.startMs;
    const movingMs = s.movingMs ?? lengthMs;
    if (lengthMs <= 0) {
      const k = dayIndex(days, s.startMs);
      if (k >= 0) {
        out[k]!.distanceM += s.distanceM;
        out[k]!.movingMs += movingMs;
      }
      continue;
    }
    if (s.endMs <= first || s.startMs >= last) continue;
    for (let k = Math.max(0, dayIndex(days, Math.max(s.startMs, first))); k < days.length && days[k]!.startMs < s.endMs; k++) {
      const overlap = Math.min(s.endMs, days[k]!.endMs) - Math.max(s.startMs, days[k]!.startMs);
      if (overlap <= 0) continue;
      const share = overlap === lengthMs ? 1 : overlap / lengthMs;
      out[k]!.distanceM += s.distanceM * share;
      out[k]!.movingMs += movingMs * share;
    }
  }
  return out;
}

/** 15 minutes: every current UTC offset is a multiple, so these buckets never straddle a local midnight. */
export const MILEAGE_BUCKET_MS = 15 * 60_000;

/**
 * Trips folded into UTC-aligned buckets (split in proportion to time), a compact form to store per
 * device and later feed to `dailyMileage` for any time zone with the same days as the trips give.
 */
export function mileageBuckets(trips: readonly MileageTrip[], bucketMs = MILEAGE_BUCKET_MS): MileageSpan[] {
  const buckets = new Map<number, { distanceM: number; movingMs: number; tripStarts: number }>();
  const bucketOf = (startMs: number) => {
    let b = buckets.get(startMs);
    if (!b) buckets.set(startMs, (b = { distanceM: 0, movingMs: 0, tripStarts: 0 }));
    return b;
  };
  for (const s of toSpans(trips)) {
    const startBucket = Math.floor(s.startMs / bucketMs) * bucketMs;
    if (s.tripStarts) bucketOf(startBucket).tripStarts += s.tripStarts;
    const lengthMs = s.endMs - s.startMs;
    if (lengthMs <= 0) {
      bucketOf(startBucket).distanceM += s.distanceM;
      continue;
    }
    for (let b = startBucket; b < s.endMs; b += bucketMs) {
      const overlap = Math.min(s.endMs, b + bucketMs) - Math.max(s.startMs, b);
      if (overlap <= 0) continue;
      const bucket = bucketOf(b);
      bucket.distanceM += overlap === lengthMs ? s.distanceM : (s.distanceM * overlap) / lengthMs;
      bucket.movingMs += overlap;
    }
  }
  return [...buckets.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([startMs, b]) => ({ startMs, endMs: startMs + bucketMs, distanceM: b.distanceM, movingMs: b.movingMs, tripStarts: b.tripStarts }));
}
