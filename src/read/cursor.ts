// Page cursors of the read API: base64url JSON naming the query a page belongs to (its window and
// device) and the last position it served. Opaque to clients; anything that does not decode to
// exactly this shape is refused with 400 `invalid_cursor`.
import { z } from 'zod';
import { ApiError } from '../errors';

/** The rows a read may see: one device or all, event time in [sinceMs, untilMs]. */
export interface ReadWindow {
  deviceId?: string;
  sinceMs: number;
  untilMs: number;
}

/**
 * Position in the event list's total order: createdAt descending, then rank descending
 * (session_end 2, stored event 1, session_start 0), then key descending — the event id for stored
 * events, the session id for the session markers (a session has one start and one end).
 */
export interface EventPosition {
  atMs: number;
  rank: 0 | 1 | 2;
  key: string;
}

/** Position in the session list's order: startedAt descending, then session id descending. */
export interface SessionPosition {
  startedAtMs: number;
  id: string;
}

// ±8.64e15 ms is the range of a JS Date.
const Ms = z.number().int().min(-8.64e15).max(8.64e15);
const Key = z.string().max(128);
const Window = z
  .object({ d: z.string().min(1).max(128).optional(), s: Ms, u: Ms })
  .strict()
  .refine((w) => w.s <= w.u);

const EventsCursor = z
  .object({ v: z.literal(1), l: z.literal('events'), w: Window, t: Ms, r: z.union([z.literal(0), z.literal(1), z.literal(2)]), k: Key })
  .strict();
const SessionsCursor = z.object({ v: z.literal(1), l: z.literal('sessions'), w: Window, t: Ms, k: Key }).strict();

export interface Page<P> {
  window: ReadWindow;
  after: P;
}

const toWire = (w: ReadWindow) => ({ ...(w.deviceId !== undefined ? { d: w.deviceId } : {}), s: w.sinceMs, u: w.untilMs });
const fromWire = (w: z.infer<typeof Window>): ReadWindow => ({ ...(w.d !== undefined ? { deviceId: w.d } : {}), sinceMs: w.s, untilMs: w.u });

export function encodeEventsCursor(window: ReadWindow, after: EventPosition): string {
  return toBase64Url(JSON.stringify({ v: 1, l: 'events', w: toWire(window), t: after.atMs, r: after.rank, k: after.key }));
}

export function decodeEventsCursor(text: string): Page<EventPosition> {
  const c = parse(EventsCursor, text);
  return { window: fromWire(c.w), after: { atMs: c.t, rank: c.r, key: c.k } };
}

export function encodeSessionsCursor(window: ReadWindow, after: SessionPosition): string {
  return toBase64Url(JSON.stringify({ v: 1, l: 'sessions', w: toWire(window), t: after.startedAtMs, k: after.id }));
}

export function decodeSessionsCursor(text: string): Page<SessionPosition> {
  const c = parse(SessionsCursor, text);
  return { window: fromWire(c.w), after: { startedAtMs: c.t, id: c.k } };
}

export const invalidCursor = (why: string) => new ApiError(400, 'invalid_cursor', `cursor is not valid: ${why}; pass the nextCursor of the previous page unchanged`);

function parse<T>(schema: z.ZodType<T>, text: string): T {
  let json: unknown;
  try {
    json = JSON.parse(fromBase64Url(text));
  } catch {
    throw invalidCursor('it does not decode');
  }
  const r = schema.safeParse(json);
  if (!r.success) throw invalidCursor('it does not belong to this list');
  return r.data;
}

function toBase64Url(text: string): string {
  let binary = '';
  for (const b of new TextEncoder().encode(text)) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64Url(text: string): string {
  if (!/^[A-Za-z0-9_-]+$/.test(text) || text.length % 4 === 1) throw new Error('not base64url');
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  const binary = atob(padded);
  return new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(Uint8Array.from(binary, (ch) => ch.charCodeAt(0)));
}
