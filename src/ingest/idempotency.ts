// `Idempotency-Key` on the ingest routes (as Stripe and PostHog clients send it): a retried request
// with the same key and body is answered as the first one was and stores nothing new.
import { and, eq, lt, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { idempotencyKeys } from '../db/schema';
import { ApiError } from '../errors';

/** How long a key is remembered. */
export const IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000;
/** A request holding a key for longer than this has died: a retry takes the key over. */
const HOLD_MS = 60_000;

const KeyHeader = z.string().min(1).max(255).regex(/^[\x21-\x7e]+$/);

export type IdempotencyStart =
  | { kind: 'first'; receivedAtMs: number; finish(status: number, body: unknown, final: boolean): Promise<void> }
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
  const db = drizzle(d1);
  const bodySha256 = await digestHex(body);
  const where = and(eq(idempotencyKeys.projectId, projectId), eq(idempotencyKeys.key, key));

  // A forgotten key (past the TTL) is a new one.
  await db.delete(idempotencyKeys).where(and(where, lt(idempotencyKeys.createdAt, nowMs - IDEMPOTENCY_TTL_MS)));
  const inserted = await db
    .insert(idempotencyKeys)
    .values({ projectId, key, route, bodySha256, receivedAtMs: nowMs, createdAt: nowMs, heldAt: nowMs })
    .onConflictDoNothing()
    .returning({ key: idempotencyKeys.key });
  let receivedAtMs = nowMs;
  let heldAt = nowMs;
  if (inserted.length === 0) {
    const row = await db.select().from(idempotencyKeys).where(where).get();
    if (!row) throw new ApiError(409, 'idempotency_in_progress', 'a request with this Idempotency-Key is being processed; retry', { retryable: true }, { 'Retry-After': '1' });
    if (row.route !== route || row.bodySha256 !== bodySha256) {
      throw new ApiError(422, 'idempotency_key_reused', 'this Idempotency-Key was used for a different request; use a new key for new data', { key });
    }
    if (row.status !== null) return { kind: 'replay', status: row.status, body: JSON.parse(row.response ?? 'null') as unknown };
    if (row.heldAt > nowMs - HOLD_MS) {
      throw new ApiError(409, 'idempotency_in_progress', 'a request with this Idempotency-Key is being processed; retry', { retryable: true }, { 'Retry-After': '1' });
    }
    // Released, or its holder died: take it over, compare-and-set on the holder's time.
    const taken = await db
      .update(idempotencyKeys)
      .set({ heldAt: nowMs })
      .where(and(where, eq(idempotencyKeys.heldAt, row.heldAt), sql`${idempotencyKeys.status} IS NULL`))
      .returning({ key: idempotencyKeys.key });
    if (taken.length === 0) throw new ApiError(409, 'idempotency_in_progress', 'a request with this Idempotency-Key is being processed; retry', { retryable: true }, { 'Retry-After': '1' });
    receivedAtMs = row.receivedAtMs;
    heldAt = nowMs;
  }
  return {
    kind: 'first',
    receivedAtMs,
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
  handle: (receivedAtMs: number) => Promise<{ status: number; body: unknown; final: boolean }>,
): Promise<Response> {
  const nowMs = Date.now();
  const start = await startIdempotent(d1, request, projectId, route, body, nowMs);
  if (start.kind === 'replay') return Response.json(start.body, { status: start.status, headers: { 'Idempotent-Replayed': 'true' } });
  try {
    const answer = await handle(start.kind === 'first' ? start.receivedAtMs : nowMs);
    if (start.kind === 'first') await start.finish(answer.status, answer.body, answer.final);
    return Response.json(answer.body, { status: answer.status });
  } catch (err) {
    if (start.kind === 'first') {
      const clientFault = err instanceof ApiError && err.status < 500;
      await start.finish(clientFault ? err.status : 0, clientFault ? err.toJSON() : null, clientFault);
    }
    throw err;
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
