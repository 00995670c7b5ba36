// Pure core of the legacy import: one legacy row becomes one event with a deterministic UUIDv7.
import { hash128, uuidv7At } from '../lib/ids';
import { dateTimeAtStart, digits } from '../lib/iso-time';
import type { EventRow, PayloadRow } from '../pipeline/messages';
import type { LegacyImportParams } from './params';
import type { LegacyRow } from './source';

export interface IdMapRow {
  dataset: string;
  legacy_id: string;
  new_id: string;
  project_id: string;
  created_at_ms: number;
}

/** The new id of a legacy row: its time is the legacy created_at, its other bits hash (dataset, key). */
export function legacyEventId(dataset: string, legacyKey: string, createdAtMs: number): string {
  return uuidv7At(createdAtMs, hash128(`${dataset}\u0000${legacyKey}`));
}

/**
 * A Postgres `timestamp`/`timestamptz` as read (the driver hands us its text, see source.ts):
 * milliseconds for event times, and ISO 8601 text that keeps the microseconds, so two rows 1 µs
 * apart stay two keys, two ids and two cursor positions.
 */
export class LegacyTimestamp {
  constructor(
    readonly ms: number,
    readonly iso: string,
  ) {}
  toJSON(): string {
    return this.iso;
  }
}

const PG_TIMESTAMP = /^(\d{4,})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(?:([+-])(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?)?$/;

/**
 * What Postgres writes for a UTC time, `YYYY-MM-DD HH:MM:SS[.f{1,6}][+00]`, read by hand: the same
 * value and text as the pattern below, without a match array and a Date per row. Null for any other
 * form (a zone, a 5-digit year, a field out of range), which the pattern decides.
 */
export function commonPgTimestamp(text: string): LegacyTimestamp | null {
  let end = text.length;
  if (end >= 22 && text.charCodeAt(end - 3) === 43 && text.charCodeAt(end - 2) === 48 && text.charCodeAt(end - 1) === 48) end -= 3; // "+00"
  const fracDigits = end > 19 ? end - 20 : 0;
  if (end > 19 && (text.charCodeAt(19) !== 46 || fracDigits < 1 || fracDigits > 6)) return null;
  const frac = fracDigits === 0 ? 0 : digits(text, 20, fracDigits);
  const whole = dateTimeAtStart(text, 32);
  if (whole === null || !(frac >= 0)) return null;
  // Fractions as the pattern pads them: 3 digits (milliseconds), or 6 when more than 3 were given.
  const fracText = fracDigits === 0 ? '000' : fracDigits <= 3 ? text.slice(20, end).padEnd(3, '0') : text.slice(20, end).padEnd(6, '0');
  const ms = whole + Number(fracText.slice(0, 3));
  return new LegacyTimestamp(ms, `${text.slice(0, 10)}T${text.slice(11, 19)}.${fracText}Z`);
}

/** Date.UTC, but years 0-99 are those years, not 1900-1999. */
function utcMs(year: number, month: number, day: number, h: number, mi: number, s: number): number {
  if (year >= 100) return Date.UTC(year, month, day, h, mi, s);
  const t = new Date(0);
  t.setUTCFullYear(year, month, day);
  t.setUTCHours(h, mi, s, 0);
  return t.getTime();
}

/** Postgres' text output of a timestamp (without a zone it is taken as UTC); null for infinity or BC. */
export function parsePgTimestamp(text: string): LegacyTimestamp | null {
  return commonPgTimestamp(text) ?? patternPgTimestamp(text);
}

/** parsePgTimestamp by the pattern alone (every form); exported for the test that holds the hand reader to it. */
export function patternPgTimestamp(text: string): LegacyTimestamp | null {
  const m = PG_TIMESTAMP.exec(text.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac = '', sign, oh = '0', om = '0', os = '0'] = m;
  const offsetSec = sign ? (sign === '-' ? -1 : 1) * (Number(oh) * 3600 + Number(om) * 60 + Number(os)) : 0;
  const wholeMs = utcMs(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)) - offsetSec * 1000;
  const digits = frac.length > 3 ? frac.padEnd(6, '0') : frac.padEnd(3, '0');
  const ms = wholeMs + Number(digits.slice(0, 3));
  if (!Number.isFinite(ms)) return null;
  return new LegacyTimestamp(ms, `${new Date(wholeMs).toISOString().slice(0, 19)}.${digits}Z`);
}

/** A cursor and an id seed must not depend on how the driver typed the key. */
export function keyText(value: unknown): string {
  if (value instanceof LegacyTimestamp) return value.iso;
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

export function toEpochMs(value: unknown, column: string, key: string): number {
  if (value instanceof LegacyTimestamp) return value.ms;
  if (value instanceof Date && !Number.isNaN(value.getTime())) return value.getTime();
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string') {
    if (/^\d+$/.test(value)) return Number(value);
    const t = Date.parse(value);
    if (!Number.isNaN(t)) return t;
  }
  throw new Error(`legacy row ${key}: column ${column} is not a timestamp (${JSON.stringify(value)})`);
}

/** A source value as JSON can carry it: times as ISO text, bigints as decimal text, bytes as hex. */
function propertyValue(v: unknown): unknown {
  if (v instanceof LegacyTimestamp) return v.iso;
  if (v instanceof Date) return v.toISOString();
  if (v instanceof Uint8Array) return [...v].map((b) => b.toString(16).padStart(2, '0')).join('');
  if (typeof v === 'bigint') return v.toString();
  return v;
}

/** Why a legacy row cannot become an event: it is skipped and counted, never a reason to stop. */
export class UnusableLegacyRow extends Error {
  override name = 'UnusableLegacyRow';
}

/**
 * The raw payload of an imported row: the source row itself, every column (key, time and device
 * included) in the source's column order, as JSON, so imported history archives like any other.
 */
export function legacyPayloadJson(row: LegacyRow): string {
  return JSON.stringify(legacyColumns(row, null).columns);
}

/**
 * A row's columns as JSON values, in one pass: all of them (the raw payload), and all but `omit`'s
 * (the event's properties).
 */
function legacyColumns(row: LegacyRow, omit: { createdAt: string; deviceId: string } | null): { columns: Record<string, unknown>; properties: Record<string, unknown> } {
  // No prototype: a column named `__proto__` is a column like any other.
  const columns: Record<string, unknown> = Object.create(null);
  const properties: Record<string, unknown> = {};
  for (const col of Object.keys(row)) {
    const v = propertyValue(row[col]);
    columns[col] = v;
    if (omit && col !== omit.createdAt && col !== omit.deviceId) properties[col] = v;
  }
  return { columns, properties };
}

export interface TranslatedRow {
  event: EventRow;
  map: IdMapRow;
  payload: PayloadRow;
}

/** What makes a legacy row an event: its key, time and device, and its new id. */
export interface LegacyIdentity {
  legacyId: string;
  createdAtMs: number;
  deviceId: string;
  id: string;
}

/** A row's key, time and device, or UnusableLegacyRow when one is missing or unreadable. */
export function legacyIdentity(p: Pick<LegacyImportParams, 'dataset' | 'source'>, row: LegacyRow): LegacyIdentity {
  const s = p.source;
  const key = row[s.key];
  if (key === null || key === undefined) throw new UnusableLegacyRow(`legacy row without a key (${s.key} is NULL)`);
  const legacyId = keyText(key);
  let createdAtMs: number;
  try {
    createdAtMs = toEpochMs(row[s.createdAt], s.createdAt, legacyId);
  } catch (err) {
    throw new UnusableLegacyRow((err as Error).message);
  }
  // Stored as whole milliseconds (Int64): a fractional epoch is floored; one at or beyond ±2^53 is
  // no exact time (and a replay's id check could not bound it).
  if (!Number.isSafeInteger(createdAtMs)) {
    if (!(Math.abs(createdAtMs) <= Number.MAX_SAFE_INTEGER)) throw new UnusableLegacyRow(`legacy row ${legacyId}: column ${s.createdAt} is out of range (${createdAtMs})`);
    createdAtMs = Math.floor(createdAtMs);
  }
  const device = row[s.deviceId];
  if (device === null || device === undefined || device === '') throw new UnusableLegacyRow(`legacy row ${legacyId}: column ${s.deviceId} is empty`);
  return { legacyId, createdAtMs, deviceId: String(device), id: legacyEventId(p.dataset, legacyId, createdAtMs) };
}

/**
 * A row's raw payload and its event's properties as JSON text, made from each column's JSON once
 * (`keys` keeps each column name's quoted form across rows): the same text as JSON.stringify of
 * legacyColumns' two objects, without building them. A column named `__proto__` is in the
 * payload, not in the properties (legacyColumns' plain object drops it, as ingestion refuses that
 * key).
 */
export function legacyColumnsJson(row: LegacyRow, omit: { createdAt: string; deviceId: string }, keys: Map<string, string>): { payload: string; properties: string } {
  const all: string[] = [];
  const own: string[] = [];
  for (const col of Object.keys(row)) {
    const json = JSON.stringify(propertyValue(row[col])) as string | undefined;
    if (json === undefined) continue;
    let key = keys.get(col);
    if (key === undefined) keys.set(col, (key = `${JSON.stringify(col)}:`));
    const piece = key + json;
    all.push(piece);
    if (col !== omit.createdAt && col !== omit.deviceId && col !== '__proto__') own.push(piece);
  }
  return { payload: `{${all.join(',')}}`, properties: `{${own.join(',')}}` };
}

/**
 * One legacy row as the rows it becomes, as objects. The import writes ImportEncoder's lines
 * (encode.ts); this stays as the plain statement of those rows that the tests hold the lines to.
 */
export function translateRow(p: Pick<LegacyImportParams, 'projectId' | 'dataset' | 'source'>, row: LegacyRow, importedAtMs: number): TranslatedRow {
  const s = p.source;
  const { legacyId, createdAtMs, deviceId: device, id } = legacyIdentity(p, row);
  const { columns, properties } = legacyColumns(row, s);
  return {
    event: {
      id,
      project_id: p.projectId,
      device_id: String(device),
      session_id: '',
      profile_id: '',
      type: 'track',
      name: s.name,
      created_at_ms: createdAtMs,
      received_at_ms: importedAtMs,
      synced_at_ms: importedAtMs,
      properties: JSON.stringify(properties),
      ref_id: '',
      ip: '',
      country: '',
      region: '',
      city: '',
      timezone: '',
      latitude: null,
      longitude: null,
    },
    map: { dataset: p.dataset, legacy_id: legacyId, new_id: id, project_id: p.projectId, created_at_ms: createdAtMs },
    payload: { id, project_id: p.projectId, created_at_ms: createdAtMs, received_at_ms: importedAtMs, payload: JSON.stringify(columns) },
  };
}
