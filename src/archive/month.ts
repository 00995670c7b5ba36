// Archive months: the UTC calendar month of an event time as `YYYY-MM`, its bounds, and which months
// an operator or the sweep may archive at a given instant (every clock is an explicit `nowMs`).

/** Whole months a month must lie behind the current one before the sweep archives it. */
export const DEFAULT_ARCHIVE_LAG_MONTHS = 2;

const MONTH_PATTERN = /^(\d{4})-(0[1-9]|1[0-2])$/;

/** A string that is not a `YYYY-MM` month (years 0000–9999, months 01–12). */
export class InvalidMonthError extends Error {
  override name = 'InvalidMonthError';
  readonly code = 'invalid_month';
  constructor(readonly value: unknown) {
    super(`not a month (YYYY-MM): ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`);
  }
}

export function isValidMonth(value: unknown): value is string {
  return typeof value === 'string' && MONTH_PATTERN.test(value);
}

/** Year and zero-based month index of a `YYYY-MM` month; throws InvalidMonthError otherwise. */
function monthParts(month: string): { year: number; monthIndex: number } {
  const m = typeof month === 'string' ? MONTH_PATTERN.exec(month) : null;
  if (!m) throw new InvalidMonthError(month);
  return { year: Number(m[1]), monthIndex: Number(m[2]) - 1 };
}

/** Date.UTC maps years 0–99 to 1900–1999; setUTCFullYear does not. */
function utcMonthStartMs(year: number, monthIndex: number): number {
  const d = new Date(0);
  d.setUTCFullYear(year, monthIndex, 1);
  return d.getTime();
}

function formatMonth(year: number, monthIndex: number): string {
  if (year < 0 || year > 9999) throw new RangeError(`year ${year} is outside 0000–9999`);
  return `${String(year).padStart(4, '0')}-${String(monthIndex + 1).padStart(2, '0')}`;
}

/** The UTC month of an instant: `2026-01-31T23:59:59.999Z` → `2026-01`, `2026-02-01T00:00:00.000Z` → `2026-02`. */
export function monthOfMs(timeMs: number): string {
  if (!Number.isFinite(timeMs)) throw new RangeError(`not a time in ms: ${timeMs}`);
  const d = new Date(timeMs);
  if (Number.isNaN(d.getTime())) throw new RangeError(`not a representable time in ms: ${timeMs}`);
  return formatMonth(d.getUTCFullYear(), d.getUTCMonth());
}

/** The month of a ClickHouse `toYYYYMM(..., 'UTC')` value such as 202601. */
export function monthOfYyyymm(yyyymm: number): string {
  const ok = Number.isInteger(yyyymm) && yyyymm >= 0;
  const month = ok ? `${String(Math.floor(yyyymm / 100)).padStart(4, '0')}-${String(yyyymm % 100).padStart(2, '0')}` : '';
  if (!isValidMonth(month)) throw new InvalidMonthError(yyyymm);
  return month;
}

/** The month `deltaMonths` after (negative: before) `month`. */
export function addMonths(month: string, deltaMonths: number): string {
  if (!Number.isInteger(deltaMonths)) throw new RangeError(`not a whole number of months: ${deltaMonths}`);
  const { year, monthIndex } = monthParts(month);
  const total = year * 12 + monthIndex + deltaMonths;
  return formatMonth(Math.floor(total / 12), ((total % 12) + 12) % 12);
}

/** The month's instants as `[startMs, endMs)`: its first millisecond, and the next month's first. */
export function monthBoundsMs(month: string): { startMs: number; endMs: number } {
  const { year, monthIndex } = monthParts(month);
  return { startMs: utcMonthStartMs(year, monthIndex), endMs: utcMonthStartMs(year, monthIndex + 1) };
}

/**
 * Why an operator may not archive `month` by hand at `nowMs`, or null when they may: only months
 * strictly before the current UTC month are closed (no event time of them can still arrive live).
 */
export function manualArchiveRefusal(month: unknown, nowMs: number): 'invalid_month' | 'current_month' | 'future_month' | null {
  if (!isValidMonth(month)) return 'invalid_month';
  const current = monthOfMs(nowMs);
  if (month === current) return 'current_month';
  // Fixed-width `YYYY-MM` strings order like the months they name.
  return month > current ? 'future_month' : null;
}

export function isArchivableByHand(month: unknown, nowMs: number): boolean {
  return manualArchiveRefusal(month, nowMs) === null;
}

function checkLag(lagMonths: number): void {
  if (!Number.isInteger(lagMonths) || lagMonths < 0) throw new RangeError(`ARCHIVE_LAG_MONTHS must be a whole number ≥ 0, got ${lagMonths}`);
}

/**
 * The first month the sweep leaves alone at `nowMs`: a month is due when at least `lagMonths`
 * whole months lie between its end and now, so with a lag of 2, in any day of March 2026 the
 * months up to December 2025 are due (January still has only February behind it). A lag of 0 is
 * the same rule as archiving by hand.
 */
export function sweepCutoffMonth(nowMs: number, lagMonths: number): string {
  checkLag(lagMonths);
  return addMonths(monthOfMs(nowMs), -lagMonths);
}

/** The start of sweepCutoffMonth in ms: the sweep archives events with `createdAtMs` below it. */
export function sweepCutoffMs(nowMs: number, lagMonths: number): number {
  return monthBoundsMs(sweepCutoffMonth(nowMs, lagMonths)).startMs;
}

export function isDueForSweep(month: string, nowMs: number, lagMonths: number): boolean {
  monthParts(month);
  return month < sweepCutoffMonth(nowMs, lagMonths);
}

/** The months among `months` (those that still hold payloads) that the sweep archives, oldest first, once each. */
export function monthsDueForSweep(months: Iterable<string>, nowMs: number, lagMonths: number): string[] {
  const cutoff = sweepCutoffMonth(nowMs, lagMonths);
  const due = new Set<string>();
  for (const month of months) {
    monthParts(month);
    if (month < cutoff) due.add(month);
  }
  return [...due].sort();
}
