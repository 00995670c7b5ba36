// Query-string schema shared by the paginated read routes, the window a request reads, and the
// error answers every read route shares.
import type { RouteConfig } from '@hono/zod-openapi';
import { z } from 'zod';
import { ApiError } from '../errors';
import { invalidCursor, type Page, type ReadWindow } from '../read/cursor';
import { errors } from './openapi';

const Instant = z
  .union([z.string().regex(/^\d{1,15}$/).transform(Number), z.iso.datetime({ offset: true }).transform((s) => Date.parse(s))])
  .describe('epoch milliseconds or ISO-8601 with an offset');

export const DEFAULT_LOOKBACK_MS = 7 * 24 * 60 * 60 * 1000;
/**
 * The widest window a read across all of a project's devices may span: such a read scans every
 * device's rows of the window. With a `deviceId` the sorting key bounds the read, so any window goes.
 */
export const MAX_PROJECT_WINDOW_MS = 92 * 24 * 60 * 60 * 1000;
/** `until` left out: now, plus the minute of clock skew ingestion tolerates. */
const DEFAULT_UNTIL_AHEAD_MS = 60_000;

export const ReadQuery = z.object({
  deviceId: z.string().min(1).max(128).optional().describe('one device only; without it, every device of the project (at most 92 days then)'),
  since: Instant.optional().describe('event time from (inclusive); default: 7 days before `until`'),
  until: Instant.optional().describe('event time up to (inclusive); default: now plus one minute'),
  limit: z.coerce.number().int().min(1).max(1000).default(100).describe('items per page'),
  cursor: z.string().min(1).max(2048).optional().describe("the previous page's `nextCursor`, unchanged"),
});
export type ReadQuery = z.infer<typeof ReadQuery>;

/**
 * The window and start position of a page. The first page's window (defaults included) travels in
 * its cursor, so following pages read the same window however much later they come; a parameter
 * repeated next to a cursor must name the same window.
 */
export function readPage<P>(q: ReadQuery, decode: (cursor: string) => Page<P>, nowMs = Date.now()): { window: ReadWindow; after: P | null } {
  if (q.cursor !== undefined) {
    const page = decode(q.cursor);
    const w = page.window;
    if (q.deviceId !== undefined && q.deviceId !== w.deviceId) throw invalidCursor('it was issued for another deviceId');
    if (q.since !== undefined && q.since !== w.sinceMs) throw invalidCursor('it was issued for another since');
    if (q.until !== undefined && q.until !== w.untilMs) throw invalidCursor('it was issued for another until');
    // Cursors are not signed: one never issued (a hand-made window) is held to the same bound.
    if (tooWide(w)) throw invalidCursor('its window spans more than 92 days across all devices, which no page is issued for');
    return page;
  }
  const untilMs = q.until ?? nowMs + DEFAULT_UNTIL_AHEAD_MS;
  const sinceMs = q.since ?? untilMs - DEFAULT_LOOKBACK_MS;
  if (sinceMs > untilMs) throw new ApiError(400, 'invalid_request', 'since must not be after until');
  const window: ReadWindow = { ...(q.deviceId !== undefined ? { deviceId: q.deviceId } : {}), sinceMs, untilMs };
  if (tooWide(window)) {
    throw new ApiError(400, 'window_too_large', 'a read across all devices spans at most 92 days: narrow since/until, or name a deviceId', {
      maxWindowMs: MAX_PROJECT_WINDOW_MS,
      windowMs: untilMs - sinceMs,
    });
  }
  return { window, after: null };
}

/** A read across all devices over more than MAX_PROJECT_WINDOW_MS. */
const tooWide = (w: ReadWindow): boolean => w.deviceId === undefined && w.untilMs - w.sinceMs > MAX_PROJECT_WINDOW_MS;

/**
 * The error answers every project-authenticated read shares, plus the route's own: `extra400`
 * names the 400 codes beyond `invalid_request`, `more` adds statuses.
 */
export function readErrors(extra400: string[] = [], ...more: (number | Record<number, string>)[]): RouteConfig['responses'] {
  return errors(
    { 400: ['invalid_request', ...extra400].join(', ') },
    { 401: 'unauthorized: missing client headers, unknown client or wrong secret' },
    { 429: "rate_limited: the project's read budget is spent; see Retry-After" },
    { 503: 'storage_unavailable (the event store is unreachable) or misconfigured; see Retry-After' },
    ...more,
  );
}
