// One object per (project, device): dedup, sessions by event time, live state, and an outbox
// written in the same storage transaction as the event ids, flushed to the ingest queue by the alarm.
import { DurableObject } from 'cloudflare:workers';
import { and, eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { stalledOutboxes } from '../src/db/schema';
import type { Env } from '../src/env';
import { packEvent, unpackEvents, type PackedEvent, type PackedEvents } from '../src/device/packed';
import { assignSessions, type Session } from '../src/device/sessions';
import { decodeFingerprints, encodeFingerprints, fingerprint, SeenIndex } from '../src/device/seen-index';
import {
  MAX_MESSAGE_BYTES,
  sendMessages,
  utf8Bytes,
  type EventRow,
  type IngestBody,
  type OutboxEvent,
  type PayloadRow,
  type SessionRow,
} from '../src/pipeline/messages';

export const DEDUP_WINDOW_MS = 7 * 24 * 60 * 60 * 1000;
/** Sessions are kept past the dedup window; the route refuses events older than 5 days. */
const SESSION_RETENTION_MS = DEDUP_WINDOW_MS + 24 * 60 * 60 * 1000;
const SEEN_SWEEP_INTERVAL_MS = 60 * 60 * 1000;
const FLUSH_RETRY_MAX_MS = 5 * 60 * 1000;
/** A reported stall that D1 would not take back is tried again this soon. */
const STALL_CLEAR_RETRY_MS = 60 * 1000;
/** Dedup keys are stored a chunk per call: at most this many keys, and this many bytes, a row. */
const SEEN_CHUNK_KEYS = 2000;
const SEEN_CHUNK_BYTES = 1024 * 1024;
/** A key's entry as stored, at worst: every character escaped to six bytes, plus its id and time. */
const seenEntryBytes = (key: string) => key.length * 6 + 64;
/** Past this many ids in the window the index is not held in memory: lookups scan the blobs. */
const MAX_INDEXED_KEYS = 1_000_000;
/** Rows of an older object's per-key table moved into chunks per call, and small chunks merged per alarm. */
const SEEN_MIGRATE_ROWS = 10_000;
const SEEN_COMPACT_CHUNKS = 2_000;
/** Chunks smaller than this are merged by the alarm (per hour of receipt) once enough pile up. */
const SMALL_SEEN_CHUNK = 256;
const SMALL_SEEN_CHUNKS_BEFORE_COMPACTION = 128;
const HOUR_MS = 60 * 60 * 1000;
/** Outbox rows per flush: event chunks of up to OUTBOX_CHUNK_BYTES, or single session rows. */
const FLUSH_OUTBOX_ROWS = 64;
/** An event chunk fits one queue message as it is (and is far under SQLite's 2 MB row limit). */
const OUTBOX_CHUNK_BYTES = MAX_MESSAGE_BYTES - 12 * 1024;
/** Merge aliases travel with a chunk up to this size; beyond it the chunk is rewritten at flush. */
const MAX_ALIAS_BYTES = 8 * 1024;
const PARAMS_PER_STATEMENT = 90;

export interface DeviceEvent {
  dedupKey: string;
  /** The ClickHouse row, without session_id and synced_at_ms (set later). */
  row: Omit<EventRow, 'session_id' | 'synced_at_ms'>;
  /** The raw payload row; its id, project and times are the row's (the outbox keeps only `payload`). */
  payload: PayloadRow;
}

export interface DeviceIngest {
  projectId: string;
  deviceId: string;
  gapMs: number;
  /**
   * The events, or packed (`packDeviceEvents`): a few strings cross the RPC boundary far cheaper
   * than a structured clone of thousands of objects, and the object is the serial part.
   */
  events: DeviceEvent[] | PackedEvents;
  /** Injectable clock for tests; defaults to Date.now(). */
  nowMs?: number;
  /**
   * Sessions as ClickHouse holds them around the events, for events older than the object keeps
   * sessions (held legacy events released late): each one the object has no row of is taken in,
   * so the events join the session they belong to instead of opening a second one.
   */
  knownSessions?: Array<Session & { ended: number; version: number }>;
}

export interface DeviceIngestResult {
  results: Array<{ status: 'accepted' | 'duplicate'; sessionId: string; eventId: string }>;
}

type StoredLastEvent = { id: string; type: string; name: string; createdAtMs: number; sessionId: string };

export interface DeviceState {
  projectId: string;
  deviceId: string;
  /** Edge receipt time of the newest request that carried a new event. */
  lastSeenMs: number | null;
  /** The event with the latest event time. */
  lastEvent: StoredLastEvent | null;
  lastPosition: { lat: number; lon: number; atMs: number } | null;
  /** Profile of the latest event that named one. */
  profileId: string | null;
  /** The session that is still open (not idle for the gap yet), if any. */
  liveSession: { id: string; startMs: number; endMs: number; eventCount: number; idleAtMs: number } | null;
  sessions: number;
  seenIds: number;
  pendingRows: number;
  storageBytes: number;
}

/** The object's tables; every statement is idempotent, so it also completes an older layout. */
const SCHEMA_SQL = `
  CREATE TABLE IF NOT EXISTS seen_chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, seen_at_ms INTEGER NOT NULL, n INTEGER NOT NULL,
    fps BLOB NOT NULL, entries TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL, ended INTEGER NOT NULL DEFAULT 0, merged_into TEXT, version INTEGER NOT NULL);
  CREATE INDEX IF NOT EXISTS sessions_end_idx ON sessions (end_ms);
  CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ref TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '', body TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 0);
  CREATE INDEX IF NOT EXISTS outbox_session_idx ON outbox (ref) WHERE kind = 'session';
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

type SessionRecord = Session & { ended: number; version: number };
/** One dedup key in a stored chunk: the key, the first event's id and its event time. */
type SeenEntry = [key: string, eventId: string, createdAtMs: number];


export class DeviceObject extends DurableObject<Env> {
  private readonly sql: SqlStorage;

  private schemaReady = false;
  /** Meta values as committed: read once, then served from memory (the object is single-threaded). */
  private readonly metaCache = new Map<string, unknown>();
  /** In-flight outbox flush: the alarm and a direct maintain() must not send the same rows twice. */
  private flushing: Promise<number> | null = null;
  private seenIndex: SeenIndex | null = null;
  /** The per-key `seen` table of an older layout still holds rows (moved into chunks a batch a call). */
  private legacySeen = false;
  /** Bounds that tests lower to reach the fallbacks without millions of rows. */
  maxIndexedKeys = MAX_INDEXED_KEYS;
  seenMigrateRows = SEEN_MIGRATE_ROWS;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
  }

  /**
   * Tables are created on first write, so probing an unknown device leaves no storage behind. The
   * first check of an object's life also brings older layouts up to date.
   */
  private hasSchema(): boolean {
    if (!this.schemaReady) {
      const exists = this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").toArray().length > 0;
      if (exists) this.transaction(() => this.upgradeSchema());
      this.schemaReady = exists;
    }
    return this.schemaReady;
  }

  private upgradeSchema(): void {
    this.sql.exec(SCHEMA_SQL);
    this.legacySeen = this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'").toArray().length > 0;
  }

  private ensureSchema(): void {
    if (this.hasSchema()) return;
    this.sql.exec(SCHEMA_SQL);
    this.schemaReady = true;
  }

  private meta<T>(key: string): T | null {
    if (this.metaCache.has(key)) return this.metaCache.get(key) as T | null;
    const row = this.sql.exec<{ value: string }>('SELECT value FROM meta WHERE key = ?', key).toArray()[0];
    const value = row ? (JSON.parse(row.value) as T) : null;
    this.metaCache.set(key, value);
    return value;
  }

  /** Written through to storage; the cache is dropped whenever a transaction rolls back. */
  private setMeta(key: string, value: unknown): void {
    if (this.metaCache.has(key) && JSON.stringify(this.metaCache.get(key)) === JSON.stringify(value)) return;
    this.sql.exec('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value', key, JSON.stringify(value));
    this.metaCache.set(key, value);
  }

  /** Runs `fn` in one storage transaction, keeping the meta cache true to what was committed. */
  private transaction<T>(fn: () => T): T {
    try {
      return this.ctx.storage.transactionSync(fn);
    } catch (err) {
      this.metaCache.clear();
      this.seenIndex = null;
      this.schemaReady = false; // the tables of a first, rolled-back write are gone too
      throw err;
    }
  }

  /** Monotonic version for session rows: later changes always win in ClickHouse. */
  private nextVersion(nowMs: number): number {
    const last = this.meta<number>('version') ?? 0;
    const next = Math.max(last + 1, nowMs * 1000);
    this.setMeta('version', next);
    return next;
  }

  private sessionRow(s: SessionRecord, mergedInto: string, nowMs: number): SessionRow {
    const ident = this.meta<{ projectId: string; deviceId: string }>('ident')!;
    return {
      project_id: ident.projectId,
      device_id: ident.deviceId,
      id: s.id,
      started_at_ms: s.startMs,
      ended_at_ms: s.endMs,
      event_count: s.eventCount,
      ended: s.ended,
      merged_into: mergedInto,
      version: s.version,
      updated_at_ms: nowMs,
    };
  }

  /** Replaces any unsent row of the same session in the outbox: only the newest state matters. */
  private enqueueSession(row: SessionRow): void {
    this.sql.exec("DELETE FROM outbox WHERE kind = 'session' AND ref = ?", row.id);
    this.sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('session', ?, ?)", row.id, JSON.stringify(row));
  }

  private loadSessions(fromMs: number, toMs: number): SessionRecord[] {
    return this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number; version: number }>(
        'SELECT id, start_ms, end_ms, event_count, ended, version FROM sessions WHERE merged_into IS NULL AND start_ms < ? AND end_ms > ?',
        toMs,
        fromMs,
      )
      .toArray()
      .map((r) => ({ id: r.id, startMs: r.start_ms, endMs: r.end_ms, eventCount: r.event_count, ended: r.ended, version: r.version }));
  }

  /**
   * The dedup index, loaded on first use from the chunks' fingerprint blobs (4 bytes a key, no key
   * text read). It lives as long as the object stays in memory and is dropped with any rollback.
   * null when the window holds more ids than memory should: lookups then scan the blobs instead.
   */
  private index(): SeenIndex | null {
    if (this.seenIndex) return this.seenIndex;
    const total = this.sql.exec<{ n: number }>('SELECT coalesce(sum(n), 0) AS n FROM seen_chunks').one().n;
    if (total > this.maxIndexedKeys) return null;
    const index = new SeenIndex();
    for (const r of this.sql.exec<{ id: number; fps: ArrayBuffer }>('SELECT id, fps FROM seen_chunks')) {
      index.addChunk(r.id, decodeFingerprints(r.fps));
    }
    return (this.seenIndex = index);
  }

  /**
   * Records new dedup keys as one chunk row per call instead of a row per key: a B-tree insert of a
   * random key per event was most of the object's time. Each key's 31-bit fingerprint goes into the
   * in-memory index.
   */
  private recordSeen(events: PackedEvent[], nowMs: number): void {
    if (!events.length) return;
    if (this.meta<number>('nextSeenSweepMs') === null) this.setMeta('nextSeenSweepMs', nowMs + DEDUP_WINDOW_MS);
    const index = this.index();
    for (let start = 0; start < events.length; ) {
      let end = start;
      for (let bytes = 0; end < events.length && end - start < SEEN_CHUNK_KEYS; end++) {
        bytes += seenEntryBytes(events[end]!.k);
        if (end > start && bytes > SEEN_CHUNK_BYTES) break;
      }
      const part = events.slice(start, end);
      const fps = part.map((e) => fingerprint(e.k));
      const chunk = this.insertSeenChunk(nowMs, fps, part.map((e): SeenEntry => [e.k, e.id, e.c]));
      index?.addChunk(chunk, fps);
      start = end;
    }
    if (index && index.fingerprints > this.maxIndexedKeys) this.seenIndex = null;
  }

  private insertSeenChunk(seenAtMs: number, fps: number[], entries: SeenEntry[]): number {
    if (fps.length < SMALL_SEEN_CHUNK) this.setMeta('smallSeenChunks', (this.meta<number>('smallSeenChunks') ?? 0) + 1);
    return this.sql
      .exec<{ id: number }>(
        'INSERT INTO seen_chunks (seen_at_ms, n, fps, entries) VALUES (?, ?, ?, ?) RETURNING id',
        seenAtMs,
        fps.length,
        encodeFingerprints(fps),
        JSON.stringify(entries),
      )
      .one().id;
  }

  /** Ids already seen, with the original event's id and time (its session is found from the time). */
  private seenKeys(keys: string[]): Map<string, { eventId: string; createdAtMs: number }> {
    const found = new Map<string, { eventId: string; createdAtMs: number }>();
    // A fingerprint hit is only a candidate: the chunks it names are read and the keys compared.
    const wanted = new Set<number>();
    const index = this.index();
    if (index) {
      for (const k of keys) for (const c of index.candidates(fingerprint(k))) wanted.add(c);
    } else {
      const fps = new Set(keys.map(fingerprint));
      for (const r of this.sql.exec<{ id: number; fps: ArrayBuffer }>('SELECT id, fps FROM seen_chunks')) {
        const stored = decodeFingerprints(r.fps);
        for (let i = 0; i < stored.length; i++) {
          if (fps.has(stored[i]!)) {
            wanted.add(r.id);
            break;
          }
        }
      }
    }
    const keySet = new Set(keys);
    const ids = [...wanted];
    for (let i = 0; i < ids.length; i += PARAMS_PER_STATEMENT) {
      const part = ids.slice(i, i + PARAMS_PER_STATEMENT);
      const rows = this.sql.exec<{ entries: string }>(`SELECT entries FROM seen_chunks WHERE id IN (${part.map(() => '?').join(',')})`, ...part);
      for (const r of rows) {
        for (const [k, eventId, createdAtMs] of JSON.parse(r.entries) as SeenEntry[]) {
          if (keySet.has(k)) found.set(k, { eventId, createdAtMs });
        }
      }
    }
    if (this.legacySeen) {
      for (let i = 0; i < keys.length; i += PARAMS_PER_STATEMENT) {
        const part = keys.slice(i, i + PARAMS_PER_STATEMENT);
        const rows = this.sql.exec<{ key: string; event_id: string; created_at_ms: number }>(
          `SELECT key, event_id, created_at_ms FROM seen WHERE key IN (${part.map(() => '?').join(',')})`,
          ...part,
        );
        for (const r of rows) found.set(r.key, { eventId: r.event_id, createdAtMs: r.created_at_ms });
      }
    }
    return found;
  }

  /** Merges the small chunks of each hour of receipt (single-event requests make one chunk each). */
  private compactSeen(): void {
    const pending = this.meta<number>('smallSeenChunks') ?? 0;
    if (pending < SMALL_SEEN_CHUNKS_BEFORE_COMPACTION) return;
    const small = this.sql
      .exec<{ id: number; seen_at_ms: number; n: number; fps: ArrayBuffer; entries: string }>(
        'SELECT id, seen_at_ms, n, fps, entries FROM seen_chunks WHERE n < ? ORDER BY id LIMIT ?',
        SMALL_SEEN_CHUNK,
        SEEN_COMPACT_CHUNKS,
      )
      .toArray();
    const groups = new Map<number, typeof small>();
    for (const r of small) {
      const hour = Math.floor(r.seen_at_ms / HOUR_MS);
      let group = groups.get(hour);
      if (!group) groups.set(hour, (group = []));
      group.push(r);
    }
    const index = this.seenIndex;
    // A full batch leaves the count as it is, so the next alarm goes on where this one stopped.
    if (small.length < SEEN_COMPACT_CHUNKS) this.setMeta('smallSeenChunks', 0);
    for (const group of groups.values()) {
      // Chunks of one hour become one, kept as long as its newest key must be (pruning is per chunk).
      for (let i = 0; i < group.length; ) {
        const merged: typeof small = [];
        let keys = 0;
        let bytes = 0;
        for (; i < group.length; i++) {
          const r = group[i]!;
          if (merged.length && (keys + r.n > SEEN_CHUNK_KEYS || bytes + r.entries.length * 3 > SEEN_CHUNK_BYTES)) break;
          merged.push(r);
          keys += r.n;
          bytes += r.entries.length * 3;
        }
        if (merged.length < 2) continue;
        const fps = merged.flatMap((r) => Array.from(decodeFingerprints(r.fps)));
        const entries = merged.flatMap((r) => JSON.parse(r.entries) as SeenEntry[]);
        const chunk = this.insertSeenChunk(Math.max(...merged.map((r) => r.seen_at_ms)), fps, entries);
        for (const r of merged) {
          this.sql.exec('DELETE FROM seen_chunks WHERE id = ?', r.id);
          index?.removeChunk(r.id, decodeFingerprints(r.fps));
        }
        index?.addChunk(chunk, fps);
      }
    }
  }

  /**
   * Objects written before chunked dedup keep one `seen` row per key: moved into chunks a bounded
   * batch per call (oldest first), looked up in place until the table is empty and dropped.
   */
  private migrateSeenRows(): void {
    if (!this.legacySeen) return;
    const rows = this.sql
      .exec<{ key: string; event_id: string; created_at_ms: number; seen_at_ms: number }>(
        'SELECT key, event_id, created_at_ms, seen_at_ms FROM seen ORDER BY seen_at_ms, key LIMIT ?',
        this.seenMigrateRows,
      )
      .toArray();
    if (!rows.length) {
      this.sql.exec('DROP TABLE seen');
      this.legacySeen = false;
      return;
    }
    const index = this.seenIndex;
    for (let i = 0; i < rows.length; ) {
      const seenAtMs = rows[i]!.seen_at_ms;
      const part: typeof rows = [];
      let bytes = 0;
      while (
        i < rows.length &&
        rows[i]!.seen_at_ms === seenAtMs &&
        part.length < SEEN_CHUNK_KEYS &&
        (part.length === 0 || bytes + seenEntryBytes(rows[i]!.key) <= SEEN_CHUNK_BYTES)
      ) {
        bytes += seenEntryBytes(rows[i]!.key);
        part.push(rows[i++]!);
      }
      const fps = part.map((r) => fingerprint(r.key));
      const chunk = this.insertSeenChunk(seenAtMs, fps, part.map((r): SeenEntry => [r.key, r.event_id, r.created_at_ms]));
      index?.addChunk(chunk, fps);
    }
    const last = rows[rows.length - 1]!;
    this.sql.exec('DELETE FROM seen WHERE seen_at_ms < ? OR (seen_at_ms = ? AND key <= ?)', last.seen_at_ms, last.seen_at_ms, last.key);
    if (rows.length < this.seenMigrateRows) {
      this.sql.exec('DROP TABLE seen');
      this.legacySeen = false;
    }
  }

  /** The current session covering each time ('' when none): sessions are disjoint, so this is exact. */
  private sessionsAt(times: number[]): Map<number, string> {
    const out = new Map<number, string>();
    if (!times.length) return out;
    const sessions = this.sql
      .exec<{ id: string; start_ms: number; end_ms: number }>(
        'SELECT id, start_ms, end_ms FROM sessions WHERE merged_into IS NULL AND start_ms <= ? AND end_ms >= ? ORDER BY start_ms',
        Math.max(...times),
        Math.min(...times),
      )
      .toArray();
    for (const t of times) out.set(t, sessions.find((s) => s.start_ms <= t && t <= s.end_ms)?.id ?? '');
    return out;
  }

  async ingest(request: DeviceIngest): Promise<DeviceIngestResult> {
    const nowMs = request.nowMs ?? Date.now();
    const events = Array.isArray(request.events) ? request.events.map(packEvent) : unpackEvents(request.events);
    const input = { ...request, events };
    // Outside the ingest transaction: an older layout is upgraded in its own.
    if (this.hasSchema() && this.legacySeen) this.transaction(() => this.migrateSeenRows());
    const results = this.transaction(() => this.ingestSync(input, nowMs));
    // The rows are committed: a failure to set the alarm must not make the caller resend them
    // (the next call or alarm schedules it again).
    await this.scheduleAlarm(nowMs, true).catch((err: unknown) =>
      console.error(JSON.stringify({ msg: 'device alarm could not be set', error: String(err) })),
    );
    return { results };
  }

  private ingestSync(input: Omit<DeviceIngest, 'events'> & { events: PackedEvent[] }, nowMs: number): DeviceIngestResult['results'] {
    this.ensureSchema();
    if (!this.meta('ident')) this.setMeta('ident', { projectId: input.projectId, deviceId: input.deviceId });
    this.setMeta('gapMs', input.gapMs);
    const gapMs = input.gapMs;
    for (const k of input.knownSessions ?? []) {
      this.sql.exec(
        'INSERT INTO sessions (id, start_ms, end_ms, event_count, ended, merged_into, version) VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT(id) DO NOTHING',
        k.id,
        k.startMs,
        k.endMs,
        k.eventCount,
        k.ended,
        k.version,
      );
    }

    // Dedup against the window and within the request itself.
    const seen = this.seenKeys([...new Set(input.events.map((e) => e.k))]);
    const fresh: number[] = [];
    const firstIndexOfKey = new Map<string, number>();
    input.events.forEach((e, i) => {
      if (seen.has(e.k) || firstIndexOfKey.has(e.k)) return;
      firstIndexOfKey.set(e.k, i);
      fresh.push(i);
    });

    // Sessions: only `track` events make or extend them.
    const tracked = fresh.filter((i) => input.events[i]!.t === 'track');
    const times = tracked.map((i) => input.events[i]!.c);
    const sessionOf = new Map<number, string>();
    if (times.length) {
      const minT = Math.min(...times);
      const maxT = Math.max(...times);
      const existing = this.loadSessions(minT - gapMs, maxT + gapMs);
      const byId = new Map(existing.map((s) => [s.id, s]));
      const assignment = assignSessions(existing, times, gapMs, () => crypto.randomUUID());
      tracked.forEach((i, k) => sessionOf.set(i, assignment.sessionIds[k]!));

      for (const [mergedId, survivorId] of assignment.merged) {
        if (!byId.has(mergedId)) continue; // created and absorbed within this call: never stored
        // Sessions merged earlier into `mergedId` now point straight at the survivor, here and in
        // ClickHouse, so a reader never has to follow a chain of merges.
        const absorbed = this.sql
          .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number }>(
            'SELECT id, start_ms, end_ms, event_count, ended FROM sessions WHERE id = ? OR merged_into = ?',
            mergedId,
            mergedId,
          )
          .toArray();
        for (const a of absorbed) {
          const version = this.nextVersion(nowMs);
          this.sql.exec('UPDATE sessions SET merged_into = ?, version = ? WHERE id = ?', survivorId, version, a.id);
          this.enqueueSession(
            this.sessionRow({ id: a.id, startMs: a.start_ms, endMs: a.end_ms, eventCount: a.event_count, ended: a.ended, version }, survivorId, nowMs),
          );
        }
      }
      for (const s of assignment.changed.values()) {
        const version = this.nextVersion(nowMs);
        const ended = s.endMs + gapMs <= nowMs ? 1 : 0;
        this.sql.exec(
          `INSERT INTO sessions (id, start_ms, end_ms, event_count, ended, merged_into, version) VALUES (?, ?, ?, ?, ?, NULL, ?)
           ON CONFLICT(id) DO UPDATE SET start_ms = excluded.start_ms, end_ms = excluded.end_ms,
             event_count = excluded.event_count, ended = excluded.ended, version = excluded.version`,
          s.id,
          s.startMs,
          s.endMs,
          s.eventCount,
          ended,
          version,
        );
        this.enqueueSession(this.sessionRow({ ...s, ended, version }, '', nowMs));
      }
    }

    // Record ids and write the outbox in the same transaction.
    let last = this.meta<StoredLastEvent>('lastEvent');
    let lastPosition = this.meta<DeviceState['lastPosition']>('lastPosition');
    let lastProfile = this.meta<{ id: string; atMs: number }>('lastProfile');
    // New events go to the outbox a chunk at a time: one row per chunk, not per event, keeps the
    // object's writes close to the bytes it must store. Session ids are resolved again at flush.
    let chunk: string[] = [];
    let chunkBytes = 0;
    const writeChunk = () => {
      if (!chunk.length) return;
      this.sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('events', '', ?)", `[${chunk.join(',')}]`);
      chunk = [];
      chunkBytes = 0;
    };
    this.recordSeen(fresh.map((i) => input.events[i]!), nowMs);
    for (const i of fresh) {
      const e = input.events[i]!;
      const sessionId = sessionOf.get(i) ?? '';
      // One OutboxEvent ({ s, r, p }) as JSON, built around the row and payload JSON as they came.
      const entry = `{"s":${JSON.stringify(sessionId)},${e.rp}}`;
      const size = (e.b ?? utf8Bytes(entry)) + 1;
      if (chunkBytes + size > OUTBOX_CHUNK_BYTES) writeChunk();
      chunk.push(entry);
      chunkBytes += size;
      if (!last || e.c >= last.createdAtMs) {
        last = { id: e.id, type: e.t, name: e.n, createdAtMs: e.c, sessionId };
      }
      if (e.pos && (!lastPosition || e.c >= lastPosition.atMs)) {
        lastPosition = { lat: e.pos[0], lon: e.pos[1], atMs: e.c };
      }
      if (e.pr && (!lastProfile || e.c >= lastProfile.atMs)) {
        lastProfile = { id: e.pr, atMs: e.c };
      }
    }
    writeChunk();
    if (fresh.length) {
      this.setMeta('lastEvent', last);
      this.setMeta('lastPosition', lastPosition);
      this.setMeta('lastProfile', lastProfile);
      this.setMeta('lastSeenMs', Math.max(this.meta<number>('lastSeenMs') ?? 0, nowMs));
    }

    const freshSet = new Set(fresh);
    const priorSession = this.sessionsAt(
      input.events.filter((e) => e.t === 'track' && seen.has(e.k)).map((e) => seen.get(e.k)!.createdAtMs),
    );
    return input.events.map((e, i) => {
      if (freshSet.has(i)) return { status: 'accepted' as const, sessionId: sessionOf.get(i) ?? '', eventId: e.id };
      const prior = seen.get(e.k);
      if (prior) {
        const sessionId = e.t === 'track' ? (priorSession.get(prior.createdAtMs) ?? '') : '';
        return { status: 'duplicate' as const, sessionId, eventId: prior.eventId };
      }
      const first = firstIndexOfKey.get(e.k)!;
      return { status: 'duplicate' as const, sessionId: sessionOf.get(first) ?? '', eventId: input.events[first]!.id };
    });
  }

  /** The alarm: end idle sessions, prune old ids, flush the outbox, then plan the next run. */
  override async alarm(): Promise<void> {
    await this.maintain(Date.now());
  }

  async maintain(nowMs: number): Promise<{ ended: number; pruned: number; flushed: number }> {
    if (!this.hasSchema()) return { ended: 0, pruned: 0, flushed: 0 };
    let ended = 0;
    let pruned = 0;
    try {
      if (this.legacySeen) this.transaction(() => this.migrateSeenRows());
      ({ ended, pruned } = this.transaction(() => this.endAndPrune(nowMs)));
    } catch (err) {
      // Housekeeping must never hold up the outbox: flush anyway, and try again on the next alarm.
      console.error(JSON.stringify({ msg: 'device housekeeping failed; flushing anyway', error: String(err) }));
    }
    let flushed: number;
    try {
      flushed = await this.flush();
    } catch (err) {
      // The runtime gives up on an alarm that keeps throwing; the outbox must not. Back off and
      // try again for as long as it takes.
      const failures = (this.meta<number>('flushFailures') ?? 0) + 1;
      this.setMeta('flushFailures', failures);
      const delayMs = Math.min(FLUSH_RETRY_MAX_MS, 1000 * 2 ** Math.min(failures, 16));
      console.error(JSON.stringify({ msg: 'outbox flush failed; retrying', failures, delayMs, error: String(err) }));
      await this.ctx.storage.setAlarm(Date.now() + delayMs);
      await this.reportStall(failures, err);
      return { ended, pruned, flushed: 0 };
    }
    if (this.meta<number>('flushFailures')) this.setMeta('flushFailures', 0);
    // A stall was reported: the first flush that succeeds takes it back (the only D1 write of a
    // healthy object, once per recovery).
    const cleared = this.meta<number>('stalledSinceMs') === null || (await this.clearStall());
    await this.scheduleAlarm(nowMs, false);
    // Should D1 refuse, the row stays visible until an alarm soon takes it back.
    if (!cleared) await this.ctx.storage.setAlarm(Math.min((await this.ctx.storage.getAlarm()) ?? Infinity, Date.now() + STALL_CLEAR_RETRY_MS));
    return { ended, pruned, flushed };
  }

  /**
   * Tells operators (`/admin/health`, through D1) that this outbox cannot reach the ingest queue:
   * one upsert per failed flush, which the back-off spaces out. Its own failure is only logged.
   */
  private async reportStall(failures: number, err: unknown): Promise<void> {
    const ident = this.meta<{ projectId: string; deviceId: string }>('ident');
    if (!ident) return;
    const now = Date.now();
    try {
      let since = this.meta<number>('stalledSinceMs');
      if (since === null) this.setMeta('stalledSinceMs', (since = now));
      // Events (each chunk is a JSON array of them) and session rows waiting.
      const pendingRows = this.sql
        .exec<{ n: number }>("SELECT coalesce(sum(CASE kind WHEN 'events' THEN json_array_length(body) ELSE 1 END), 0) AS n FROM outbox")
        .one().n;
      const row = { ...ident, pendingRows, since, failures, lastError: String(err).slice(0, 1000), updatedAt: now };
      await drizzle(this.env.DB)
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
  private async clearStall(): Promise<boolean> {
    const ident = this.meta<{ projectId: string; deviceId: string }>('ident');
    try {
      if (ident) {
        await drizzle(this.env.DB)
          .delete(stalledOutboxes)
          .where(and(eq(stalledOutboxes.projectId, ident.projectId), eq(stalledOutboxes.deviceId, ident.deviceId)));
      }
      this.setMeta('stalledSinceMs', null);
      return true;
    } catch (err) {
      console.error(JSON.stringify({ msg: 'stalled outbox could not be cleared; retrying', error: String(err) }));
      return false;
    }
  }

  /** Drains the outbox; a flush already under way is joined first, never run alongside. */
  private async flush(): Promise<number> {
    while (this.flushing) await this.flushing.catch(() => 0);
    const run = (async () => {
      let flushed = 0;
      for (;;) {
        const n = await this.flushOnce();
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

  private endAndPrune(nowMs: number): { ended: number; pruned: number } {
    const gapMs = this.meta<number>('gapMs');
    let ended = 0;
    if (gapMs !== null && this.meta('ident')) {
      const idle = this.sql
        .exec<{ id: string; start_ms: number; end_ms: number; event_count: number }>(
          'SELECT id, start_ms, end_ms, event_count FROM sessions WHERE ended = 0 AND merged_into IS NULL AND end_ms + ? <= ?',
          gapMs,
          nowMs,
        )
        .toArray();
      for (const s of idle) {
        const version = this.nextVersion(nowMs);
        this.sql.exec('UPDATE sessions SET ended = 1, version = ? WHERE id = ?', version, s.id);
        this.enqueueSession(
          this.sessionRow({ id: s.id, startMs: s.start_ms, endMs: s.end_ms, eventCount: s.event_count, ended: 1, version }, '', nowMs),
        );
        ended++;
      }
    }
    // Dedup chunks are swept whole when their ids leave the window, at most once an hour.
    let prunedSeen = 0;
    const sweepAt = this.meta<number>('nextSeenSweepMs');
    if (sweepAt !== null && nowMs >= sweepAt) {
      const expired = this.sql
        .exec<{ id: number; n: number; fps: ArrayBuffer }>('SELECT id, n, fps FROM seen_chunks WHERE seen_at_ms < ?', nowMs - DEDUP_WINDOW_MS)
        .toArray();
      for (const c of expired) {
        this.sql.exec('DELETE FROM seen_chunks WHERE id = ?', c.id);
        this.seenIndex?.removeChunk(c.id, decodeFingerprints(c.fps));
        prunedSeen += c.n;
      }
      const oldest = this.sql.exec<{ t: number | null }>('SELECT min(seen_at_ms) AS t FROM seen_chunks').one().t;
      this.setMeta('nextSeenSweepMs', oldest === null ? null : Math.max(oldest + DEDUP_WINDOW_MS, nowMs + SEEN_SWEEP_INTERVAL_MS));
    }
    this.compactSeen();
    this.sql.exec('DELETE FROM sessions WHERE ended = 1 AND end_ms < ?', nowMs - SESSION_RETENTION_MS);
    this.sql.exec('DELETE FROM sessions WHERE merged_into IS NOT NULL AND end_ms < ?', nowMs - SESSION_RETENTION_MS);
    return { ended, pruned: prunedSeen };
  }

  /** Sends up to FLUSH_OUTBOX_ROWS outbox rows; marks them attempted first so a resend is flagged. */
  private async flushOnce(): Promise<number> {
    const rows = this.sql
      .exec<{ seq: number; kind: string; body: string }>('SELECT seq, kind, body FROM outbox ORDER BY seq LIMIT ?', FLUSH_OUTBOX_ROWS)
      .toArray();
    if (!rows.length) return 0;
    const maxSeq = rows[rows.length - 1]!.seq;
    // A watermark, not a per-row counter: rewriting large rows per flush would cost as much as
    // writing them. Rows at or below it may already have reached the queue once.
    const attemptedThrough = this.meta<number>('flushAttemptedThrough') ?? 0;
    if (maxSeq > attemptedThrough) this.setMeta('flushAttemptedThrough', maxSeq);

    // Events written before a merge still name the absorbed session: the consumer maps them.
    const aliases: Record<string, string> = {};
    for (const r of this.sql.exec<{ id: string; merged_into: string }>('SELECT id, merged_into FROM sessions WHERE merged_into IS NOT NULL')) {
      aliases[r.id] = r.merged_into;
    }
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
    for (const r of rows) {
      const redelivery = r.seq <= attemptedThrough;
      if (r.kind === 'events') {
        // A stored chunk is spliced into a text message as it is; in the rare case of many merges the
        // chunk's session ids are rewritten here instead, so the message stays within its size limit.
        let chunk = r.body;
        if (aliasBytes > MAX_ALIAS_BYTES) {
          chunk = JSON.stringify((JSON.parse(chunk) as OutboxEvent[]).map((e) => ({ ...e, s: aliases[e.s] ?? e.s })));
        }
        const withAliases = aliasBytes > 2 && aliasBytes <= MAX_ALIAS_BYTES;
        const size = utf8Bytes(chunk) + (withAliases ? aliasBytes : 0) + 128;
        if (size > MAX_MESSAGE_BYTES) {
          // Rare (one event near the size limit): its rows go out one per message.
          pushSessions();
          for (const m of splitChunk(chunk, aliases, redelivery)) messages.push(m);
          continue;
        }
        // The session rows written just before this chunk ride in the same message when they fit:
        // half the messages, and the writer still inserts them before the events.
        if (sessionBytes + size > MAX_MESSAGE_BYTES) pushSessions();
        const flag = redelivery || sessionsRedelivery ? ',"redelivery":true' : '';
        const body = `{"events":[],"payloads":[],"sessions":[${sessions.join(',')}]${withAliases ? `,"aliases":${aliasJson}` : ''}${flag},"entries":${chunk}}`;
        messages.push({ body, bytes: sessionBytes + size });
        sessions = [];
        sessionBytes = 0;
        sessionsRedelivery = false;
        continue;
      }
      const size = utf8Bytes(r.body) + 1;
      if (sessionBytes + size + 128 > MAX_MESSAGE_BYTES) pushSessions();
      if (redelivery) sessionsRedelivery = true;
      sessions.push(r.body);
      sessionBytes += size;
    }
    pushSessions();
    await sendMessages(this.env.INGEST_QUEUE, messages);
    this.sql.exec('DELETE FROM outbox WHERE seq <= ?', maxSeq);
    return rows.length;
  }

  private async scheduleAlarm(nowMs: number, soon: boolean): Promise<void> {
    const pending = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM outbox').one().n;
    let next: number | null = pending > 0 || soon ? Date.now() : null;
    const gapMs = this.meta<number>('gapMs');
    if (next === null && gapMs !== null) {
      const open = this.sql
        .exec<{ t: number | null }>('SELECT min(end_ms) AS t FROM sessions WHERE ended = 0 AND merged_into IS NULL')
        .one().t;
      if (open !== null) next = Date.now() + Math.max(0, open + gapMs - nowMs);
    }
    if (next === null) {
      // Nothing live: wake up when the oldest id or session leaves its window, so state stays bounded.
      const seenSweep = this.meta<number>('nextSeenSweepMs');
      const oldestSession = this.sql.exec<{ t: number | null }>('SELECT min(end_ms) AS t FROM sessions').one().t;
      const due = [seenSweep, oldestSession === null ? null : oldestSession + SESSION_RETENTION_MS]
        .filter((t): t is number => t !== null);
      if (due.length) next = Date.now() + Math.max(60_000, Math.min(...due) - nowMs);
    }
    const current = await this.ctx.storage.getAlarm();
    if (next === null) return;
    // While flushes fail, the back-off alarm stands: new rows wait for it rather than pulling it
    // earlier on every call (which would send a retry per request into the outage).
    if (soon && current !== null && (this.meta<number>('flushFailures') ?? 0) > 0) return;
    if (current === null || next < current || !soon) await this.ctx.storage.setAlarm(next);
  }

  /** Live state for GET /v1/devices/:deviceId; null for a device that never sent an event. */
  async state(nowMs = Date.now()): Promise<DeviceState | null> {
    if (!this.hasSchema()) return null;
    const ident = this.meta<{ projectId: string; deviceId: string }>('ident');
    if (!ident) return null;
    const gapMs = this.meta<number>('gapMs') ?? 0;
    const live = this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number }>(
        'SELECT id, start_ms, end_ms, event_count FROM sessions WHERE merged_into IS NULL AND end_ms + ? > ? ORDER BY end_ms DESC LIMIT 1',
        gapMs,
        nowMs,
      )
      .toArray()[0];
    const last = this.meta<StoredLastEvent>('lastEvent');
    // The last event's session may have been merged into another since it was recorded.
    const lastSessionId = last?.sessionId
      ? (this.sql.exec<{ m: string | null }>('SELECT merged_into AS m FROM sessions WHERE id = ?', last.sessionId).toArray()[0]?.m ?? last.sessionId)
      : '';
    return {
      ...ident,
      lastSeenMs: this.meta<number>('lastSeenMs'),
      lastEvent: last ? { ...last, sessionId: lastSessionId } : null,
      lastPosition: this.meta('lastPosition'),
      profileId: this.meta<{ id: string }>('lastProfile')?.id ?? null,
      liveSession: live
        ? { id: live.id, startMs: live.start_ms, endMs: live.end_ms, eventCount: live.event_count, idleAtMs: live.end_ms + gapMs }
        : null,
      sessions: this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM sessions WHERE merged_into IS NULL').one().n,
      seenIds:
        this.sql.exec<{ n: number }>('SELECT coalesce(sum(n), 0) AS n FROM seen_chunks').one().n +
        (this.legacySeen ? this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen').one().n : 0),
      pendingRows: this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM outbox').one().n,
      storageBytes: this.sql.databaseSize,
    };
  }

  /** Current (unmerged) sessions, oldest first: for tests and operators. */
  async sessions(): Promise<Array<Session & { ended: boolean }>> {
    if (!this.hasSchema()) return [];
    return this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number }>(
        'SELECT id, start_ms, end_ms, event_count, ended FROM sessions WHERE merged_into IS NULL ORDER BY start_ms',
      )
      .toArray()
      .map((r) => ({ id: r.id, startMs: r.start_ms, endMs: r.end_ms, eventCount: r.event_count, ended: r.ended === 1 }));
  }

  /**
   * Erasure (the `erasure` and `project_deletion` jobs). Without `profile`: deletes all this object
   * holds, storage and alarm. With one: removes what it holds of that profile — its events still in
   * the outbox, the dedup entries of its events (`eventIds`), the sessions made only of its events
   * (`sessionIds`), and the last event, position and profile when they are its (`eventTimesMs`) —
   * then the whole object too when nothing of anyone else is left. A flush under way ends first, so
   * nothing it was sending reaches ClickHouse after the caller's deletion. `held`: whether there was
   * anything to remove. Idempotent.
   */
  async erase(profile?: { profileId: string; eventIds: string[]; eventTimesMs: number[]; sessionIds: string[] }): Promise<{
    held: boolean;
    whole: boolean;
    outboxEvents: number;
    seenIds: number;
    sessions: number;
  }> {
    while (this.flushing) await this.flushing.catch(() => 0);
    if (!this.hasSchema()) {
      await this.ctx.storage.deleteAlarm();
      return { held: false, whole: true, outboxEvents: 0, seenIds: 0, sessions: 0 };
    }
    let partial: ReturnType<DeviceObject['eraseProfile']> | null = null;
    if (profile) {
      partial = this.transaction(() => this.eraseProfile(profile));
      if (partial.othersRemain) return { held: partial.held, whole: false, ...partial.removed };
    }
    const count = (q: string) => this.sql.exec<{ n: number }>(q).one().n;
    const removed = partial?.removed ?? {
      outboxEvents: count("SELECT coalesce(sum(json_array_length(body)), 0) AS n FROM outbox WHERE kind = 'events'"),
      seenIds: count('SELECT coalesce(sum(n), 0) AS n FROM seen_chunks') + (this.legacySeen ? count('SELECT count(*) AS n FROM seen') : 0),
      sessions: count('SELECT count(*) AS n FROM sessions'),
    };
    await this.ctx.storage.deleteAll();
    await this.ctx.storage.deleteAlarm();
    this.metaCache.clear();
    this.seenIndex = null;
    this.legacySeen = false;
    this.schemaReady = false;
    return { held: partial ? partial.held : true, whole: true, ...removed };
  }

  /** erase()'s profile part, in one transaction: what it removed, and whether anything of others is left. */
  private eraseProfile(p: { profileId: string; eventIds: string[]; eventTimesMs: number[]; sessionIds: string[] }) {
    const ids = new Set(p.eventIds.map((id) => id.toLowerCase()));
    const times = new Set(p.eventTimesMs);
    let outboxEvents = 0;
    for (const r of this.sql.exec<{ seq: number; body: string }>("SELECT seq, body FROM outbox WHERE kind = 'events'").toArray()) {
      const entries = JSON.parse(r.body) as OutboxEvent[];
      const keep = entries.filter((e) => e.r.profile_id !== p.profileId);
      if (keep.length === entries.length) continue;
      for (const e of entries) {
        if (e.r.profile_id !== p.profileId) continue;
        ids.add(e.r.id);
        times.add(e.r.created_at_ms);
      }
      outboxEvents += entries.length - keep.length;
      if (keep.length) this.sql.exec('UPDATE outbox SET body = ? WHERE seq = ?', JSON.stringify(keep), r.seq);
      else this.sql.exec('DELETE FROM outbox WHERE seq = ?', r.seq);
    }
    let seenIds = 0;
    if (ids.size) {
      for (const c of this.sql.exec<{ id: number; entries: string }>('SELECT id, entries FROM seen_chunks').toArray()) {
        const entries = JSON.parse(c.entries) as SeenEntry[];
        const keep = entries.filter((e) => !ids.has(e[1]));
        if (keep.length === entries.length) continue;
        seenIds += entries.length - keep.length;
        if (!keep.length) this.sql.exec('DELETE FROM seen_chunks WHERE id = ?', c.id);
        else this.sql.exec('UPDATE seen_chunks SET n = ?, fps = ?, entries = ? WHERE id = ?', keep.length, encodeFingerprints(keep.map((e) => fingerprint(e[0]))), JSON.stringify(keep), c.id);
      }
      const idList = [...ids];
      for (let i = 0; this.legacySeen && i < idList.length; i += PARAMS_PER_STATEMENT) {
        const part = idList.slice(i, i + PARAMS_PER_STATEMENT);
        const cursor = this.sql.exec(`DELETE FROM seen WHERE event_id IN (${part.map(() => '?').join(',')})`, ...part);
        cursor.toArray();
        seenIds += cursor.rowsWritten;
      }
      this.seenIndex = null; // rebuilt from the rewritten chunks on next use
    }
    let sessions = 0;
    const sessionIds = [...new Set(p.sessionIds)];
    for (let i = 0; i < sessionIds.length; i += PARAMS_PER_STATEMENT / 2) {
      const part = sessionIds.slice(i, i + PARAMS_PER_STATEMENT / 2);
      const marks = part.map(() => '?').join(',');
      const cursor = this.sql.exec(`DELETE FROM sessions WHERE id IN (${marks}) OR merged_into IN (${marks})`, ...part, ...part);
      cursor.toArray();
      sessions += cursor.rowsWritten;
      this.sql.exec(`DELETE FROM outbox WHERE kind = 'session' AND ref IN (${marks})`, ...part);
    }
    const lastProfile = this.meta<{ id: string; atMs: number }>('lastProfile');
    const ofProfile = lastProfile?.id === p.profileId;
    // The newest event naming a profile was this one's: an event or fix at that very time was it.
    const itsTime = (atMs: number) => times.has(atMs) || (ofProfile && atMs === lastProfile!.atMs);
    const last = this.meta<StoredLastEvent>('lastEvent');
    const position = this.meta<DeviceState['lastPosition']>('lastPosition');
    const lastCleared = last !== null && (ids.has(last.id) || itsTime(last.createdAtMs));
    const positionCleared = position !== null && itsTime(position.atMs);
    if (ofProfile) this.setMeta('lastProfile', null);
    if (lastCleared) this.setMeta('lastEvent', null);
    if (positionCleared) this.setMeta('lastPosition', null);
    const any = (q: string) => this.sql.exec<{ n: number }>(q).one().n > 0;
    const othersRemain =
      any('SELECT count(*) AS n FROM seen_chunks') ||
      any('SELECT count(*) AS n FROM sessions') ||
      any('SELECT count(*) AS n FROM outbox') ||
      (this.legacySeen && any('SELECT count(*) AS n FROM seen')) ||
      this.meta('lastEvent') !== null;
    return {
      held: outboxEvents + seenIds + sessions > 0 || ofProfile || lastCleared || positionCleared,
      othersRemain,
      removed: { outboxEvents, seenIds, sessions },
    };
  }
}

/** One message per row of an oversized chunk: each event row, then its payload row, as objects. */
function splitChunk(chunk: string, aliases: Record<string, string>, redelivery: boolean): Array<{ body: IngestBody; bytes: number }> {
  const out: Array<{ body: IngestBody; bytes: number }> = [];
  const flag = redelivery ? { redelivery } : {};
  for (const entry of JSON.parse(chunk) as OutboxEvent[]) {
    const row: EventRow = { ...entry.r, session_id: aliases[entry.s] ?? entry.s, synced_at_ms: 0 };
    const payload: PayloadRow = { id: row.id, project_id: row.project_id, created_at_ms: row.created_at_ms, received_at_ms: row.received_at_ms, payload: entry.p };
    for (const body of [{ events: [row], payloads: [], sessions: [], ...flag }, { events: [], payloads: [payload], sessions: [], ...flag }]) {
      out.push({ body, bytes: utf8Bytes(JSON.stringify(body)) });
    }
  }
  return out;
}
