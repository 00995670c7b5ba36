// Dead letters: ingest messages that outlived their queue retries. They are parked in R2 and sent back
// by the cron once ClickHouse answers; queue machinery never deletes one, an unreadable one is quarantined.
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import { mapPool } from '../lib/pool';
import { decodeMessage, expandMessage, MAX_SEND_BATCH_BYTES, MAX_SEND_BATCH_MESSAGES, utf8Bytes, type EventRow, type IngestMessage, type OutboxEvent, type SessionRow } from './messages';

export const DEAD_LETTER_PREFIX = 'dead-letters/ingest/';
export const QUARANTINE_PREFIX = 'dead-letters/quarantine/';

/** A fresh copy of a message R2 refused comes back after this long. */
const PARK_RETRY_DELAY_SEC = 30;
/** Objects per page and per cron run: bounded, so a run after a long outage ends well inside a minute. */
const REDRIVE_PAGE = 100;
export const REDRIVE_MAX_PER_RUN = 500;
/** The queue takes 128 KB per message; a re-driven body adds a few fields to what it carried before. */
const MAX_REDRIVE_BYTES = 127 * 1024;
/** Re-drives of one message before it is quarantined (each follows a full retry budget). */
export const MAX_REDRIVES = 5;
const STATS_MAX_PAGES = 10;

/** A parked message carries, beyond its rows, how long it has been waiting across re-drives. */
interface ParkedMessage extends IngestMessage {
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
function redriveBody(key: string, bytes: ArrayBuffer): { body: string; bytes: number } | { reason: string } {
  let message: ParkedMessage;
  try {
    message = decodeMessage(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes)) as ParkedMessage;
    // The consumer must be able to expand it too, or it would come back here every 9 minutes.
    expandMessage(message, 0);
  } catch (err) {
    return { reason: `does not decode: ${String(err)}`.slice(0, 500) };
  }
  const { parkedAtMs, redrives, redelivery: _flag, ...rows } = message;
  // ClickHouse answered and still refused it this often: an operator must look, not the cron loop.
  if ((redrives ?? 0) >= MAX_REDRIVES) return { reason: `refused by ClickHouse after ${redrives} re-drives while it answered` };
  // Flagged as a redelivery: the writer skips rows ClickHouse already holds, so a copy adds nothing.
  const body = JSON.stringify({ ...rows, redelivery: true, parkedAtMs: parkedAtMs ?? parkedAtOf(key) ?? undefined, redrives: (redrives ?? 0) + 1 });
  const size = utf8Bytes(body);
  return size > MAX_REDRIVE_BYTES ? { reason: `too large to re-send: ${size} bytes` } : { body, bytes: size };
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
async function takeRedriveLock(bucket: R2Bucket, nowMs: number): Promise<(() => Promise<void>) | null> {
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

async function redrivePage(env: Env, keys: string[], nowMs: number): Promise<Omit<RedriveResult, 'remaining'>> {
  const result = { redriven: 0, quarantined: 0, failed: 0 };
  const loaded = await mapPool(keys, 8, async (key) => {
    const obj = await env.ARCHIVE.get(key);
    return obj ? { key, bytes: await obj.arrayBuffer() } : null; // null: a concurrent run took it
  });
  const ready: Array<{ key: string; body: string; bytes: number }> = [];
  for (const item of loaded) {
    if (!item) continue;
    const prepared = redriveBody(item.key, item.bytes);
    if ('body' in prepared) {
      ready.push({ key: item.key, ...prepared });
      continue;
    }
    try {
      await quarantine(env.ARCHIVE, item.key, item.bytes, prepared.reason, nowMs);
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

/** Whose rows an erasure takes out of parked messages: a device or a profile of a project, or a whole project. */
export type DeadLetterSubject =
  | { kind: 'device'; projectId: string; deviceId: string }
  | { kind: 'profile'; projectId: string; profileId: string }
  | { kind: 'project'; projectId: string };

/** What one call took out of parked and quarantined messages. `rows`: events (or lone payloads) removed. */
export interface DeadLetterErasure {
  rewritten: number;
  deleted: number;
  rows: number;
  /** The last key examined when more may follow (the next call starts after it); null when all were examined. */
  next: string | null;
}

/** Objects examined per call; an erasure step commits between calls. */
export const ERASE_PAGE = 100;
const DEAD_LETTERS_ROOT = 'dead-letters/';

/**
 * Answers what ClickHouse knows that a parked message alone does not tell: whose event a lone
 * payload row is, and which sessions hold events of other profiles.
 */
export interface SubjectLookup {
  subjectEventIds(ids: readonly string[]): Promise<Set<string>>;
  sharedSessions(sessionIds: readonly string[]): Promise<Set<string>>;
}

type Verdict = { action: 'keep' } | { action: 'delete'; rows: number } | { action: 'rewrite'; body: string; rows: number };

/** What a parked object becomes without the subject's rows. */
async function withoutSubject(bytes: ArrayBuffer, s: DeadLetterSubject, lookup: SubjectLookup): Promise<Verdict> {
  const text = new TextDecoder().decode(bytes);
  const quoted = (v: string) => JSON.stringify(v);
  // Every row carries its project id: a message without it holds nothing of the subject.
  if (!text.includes(quoted(s.projectId).slice(1, -1))) return { action: 'keep' };
  let message: ParkedMessage;
  let rows: ReturnType<typeof expandMessage>;
  try {
    message = decodeMessage(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes)) as ParkedMessage;
    rows = expandMessage(message, 0);
  } catch {
    // An object that does not decode cannot be filtered row by row: it goes whole when it names the subject.
    const names = s.kind === 'project' ? text.includes(quoted(s.projectId)) : text.includes(quoted(s.projectId)) && text.includes(quoted(s.kind === 'device' ? s.deviceId : s.profileId));
    return names ? { action: 'delete', rows: 0 } : { action: 'keep' };
  }
  const inProject = (r: { project_id: string }) => r.project_id === s.projectId;
  const isSubject = (e: EventRow) => inProject(e) && (s.kind === 'project' || (s.kind === 'device' ? e.device_id === s.deviceId : e.profile_id === s.profileId));
  const removedIds = new Set(rows.events.filter(isSubject).map((e) => e.id));
  const eventIds = new Set(rows.events.map((e) => e.id));
  // A payload sent apart from its event (an oversized chunk goes out a row per message).
  const lone = rows.payloads.filter((p) => inProject(p) && !eventIds.has(p.id)).map((p) => p.id);
  if (lone.length) {
    if (s.kind === 'project') for (const id of lone) removedIds.add(id);
    else for (const id of await lookup.subjectEventIds(lone)) removedIds.add(id);
  }
  const keptEvents = rows.events.filter((e) => !removedIds.has(e.id));
  let dropSession: (r: SessionRow) => boolean;
  if (s.kind === 'profile') {
    // A session goes with the profile when every event of it is the profile's, here and in ClickHouse.
    const kept = new Set(keptEvents.map((e) => e.session_id));
    const candidates = [...new Set(rows.events.filter((e) => removedIds.has(e.id) && e.session_id !== '' && !kept.has(e.session_id)).map((e) => e.session_id))];
    const shared = candidates.length ? await lookup.sharedSessions(candidates) : new Set<string>();
    const gone = new Set(candidates.filter((id) => !shared.has(id)));
    dropSession = (r) => inProject(r) && gone.has(r.id);
  } else {
    dropSession = (r) => inProject(r) && (s.kind === 'project' || r.device_id === s.deviceId);
  }
  const keptPayloads = rows.payloads.filter((p) => !(inProject(p) && removedIds.has(p.id)));
  const keptSessions = rows.sessions.filter((r) => !dropSession(r));
  const removed = rows.events.length - keptEvents.length + rows.payloads.length - keptPayloads.length + rows.sessions.length - keptSessions.length;
  if (removed === 0) return { action: 'keep' };
  if (!keptEvents.length && !keptPayloads.length && !keptSessions.length) return { action: 'delete', rows: removedIds.size };
  // The rest in the message's own form (outbox entries stay entries: the re-drive's size bound
  // holds for what is left), with what the re-drive counts: its first-parked time and re-drives.
  const entries = message.entries ?? (message.chunk ? (JSON.parse(message.chunk) as OutboxEvent[]) : undefined);
  const { chunk: _chunk, entries: _entries, ...rest } = message;
  const body = JSON.stringify({
    ...rest,
    events: message.events.filter((e) => !removedIds.has(e.id)),
    payloads: message.payloads.filter((p) => !(inProject(p) && removedIds.has(p.id))),
    sessions: keptSessions,
    ...(entries ? { entries: entries.filter((e) => !removedIds.has(e.r.id)) } : {}),
  });
  return { action: 'rewrite', body, rows: removedIds.size };
}

/**
 * Takes the subject's rows out of parked (and quarantined) ingest messages, so that neither a later
 * re-drive nor an operator's replay brings them back: an object holding only the subject's rows is
 * deleted, one holding others' too is rewritten in place without them. Examines up to ERASE_PAGE
 * objects after `after` (a key; '' from the start), under the re-drive lock: a re-drive never sends
 * an object while it is being rewritten. Throws while a re-drive holds the lock (the job retries).
 */
export async function eraseFromDeadLetters(bucket: R2Bucket, s: DeadLetterSubject, lookup: SubjectLookup, after: string, nowMs: number): Promise<DeadLetterErasure> {
  const release = await takeRedriveLock(bucket, nowMs);
  if (!release) throw new Error('a dead-letter re-drive is under way; parked messages are erased once it has ended (the job retries)');
  try {
    const listing = await bucket.list({ prefix: DEAD_LETTERS_ROOT, limit: ERASE_PAGE, ...(after ? { startAfter: after } : {}) });
    const result: DeadLetterErasure = { rewritten: 0, deleted: 0, rows: 0, next: listing.truncated ? (listing.objects.at(-1)?.key ?? null) : null };
    for (const o of listing.objects) {
      if (!o.key.startsWith(DEAD_LETTER_PREFIX) && !o.key.startsWith(QUARANTINE_PREFIX)) continue;
      const obj = await bucket.get(o.key);
      if (!obj) continue;
      const verdict = await withoutSubject(await obj.arrayBuffer(), s, lookup);
      if (verdict.action === 'keep') continue;
      if (verdict.action === 'delete') {
        // The key only: a parked message's rows never go into a log.
        console.log(JSON.stringify({ msg: 'erasure: parked message deleted, it held only rows of the subject or could not be read row by row', key: o.key }));
        await bucket.delete(o.key);
        result.deleted += 1;
      } else {
        await bucket.put(o.key, verdict.body, { httpMetadata: { contentType: 'application/json' }, ...(obj.customMetadata ? { customMetadata: obj.customMetadata } : {}) });
        result.rewritten += 1;
      }
      result.rows += verdict.rows;
    }
    return result;
  } finally {
    await release().catch((err: unknown) => console.error(JSON.stringify({ msg: 're-drive lock not released; the next run takes it once stale', error: String(err) })));
  }
}
