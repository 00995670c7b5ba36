// The hand-off from the route to a device object: each event packed once, at the edge, and a
// device's events cut into calls that stay far below the RPC size limit.
import { CALL_BASE_FIELDS, utf8Bytes, type CallBase } from '../pipeline/messages';
import type { DeviceEvent, PackedEvent, PackedEvents } from './types';

export type { PackedEvent, PackedEvents } from './types';

/**
 * What one call may carry, counted as V8 serialises strings at worst (two bytes per UTF-16 unit):
 * a quarter of the 32 MiB RPC limit, and room for 2000 small events (~2 KB counted) in one call.
 */
export const MAX_HANDOFF_BYTES = 8 * 1024 * 1024;

const BASE_KEYS: ReadonlySet<string> = new Set(CALL_BASE_FIELDS);

/**
 * The base of a call: each of CALL_BASE_FIELDS on which every one of its events agrees (all of them
 * when they came in one request). A base value is then every event's own, so erasing some of the
 * events never leaves a value that only they had; null when the events agree on none.
 */
export function callBaseOf(rows: ReadonlyArray<DeviceEvent['row']>): Partial<CallBase> | null {
  const first = rows[0];
  if (!first) return null;
  // Which fields every row so far agrees on: no key list or object per row.
  const agreed = CALL_BASE_FIELDS.map(() => true);
  let left = agreed.length;
  for (let r = 1; r < rows.length && left > 0; r++) {
    const row = rows[r]!;
    for (let f = 0; f < CALL_BASE_FIELDS.length; f++) {
      if (agreed[f] && row[CALL_BASE_FIELDS[f]!] !== first[CALL_BASE_FIELDS[f]!]) {
        agreed[f] = false;
        left--;
      }
    }
  }
  if (!left) return null;
  const base: Record<string, unknown> = {};
  CALL_BASE_FIELDS.forEach((key, f) => {
    if (agreed[f]) base[key] = first[key];
  });
  return base as Partial<CallBase>;
}

/**
 * `"r":<row JSON without the fields the base holds>,"p":<payload as a JSON string>`: one
 * JSON.stringify of a small object (the row's own fields in its key order), sliced out of its
 * braces. A flat string made in one native pass: no field-by-field concatenation to flatten later.
 */
function rowAndPayloadJson(row: DeviceEvent['row'], payload: string, base: Partial<CallBase> | null, own: boolean): string {
  return JSON.stringify({ r: own ? ownFields(row) : base ? withoutBase(row, base) : row, p: payload }).slice(1, -1);
}

/** Whether a row is packed as its own fields alone (ownFields): the base holds all the others. */
function isOwnRow(row: DeviceEvent['row'], base: Partial<CallBase> | null): boolean {
  return base !== null && holdsWholeBase(row, base) && fieldCount(row) === ROW_FIELD_COUNT;
}

/** The fields of a row as toDeviceEvent makes it; one with any other keeps them all (withoutBase). */
const ROW_FIELD_COUNT = 17;

/** Own keys of a row, counted without a key list. */
function fieldCount(row: object): number {
  let n = 0;
  for (const key in row) if (Object.prototype.hasOwnProperty.call(row, key)) n++;
  return n;
}

/** Whether `base` holds every base field, each with the row's value (what a call of one request gives). */
function holdsWholeBase(row: DeviceEvent['row'], base: Partial<CallBase>): boolean {
  for (let f = 0; f < CALL_BASE_FIELDS.length; f++) {
    const key = CALL_BASE_FIELDS[f]!;
    if (!(key in base) || base[key] !== row[key]) return false;
  }
  return true;
}

/** The fields a whole base leaves to the row, in the row's order (an object literal: one shape for every event). */
function ownFields(row: DeviceEvent['row']): Record<string, unknown> {
  return { id: row.id, profile_id: row.profile_id, type: row.type, name: row.name, created_at_ms: row.created_at_ms, properties: row.properties, ref_id: row.ref_id };
}

function withoutBase(row: DeviceEvent['row'], base: Partial<CallBase>): Record<string, unknown> {
  const own: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(row)) {
    if (!BASE_KEYS.has(key) || !(key in base) || base[key as keyof CallBase] !== value) own[key] = value;
  }
  return own;
}

/** One event packed; with `base`, its row leaves out what the base holds (see callBaseOf). */
export function packEvent(e: DeviceEvent, base: Partial<CallBase> | null = null): PackedEvent {
  return packOne(e, base, isOwnRow(e.row, base));
}

function packOne(e: DeviceEvent, base: Partial<CallBase> | null, own: boolean): PackedEvent {
  const p = e.payload;
  if (p.id !== e.row.id || p.project_id !== e.row.project_id || p.created_at_ms !== e.row.created_at_ms || p.received_at_ms !== e.row.received_at_ms) {
    throw new Error(`payload row of event ${e.row.id} does not match the event row`);
  }
  const rp = rowAndPayloadJson(e.row, p.payload, base, own);
  return {
    k: e.dedupKey,
    id: e.row.id,
    t: e.row.type,
    n: e.row.name,
    c: e.row.created_at_ms,
    pr: e.row.profile_id,
    pos: e.position !== undefined ? e.position : readPosition(e.row.properties),
    rp,
    // The entry is `{"s":"<session id>",` + rp + `}`, spliced into the message as it is.
    b: utf8Bytes(rp) + 64,
  };
}

/**
 * A device's events, in order, as calls of at most `maxBytes` each (an event larger than that goes
 * alone). The caller makes them one after another, so each call sees the ids and sessions the
 * earlier ones stored, as a single call would.
 */
export function packDeviceEvents(events: readonly DeviceEvent[], maxBytes = MAX_HANDOFF_BYTES): PackedEvents[] {
  const calls: PackedEvents[] = [];
  const shared = callBaseOf(events.map((e) => e.row));
  const base = shared ? JSON.stringify(shared) : undefined;
  let cols = newColumns();
  let bytes = base ? 2 * base.length : 0;
  // Whether every row of the call so far was packed as its own fields alone.
  let own = shared !== null;
  const call = (): PackedEvents => ({
    k: cols.k,
    id: cols.id,
    t: cols.t,
    n: cols.n,
    pr: cols.pr,
    // Numbers as typed arrays: one copy each across the boundary, no tag per element.
    c: Float64Array.from(cols.c),
    pos: Float64Array.from(cols.pos),
    b: Float64Array.from(cols.b),
    rp: cols.rp,
    ...(base ? { base } : {}),
    ...(own ? { own: true as const } : {}),
  });
  for (const e of events) {
    const ownRow = isOwnRow(e.row, shared);
    const packed = packOne(e, shared, ownRow);
    const size = 2 * (packed.rp.length + packed.k.length + packed.id.length + packed.t.length + packed.n.length + packed.pr.length) + 64;
    if (cols.rp.length && bytes + size > maxBytes) {
      calls.push(call());
      cols = newColumns();
      bytes = base ? 2 * base.length : 0;
      own = shared !== null;
    }
    own &&= ownRow;
    cols.k.push(packed.k);
    cols.id.push(packed.id);
    cols.t.push(packed.t);
    cols.n.push(packed.n);
    cols.pr.push(packed.pr);
    cols.c.push(packed.c);
    if (packed.pos) cols.pos.push(packed.pos[0], packed.pos[1]);
    else cols.pos.push(NaN, NaN);
    cols.b.push(packed.b);
    cols.rp.push(packed.rp);
    bytes += size;
  }
  if (cols.rp.length) calls.push(call());
  return calls;
}

function newColumns() {
  return { k: [] as string[], id: [] as string[], t: [] as string[], n: [] as string[], pr: [] as string[], c: [] as number[], pos: [] as number[], b: [] as number[], rp: [] as string[] };
}

/** The events of a call as packDeviceEvents cut them (or, from an older caller, as a JSON `fields` array). */
export function unpackEvents(packed: PackedEvents): PackedEvent[] {
  const count = packed.rp.length;
  if (typeof packed.fields === 'string') {
    const events = JSON.parse(packed.fields) as PackedEvent[];
    if (events.length !== count) throw new Error(`packed events: ${events.length} fields for ${count} rows`);
    events.forEach((e, i) => (e.rp = packed.rp[i]!));
    return events;
  }
  const { k, id, t, n, pr, c, pos, b, rp } = packed;
  if (!k || !id || !t || !n || !pr || !c || !pos || !b) throw new Error('packed events: a column is missing');
  if (k.length !== count || id.length !== count || t.length !== count || n.length !== count || pr.length !== count || c.length !== count || b.length !== count || pos.length !== 2 * count) {
    throw new Error(`packed events: columns of other lengths than its ${count} rows`);
  }
  const events: PackedEvent[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const lat = pos[2 * i]!;
    events[i] = { k: k[i]!, id: id[i]!, t: t[i]!, n: n[i]!, c: c[i]!, pr: pr[i]!, pos: Number.isNaN(lat) ? null : [lat, pos[2 * i + 1]!], rp: rp[i]!, b: b[i]! };
  }
  return events;
}

/** `[lat, lon]` of an event's properties when both are numbers (its last position for the device object). */
export function positionOf(p: { lat?: unknown; lon?: unknown }): [number, number] | null {
  return typeof p.lat === 'number' && typeof p.lon === 'number' ? [p.lat, p.lon] : null;
}

function readPosition(propertiesJson: string): [number, number] | null {
  if (!propertiesJson.includes('"lat"')) return null;
  return positionOf(JSON.parse(propertiesJson) as { lat?: unknown; lon?: unknown });
}
