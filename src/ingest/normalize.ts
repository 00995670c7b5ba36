// Pure core of the ingestion path: one wire row in, one normalised event or a per-row rejection out.
import { z } from 'zod';
import { checkPositionProperties, POSITION_EVENT_NAME } from '../fleet/position';
import { hash128Joined } from '../lib/ids';
import { commonIsoTime, parseIsoTime } from '../lib/iso-time';
import { checkPropertiesShape, MAX_EVENT_BYTES, MAX_PROPERTY_DEPTH, ReservedProperties, WireEvent, type EventType } from './wire';

/** How deep an app's own row may nest: the depth properties may have, plus the levels around them in a row. */
const MAX_ROW_DEPTH = MAX_PROPERTY_DEPTH + 3;
import { utf8Bytes } from '../pipeline/messages';

export const MAX_FUTURE_MS = 60_000;
/** An unescaped `\ud800`–`\udfff` escape in JSON.stringify output: an unpaired surrogate. */
const LONE_SURROGATE_ESCAPE = /(?<!\\)(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;
export const MAX_AGE_MS = 5 * 24 * 60 * 60 * 1000;

export interface Geo {
  country: string;
  region: string;
  city: string;
  timezone: string;
  latitude: number | null;
  longitude: number | null;
}

export const NO_GEO: Geo = { country: '', region: '', city: '', timezone: '', latitude: null, longitude: null };

export interface RequestContext {
  receivedAtMs: number;
  /** Client clock when the batch was sent, for skew correction. */
  sentAtMs?: number;
  ip: string;
  userAgent: string;
  geo: Geo;
}

export interface NormalizedEvent {
  type: EventType;
  name: string;
  profileId: string;
  createdAtMs: number;
  receivedAtMs: number;
  /** Client-supplied device id; null when it must be derived from salt, IP and user agent. */
  deviceId: string | null;
  /** IP used for the device id and stored with the event. */
  ip: string;
  geo: Geo;
  propertiesJson: string;
  payloadJson: string;
  dedupKey: string;
  /**
   * The row's properties as parsed, reserved keys included: the caller's own object, read (never
   * changed) for a position's lat/lon and legacy references.
   */
  properties: Record<string, unknown>;
}

export type RejectReason = 'validation' | 'too_old' | 'unsupported' | 'internal';

export interface Rejection {
  reason: RejectReason;
  error: string;
  retryable: boolean;
}

export type NormalizeResult = { ok: true; event: NormalizedEvent } | { ok: false; rejection: Rejection };

const reject = (reason: RejectReason, error: string, retryable = false): NormalizeResult => ({
  ok: false,
  rejection: { reason, error, retryable },
});

function describeZodError(err: { issues: Array<{ path: PropertyKey[]; message: string }> }): string {
  return err.issues
    .slice(0, 3)
    .map((i) => (i.path.length ? `${i.path.map(String).join('.')}: ${i.message}` : i.message))
    .join('; ');
}

/** Event time from the client's timestamp, corrected for the sending clock's skew. */
export function correctClockSkew(clientTimeMs: number | undefined, ctx: Pick<RequestContext, 'receivedAtMs' | 'sentAtMs'>): number {
  if (clientTimeMs === undefined) return ctx.receivedAtMs;
  if (ctx.sentAtMs === undefined) return clientTimeMs;
  return ctx.receivedAtMs - (ctx.sentAtMs - clientTimeMs);
}

/** `session_start` / `session_end` are derived per session; a client row of that name would double them. */
const RESERVED_NAME_PREFIX = 'session_';

function eventName(event: WireEvent): string {
  return event.type === 'track' ? event.payload.name : event.type;
}

// Fast paths for the common row (a `track` event without `__ip`): they accept only what the zod
// schemas of wire.ts accept and build the same output, so any other row, and every error message,
// still goes through zod. Keep them in step with TrackPayload and ReservedProperties.
const isPlainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const IsoDateTime = z.iso.datetime({ offset: true });

function fastTrack(raw: unknown): WireEvent | null {
  const r = raw as { type?: unknown; payload?: unknown };
  if (r.type !== 'track' || !isPlainObject(r.payload)) return null;
  const p = r.payload;
  if (typeof p.name !== 'string' || p.name.length < 1 || p.name.length > 256) return null;
  if (p.properties !== undefined && !isPlainObject(p.properties)) return null;
  let profileId: string | undefined;
  if (p.profileId !== undefined) {
    if (typeof p.profileId === 'string' && p.profileId.length >= 1 && p.profileId.length <= 256) profileId = p.profileId;
    else if (typeof p.profileId === 'number' && Number.isFinite(p.profileId)) profileId = String(p.profileId);
    else return null;
  }
  if (p.groups !== undefined) {
    if (!Array.isArray(p.groups) || p.groups.length > 100 || !p.groups.every((g) => typeof g === 'string' && g.length <= 256)) return null;
  }
  // The row serves as it is (only the fields above are read from it), unless a numeric profileId
  // must become text.
  if (profileId === p.profileId) return r as WireEvent;
  const payload: Record<string, unknown> = { name: p.name };
  if (p.properties !== undefined) payload.properties = p.properties;
  if (profileId !== undefined) payload.profileId = profileId;
  if (p.groups !== undefined) payload.groups = p.groups;
  return { type: 'track', payload } as WireEvent;
}

/** `timeMs`: the time `__timestamp` gives, when already read (the common ISO form, or epoch ms). */
type Reserved = { __timestamp?: string | number; __deviceId?: string; __ip?: string; __eventId?: string; timeMs?: number };

function fastReserved(props: Record<string, unknown>): Reserved | null {
  const { __timestamp: t, __deviceId: d, __ip: ip, __eventId: e } = props;
  if (ip !== undefined) return null;
  if (d !== undefined && (typeof d !== 'string' || d.length < 1 || d.length > 128)) return null;
  if (e !== undefined && (typeof e !== 'string' || e.length < 1 || e.length > 128)) return null;
  let timeMs: number | undefined;
  if (t !== undefined) {
    if (typeof t === 'number') {
      if (!Number.isSafeInteger(t) || t < 0) return null;
      timeMs = t;
    } else if (typeof t !== 'string') {
      return null;
    } else {
      // The common form is valid by its own check; the schema decides every other.
      const common = commonIsoTime(t);
      if (common !== null) timeMs = common;
      else if (!IsoDateTime.safeParse(t).success) return null;
    }
  }
  return { __timestamp: t as string | number | undefined, __deviceId: d as string | undefined, __eventId: e as string | undefined, timeMs };
}

const isReservedKey = (key: string) => key === '__timestamp' || key === '__deviceId' || key === '__ip' || key === '__eventId';

/** The event's own properties: all but the reserved keys, in their order. */
function ownProperties(allProps: Record<string, unknown>): Record<string, unknown> {
  const own: Record<string, unknown> = {};
  for (const key of Object.keys(allProps)) {
    if (!isReservedKey(key)) own[key] = allProps[key];
  }
  return own;
}

const PROPERTIES_KEY = '"properties":';

/**
 * The length of the entry `"key":<JSON of value>` when `json` holds it at `at`, else -1. A string
 * is compared as it is: if JSON.stringify had to escape any of it, the text after its raw length
 * is still inside the escaped string (a backslash), never its closing quote.
 */
function entryLength(json: string, at: number, key: string, value: unknown): number {
  if (at < 0 || json.charCodeAt(at) !== 34 || !json.startsWith(key, at + 1) || json.charCodeAt(at + key.length + 1) !== 34 || json.charCodeAt(at + key.length + 2) !== 58) return -1;
  const v = at + key.length + 3;
  if (typeof value === 'string') {
    return json.charCodeAt(v) === 34 && json.startsWith(value, v + 1) && json.charCodeAt(v + value.length + 1) === 34 ? key.length + value.length + 5 : -1;
  }
  const text = JSON.stringify(value);
  return text !== undefined && json.startsWith(text, v) ? key.length + 3 + text.length : -1;
}

/**
 * Where JSON.stringify(ownProperties(props)) stands in `rowJson` (JSON.stringify of `row`), so it
 * is cut out rather than written again: [from, to] pairs whose pieces make it. For a row `{type,
 * payload: {…, properties}}` whose other payload fields are not objects and whose reserved keys
 * lead or trail the others. Each reserved entry is checked where it must stand; null for any other
 * shape or any mismatch (the caller then stringifies a copy).
 */
export function ownPropertiesInRow(rowJson: string, row: Record<string, unknown>, props: Record<string, unknown>): number[] | null {
  // Walked with for…in, which allocates no key list (parsed JSON has no inherited keys to skip).
  let n = 0;
  for (const key in row) {
    if (key !== (n === 0 ? 'type' : n === 1 ? 'payload' : '')) return null;
    n++;
  }
  if (n !== 2) return null;
  const payload = row.payload as Record<string, unknown>;
  let last = '';
  for (const key in payload) {
    // Each field before `properties` a scalar.
    if (last !== '' && typeof payload[last] === 'object' && payload[last] !== null) return null;
    last = key;
  }
  if (last !== 'properties' || payload.properties !== props) return null;
  // Strings before it cannot hold the key's text (their quotes are escaped), nor can other scalars.
  const at = rowJson.indexOf(PROPERTIES_KEY);
  if (at < 0 || !rowJson.endsWith('}}}')) return null;
  const start = at + PROPERTIES_KEY.length;
  // The properties' text runs from `start` to before the payload's and the row's closing braces.
  const end = rowJson.length - 2;
  const keys = Object.keys(props);
  let lead = 0;
  while (lead < keys.length && isReservedKey(keys[lead]!)) lead++;
  let trail = keys.length;
  while (trail > lead && isReservedKey(keys[trail - 1]!)) trail--;
  for (let i = lead; i < trail; i++) if (isReservedKey(keys[i]!)) return null;
  // The opening brace, then each leading reserved entry and its comma.
  let from = start + 1;
  for (let i = 0; i < lead; i++) {
    const length = entryLength(rowJson, from, keys[i]!, props[keys[i]!]);
    // Followed by its comma (by the closing brace when it is the last key): a number's text is whole.
    if (length < 0 || rowJson.charCodeAt(from + length) !== (i === keys.length - 1 ? 125 : 44)) return null;
    from += length + 1;
  }
  // Back from the closing brace over each trailing reserved entry and the comma before it.
  let to = end - 1;
  for (let i = keys.length - 1; i >= trail; i--) {
    const key = keys[i]!;
    const value = props[key];
    // Its length does not depend on where it stands: find it, then check it there.
    const text = typeof value === 'string' ? null : (JSON.stringify(value) as string | undefined);
    if (text === undefined) return null;
    const length = text === null ? key.length + (value as string).length + 5 : key.length + 3 + text.length;
    if (entryLength(rowJson, to - length, key, value) !== length || rowJson.charCodeAt(to - length - 1) !== (i === 0 ? 123 : 44)) return null;
    to -= length + 1;
  }
  if (rowJson.charCodeAt(start) !== 123 /* { */ || rowJson.charCodeAt(end - 1) !== 125 /* } */) return null;
  if (lead === 0 && trail === keys.length) return [start, end];
  // Its braces, and between them the entries from the first own key to the last (none: `{}`).
  return lead === trail ? [start, start + 1, end - 1, end] : [start, start + 1, from, to, end - 1, end];
}

/** The text `pieces` (see ownPropertiesInRow) make of `text`. */
export function piecesText(text: string, pieces: readonly number[]): string {
  let out = '';
  for (let k = 0; k < pieces.length; k += 2) out += text.slice(pieces[k], pieces[k + 1]);
  return out;
}

/**
 * `index` is the row's position in its request: without a client timestamp two identical rows of one
 * request are still two events, while a replay of a timestamped row is recognised as the same one.
 * `received` is what is stored as the raw payload: the row itself, or the message it was mapped from.
 */
export function normalizeEvent(raw: unknown, ctx: RequestContext, index = 0, received: unknown = raw): NormalizeResult {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return reject('validation', 'event must be an object');
  const type = (raw as { type?: unknown }).type;
  if (type === 'alias') return reject('unsupported', 'alias events are not supported');
  // Checked on the raw value: a parsed copy would already have dropped an own `__proto__` key.
  const shapeError = checkPropertiesShape((raw as { payload?: unknown }).payload);
  if (shapeError) return reject('validation', shapeError);
  let event: WireEvent | null = fastTrack(raw);
  if (!event) {
    const parsed = WireEvent.safeParse(raw);
    if (!parsed.success) return reject('validation', describeZodError(parsed.error));
    event = parsed.data;
  }
  if (event.type === 'track' && event.payload.name.startsWith(RESERVED_NAME_PREFIX)) {
    return reject('validation', `event names beginning with ${RESERVED_NAME_PREFIX} are reserved for the sessions Driftline derives`);
  }
  const allProps = (event.payload.properties ?? {}) as Record<string, unknown>;

  let reservedData = fastReserved(allProps);
  if (!reservedData) {
    const reserved = ReservedProperties.safeParse(allProps);
    if (!reserved.success) return reject('validation', describeZodError(reserved.error));
    reservedData = reserved.data;
  }
  const { __timestamp, __deviceId, __ip, __eventId, timeMs } = reservedData;

  // A track row without groups stores its properties as they came, less the reserved keys: their
  // JSON is then cut out of the row's own (below) rather than copied and written a second time.
  const asSent = event.type === 'track' && event.payload.groups === undefined && received === raw && event.payload === (raw as { payload?: unknown }).payload;
  const properties: Record<string, unknown> = asSent ? allProps : ownProperties(allProps);
  if (event.type === 'identify') {
    for (const key of ['firstName', 'lastName', 'email', 'avatar'] as const) {
      if (event.payload[key] !== undefined) properties[key] = event.payload[key];
    }
  } else if (event.type === 'increment' || event.type === 'decrement') {
    properties.property = event.payload.property;
    properties.value = event.payload.value ?? 1;
  } else if (event.type === 'group') {
    Object.assign(properties, { groupId: event.payload.id, groupType: event.payload.type, groupName: event.payload.name });
  } else if (event.type === 'assign_group') {
    properties.groupIds = event.payload.groupIds;
  } else if (event.payload.groups) {
    properties.groups = event.payload.groups;
  }
  if (event.type === 'track' && event.payload.name === POSITION_EVENT_NAME) {
    const position = checkPositionProperties(properties);
    if (!position.ok) return reject('validation', position.message);
  }

  let clientTimeMs: number | undefined;
  if (__timestamp !== undefined) {
    clientTimeMs = timeMs ?? (typeof __timestamp === 'number' ? __timestamp : parseIsoTime(__timestamp));
    if (!Number.isFinite(clientTimeMs)) return reject('validation', '__timestamp is not a valid time');
  }
  let createdAtMs = correctClockSkew(clientTimeMs, ctx);
  if (createdAtMs > ctx.receivedAtMs + MAX_FUTURE_MS) createdAtMs = ctx.receivedAtMs;
  if (ctx.receivedAtMs - createdAtMs > MAX_AGE_MS) {
    return reject('too_old', 'event is older than 5 days; send older history through a backfill');
  }

  // A row mapped from an app's own message is stored as that message: its other parts are checked
  // too (depth, numbers beyond a double), or storing them could fail or change them.
  if (received !== raw) {
    const originalError = checkPropertiesShape(received, MAX_ROW_DEPTH, { forbidKeys: false });
    if (originalError) return reject('validation', `the app's row: ${originalError}`);
  }
  let payloadJson: string;
  try {
    payloadJson = JSON.stringify(received) ?? 'null';
  } catch {
    // Beside `payload`, a row is not checked for depth: one nested past the runtime's limit is refused alone.
    return reject('validation', 'the row is nested too deeply to be stored');
  }
  const pieces = asSent ? ownPropertiesInRow(payloadJson, raw as Record<string, unknown>, allProps) : null;
  const propertiesJson = pieces ? piecesText(payloadJson, pieces) : JSON.stringify(asSent ? ownProperties(allProps) : properties);
  // UTF-8 bytes, as /track counts its body: never fewer than UTF-16 units, so the length alone
  // settles most rows.
  if (payloadJson.length > MAX_EVENT_BYTES || (payloadJson.length * 3 > MAX_EVENT_BYTES && utf8Bytes(payloadJson) > MAX_EVENT_BYTES)) {
    return reject('validation', `event is larger than ${MAX_EVENT_BYTES} bytes (UTF-8)`);
  }
  // JSON.stringify writes a lone surrogate as a \udXXX escape (a well-formed pair comes out as is);
  // ClickHouse refuses such text, and one such row would hold up a whole insert.
  if (payloadJson.includes('\\ud') && LONE_SURROGATE_ESCAPE.test(payloadJson)) {
    return reject('validation', 'text contains an unpaired UTF-16 surrogate (invalid Unicode)');
  }
  const name = eventName(event);
  const profileId = 'profileId' in event.payload && event.payload.profileId !== undefined ? event.payload.profileId : '';
  const dedupKey = __eventId
    ? `e:${__eventId}`
    : `h:${hash128Joined([event.type, name, clientTimeMs === undefined ? `r${ctx.receivedAtMs}:${index}` : String(clientTimeMs), profileId, pieces ? { text: payloadJson, pieces } : propertiesJson])}`;

  return {
    ok: true,
    event: {
      type: event.type,
      name,
      profileId,
      createdAtMs,
      receivedAtMs: ctx.receivedAtMs,
      deviceId: __deviceId ?? null,
      ip: __ip ?? ctx.ip,
      geo: __ip ? NO_GEO : ctx.geo,
      propertiesJson,
      payloadJson,
      dedupKey,
      properties: allProps,
    },
  };
}
