// The device's sessions by event time (`sessions`) around the pure `assignSessions`: each change is
// answered as the versioned ClickHouse row, for the caller to put in the outbox in the same transaction.
import type { SessionRow } from '../pipeline/messages';
import { DEDUP_WINDOW_MS } from './dedup-store';
import { marks, PARAMS_PER_STATEMENT, type MetaStore } from './schema';
import type { CarriedLive, LiveChange } from './live-store';
import { assignSessions, type Session } from './sessions';
import type { DeviceIdent, DeviceState, SessionRecord } from './types';

/** Sessions are kept past the dedup window; the route refuses events older than 5 days. */
export const SESSION_RETENTION_MS = DEDUP_WINDOW_MS + 24 * 60 * 60 * 1000;
/** How much further back than a call asks the sessions held in memory reach (see SessionStore.recent). */
const RECENT_MARGIN_MS = 60 * 60 * 1000;
/**
 * Session gaps from this one up leave the sessions unindexed by `end_ms`: sessions at least a gap
 * apart over the days kept bound a device to about 1 200 rows, which a scan reads at once (the
 * alarm's idle sessions and planning, the prune, a life's first read), while the index cost a
 * billed row write with every call that extended a session. Shorter gaps keep the index.
 */
export const UNINDEXED_GAP_MIN_MS = 10 * 60 * 1000;

export class SessionStore {
  /** aliases() as last read, until a merge, a prune or an erasure changes them (null: read again). */
  private aliasCache: Record<string, string> | null = null;
  /**
   * Every current (unmerged) session that ends after `fromMs`, as storage holds it, kept in step by
   * each write below: a call on live data finds its sessions here instead of a read. A call that
   * reaches further back reads storage (and keeps that wider window). Null: read again.
   */
  private recent: { fromMs: number; byId: Map<string, SessionRecord> } | null = null;
  /** Whether the `end_ms` index was made to stand (true) or gone (false) this life; null: not yet. */
  private endIndexed: boolean | null = null;

  constructor(
    private readonly sql: SqlStorage,
    private readonly meta: MetaStore,
  ) {}

  /**
   * A session row's next version: above the one it has, so its later changes always win in
   * ClickHouse (rows replace per session id). Derived from the row itself, so no counter is written.
   */
  private nextVersion(prior: number | undefined, nowMs: number): number {
    return Math.max((prior ?? 0) + 1, nowMs * 1000);
  }

  private row(ident: DeviceIdent, s: SessionRecord, mergedInto: string, nowMs: number): SessionRow {
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

  /** The current sessions overlapping (fromMs, toMs). */
  private load(fromMs: number, toMs: number): SessionRecord[] {
    if (!this.recent || fromMs < this.recent.fromMs) {
      // A gap's width more than asked: the next calls of a live device start a little later.
      const windowFromMs = fromMs - RECENT_MARGIN_MS;
      const rows = this.sql
        .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number; version: number }>(
          'SELECT id, start_ms, end_ms, event_count, ended, version FROM sessions WHERE merged_into IS NULL AND end_ms > ?',
          windowFromMs,
        )
        .toArray();
      this.recent = {
        fromMs: windowFromMs,
        byId: new Map(rows.map((r) => [r.id, { id: r.id, startMs: r.start_ms, endMs: r.end_ms, eventCount: r.event_count, ended: r.ended, version: r.version }])),
      };
    }
    const out: SessionRecord[] = [];
    for (const s of this.recent.byId.values()) if (s.startMs < toMs && s.endMs > fromMs) out.push({ ...s });
    return out;
  }

  /** Forgets the sessions it holds in memory (a rolled-back transaction, deleted storage). */
  forget(): void {
    this.recent = null;
    this.aliasCache = null;
    this.endIndexed = null;
  }

  /**
   * The statement that keeps the sessions' `end_ms` index for a gap under UNINDEXED_GAP_MIN_MS, or
   * drops it (an older layout's too) for a longer one; '' when this life has made it so already.
   * The caller runs it in its transaction (a rollback forgets it: see forget).
   */
  endIndexSql(gapMs: number): string {
    const indexed = gapMs < UNINDEXED_GAP_MIN_MS;
    if (this.endIndexed === indexed) return '';
    this.endIndexed = indexed;
    return indexed ? 'CREATE INDEX IF NOT EXISTS sessions_end_idx ON sessions (end_ms);' : 'DROP INDEX IF EXISTS sessions_end_idx;';
  }

  /** endIndexSql, run (a statement only when the gap crossed the line since the schema check). */
  indexEnds(gapMs: number): void {
    const statement = this.endIndexSql(gapMs);
    if (statement) this.sql.exec(statement);
  }

  /** Takes in the sessions ClickHouse holds that the object has no row of (it keeps its own). */
  takeKnown(known: readonly SessionRecord[]): void {
    // Kept or not depending on rows the memory does not hold (merged ones): read again next time.
    if (known.length) this.recent = null;
    for (const k of known) {
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
  }

  /**
   * Places new event times into the sessions, extending, back-dating, creating or merging them.
   * Returns each time's session, and the changed session rows in the order they must be sent.
   * `carry`, given each time's session, makes the device's new live state: the last session row
   * written carries it (`liveHolder`), so the call writes no row of its own for it.
   */
  assign(
    ident: DeviceIdent,
    times: readonly number[],
    gapMs: number,
    nowMs: number,
    carry?: (sessionIds: readonly string[]) => LiveChange | null,
  ): { sessionIds: string[]; rows: SessionRow[]; live: LiveChange | null; liveHolder: { sessionId: string; endMs: number } | null } {
    if (!times.length) return { sessionIds: [], rows: [], live: null, liveHolder: null };
    const rows: SessionRow[] = [];
    const existing = this.load(Math.min(...times) - gapMs, Math.max(...times) + gapMs);
    const byId = new Map(existing.map((s) => [s.id, s]));
    const assignment = assignSessions(existing, times, gapMs, () => crypto.randomUUID());

    for (const [mergedId, survivorId] of assignment.merged) {
      if (!byId.has(mergedId)) continue; // created and absorbed within this call: never stored
      // Sessions merged earlier into `mergedId` now point straight at the survivor, here and in
      // ClickHouse, so a reader never has to follow a chain of merges.
      const absorbed = this.sql
        .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number; version: number }>(
          'SELECT id, start_ms, end_ms, event_count, ended, version FROM sessions WHERE id = ? OR merged_into = ?',
          mergedId,
          mergedId,
        )
        .toArray();
      this.aliasCache = null;
      for (const a of absorbed) {
        const version = this.nextVersion(a.version, nowMs);
        this.sql.exec('UPDATE sessions SET merged_into = ?, version = ? WHERE id = ?', survivorId, version, a.id);
        this.recent?.byId.delete(a.id);
        rows.push(this.row(ident, { id: a.id, startMs: a.start_ms, endMs: a.end_ms, eventCount: a.event_count, ended: a.ended, version }, survivorId, nowMs));
      }
    }
    const live = carry?.(assignment.sessionIds) ?? null;
    let liveHolder: { sessionId: string; endMs: number } | null = null;
    let left = assignment.changed.size;
    for (const s of assignment.changed.values()) {
      const version = this.nextVersion(byId.get(s.id)?.version, nowMs);
      const ended = s.endMs + gapMs <= nowMs ? 1 : 0;
      const carries = live !== null && --left === 0;
      this.sql.exec(
        carries
          ? `INSERT INTO sessions (id, start_ms, end_ms, event_count, ended, merged_into, version, live, live_v) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET start_ms = excluded.start_ms, end_ms = excluded.end_ms,
               event_count = excluded.event_count, ended = excluded.ended, version = excluded.version,
               live = excluded.live, live_v = excluded.live_v`
          : `INSERT INTO sessions (id, start_ms, end_ms, event_count, ended, merged_into, version) VALUES (?, ?, ?, ?, ?, NULL, ?)
             ON CONFLICT(id) DO UPDATE SET start_ms = excluded.start_ms, end_ms = excluded.end_ms,
               event_count = excluded.event_count, ended = excluded.ended, version = excluded.version`,
        s.id,
        s.startMs,
        s.endMs,
        s.eventCount,
        ended,
        version,
        ...(carries ? [live.json, live.v] : []),
      );
      if (carries) liveHolder = { sessionId: s.id, endMs: s.endMs };
      this.recent?.byId.set(s.id, { id: s.id, startMs: s.startMs, endMs: s.endMs, eventCount: s.eventCount, ended, version });
      rows.push(this.row(ident, { ...s, ended, version }, '', nowMs));
    }
    return { sessionIds: assignment.sessionIds, rows, live, liveHolder };
  }

  /** The session row carrying the highest-numbered live state (see LiveStore), if any. */
  latestLive(): CarriedLive | null {
    const [r] = this.sql
      .exec<{ live: string; live_v: number; id: string; end_ms: number }>('SELECT live, live_v, id, end_ms FROM sessions WHERE live_v IS NOT NULL ORDER BY live_v DESC LIMIT 1')
      .toArray();
    return r ? { json: r.live, v: r.live_v, sessionId: r.id, endMs: r.end_ms } : null;
  }

  /** Forgets the live states session rows carry (an erasure, once `meta` holds the current one). */
  clearLives(): void {
    this.sql.exec('UPDATE sessions SET live = NULL, live_v = NULL WHERE live_v IS NOT NULL');
  }

  /** The current session covering each time ('' when none): sessions are disjoint, so this is exact. */
  at(times: readonly number[]): Map<number, string> {
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

  /** Ends the sessions idle for the gap; returns their rows to send. */
  endIdle(ident: DeviceIdent, gapMs: number, nowMs: number): SessionRow[] {
    const idle = this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; version: number }>(
        'SELECT id, start_ms, end_ms, event_count, version FROM sessions WHERE ended = 0 AND merged_into IS NULL AND end_ms + ? <= ?',
        gapMs,
        nowMs,
      )
      .toArray();
    const rows: SessionRow[] = [];
    for (const s of idle) {
      const version = this.nextVersion(s.version, nowMs);
      this.sql.exec('UPDATE sessions SET ended = 1, version = ? WHERE id = ?', version, s.id);
      const held = this.recent?.byId.get(s.id);
      if (held) Object.assign(held, { ended: 1, version });
      rows.push(this.row(ident, { id: s.id, startMs: s.start_ms, endMs: s.end_ms, eventCount: s.event_count, ended: 1, version }, '', nowMs));
    }
    return rows;
  }

  /** Forgets ended and merged sessions past their retention. */
  prune(nowMs: number): void {
    this.aliasCache = null;
    if (this.recent) {
      for (const [id, s] of this.recent.byId) if (s.ended === 1 && s.endMs < nowMs - SESSION_RETENTION_MS) this.recent.byId.delete(id);
    }
    this.sql.exec('DELETE FROM sessions WHERE ended = 1 AND end_ms < ?', nowMs - SESSION_RETENTION_MS);
    this.sql.exec('DELETE FROM sessions WHERE merged_into IS NOT NULL AND end_ms < ?', nowMs - SESSION_RETENTION_MS);
  }

  /** Merged session → the session that absorbed it (events written before a merge still name the former). */
  aliases(): Readonly<Record<string, string>> {
    if (this.aliasCache) return this.aliasCache;
    const aliases: Record<string, string> = {};
    for (const r of this.sql.exec<{ id: string; merged_into: string }>('SELECT id, merged_into FROM sessions WHERE merged_into IS NOT NULL')) {
      aliases[r.id] = r.merged_into;
    }
    return (this.aliasCache = aliases);
  }

  /** The session a (possibly merged) session id now is. */
  current(id: string): string {
    return this.sql.exec<{ m: string | null }>('SELECT merged_into AS m FROM sessions WHERE id = ?', id).toArray()[0]?.m ?? id;
  }

  /** The end of the open session that ends first (null: none open). */
  firstOpenEndMs(): number | null {
    return this.sql.exec<{ t: number | null }>('SELECT min(end_ms) AS t FROM sessions WHERE ended = 0 AND merged_into IS NULL').one().t;
  }

  /** The end of the oldest session held, merged or not. */
  oldestEndMs(): number | null {
    return this.sql.exec<{ t: number | null }>('SELECT min(end_ms) AS t FROM sessions').one().t;
  }

  /** The session still open at `nowMs` (not idle for the gap yet), if any. */
  live(gapMs: number, nowMs: number): DeviceState['liveSession'] {
    const live = this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number }>(
        'SELECT id, start_ms, end_ms, event_count FROM sessions WHERE merged_into IS NULL AND end_ms + ? > ? ORDER BY end_ms DESC LIMIT 1',
        gapMs,
        nowMs,
      )
      .toArray()[0];
    return live ? { id: live.id, startMs: live.start_ms, endMs: live.end_ms, eventCount: live.event_count, idleAtMs: live.end_ms + gapMs } : null;
  }

  /** Current (unmerged) sessions, oldest first. */
  list(): Array<Session & { ended: boolean }> {
    return this.sql
      .exec<{ id: string; start_ms: number; end_ms: number; event_count: number; ended: number }>(
        'SELECT id, start_ms, end_ms, event_count, ended FROM sessions WHERE merged_into IS NULL ORDER BY start_ms',
      )
      .toArray()
      .map((r) => ({ id: r.id, startMs: r.start_ms, endMs: r.end_ms, eventCount: r.event_count, ended: r.ended === 1 }));
  }

  /** Current (unmerged) sessions. */
  count(): number {
    return this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM sessions WHERE merged_into IS NULL').one().n;
  }

  /** Every session row held, merged ones included. */
  countAll(): number {
    return this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM sessions').one().n;
  }

  /** Each session id mapped to the session it went into through merges (itself when it was not merged). */
  survivors(): (id: string) => string {
    const into = new Map(this.sql.exec<{ id: string; merged_into: string | null }>('SELECT id, merged_into FROM sessions WHERE merged_into IS NOT NULL').toArray().map((r) => [r.id, r.merged_into!]));
    return (id) => {
      let at = id;
      for (let hops = 0; hops <= into.size && into.has(at); hops++) at = into.get(at)!;
      return at;
    };
  }

  /**
   * The sessions made only of these events: `removed` counts events per session they were written
   * in (a session merged since counts for the one it went into), and a session whose every event
   * is among them is returned.
   */
  madeOnlyOf(removed: ReadonlyMap<string, number>): string[] {
    if (!removed.size) return [];
    const survivor = this.survivors();
    const counted = new Map<string, number>();
    for (const [id, n] of removed) counted.set(survivor(id), (counted.get(survivor(id)) ?? 0) + n);
    const rows = this.sql.exec<{ id: string; event_count: number }>('SELECT id, event_count FROM sessions WHERE merged_into IS NULL').toArray();
    return rows.filter((r) => counted.has(r.id) && counted.get(r.id)! >= r.event_count).map((r) => r.id);
  }

  /** Deletes these sessions and those merged into them; returns how many rows went. */
  erase(sessionIds: readonly string[]): number {
    this.aliasCache = null;
    this.recent = null;
    let removed = 0;
    const ids = [...new Set(sessionIds)];
    for (let i = 0; i < ids.length; i += PARAMS_PER_STATEMENT / 2) {
      const part = ids.slice(i, i + PARAMS_PER_STATEMENT / 2);
      const cursor = this.sql.exec(`DELETE FROM sessions WHERE id IN (${marks(part.length)}) OR merged_into IN (${marks(part.length)})`, ...part, ...part);
      cursor.toArray();
      removed += cursor.rowsWritten;
    }
    return removed;
  }
}
