// Reading ISO 8601 times fast: the common form by hand, every other by Date.parse, same value.

/** `0`–`9` at `i` as a number, or NaN. */
const digitAt = (s: string, i: number): number => {
  const c = s.charCodeAt(i) - 48;
  return c >= 0 && c <= 9 ? c : NaN;
};

/**
 * The time of `YYYY-MM-DDTHH:MM:SS.sssZ` (what `toISOString` writes) read by hand, when its fields
 * are in range (a day the month has, leap years counted); null for anything else (a day the month
 * lacks, a stray character, years 0–999, which Date.UTC reads differently), which is Date.parse's
 * to decide.
 * Such a text is also a valid ISO 8601 date-time by any stricter check (the wire schema's included).
 */
export function commonIsoTime(text: string): number | null {
  // YYYY-MM-DDTHH:MM:SS.sssZ, separators by their codes. (No closures here: a bundle that keeps
  // function names wraps each one made per call, once per event.)
  if (text.length !== 24 || text.charCodeAt(19) !== 46 || text.charCodeAt(23) !== 90) return null;
  const millis = digits(text, 20, 3);
  const whole = dateTimeAtStart(text, 84);
  return whole === null || !(millis >= 0) ? null : whole + millis;
}

/**
 * The UTC time (ms) of the `YYYY-MM-DD?HH:MM:SS` that starts `text`, `?` being the char code
 * `separator`, when every field is in range (a day the month has, leap years counted) and the year
 * is 1000 or later; null for anything else. Shared by the readers of ISO and of Postgres times.
 */
export function dateTimeAtStart(text: string, separator: number): number | null {
  if (
    text.length < 19 ||
    text.charCodeAt(4) !== 45 ||
    text.charCodeAt(7) !== 45 ||
    text.charCodeAt(10) !== separator ||
    text.charCodeAt(13) !== 58 ||
    text.charCodeAt(16) !== 58
  ) {
    return null;
  }
  const year = digits(text, 0, 4);
  const month = digits(text, 5, 2);
  const day = digits(text, 8, 2);
  const hour = digits(text, 11, 2);
  const minute = digits(text, 14, 2);
  const second = digits(text, 17, 2);
  if (!(year >= 1000 && month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month) && hour <= 23 && minute <= 59 && second <= 59)) return null;
  return daysFromCivil(year, month, day) * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000;
}

/**
 * Days from 1970-01-01 to a proleptic Gregorian date (month 1–12), as Date.UTC counts them: H.
 * Hinnant's `days_from_civil`, in plain arithmetic (Date.UTC is a call into the runtime per event).
 */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const dayOfEra = yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear;
  return era * 146_097 + dayOfEra - 719_468;
}

/** Days in a month (1-12) of the proleptic Gregorian calendar, as the datetime schema counts them. */
function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

/** The number written by `count` ASCII digits of `text` from `at`, or NaN. */
export function digits(text: string, at: number, count: number): number {
  let v = 0;
  for (let i = 0; i < count; i++) v = v * 10 + digitAt(text, at + i);
  return v;
}

/**
 * `Date.parse` of an ISO 8601 time (already checked against the datetime schema): the common form
 * read directly (commonIsoTime), any other by `Date.parse`. Same value either way.
 */
export function parseIsoTime(text: string): number {
  return commonIsoTime(text) ?? Date.parse(text);
}
