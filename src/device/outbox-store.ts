// The device's outbox: event chunks and session rows written with their ids, flushed to the ingest
// queue within its message size; failed flushes back off and are reported as a stall (D1).
import { and, eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { stalledOutboxes } from '../db/schema';
import { POSITION_EVENT_NAME } from '../fleet/position';
import { entryRow, LINED_ENTRIES, MAX_MESSAGE_BYTES, sendMessages, utf8Bytes, type CallBase, type EventRow, type IngestBody, type LinedHeader, type OutboxEvent, type PayloadRow, type SessionRow } from '../pipeline/messages';
import { marks, PARAMS_PER_STATEMENT, type MetaStore } from './schema';
import type { DeviceIdent } from './types';

/** Outbox rows per flush: event chunks of up to OUTBOX_CHUNK_BYTES, or single session rows. */
const FLUSH_OUTBOX_ROWS = 64;
/** An event chunk fits one queue message as it is (and is far under SQLite's 2 MB row limit). */
const OUTBOX_CHUNK_BYTES = MAX_MESSAGE_BYTES - 12 * 1024;
/** Merge aliases travel with a chunk up to this size; beyond it the chunk is rewritten at flush. */
const MAX_ALIAS_BYTES = 8 * 1024;
const FLUSH_RETRY_MAX_MS = 5 * 60 * 1000;
/** Text of rows written this life kept for their flush, at most this many UTF-16 units in all. */
const WRITTEN_KEEP_UNITS = 4 * 1024 * 1024;

type OutboxText = { kind: string; body: string; payload: string | null; base: string | null; lined?: LinedChunk };

/**
 * What a flush needs to send an event chunk lined (see IngestMessage.lined), kept with the text of
 * a chunk this life wrote: each entry's session and row-and-payload JSON apart, the entries'
 * profiles and the span of their positions.
 */
type LinedChunk = { sessions: string[]; rps: string[]; prs: Set<string>; pos: [number, number] | null };

/**
 * A new event for the outbox: its row and payload JSON (`rp`) and its size bound (`b`), as packed;
 * with its type, name, time and profile, its chunk can go out lined.
 */
export type OutboxInput = { rp: string; b?: number; t?: string; n?: string; c?: number; pr?: string };
/**
 * Session rows up to this size ride in the call's first event chunk (its `payload` column) instead
 * of rows of their own: a session row, its index entry and its delete at flush were a third of the
 * rows a call wrote. Larger sets (a back-fill touching many sessions) keep their own rows.
 */
const MAX_RIDING_SESSION_BYTES = 16 * 1024;

export class OutboxStore {
  /** In-flight flush: the alarm and a direct maintain() must not send the same rows twice. */
  private flushing: Promise<number> | null = null;
  /**
   * Rows at or below this seq may have reached the queue once already: their messages are flagged
   * as possible redeliveries. Held in memory, not written before every send: a row goes out only in a
   * flush of this object's life or of an earlier one, and rows of an earlier life are all below the
   * first seq this life writes (or, flushed before this life wrote any, the rows that flush read
   * count as attempted: an earlier life can only have sent from the lowest rows).
   * null until this life first writes or flushes.
   */
  private attemptedThrough: number | null = null;
  /**
   * The highest seq this life has written or a flush has read. Seqs are plain rowids, which SQLite
   * would give again once the top row is deleted: a row replaced while a flush is sending (a
   * session row's newer state) would take the seq of the one sent and be deleted with it, unsent.
   * So rows are written above this and above every row present: seqs only grow within a life
   * (until the object is erased whole). null until this life first writes or flushes.
   */
  private highSeq: number | null = null;
  /**
   * The text of rows this life wrote, by seq, until a flush deletes them: the flush after a call
   * takes its rows from here instead of reading back what the call just wrote (an event chunk is
   * most of a call's bytes). Only an exact copy is kept: a row changed in place (an erasure) drops
   * out, and a flush that meets a seq not held (an earlier life's row, one over the bound) reads
   * its rows from storage as before.
   */
  private written = new Map<number, OutboxText>();
  private writtenUnits = 0;
  /**
   * Whether `written` holds every row the table holds, and no other: a flush then takes its seqs
   * from memory instead of a SELECT. Set by a flush that saw the whole table (fewer rows than it
   * takes), with `writtenEpoch` unchanged meanwhile; cleared (and the epoch moved) by anything that
   * changes rows other than an insert kept here: a rollback, an erasure, a session row replaced, a
   * row over the bound, storage deleted.
   */
  private allWritten = false;
  private writtenEpoch = 0;

  constructor(
    private readonly sql: SqlStorage,
    private readonly meta: MetaStore,
  ) {}

  /** Replaces any unsent row of the same session: only the newest state matters. */
  enqueueSessions(rows: readonly SessionRow[]): void {
    // The replaced row's text may be held: the next flush reads the table.
    if (rows.length) this.notAllWritten();
    for (const row of rows) {
      this.sql.exec("DELETE FROM outbox WHERE kind = 'session' AND ref = ?", row.id);
      const body = JSON.stringify(row);
      const seq = this.inserted(
        this.sql.exec<{ seq: number }>(`INSERT INTO outbox (seq, kind, ref, body) VALUES (${OutboxStore.NEXT_SEQ}, 'session', ?, ?) RETURNING seq`, this.highSeq ?? 0, row.id, body),
      );
      this.keep(seq, { kind: 'session', body, payload: null, base: null });
    }
  }

  /** SQL for the next row's seq: above every row present and every seq this life used (bound to `highSeq`). */
  private static readonly NEXT_SEQ = '(SELECT max(coalesce(max(seq), 0), ?) + 1 FROM outbox)';

  /** Notes the first seq this life writes (every row below it is an earlier life's) and the highest. */
  private inserted(cursor: SqlStorageCursor<{ seq: number }>): number {
    const seq = cursor.one().seq;
    this.highSeq = Math.max(this.highSeq ?? 0, seq);
    this.attemptedThrough ??= seq - 1;
    return seq;
  }

  private keep(seq: number, text: OutboxText): void {
    const units = unitsOf(text);
    if (this.writtenUnits + units > WRITTEN_KEEP_UNITS) {
      this.notAllWritten();
      return;
    }
    this.written.set(seq, text);
    this.writtenUnits += units;
  }

  private notAllWritten(): void {
    this.allWritten = false;
    this.writtenEpoch++;
  }

  private dropWritten(upToSeq = Infinity): void {
    if (upToSeq === Infinity) {
      this.written.clear();
      this.writtenUnits = 0;
      this.notAllWritten();
      return;
    }
    for (const [seq, t] of this.written) {
      if (seq > upToSeq) continue;
      this.written.delete(seq);
      this.writtenUnits -= unitsOf(t);
    }
  }

  /** Forgets the rows' text it holds: a transaction that wrote them was rolled back. */
  forgetWritten(): void {
    this.dropWritten();
  }

  /** Forgets what it holds in memory once storage is deleted (seqs start over). */
  reset(): void {
    this.attemptedThrough = null;
    this.highSeq = null;
    this.dropWritten();
  }

  /**
   * New events go in a chunk at a time: one row per chunk, not per event, keeps the object's writes
   * close to the bytes it must store. Session ids are resolved again at flush.
   */
  appendEvents(events: readonly OutboxInput[], sessionIds: readonly string[], sessionRows: readonly SessionRow[] = [], base: string | null = null, own = false): void {
    // The session rows the events changed go out with them, in the message of their first chunk,
    // ahead of the events (as rows of their own written just before the chunk would).
    let riding: string | null = sessionRows.length ? JSON.stringify(sessionRows) : null;
    let ridingBytes = riding === null ? 0 : utf8Bytes(riding);
    if (riding !== null && (!events.length || ridingBytes > MAX_RIDING_SESSION_BYTES)) {
      this.enqueueSessions(sessionRows);
      riding = null;
      ridingBytes = 0;
    }
    let chunk: string[] = [];
    const baseBytes = base === null ? 0 : utf8Bytes(base);
    let chunkBytes = ridingBytes + baseBytes;
    // A lined message puts the base around each row's text as it is (rows packed as their own
    // fields alone: `own`), and takes its payload lines' project, device and receipt time from it.
    const linable = own && base !== null && base.includes('"project_id":') && base.includes('"device_id":') && base.includes('"received_at_ms":');
    let lined = linable ? newLinedChunk() : null;
    const writeChunk = () => {
      if (!chunk.length) return;
      // The brackets go on the first and last entries: one join makes the whole text as one flat
      // string (a template around the join would be copied again when SQLite takes it).
      chunk[0] = `[${chunk[0]!}`;
      chunk[chunk.length - 1] += ']';
      const body = chunk.join(',');
      const seq = this.inserted(
        this.sql.exec<{ seq: number }>(
          `INSERT INTO outbox (seq, kind, ref, body, payload, base) VALUES (${OutboxStore.NEXT_SEQ}, 'events', '', ?, ?, ?) RETURNING seq`,
          this.highSeq ?? 0,
          body,
          riding,
          base,
        ),
      );
      this.keep(seq, { kind: 'events', body, payload: riding, base, ...(lined ? { lined } : {}) });
      riding = null;
      chunk = [];
      chunkBytes = baseBytes;
      lined = linable ? newLinedChunk() : null;
    };
    let sessionId = '';
    let sessionJson = '""';
    events.forEach((e, i) => {
      // One OutboxEvent ({ s, r, p }) as JSON, built around the row and payload JSON as they came.
      if (sessionIds[i] !== sessionId) sessionJson = JSON.stringify((sessionId = sessionIds[i]!));
      const entry = `{"s":${sessionJson},${e.rp}}`;
      const size = (e.b ?? utf8Bytes(entry)) + 1;
      if (chunkBytes + size > OUTBOX_CHUNK_BYTES) writeChunk();
      chunk.push(entry);
      chunkBytes += size;
      if (lined && (e.t === undefined || e.n === undefined || e.c === undefined || e.pr === undefined)) lined = null;
      if (lined) {
        lined.sessions.push(sessionId);
        lined.rps.push(e.rp);
        if (e.pr) lined.prs.add(e.pr);
        if (e.t === 'track' && e.n === POSITION_EVENT_NAME) lined.pos = lined.pos ? [Math.min(lined.pos[0], e.c!), Math.max(lined.pos[1], e.c!)] : [e.c!, e.c!];
      }
    });
    writeChunk();
  }

  /** Outbox rows waiting (event chunks and session rows). */
  pendingRows(): number {
    const n = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM outbox').one().n;
    // A table that disagrees with what the flush believes it holds is read by the next flush.
    if (this.allWritten && n !== this.written.size) this.notAllWritten();
    return n;
  }

  /** Events waiting (each chunk is a JSON array of them). */
  pendingEvents(): number {
    return this.sql.exec<{ n: number }>("SELECT coalesce(sum(json_array_length(body)), 0) AS n FROM outbox WHERE kind = 'events'").one().n;
  }

  /** Drains the outbox to `queue`; a flush already under way is joined first, never run alongside. */
  async flush(queue: Queue<IngestBody>, aliases: () => Record<string, string>): Promise<number> {
    // No await between the last check and taking the slot: a second caller must see it taken.
    while (this.flushing) await this.flushing.catch(() => 0);
    const run = (async () => {
      let flushed = 0;
      for (;;) {
        const n = await this.flushOnce(queue, aliases);
        flushed += n;
        if (n < FLUSH_OUTBOX_ROWS) return flushed;
      }
    })();
    this.flushing = run;
    try {
      return await run;
    } finally {
      if (this.flushing === run) this.flushing = null;
    }
  }

  /** The flush under way, if any: a caller that must not overlap one waits for it in a loop. */
  get inFlight(): Promise<number> | null {
    return this.flushing;
  }

  /** Sends up to FLUSH_OUTBOX_ROWS outbox rows; marks them attempted first so a resend is flagged. */
  private async flushOnce(queue: Queue<IngestBody>, aliasesNow: () => Record<string, string>): Promise<number> {
    const known = this.allWritten;
    const epoch = this.writtenEpoch;
    let seqs: Array<{ seq: number }> = [];
    if (known) {
      // Held in seq order: seqs only grow within a life.
      for (const seq of this.written.keys()) {
        if (seqs.length === FLUSH_OUTBOX_ROWS) break;
        seqs.push({ seq });
      }
    } else {
      seqs = this.sql.exec<{ seq: number }>('SELECT seq FROM outbox ORDER BY seq LIMIT ?', FLUSH_OUTBOX_ROWS).toArray();
    }
    if (!seqs.length) {
      if (!known) {
        // An empty table: whatever is held is no row of it, and from here on every row is.
        this.dropWritten();
        this.allWritten = true;
      }
      return 0;
    }
    // The table as read holds no row beyond these: once they are deleted, only rows written since remain.
    const sawAll = known || seqs.length < FLUSH_OUTBOX_ROWS;
    // The rows' text as this life wrote it when it holds all of them; else as storage has it.
    const rows: Array<OutboxText & { seq: number }> = seqs.every((r) => this.written.has(r.seq))
      ? seqs.map((r) => ({ seq: r.seq, ...this.written.get(r.seq)! }))
      : this.sql
          .exec<{ seq: number; kind: string; body: string; payload: string | null; base: string | null }>('SELECT seq, kind, body, payload, base FROM outbox ORDER BY seq LIMIT ?', FLUSH_OUTBOX_ROWS)
          .toArray();
    const maxSeq = rows[rows.length - 1]!.seq;
    this.highSeq = Math.max(this.highSeq ?? 0, maxSeq);
    // A watermark, not a per-row counter: rewriting large rows per flush would cost as much as
    // writing them. Taken before the send, so a failed or partial send marks these rows too.
    const attemptedThrough = this.attemptedThrough ?? maxSeq;
    this.attemptedThrough = Math.max(attemptedThrough, maxSeq);

    // Events written before a merge still name the absorbed session: the consumer maps them.
    const aliases = aliasesNow();
    const aliasJson = JSON.stringify(aliases);
    const aliasBytes = utf8Bytes(aliasJson);

    const messages: Array<{ body: IngestBody; bytes: number }> = [];
    let sessions: string[] = [];
    let sessionBytes = 0;
    let sessionsRedelivery = false;
    const pushSessions = () => {
      if (sessions.length) messages.push({ body: `{"events":[],"payloads":[],"sessions":[${sessions.join(',')}]${sessionsRedelivery ? ',"redelivery":true' : ''}}`, bytes: sessionBytes + 128 });
      sessions = [];
      sessionBytes = 0;
      sessionsRedelivery = false;
    };
    const takeSessions = (json: string, redelivery: boolean) => {
      const size = utf8Bytes(json) + 1;
      if (sessionBytes + size + 128 > MAX_MESSAGE_BYTES) pushSessions();
      if (redelivery) sessionsRedelivery = true;
      sessions.push(json);
      sessionBytes += size;
    };
    for (const r of rows) {
      const redelivery = r.seq <= attemptedThrough;
      if (r.kind === 'events') {
        // Session rows riding with the chunk (a JSON array) are spliced in as rows written just before it.
        if (r.payload !== null && r.payload.length > 2) takeSessions(r.payload.slice(1, -1), redelivery);
        // A chunk this life wrote goes out lined when it fits: the consumer writes it without parsing
        // it. The session rows written just before it ride along when they fit too.
        if (r.lined && r.base !== null) {
          const lined = (withSessions: boolean) => {
            const flag = redelivery || (withSessions && sessionsRedelivery) ? ',"redelivery":true' : '';
            const body = linedMessage(`{"events":[],"payloads":[],"sessions":[${withSessions ? sessions.join(',') : ''}]${flag}`, r.lined!, r.base!, aliases);
            return { body, bytes: utf8Bytes(body) };
          };
          let m = lined(true);
          if (m.bytes > MAX_MESSAGE_BYTES && sessions.length) {
            pushSessions();
            m = lined(false);
          }
          if (m.bytes <= MAX_MESSAGE_BYTES) {
            messages.push(m);
            sessions = [];
            sessionBytes = 0;
            sessionsRedelivery = false;
            continue;
          }
        }
        // A stored chunk is spliced into a text message as it is; in the rare case of many merges the
        // chunk's session ids are rewritten here instead, so the message stays within its size limit.
        let chunk = r.body;
        if (aliasBytes > MAX_ALIAS_BYTES) {
          chunk = JSON.stringify((JSON.parse(chunk) as OutboxEvent[]).map((e) => ({ ...e, s: aliases[e.s] ?? e.s })));
        }
        const withAliases = aliasBytes > 2 && aliasBytes <= MAX_ALIAS_BYTES;
        const size = utf8Bytes(chunk) + (withAliases ? aliasBytes : 0) + (r.base === null ? 0 : utf8Bytes(r.base)) + 128;
        if (size > MAX_MESSAGE_BYTES) {
          // Rare (one event near the size limit): its rows go out one per message.
          pushSessions();
          for (const m of splitChunk(chunk, aliases, redelivery, r.base)) messages.push(m);
          continue;
        }
        // The session rows written just before this chunk ride in the same message when they fit:
        // half the messages, and the writer still inserts them before the events.
        if (sessionBytes + size > MAX_MESSAGE_BYTES) pushSessions();
        const flag = redelivery || sessionsRedelivery ? ',"redelivery":true' : '';
        const body = `{"events":[],"payloads":[],"sessions":[${sessions.join(',')}]${withAliases ? `,"aliases":${aliasJson}` : ''}${flag}${r.base === null ? '' : `,"base":${r.base}`},"entries":${chunk}}`;
        messages.push({ body, bytes: sessionBytes + size });
        sessions = [];
        sessionBytes = 0;
        sessionsRedelivery = false;
        continue;
      }
      takeSessions(r.body, redelivery);
    }
    pushSessions();
    await sendMessages(queue, messages);
    this.sql.exec('DELETE FROM outbox WHERE seq <= ?', maxSeq);
    this.dropWritten(maxSeq);
    if (sawAll && this.writtenEpoch === epoch) this.allWritten = true;
    return rows.length;
  }

  /** Consecutive failed flushes (0 while healthy). */
  failures(): number {
    return this.meta.get<number>('flushFailures') ?? 0;
  }

  /** Counts a failed flush; returns the count and how long to back off before the next try. */
  recordFailure(): { failures: number; delayMs: number } {
    const failures = this.failures() + 1;
    this.meta.set('flushFailures', failures);
    return { failures, delayMs: Math.min(FLUSH_RETRY_MAX_MS, 1000 * 2 ** Math.min(failures, 16)) };
  }

  recordSuccess(): void {
    if (this.meta.get<number>('flushFailures')) this.meta.set('flushFailures', 0);
  }

  /** Whether a stall was reported and not taken back yet. */
  stallReported(): boolean {
    return this.meta.get<number>('stalledSinceMs') !== null;
  }

  /**
   * Tells operators (`/admin/health`, through D1) that this outbox cannot reach the ingest queue:
   * one upsert per failed flush, which the back-off spaces out. Its own failure is only logged.
   */
  async reportStall(db: D1Database, ident: DeviceIdent | null, failures: number, err: unknown): Promise<void> {
    if (!ident) return;
    const now = Date.now();
    try {
      let since = this.meta.get<number>('stalledSinceMs');
      if (since === null) this.meta.set('stalledSinceMs', (since = now));
      // Events (each chunk is a JSON array of them, with the session rows riding along) and session rows waiting.
      const pendingRows = this.sql
        .exec<{ n: number }>(
          "SELECT coalesce(sum(CASE kind WHEN 'events' THEN json_array_length(body) + coalesce(json_array_length(payload), 0) ELSE 1 END), 0) AS n FROM outbox",
        )
        .one().n;
      const row = { ...ident, pendingRows, since, failures, lastError: String(err).slice(0, 1000), updatedAt: now };
      await drizzle(db)
        .insert(stalledOutboxes)
        .values(row)
        .onConflictDoUpdate({
          target: [stalledOutboxes.projectId, stalledOutboxes.deviceId],
          set: { pendingRows, since, failures, lastError: row.lastError, updatedAt: now },
        });
    } catch (e) {
      console.error(JSON.stringify({ msg: 'stalled outbox could not be reported', error: String(e) }));
    }
  }

  /** Takes back the stall this object reported; false when D1 refused (tried again soon). */
  async clearStall(db: D1Database, ident: DeviceIdent | null): Promise<boolean> {
    try {
      if (ident) {
        await drizzle(db)
          .delete(stalledOutboxes)
          .where(and(eq(stalledOutboxes.projectId, ident.projectId), eq(stalledOutboxes.deviceId, ident.deviceId)));
      }
      this.meta.set('stalledSinceMs', null);
      return true;
    } catch (err) {
      console.error(JSON.stringify({ msg: 'stalled outbox could not be cleared; retrying', error: String(err) }));
      return false;
    }
  }

  /**
   * Removes the unsent events of a profile, adding their ids (lower-case) and event times to
   * `ids` and `times`, to `bySession` how many went from each session they were written in, and to
   * `keptSessions` the sessions of the unsent events of others. Returns how many events went.
   */
  eraseProfileEvents(profileId: string, ids: Set<string>, times: Set<number>, bySession?: Map<string, number>, keptSessions?: Set<string>): number {
    // Rows are changed in place below: the flush reads them from storage from now on.
    this.dropWritten();
    let removed = 0;
    for (const r of this.sql.exec<{ seq: number; body: string; payload: string | null }>("SELECT seq, body, payload FROM outbox WHERE kind = 'events'").toArray()) {
      const entries = JSON.parse(r.body) as OutboxEvent[];
      const keep = entries.filter((e) => e.r.profile_id !== profileId);
      if (keptSessions) for (const e of keep) if (e.s) keptSessions.add(e.s);
      if (keep.length === entries.length) continue;
      for (const e of entries) {
        if (e.r.profile_id !== profileId) continue;
        ids.add(e.r.id);
        times.add(e.r.created_at_ms);
        if (bySession && e.s) bySession.set(e.s, (bySession.get(e.s) ?? 0) + 1);
      }
      removed += entries.length - keep.length;
      // A chunk whose session rows ride along stays (empty) until they are sent: they may be others'.
      // Its base, every removed event's values, goes with its last entry; kept entries share it.
      if (keep.length) this.sql.exec('UPDATE outbox SET body = ? WHERE seq = ?', JSON.stringify(keep), r.seq);
      else if (r.payload !== null) this.sql.exec("UPDATE outbox SET body = '[]', base = NULL WHERE seq = ?", r.seq);
      else this.sql.exec('DELETE FROM outbox WHERE seq = ?', r.seq);
    }
    return removed;
  }

  /** Drops the unsent rows of these sessions, riding ones included. */
  dropSessionRows(sessionIds: readonly string[]): void {
    this.dropWritten();
    const ids = [...new Set(sessionIds)];
    for (let i = 0; i < ids.length; i += PARAMS_PER_STATEMENT / 2) {
      const part = ids.slice(i, i + PARAMS_PER_STATEMENT / 2);
      this.sql.exec(`DELETE FROM outbox WHERE kind = 'session' AND ref IN (${marks(part.length)})`, ...part);
    }
    if (!ids.length) return;
    const drop = new Set(ids);
    const chunks = this.sql.exec<{ seq: number; body: string; payload: string }>("SELECT seq, body, payload FROM outbox WHERE kind = 'events' AND payload IS NOT NULL").toArray();
    for (const r of chunks) {
      const rows = JSON.parse(r.payload) as SessionRow[];
      const keep = rows.filter((row) => !drop.has(row.id));
      if (keep.length === rows.length) continue;
      if (keep.length) this.sql.exec('UPDATE outbox SET payload = ? WHERE seq = ?', JSON.stringify(keep), r.seq);
      else if (r.body === '[]') this.sql.exec('DELETE FROM outbox WHERE seq = ?', r.seq);
      else this.sql.exec('UPDATE outbox SET payload = NULL WHERE seq = ?', r.seq);
    }
  }
}

/** A chunk's text held in memory, in UTF-16 units (a lined chunk's entries held apart count again). */
function unitsOf(t: OutboxText): number {
  return t.body.length * (t.lined ? 2 : 1) + (t.payload?.length ?? 0) + (t.base?.length ?? 0);
}

function newLinedChunk(): LinedChunk {
  return { sessions: [], rps: [], prs: new Set(), pos: null };
}

/**
 * A lined message: `head` (its fields up to the session rows), then `,"base":…,"lined":…,"entries":[`
 * and its entries one per line with their sessions resolved (see IngestMessage.lined). Made by one
 * join, so the message is one flat string, measured and sent as it is.
 */
function linedMessage(head: string, lined: LinedChunk, base: string, aliases: Readonly<Record<string, string>>): string {
  const n = lined.rps.length;
  const header: LinedHeader = { n, prs: [...lined.prs], pos: lined.pos };
  const parts = new Array<string>(4 * n + 2);
  parts[0] = `${head},"base":${base},"lined":${JSON.stringify(header)}${LINED_ENTRIES}`;
  let sessionId = '';
  let opening = '{"s":"",';
  for (let i = 0; i < n; i++) {
    const s = lined.sessions[i]!;
    if (s !== sessionId) opening = `{"s":${JSON.stringify(aliases[(sessionId = s)] ?? s)},`;
    parts[4 * i + 1] = i === 0 ? '' : ',\n';
    parts[4 * i + 2] = opening;
    parts[4 * i + 3] = lined.rps[i]!;
    parts[4 * i + 4] = '}';
  }
  parts[4 * n + 1] = '\n]}';
  return parts.join('');
}

/**
 * One message per row of an oversized chunk: each payload row, then its event row, as objects (the
 * order the writer inserts them in, so a send that fails part-way never leaves an event stored
 * without its payload).
 */
export function splitChunk(chunk: string, aliases: Record<string, string>, redelivery: boolean, base: string | null = null): Array<{ body: IngestBody; bytes: number }> {
  const out: Array<{ body: IngestBody; bytes: number }> = [];
  const flag = redelivery ? { redelivery } : {};
  const shared = base === null ? undefined : (JSON.parse(base) as Partial<CallBase>);
  for (const entry of JSON.parse(chunk) as OutboxEvent[]) {
    const row: EventRow = { ...entryRow(entry, shared), session_id: aliases[entry.s] ?? entry.s, synced_at_ms: 0 };
    const payload: PayloadRow = { id: row.id, project_id: row.project_id, created_at_ms: row.created_at_ms, received_at_ms: row.received_at_ms, payload: entry.p };
    const owner = { device_id: row.device_id, profile_id: row.profile_id };
    for (const body of [{ events: [], payloads: [payload], sessions: [], owner, ...flag }, { events: [row], payloads: [], sessions: [], ...flag }]) {
      out.push({ body, bytes: utf8Bytes(JSON.stringify(body)) });
    }
  }
  return out;
}
