// What every tracker adapter produces: an OpenPanel `position` event with a deterministic id, in km/h,
// metres and degrees. Values that cannot be read are passed on as they came, so the ingest path's
// position check rejects the row and names the field.
import { POSITION_EVENT_NAME } from '../fleet/position';
import type { Rejection } from '../ingest/normalize';
import { MAX_PROPERTY_DEPTH } from '../ingest/wire';
import { hash128 } from '../lib/ids';

export type TrackerSource = 'overland' | 'owntracks' | 'traccar';

export interface PositionEvent {
  type: 'track';
  payload: { name: typeof POSITION_EVENT_NAME; properties: Record<string, unknown> };
}

/** One request's events to store, and the messages acknowledged without storing (logs, other types). */
export interface AdaptedRequest {
  events: PositionEvent[];
  /**
   * Each event's row as the app sent it (same order as `events`): what is stored as its raw payload,
   * so `GET /v1/events/:id/payload` shows the app's own message, not the mapped event.
   */
  originals: unknown[];
  ignored: number;
  /** Messages the adapter itself refused (not an object, say): counted like rejected rows, never failing the others. */
  rejected?: Rejection[];
}

/** A fix as an adapter read it; `unknown` fields are raw values the position check will refuse. */
export interface FixFields {
  deviceId: string;
  lat: unknown;
  lon: unknown;
  /** Epoch ms; undefined: the fix carries no time (it happened at receipt); a raw value: unreadable. */
  time: number | undefined | { unreadable: unknown };
  speedKmh?: unknown;
  heading?: unknown;
  accuracyM?: unknown;
  altitudeM?: unknown;
  /** The app's own id of this fix, when it has one. */
  eventId?: string;
  /** The app's other fields, kept under their own names. */
  extra: Record<string, unknown>;
}

/** Names an app may not set through its extra fields: reserved ones, and any credential. */
const isDroppedExtra = (key: string) => key.startsWith('__') || key === 'token';

/**
 * The id of a fix that has none of its own: the same device, fix time and coordinates are the same
 * fix, so a resent batch is recognised as duplicates by the device object.
 */
export function fixEventId(deviceId: string, timeMs: number, lat: number, lon: number): string {
  return `fix:${hash128(`${deviceId}\u0000${timeMs}\u0000${lat}\u0000${lon}`)}`;
}

export function positionEvent(f: FixFields): PositionEvent {
  const properties: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(f.extra)) {
    // A nested `token` goes too: a credential is never stored, in properties or raw payload.
    if (!isDroppedExtra(key) && value !== undefined) properties[key] = originalRow(value);
  }
  properties.lat = f.lat;
  properties.lon = f.lon;
  // An accuracy of exactly 0 m is no accuracy at all: Traccar Client (Android) sends 0 for every GPS fix.
  const optional = { speed: f.speedKmh, heading: f.heading, accuracy: f.accuracyM === 0 ? undefined : f.accuracyM, altitude: f.altitudeM };
  for (const [key, value] of Object.entries(optional)) {
    if (value !== undefined) properties[key] = value;
    else delete properties[key];
  }
  properties.__deviceId = f.deviceId;
  const timeMs = typeof f.time === 'number' ? f.time : undefined;
  if (timeMs !== undefined) properties.__timestamp = timeMs;
  // An unreadable time goes on as text: the ingest path refuses it for this row alone.
  else if (typeof f.time === 'object') properties.__timestamp = unreadableText(f.time.unreadable);
  if (f.eventId) properties.__eventId = f.eventId;
  else if (timeMs !== undefined && isFiniteNumber(f.lat) && isFiniteNumber(f.lon)) {
    properties.__eventId = fixEventId(f.deviceId, timeMs, f.lat, f.lon);
  }
  return { type: 'track', payload: { name: POSITION_EVENT_NAME, properties } };
}

/**
 * Deeper than this an app's row is refused anyway: the ingest path allows a stored row
 * MAX_PROPERTY_DEPTH + 3 levels (src/ingest/normalize.ts), and a Traccar request's rows sit one
 * level below the request.
 */
const MAX_TOKEN_SEARCH_DEPTH = MAX_PROPERTY_DEPTH + 5;

/**
 * An app's row as received, for its raw payload, without a credential: a `token` field at any
 * depth (the one name under which a secret could arrive in a row) is dropped, as it is from the
 * properties.
 */
export function originalRow(row: unknown, depth = 0): unknown {
  if (row === null || typeof row !== 'object' || depth > MAX_TOKEN_SEARCH_DEPTH) return row;
  if (Array.isArray(row)) return row.map((item) => originalRow(item, depth + 1));
  // fromEntries defines own properties: a `__proto__` key stays a key, as JSON.parse made it.
  return Object.fromEntries(
    Object.entries(row)
      .filter(([key]) => key !== 'token')
      .map(([key, value]) => [key, originalRow(value, depth + 1)]),
  );
}

/** An unreadable value as text for the row's error: JSON for objects (`String()` of `{"toString":0}` throws). */
function unreadableText(v: unknown): string {
  if (typeof v === 'string') return v;
  try {
    return JSON.stringify(v) ?? typeof v;
  } catch {
    return `an ${typeof v} nested too deeply to show`;
  }
}

export const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
export const isPlainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Rounds a converted value to a millimetre / a thousandth, so 12.32 m/s reads 44.352 km/h, not 44.352000000000004. */
const round3 = (n: number) => Math.round(n * 1000) / 1000;

export const KMH_PER_MS = 3.6;
export const KMH_PER_KNOT = 1.852;

/**
 * A speed, heading or accuracy from a JSON app: a negative number means "unknown" (iOS reports -1)
 * and is left out; a non-number is passed on to be refused.
 */
export function knownNumber(v: unknown, factor = 1): unknown {
  if (v === undefined || v === null) return undefined;
  if (!isFiniteNumber(v)) return v;
  return v < 0 ? undefined : round3(v * factor);
}

/** A value from a query or form parameter: a number when it reads as one; empty means absent. */
export function paramNumber(v: string | undefined): unknown {
  if (v === undefined) return undefined;
  const t = v.trim();
  if (t === '') return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : v;
}

const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(Z|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * Epoch ms from the times tracker apps send: epoch seconds or milliseconds (numbers above 10^11 are
 * milliseconds), ISO 8601 with any offset form (`Z`, `+02:00`, `-0700`, `+02`), or
 * `yyyy-MM-dd HH:mm:ss`; a time without an offset is UTC. Null when it reads as none of them.
 */
export function parseFixTime(v: unknown): number | null {
  if (typeof v === 'number') return epochMs(v);
  if (typeof v !== 'string') return null;
  const t = v.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return epochMs(Number(t));
  const m = ISO_8601.exec(t);
  if (!m) return null;
  const [, y, mo, d, h, mi, s = '0', frac = '', zone = 'Z'] = m;
  const ms = Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +s, Math.floor(Number(`0.${frac || '0'}`) * 1000));
  const check = new Date(ms);
  // Date.UTC rolls 2024-02-31 over into March: refuse what is not a real calendar time.
  if (check.getUTCDate() !== +d! || check.getUTCMonth() !== +mo! - 1 || +h! > 23 || +mi! > 59 || +s > 59) return null;
  if (zone.toUpperCase() === 'Z') return ms;
  const sign = zone[0] === '-' ? -1 : 1;
  const digits = zone.slice(1).replace(':', '');
  const offsetMin = Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2) || '0');
  if (offsetMin > 18 * 60) return null;
  return ms - sign * offsetMin * 60_000;
}

/** The last instant a JavaScript Date can hold. */
const MAX_DATE_MS = 8.64e15;

function epochMs(n: number): number | null {
  if (!Number.isFinite(n) || n < 0) return null;
  const ms = Math.round(n > 1e11 ? n : n * 1000);
  return ms <= MAX_DATE_MS ? ms : null;
}

/** A fix time for `FixFields.time`: absent, epoch ms, or the unreadable value itself. */
export function fixTime(v: unknown): FixFields['time'] {
  if (v === undefined || v === null || v === '') return undefined;
  const ms = parseFixTime(v);
  return ms === null ? { unreadable: v } : ms;
}

/** The app's other fields: everything but the ones an adapter maps itself. */
export function extraFields(source: Record<string, unknown>, mapped: ReadonlySet<string>): Record<string, unknown> {
  const extra: Record<string, unknown> = {};
  for (const key of Object.keys(source)) if (!mapped.has(key)) extra[key] = source[key];
  return extra;
}
