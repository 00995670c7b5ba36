// The device's 7-day dedup window: event ids as `seen_chunks` rows under an in-memory fingerprint
// index; an older layout's per-key `seen` table is moved into chunks a batch at a time.
import { marks, PARAMS_PER_STATEMENT, tableExists, type MetaStore } from './schema';
import { decodeFingerprints, encodeFingerprints, fingerprint, SeenIndex } from './seen-index';

export const DEDUP_WINDOW_MS = 7 * 24 * 60 * 60 * 1000;
const SEEN_SWEEP_INTERVAL_MS = 60 * 60 * 1000;
/** Dedup keys are stored a chunk per call: at most this many keys, and this many bytes, a row. */
const SEEN_CHUNK_KEYS = 2000;
const SEEN_CHUNK_BYTES = 1024 * 1024;
/** A key's entry as stored, at worst: every character escaped to six bytes, plus its id and time. */
const seenEntryBytes = (key: string) => key.length * 6 + 64;
/** Past this many ids in the window the index is not held in memory: lookups scan the blobs. */
export const MAX_INDEXED_KEYS = 1_000_000;
/** Rows of an older object's per-key table moved into chunks per call, and small chunks merged per alarm. */
export const SEEN_MIGRATE_ROWS = 10_000;
const SEEN_COMPACT_CHUNKS = 2_000;
/** Chunks smaller than this are merged by the alarm (per hour of receipt) once enough pile up. */
const SMALL_SEEN_CHUNK = 256;
const SMALL_SEEN_CHUNKS_BEFORE_COMPACTION = 128;
const HOUR_MS = 60 * 60 * 1000;

/** One dedup key in a stored chunk: the key, the first event's id and its event time. */
type SeenEntry = [key: string, eventId: string, createdAtMs: number];

/** A new key to record: the key (`k`), its event's id and event time (`c`), as a packed event has them. */
export type SeenKey = { k: string; id: string; c: number };

export class DedupStore {
  private index: SeenIndex | null = null;
  /**
   * Small chunks waiting to be merged, counted in memory (from storage once per object life, as the
   * index loads): a counter in `meta` cost a row written on every call.
   */
  private smallChunks: number | null = null;
  /** The per-key `seen` table of an older layout still holds rows (moved into chunks a batch a call). */
  private legacySeen = false;
  /** Bounds that tests lower to reach the fallbacks without millions of rows. */
  maxIndexedKeys = MAX_INDEXED_KEYS;
  seenMigrateRows = SEEN_MIGRATE_ROWS;

  constructor(
    private readonly sql: SqlStorage,
    private readonly meta: MetaStore,
  ) {}

  /** Notes whether an older layout's `seen` table is still there (once per object life, at upgrade). */
  detectLegacyTable(): void {
    this.legacySeen = tableExists(this.sql, 'seen');
  }

  get hasLegacyRows(): boolean {
    return this.legacySeen;
  }

  /** Drops the in-memory index: after a rollback, or a rewrite of chunks (rebuilt on next use). */
  forgetIndex(): void {
    this.index = null;
    this.smallChunks = null;
  }

  /** Forgets all it holds in memory once storage is deleted. */
  reset(): void {
    this.index = null;
    this.smallChunks = null;
    this.legacySeen = false;
  }

  /**
   * The dedup index, loaded on first use from the chunks' fingerprint blobs (4 bytes a key, no key
   * text read). It lives as long as the object stays in memory and is dropped with any rollback.
   * null when the window holds more ids than memory should: lookups then scan the blobs instead.
   */
  private loadIndex(): SeenIndex | null {
    if (this.index) return this.index;
    const total = this.sql.exec<{ n: number }>('SELECT coalesce(sum(n), 0) AS n FROM seen_chunks').one().n;
    if (total > this.maxIndexedKeys) return null;
    const index = new SeenIndex();
    let small = 0;
    for (const r of this.sql.exec<{ id: number; n: number; fps: ArrayBuffer }>('SELECT id, n, fps FROM seen_chunks')) {
      index.addChunk(r.id, decodeFingerprints(r.fps));
      if (r.n < SMALL_SEEN_CHUNK) small++;
    }
    // The same read counts the small chunks, so the alarm need not scan the table again for them.
    this.smallChunks ??= small;
    return (this.index = index);
  }

  /**
   * Records new dedup keys as one chunk row per call instead of a row per key: a B-tree insert of a
   * random key per event was most of the object's time. Each key's 31-bit fingerprint goes into the
   * in-memory index.
   */
  record(events: readonly SeenKey[], nowMs: number): void {
    if (!events.length) return;
    if (this.meta.get<number>('nextSeenSweepMs') === null) this.meta.set('nextSeenSweepMs', nowMs + DEDUP_WINDOW_MS);
    const index = this.loadIndex();
    for (let start = 0; start < events.length; ) {
      let end = start;
      for (let bytes = 0; end < events.length && end - start < SEEN_CHUNK_KEYS; end++) {
        bytes += seenEntryBytes(events[end]!.k);
        if (end > start && bytes > SEEN_CHUNK_BYTES) break;
      }
      const part = events.slice(start, end);
      const fps = part.map((e) => fingerprint(e.k));
      const chunk = this.insertChunk(nowMs, fps, part.map((e): SeenEntry => [e.k, e.id, e.c]));
      index?.addChunk(chunk, fps);
      start = end;
    }
    if (index && index.fingerprints > this.maxIndexedKeys) this.index = null;
  }

  private insertChunk(seenAtMs: number, fps: number[], entries: SeenEntry[]): number {
    if (fps.length < SMALL_SEEN_CHUNK && this.smallChunks !== null) this.smallChunks++;
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
  lookup(keys: string[]): Map<string, { eventId: string; createdAtMs: number }> {
    const found = new Map<string, { eventId: string; createdAtMs: number }>();
    // A fingerprint hit is only a candidate: the chunks it names are read and the keys compared.
    const wanted = new Set<number>();
    const index = this.loadIndex();
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
      const rows = this.sql.exec<{ entries: string }>(`SELECT entries FROM seen_chunks WHERE id IN (${marks(part.length)})`, ...part);
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
          `SELECT key, event_id, created_at_ms FROM seen WHERE key IN (${marks(part.length)})`,
          ...part,
        );
        for (const r of rows) found.set(r.key, { eventId: r.event_id, createdAtMs: r.created_at_ms });
      }
    }
    return found;
  }

  /** When the next sweep is due (null: nothing recorded). */
  nextSweepMs(): number | null {
    return this.meta.get<number>('nextSeenSweepMs');
  }

  /** Chunks are swept whole when their ids leave the window, at most once an hour. Returns the ids pruned. */
  sweep(nowMs: number): number {
    let pruned = 0;
    const sweepAt = this.meta.get<number>('nextSeenSweepMs');
    if (sweepAt === null || nowMs < sweepAt) return 0;
    const expired = this.sql
      .exec<{ id: number; n: number; fps: ArrayBuffer }>('SELECT id, n, fps FROM seen_chunks WHERE seen_at_ms < ?', nowMs - DEDUP_WINDOW_MS)
      .toArray();
    for (const c of expired) {
      this.sql.exec('DELETE FROM seen_chunks WHERE id = ?', c.id);
      this.index?.removeChunk(c.id, decodeFingerprints(c.fps));
      pruned += c.n;
    }
    const oldest = this.sql.exec<{ t: number | null }>('SELECT min(seen_at_ms) AS t FROM seen_chunks').one().t;
    this.meta.set('nextSeenSweepMs', oldest === null ? null : Math.max(oldest + DEDUP_WINDOW_MS, nowMs + SEEN_SWEEP_INTERVAL_MS));
    return pruned;
  }

  /** Merges the small chunks of each hour of receipt (single-event requests make one chunk each). */
  compact(): void {
    this.smallChunks ??= this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen_chunks WHERE n < ?', SMALL_SEEN_CHUNK).one().n;
    if (this.smallChunks < SMALL_SEEN_CHUNKS_BEFORE_COMPACTION) return;
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
    const index = this.index;
    // Small chunks that could not be merged wait for as many new ones; a full batch leaves more to
    // merge, counted again by the next alarm, which goes on where this one stopped.
    this.smallChunks = small.length < SEEN_COMPACT_CHUNKS ? 0 : null;
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
        const chunk = this.insertChunk(Math.max(...merged.map((r) => r.seen_at_ms)), fps, entries);
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
  migrateLegacyRows(): void {
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
    const index = this.index;
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
      const chunk = this.insertChunk(seenAtMs, fps, part.map((r): SeenEntry => [r.key, r.event_id, r.created_at_ms]));
      index?.addChunk(chunk, fps);
    }
    const last = rows[rows.length - 1]!;
    this.sql.exec('DELETE FROM seen WHERE seen_at_ms < ? OR (seen_at_ms = ? AND key <= ?)', last.seen_at_ms, last.seen_at_ms, last.key);
    if (rows.length < this.seenMigrateRows) {
      this.sql.exec('DROP TABLE seen');
      this.legacySeen = false;
    }
  }

  /** Ids in the window (chunks, and an older layout's rows not moved yet). */
  count(): number {
    const chunked = this.sql.exec<{ n: number }>('SELECT coalesce(sum(n), 0) AS n FROM seen_chunks').one().n;
    return chunked + (this.legacySeen ? this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen').one().n : 0);
  }

  /** Whether any id is held. */
  holdsAny(): boolean {
    return (
      this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen_chunks').one().n > 0 ||
      (this.legacySeen && this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM seen').one().n > 0)
    );
  }

  /** Removes the entries of these event ids (lower-case uuids): chunks rewritten or deleted. Returns how many. */
  eraseEvents(eventIds: ReadonlySet<string>): number {
    if (!eventIds.size) return 0;
    let removed = 0;
    for (const c of this.sql.exec<{ id: number; entries: string }>('SELECT id, entries FROM seen_chunks').toArray()) {
      const entries = JSON.parse(c.entries) as SeenEntry[];
      const keep = entries.filter((e) => !eventIds.has(e[1]));
      if (keep.length === entries.length) continue;
      removed += entries.length - keep.length;
      if (!keep.length) this.sql.exec('DELETE FROM seen_chunks WHERE id = ?', c.id);
      else this.sql.exec('UPDATE seen_chunks SET n = ?, fps = ?, entries = ? WHERE id = ?', keep.length, encodeFingerprints(keep.map((e) => fingerprint(e[0]))), JSON.stringify(keep), c.id);
    }
    const idList = [...eventIds];
    for (let i = 0; this.legacySeen && i < idList.length; i += PARAMS_PER_STATEMENT) {
      const part = idList.slice(i, i + PARAMS_PER_STATEMENT);
      const cursor = this.sql.exec(`DELETE FROM seen WHERE event_id IN (${marks(part.length)})`, ...part);
      cursor.toArray();
      removed += cursor.rowsWritten;
    }
    this.index = null; // rebuilt from the rewritten chunks on next use
    return removed;
  }
}
