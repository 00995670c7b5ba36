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
  /** The parsed event's own properties (no reserved keys). */
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
  // The row's own payload serves as it is (only the fields above are read from it), unless a numeric
  // profileId must become text.
  if (profileId === p.profileId) return { type: 'track', payload: p } as WireEvent;
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

  const properties: Record<string, unknown> = {};
  for (const key of Object.keys(allProps)) {
    if (isReservedKey(key)) continue;
    properties[key] = allProps[key];
  }
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

  const propertiesJson = JSON.stringify(properties);
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
    : `h:${hash128Joined([event.type, name, clientTimeMs === undefined ? `r${ctx.receivedAtMs}:${index}` : String(clientTimeMs), profileId, propertiesJson])}`;

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
      properties,
    },
  };
}
