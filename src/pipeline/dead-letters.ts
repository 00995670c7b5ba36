// Dead letters: ingest messages that outlived their queue retries. They are parked in R2 and sent back
// by the cron once ClickHouse answers; queue machinery never deletes one, an unreadable one is quarantined.
import { and, inArray, ne, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { jobs, projects } from '../db/schema';
import type { Env } from '../env';
import { mapPool } from '../lib/pool';
import { decodeMessage, expandMessage, MAX_SEND_BATCH_BYTES, MAX_SEND_BATCH_MESSAGES, utf8Bytes, type IngestMessage } from './messages';

export const DEAD_LETTER_PREFIX = 'dead-letters/ingest/';
export const QUARANTINE_PREFIX = 'dead-letters/quarantine/';

/** A fresh copy of a message R2 refused comes back after this long. */
const PARK_RETRY_DELAY_SEC = 30;
/** Objects per page and per cron run: bounded, so a run after a long outage ends well inside a minute. */
const REDRIVE_PAGE = 100;
export const REDRIVE_MAX_PER_RUN = 500;
/** The queue takes 128 KB per message; a re-driven body adds a few fields to what it carried before. */
const MAX_REDRIVE_BYTES = 127 * 1024;
/** Re-drives of one message before it is quarantined (each follows a full retry budget)... */
export const MAX_REDRIVES = 5;
/**
 * ...and how long it must have been parked by then: ClickHouse can answer pings while it refuses
 * inserts (a full disk, a read-only replica, too many parts) for longer than five re-drives (about
 * 45 minutes), and rows accepted during such an outage must not wait in quarantine for an operator.
 */
export const QUARANTINE_AFTER_MS = 24 * 60 * 60 * 1000;
const STATS_MAX_PAGES = 10;

/** A parked message carries, beyond its rows, how long it has been waiting across re-drives. */
export interface ParkedMessage extends IngestMessage {
  /** When it was first parked: a message that fails again after a re-drive keeps its age. */
  parkedAtMs?: number;
  /** How many times the cron has sent it back. */
  redrives?: number;
}

function parkedKey(parkedAtMs: number, id: string): string {
  return `${DEAD_LETTER_PREFIX}${String(parkedAtMs).padStart(13, '0')}-${id}.json`;
}

/** The first-parked time in a key (keys sort by it, so the first listed is the oldest). */
function parkedAtOf(key: string): number | null {
  const ms = Number(key.slice(DEAD_LETTER_PREFIX.length).split('-')[0]);
  return Number.isSafeInteger(ms) && ms > 0 ? ms : null;
}

function firstParkedAt(body: unknown): number | null {
  try {
    const m = (typeof body === 'string' ? JSON.parse(body) : body) as Partial<ParkedMessage> | null;
    const at = m?.parkedAtMs;
    return typeof at === 'number' && Number.isSafeInteger(at) && at > 0 ? at : null;
  } catch {
    return null;
  }
}

async function park(bucket: R2Bucket, m: Message<unknown>, nowMs: number): Promise<void> {
  const body = m.body;
  // Stored as it came: text as is, bytes as bytes, anything else as JSON. Decoding is the cron's job.
  const data = typeof body === 'string' || body instanceof ArrayBuffer || ArrayBuffer.isView(body) ? body : (JSON.stringify(body) ?? 'null');
  await bucket.put(parkedKey(firstParkedAt(body) ?? nowMs, m.id), data, { httpMetadata: { contentType: 'application/json' } });
}

/**
 * The dead-letter queue's consumer: every message ends parked in R2. When R2 refuses, a fresh copy
 * goes back into this queue (its attempts start over) rather than spending this consumer's own
 * retries, after which the platform would delete it: this queue has no dead-letter queue of its own.
 */
export async function handleDeadLetters(batch: MessageBatch<unknown>, env: Env): Promise<void> {
  for (const m of batch.messages) {
    try {
      await park(env.ARCHIVE, m, Date.now());
      m.ack();
      continue;
    } catch (err) {
      console.error(JSON.stringify({ msg: 'dead letter could not be parked; sending it round again', id: m.id, attempts: m.attempts, error: String(err) }));
    }
    try {
      const body = m.body;
      const contentType = typeof body === 'string' ? 'text' : body instanceof ArrayBuffer || ArrayBuffer.isView(body) ? 'bytes' : 'json';
      await env.INGEST_DLQ.send(body, { contentType, delaySeconds: PARK_RETRY_DELAY_SEC });
      m.ack();
    } catch (err) {
      // Neither R2 nor the queue took it: the platform's retries (max_retries in wrangler.toml) remain.
      console.error(JSON.stringify({ msg: 'dead letter could not be parked nor re-queued; retrying', id: m.id, attempts: m.attempts, error: String(err) }));
      m.retry({ delaySeconds: PARK_RETRY_DELAY_SEC });
    }
  }
}

async function clickhouseAnswers(env: Env): Promise<boolean> {
  try {
    return await clickhouse(getConfig(env).clickhouse, { timeoutMs: 5000 }).ping();
  } catch {
    return false;
  }
}

/** A parked object as the ingest queue takes it back, or why it cannot go back. */
function redriveBody(key: string, bytes: ArrayBuffer, nowMs: number): { body: string; bytes: number; projects: string[] } | { reason: string; projects?: string[] } {
  let message: ParkedMessage;
  let projects: string[];
  try {
    message = decodeMessage(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes)) as ParkedMessage;
    // The consumer must be able to expand it too, or it would come back here every 9 minutes.
    const rows = expandMessage(message, 0);
    projects = [...new Set([...rows.events, ...rows.payloads, ...rows.sessions].map((r) => r.project_id))];
  } catch (err) {
    return { reason: `does not decode: ${String(err)}`.slice(0, 500) };
  }
  const { parkedAtMs, redrives, redelivery: _flag, ...rows } = message;
  // ClickHouse answered and still refused it this often, for a day: an operator must look, not the cron loop.
  const firstParkedMs = parkedAtMs ?? parkedAtOf(key) ?? 0;
  if ((redrives ?? 0) >= MAX_REDRIVES && nowMs - firstParkedMs >= QUARANTINE_AFTER_MS) {
    return { reason: `refused by ClickHouse after ${redrives} re-drives over ${Math.floor((nowMs - firstParkedMs) / 3_600_000)} hours while it answered`, projects };
  }
  // Flagged as a redelivery: the writer skips rows ClickHouse already holds, so a copy adds nothing.
  const body = JSON.stringify({ ...rows, redelivery: true, parkedAtMs: parkedAtMs ?? parkedAtOf(key) ?? undefined, redrives: (redrives ?? 0) + 1 });
  const size = utf8Bytes(body);
  return size > MAX_REDRIVE_BYTES ? { reason: `too large to re-send: ${size} bytes`, projects } : { body, bytes: size, projects };
}

/** Moves an object that cannot be re-driven aside, byte for byte, with the reason; re-running is harmless. */
async function quarantine(bucket: R2Bucket, key: string, bytes: ArrayBuffer, reason: string, nowMs: number): Promise<void> {
  await bucket.put(`${QUARANTINE_PREFIX}${key.slice(DEAD_LETTER_PREFIX.length)}`, bytes, {
    httpMetadata: { contentType: 'application/json' },
    customMetadata: { reason, parkedKey: key, quarantinedAt: new Date(nowMs).toISOString() },
  });
  await bucket.delete(key);
  console.error(JSON.stringify({ msg: 'dead letter quarantined', key, reason }));
}

export interface RedriveResult {
  redriven: number;
  quarantined: number;
  /** Objects that stay parked for the next run (the queue refused them). */
  failed: number;
  /** More parked objects than this run took. */
  remaining: boolean;
  /** Set when nothing was tried: ClickHouse does not answer, or another re-drive is running. */
  skipped?: 'clickhouse_down' | 'busy';
}

/** The re-drive lock: one R2 object created only if absent, outside the parked prefix. */
export const REDRIVE_LOCK_KEY = 'dead-letters/redrive.lock';
/** A lock older than this was left by a run that died: the next run removes it. */
const REDRIVE_LOCK_STALE_MS = 5 * 60_000;

/**
 * Takes the re-drive lock, so the cron and an operator's replay never send the same parked message
 * twice at once (a copy would be absorbed by the writer, but would also be parked twice if it
 * failed again). Returns the release function, or null while another run holds it.
 */
export async function takeRedriveLock(bucket: R2Bucket, nowMs: number): Promise<(() => Promise<void>) | null> {
  const token = crypto.randomUUID();
  const lock = { customMetadata: { takenAt: String(nowMs) } };
  let put = await bucket.put(REDRIVE_LOCK_KEY, token, { ...lock, onlyIf: { etagDoesNotMatch: '*' } });
  if (put === null) {
    const head = await bucket.head(REDRIVE_LOCK_KEY);
    const takenAt = Number(head?.customMetadata?.takenAt ?? head?.uploaded.getTime() ?? nowMs);
    if (head && nowMs - takenAt < REDRIVE_LOCK_STALE_MS) return null;
    // A dead run's lock: taken over only if it is still that very object (of two runs taking it
    // over at once, one put matches its etag, the other finds it changed and backs off).
    put = head ? await bucket.put(REDRIVE_LOCK_KEY, token, { ...lock, onlyIf: { etagMatches: head.etag } }) : await bucket.put(REDRIVE_LOCK_KEY, token, { ...lock, onlyIf: { etagDoesNotMatch: '*' } });
    if (put === null) return null;
  }
  return async () => {
    // Only our own lock: a run that outlived the stale bound must not remove its successor's.
    const held = await bucket.get(REDRIVE_LOCK_KEY);
    if (held && (await held.text()) === token) await bucket.delete(REDRIVE_LOCK_KEY);
  };
}

/**
 * Which of these project ids name no project (deleted ones: rows are only accepted for existing
 * projects, and project ids are never reused) or a project a deletion job has begun to empty (its
 * clients revoked: no request of it is accepted again, whatever becomes of the job).
 */
async function deletedProjects(db: D1Database, ids: readonly string[]): Promise<Set<string>> {
  const unique = [...new Set(ids)];
  if (!unique.length) return new Set();
  const emptying = await drizzle(db)
    .select({ projectId: sql<string>`json_extract(${jobs.params}, '$.projectId')` })
    .from(jobs)
    // CASE, not AND: SQLite may evaluate AND terms in any order, and other jobs' cursors are not all JSON.
    .where(
      and(
        ne(jobs.state, 'succeeded'),
        sql`CASE WHEN ${jobs.type} <> 'project_deletion' OR NOT json_valid(${jobs.cursor}) THEN 0 ELSE coalesce(json_extract(${jobs.cursor}, '$.revokedAt'), 0) END > 0`,
      ),
    )
    .all();
  const deleting = new Set(emptying.map((j) => j.projectId));
  const found = new Set<string>();
  // D1 binds at most 100 parameters per statement.
  for (let i = 0; i < unique.length; i += 90) {
    const part = unique.slice(i, i + 90);
    for (const r of await drizzle(db).select({ id: projects.id }).from(projects).where(inArray(projects.id, part)).all()) found.add(r.id);
  }
  return new Set(unique.filter((id) => !found.has(id) || deleting.has(id)));
}

async function redrivePage(env: Env, keys: string[], nowMs: number): Promise<Omit<RedriveResult, 'remaining'>> {
  const result = { redriven: 0, quarantined: 0, failed: 0 };
  const loaded = await mapPool(keys, 8, async (key) => {
    const obj = await env.ARCHIVE.get(key);
    return obj ? { key, bytes: await obj.arrayBuffer() } : null; // null: a concurrent run took it
  });
  const prepared = loaded.flatMap((item) => (item ? [{ ...item, prepared: redriveBody(item.key, item.bytes, Date.now()) }] : []));
  // A message of a deleted project (parked after its deletion cleared the dead letters) is not sent
  // back: its rows would be written for a project that no longer exists.
  const gone = await deletedProjects(env.DB, prepared.flatMap((i) => i.prepared.projects ?? []));
  const ready: Array<{ key: string; body: string; bytes: number }> = [];
  for (const { prepared: p, ...item } of prepared) {
    if (p.projects?.length && p.projects.every((id) => gone.has(id))) {
      console.log(JSON.stringify({ msg: 'dead letter of a deleted project dropped', key: item.key }));
      await env.ARCHIVE.delete(item.key);
      continue;
    }
    if ('body' in p) {
      ready.push({ key: item.key, body: p.body, bytes: p.bytes });
      continue;
    }
    try {
      await quarantine(env.ARCHIVE, item.key, item.bytes, p.reason, nowMs);
      result.quarantined++;
    } catch (err) {
      console.error(JSON.stringify({ msg: 'dead letter could not be quarantined', key: item.key, error: String(err) }));
      result.failed++;
    }
  }
  const groups: Array<typeof ready> = [];
  let bytes = 0;
  for (const r of ready) {
    const last = groups.at(-1);
    if (last && last.length < MAX_SEND_BATCH_MESSAGES && bytes + r.bytes <= MAX_SEND_BATCH_BYTES) {
      last.push(r);
      bytes += r.bytes;
    } else {
      groups.push([r]);
      bytes = r.bytes;
    }
  }
  for (const group of groups) {
    let sent = group;
    try {
      await env.INGEST_QUEUE.sendBatch(group.map((r) => ({ body: r.body, contentType: 'text' as const })));
    } catch (err) {
      // One message the queue refuses must not keep the rest of its group parked.
      console.error(JSON.stringify({ msg: 'dead-letter re-drive batch refused; sending one by one', messages: group.length, error: String(err) }));
      sent = [];
      for (const r of group) {
        try {
          await env.INGEST_QUEUE.send(r.body, { contentType: 'text' });
          sent.push(r);
        } catch (e) {
          console.error(JSON.stringify({ msg: 'dead letter could not be re-driven; stays parked', key: r.key, error: String(e) }));
          result.failed++;
        }
      }
    }
    // Deleted only once sent: a crash in between sends it again next run, which the writer absorbs.
    if (sent.length) await env.ARCHIVE.delete(sent.map((r) => r.key));
    result.redriven += sent.length;
  }
  return result;
}

/**
 * Sends parked messages back to the ingest queue, at most `maxObjects` per call, oldest first. With
 * `requireClickHouse` (the cron) nothing moves until ClickHouse answers, so an outage does not churn.
 */
export async function redriveDeadLetters(
  env: Env,
  nowMs: number,
  { maxObjects = REDRIVE_MAX_PER_RUN, requireClickHouse = true }: { maxObjects?: number; requireClickHouse?: boolean } = {},
): Promise<RedriveResult> {
  const result: RedriveResult = { redriven: 0, quarantined: 0, failed: 0, remaining: false };
  const release = await takeRedriveLock(env.ARCHIVE, nowMs);
  if (!release) return { ...result, remaining: true, skipped: 'busy' };
  try {
    return await redriveLocked(env, nowMs, maxObjects, requireClickHouse, result);
  } finally {
    await release().catch((err: unknown) => console.error(JSON.stringify({ msg: 're-drive lock not released; the next run takes it once stale', error: String(err) })));
  }
}

async function redriveLocked(env: Env, nowMs: number, maxObjects: number, requireClickHouse: boolean, result: RedriveResult): Promise<RedriveResult> {
  let cursor: string | undefined;
  let checked = !requireClickHouse;
  let taken = 0;
  for (let page = 0; taken < maxObjects && page < maxObjects; page++) {
    const listing = await env.ARCHIVE.list({ prefix: DEAD_LETTER_PREFIX, limit: Math.min(REDRIVE_PAGE, maxObjects - taken), ...(cursor ? { cursor } : {}) });
    result.remaining = listing.truncated;
    if (listing.objects.length) {
      if (!checked) {
        if (!(await clickhouseAnswers(env))) return { ...result, remaining: true, skipped: 'clickhouse_down' };
        checked = true;
      }
      taken += listing.objects.length;
      const page = await redrivePage(env, listing.objects.map((o) => o.key), nowMs);
      result.redriven += page.redriven;
      result.quarantined += page.quarantined;
      result.failed += page.failed;
    }
    if (!listing.truncated) break;
    cursor = listing.cursor;
  }
  return result;
}

async function countPrefix(bucket: R2Bucket, prefix: string): Promise<{ count: number; first: R2Object | null; truncated: boolean }> {
  let count = 0;
  let first: R2Object | null = null;
  let cursor: string | undefined;
  for (let page = 0; page < STATS_MAX_PAGES; page++) {
    const listing = await bucket.list({ prefix, limit: 1000, ...(cursor ? { cursor } : {}) });
    first ??= listing.objects[0] ?? null;
    count += listing.objects.length;
    if (!listing.truncated) return { count, first, truncated: false };
    cursor = listing.cursor;
  }
  return { count, first, truncated: true };
}

export interface DeadLetterStats {
  /** Messages parked and waiting for a re-drive. */
  parked: number;
  /** Seconds since the oldest of them was first parked; null when none waits. */
  oldestAgeSec: number | null;
  /** Parked objects that could not be re-driven, kept under `dead-letters/quarantine/`. */
  quarantined: number;
  /** More than 10 000 objects under a prefix: the counts are lower bounds. */
  truncated: boolean;
}

export async function deadLetterStats(bucket: R2Bucket, nowMs: number): Promise<DeadLetterStats> {
  const [parked, quarantined] = await Promise.all([countPrefix(bucket, DEAD_LETTER_PREFIX), countPrefix(bucket, QUARANTINE_PREFIX)]);
  const oldestMs = parked.first ? (parkedAtOf(parked.first.key) ?? parked.first.uploaded.getTime()) : null;
  return {
    parked: parked.count,
    oldestAgeSec: oldestMs === null ? null : Math.max(0, Math.floor((nowMs - oldestMs) / 1000)),
    quarantined: quarantined.count,
    truncated: parked.truncated || quarantined.truncated,
  };
}

export interface QuarantinedLetter {
  key: string;
  parkedKey: string | null;
  reason: string | null;
  quarantinedAt: string | null;
  size: number;
}

/** The first `limit` quarantined objects, with why each could not be re-driven. */
export async function listQuarantine(bucket: R2Bucket, limit = 100): Promise<QuarantinedLetter[]> {
  const listing = await bucket.list({ prefix: QUARANTINE_PREFIX, limit, include: ['customMetadata'] });
  return listing.objects.map((o) => ({
    key: o.key,
    parkedKey: o.customMetadata?.parkedKey ?? null,
    reason: o.customMetadata?.reason ?? null,
    quarantinedAt: o.customMetadata?.quarantinedAt ?? null,
    size: o.size,
  }));
}
