// `Idempotency-Key` on the ingest routes (as Stripe and PostHog clients send it): a retried request
// with the same key and body is answered as the first one was and stores nothing new.
import { and, eq, lt, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { idempotencyKeys } from '../db/schema';
import { ApiError } from '../errors';
import { clientIp } from './context';

/** How long a key is remembered. */
export const IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000;
/** A request holding a key for longer than this has died: a retry takes the key over. */
const HOLD_MS = 60_000;

const KeyHeader = z.string().min(1).max(255).regex(/^[\x21-\x7e]+$/);

/** Who sent a request, as the cookieless device id is derived from it. */
export interface ClientIdentity {
  ip: string;
  userAgent: string;
}

export type IdempotencyStart =
  | { kind: 'first'; receivedAtMs: number; client: ClientIdentity; finish(status: number, body: unknown, final: boolean): Promise<void> }
  | { kind: 'replay'; status: number; body: unknown }
  | { kind: 'none' };

async function digestHex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Claims the request's key, or finds the answer of an earlier request with it. `final` on finish:
 * the answer may be replayed (no row came back retryable); otherwise the key is released and a
 * retry runs again, with the first request's receipt time so rows already accepted are duplicates.
 */
export async function startIdempotent(d1: D1Database, request: Request, projectId: string, route: string, body: Uint8Array, nowMs: number): Promise<IdempotencyStart> {
  const header = request.headers.get('idempotency-key');
  if (header === null) return { kind: 'none' };
  const parsed = KeyHeader.safeParse(header);
  if (!parsed.success) throw new ApiError(400, 'invalid_idempotency_key', 'Idempotency-Key must be 1 to 255 printable ASCII characters');
  const key = parsed.data;
  const bodySha256 = await digestHex(body);
  const client = { ip: clientIp(request), userAgent: request.headers.get('user-agent') ?? '' };
  try {
    return await claim(d1, projectId, key, route, bodySha256, nowMs, client);
  } catch (err) {
    if (err instanceof ApiError) throw err;
    // The key cannot be checked, so the request cannot be run safely: nothing was stored, retry.
    console.error(JSON.stringify({ msg: 'idempotency keys unavailable', error: String(err) }));
    throw new ApiError(503, 'idempotency_unavailable', 'the Idempotency-Key store is unavailable; nothing was stored, retry', { retryable: true }, { 'Retry-After': '2' });
  }
}

const inProgress = () =>
  new ApiError(409, 'idempotency_in_progress', 'a request with this Idempotency-Key is being processed; retry', { retryable: true }, { 'Retry-After': '1' });

async function claim(d1: D1Database, projectId: string, key: string, route: string, bodySha256: string, nowMs: number, client: ClientIdentity): Promise<IdempotencyStart> {
  const db = drizzle(d1);
  const where = and(eq(idempotencyKeys.projectId, projectId), eq(idempotencyKeys.key, key));
  const inserted = await db
    .insert(idempotencyKeys)
    .values({ projectId, key, route, bodySha256, receivedAtMs: nowMs, createdAt: nowMs, heldAt: nowMs, clientIp: client.ip, userAgent: client.userAgent })
    .onConflictDoNothing()
    .returning({ key: idempotencyKeys.key });
  let receivedAtMs = nowMs;
  let first = client;
  if (inserted.length === 0) {
    const row = await db.select().from(idempotencyKeys).where(where).get();
    if (!row) throw inProgress();
    if (row.createdAt < nowMs - IDEMPOTENCY_TTL_MS) {
      // A forgotten key (past the TTL, not pruned yet) is a new one: take the row over as such.
      const renewed = await db
        .update(idempotencyKeys)
        .set({ route, bodySha256, receivedAtMs: nowMs, createdAt: nowMs, heldAt: nowMs, status: null, response: null, clientIp: client.ip, userAgent: client.userAgent })
        .where(and(where, eq(idempotencyKeys.createdAt, row.createdAt)))
        .returning({ key: idempotencyKeys.key });
      if (renewed.length === 0) throw inProgress();
    } else {
      if (row.route !== route || row.bodySha256 !== bodySha256) {
        throw new ApiError(422, 'idempotency_key_reused', 'this Idempotency-Key was used for a different request; use a new key for new data', { key });
      }
      if (row.status !== null) return { kind: 'replay', status: row.status, body: JSON.parse(row.response ?? 'null') as unknown };
      if (row.heldAt > nowMs - HOLD_MS) throw inProgress();
      // Released, or its holder died: take it over, compare-and-set on the holder's time.
      const taken = await db
        .update(idempotencyKeys)
        .set({ heldAt: nowMs })
        .where(and(where, eq(idempotencyKeys.heldAt, row.heldAt), sql`${idempotencyKeys.status} IS NULL`))
        .returning({ key: idempotencyKeys.key });
      if (taken.length === 0) throw inProgress();
      // The retry is the first request again: same receipt time, same client identity.
      receivedAtMs = row.receivedAtMs;
      first = { ip: row.clientIp, userAgent: row.userAgent };
    }
  }
  const heldAt = nowMs;
  return {
    kind: 'first',
    receivedAtMs,
    client: first,
    async finish(status, responseBody, final) {
      const mine = and(where, eq(idempotencyKeys.heldAt, heldAt));
      if (final) await db.update(idempotencyKeys).set({ status, response: JSON.stringify(responseBody), heldAt: 0 }).where(mine);
      else await db.update(idempotencyKeys).set({ heldAt: 0 }).where(mine);
    },
  };
}

/**
 * Runs an ingest handler under the request's Idempotency-Key (if any): a replay answers the stored
 * response with `Idempotent-Replayed: true`; a 4xx or an answer without retryable rows is stored.
 */
export async function withIdempotency(
  d1: D1Database,
  request: Request,
  projectId: string,
  route: string,
  body: Uint8Array,
  handle: (receivedAtMs: number, client?: ClientIdentity) => Promise<{ status: number; body: unknown; final: boolean }>,
): Promise<Response> {
  const nowMs = Date.now();
  const start = await startIdempotent(d1, request, projectId, route, body, nowMs);
  if (start.kind === 'replay') return Response.json(start.body, { status: start.status, headers: { 'Idempotent-Replayed': 'true' } });
  try {
    const answer = start.kind === 'first' ? await handle(start.receivedAtMs, start.client) : await handle(nowMs);
    // The rows are accepted whatever happens to the stored answer: a failure to store it must not
    // turn this answer into an error. The key stays held; a retry after HOLD_MS redoes the request
    // with the first receipt time, so every accepted row comes back as a duplicate.
    if (start.kind === 'first') await finishQuietly(start, answer.status, answer.body, answer.final);
    return Response.json(answer.body, { status: answer.status });
  } catch (err) {
    if (start.kind === 'first') {
      const clientFault = err instanceof ApiError && err.status < 500;
      await finishQuietly(start, clientFault ? err.status : 0, clientFault ? err.toJSON() : null, clientFault);
    }
    throw err;
  }
}

async function finishQuietly(start: Extract<IdempotencyStart, { kind: 'first' }>, status: number, body: unknown, final: boolean): Promise<void> {
  try {
    await start.finish(status, body, final);
  } catch (err) {
    console.error(JSON.stringify({ msg: 'idempotent answer not stored; a retry will redo the request as a duplicate', error: String(err) }));
  }
}

/** Forgets keys past the TTL, a bounded batch per call (the cron calls it every minute). */
export async function pruneIdempotencyKeys(d1: D1Database, nowMs: number, batch = 1000): Promise<number> {
  const r = await d1
    .prepare(`DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)`)
    .bind(nowMs - IDEMPOTENCY_TTL_MS, batch)
    .run();
  return r.meta.changes ?? 0;
}
