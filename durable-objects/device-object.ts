// One object per (project, device): a shell over its stores (src/device/) — dedup, sessions, outbox,
// live state. Each method opens the storage transaction and calls them; the stores own the tables.
import { DurableObject } from 'cloudflare:workers';
import { DedupStore } from '../src/device/dedup-store';
import { eraseProfile, heldCounts, type DeviceStores } from '../src/device/erase';
import { LiveStore, type LiveChange } from '../src/device/live-store';
import { OutboxStore } from '../src/device/outbox-store';
import { packEvent, unpackEvents } from '../src/device/packed';
import { createOrUpgradeTables, databaseBytes, hasTables, MetaStore, RETIRED_META_KEYS } from '../src/device/schema';
import { SESSION_RETENTION_MS, SessionStore } from '../src/device/session-store';
import type { Session } from '../src/device/sessions';
import type { DeviceErasureResult, DeviceIngest, DeviceIngestResult, DeviceState, FleetLiveUpdate, PackedEvent, ProfileErasure } from '../src/device/types';
import type { Env } from '../src/env';

export { DEDUP_WINDOW_MS } from '../src/device/dedup-store';
export type { DeviceEvent, DeviceIngest, DeviceIngestResult, DeviceState } from '../src/device/types';

/** A reported stall that D1 would not take back is tried again this soon. */
const STALL_CLEAR_RETRY_MS = 60 * 1000;
/**
 * A call flushes its own rows once they are committed. While rows wait, an alarm stands within this
 * long all the same: it sends them should that flush be lost (the object evicted or restarted
 * mid-send). One alarm per object per minute of traffic, not one per call.
 */
export const FLUSH_SAFETY_MS = 60 * 1000;

type FlushRun = { flushed: number; cleared: boolean };

const afterThisTask = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

export class DeviceObject extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private readonly meta: MetaStore;
  private readonly stores: DeviceStores;
  private schemaReady = false;
  /** The erase() under way: flushes hold off (what they would send is being deleted). */
  private eraseRun: Promise<DeviceErasureResult> | null = null;
  /**
   * The alarm as this life planned it: standing at `atMs`, no later than the idle time of any open
   * session under `gapMs`. Lets a call skip the planning (two reads and a getAlarm) when that alarm
   * already does what the call needs. Null when unknown: not planned yet this life, being run, or
   * set or deleted by anything but the planning (a back-off, an erasure).
   */
  private plannedAlarm: { atMs: number; gapMs: number } | null = null;
  /** Counts what made the object forget its plan: a planning that awaited across one does not note its own. */
  private alarmEpoch = 0;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.meta = new MetaStore(this.sql);
    const sessions = new SessionStore(this.sql, this.meta);
    this.stores = {
      dedup: new DedupStore(this.sql, this.meta),
      sessions,
      outbox: new OutboxStore(this.sql, this.meta),
      live: new LiveStore(this.meta, () => sessions.latestLive()),
    };
  }

  /** Bounds that tests lower to reach the dedup fallbacks without millions of rows. */
  get maxIndexedKeys(): number {
    return this.stores.dedup.maxIndexedKeys;
  }
  set maxIndexedKeys(n: number) {
    this.stores.dedup.maxIndexedKeys = n;
  }
  get seenMigrateRows(): number {
    return this.stores.dedup.seenMigrateRows;
  }
  set seenMigrateRows(n: number) {
    this.stores.dedup.seenMigrateRows = n;
  }

  /**
   * Tables are created on first write, so probing an unknown device leaves no storage behind. The
   * first check of an object's life also brings older layouts up to date.
   */
  private hasSchema(): boolean {
    if (!this.schemaReady) {
      const exists = hasTables(this.sql);
      if (exists) {
        this.transaction(() => {
          // The sessions' end_ms index as the gap last stored wants it, with the schema's statements.
          const gapMs = this.stores.live.gapMs();
          createOrUpgradeTables(this.sql, true, gapMs === null ? '' : this.stores.sessions.endIndexSql(gapMs));
          this.stores.dedup.detectLegacyTable();
        });
      }
      this.schemaReady = exists;
    }
    return this.schemaReady;
  }

  /** `gapMs`: the session gap of the call that creates the tables, when it is a call with events. */
  private ensureSchema(gapMs?: number): void {
    if (this.hasSchema()) return;
    createOrUpgradeTables(this.sql, false, gapMs === undefined ? '' : this.stores.sessions.endIndexSql(gapMs));
    this.schemaReady = true;
  }

  /** A meta value written through (for operators and tests that reach into a live object). */
  private setMeta(key: string, value: unknown): void {
    this.meta.set(key, value);
  }

  /** Runs `fn` in one storage transaction, keeping what the stores hold in memory true to what was committed. */
  private transaction<T>(fn: () => T): T {
    try {
      return this.ctx.storage.transactionSync(fn);
    } catch (err) {
      this.meta.clear();
      this.stores.dedup.forgetIndex();
      this.stores.outbox.forgetWritten();
      this.stores.sessions.forget();
      this.stores.live.forget();
      this.schemaReady = false; // the tables of a first, rolled-back write are gone too
      throw err;
    }
  }

  async ingest(request: DeviceIngest): Promise<DeviceIngestResult> {
    const nowMs = request.nowMs ?? Date.now();
    const events = Array.isArray(request.events) ? request.events.map((e) => packEvent(e)) : unpackEvents(request.events);
    const base = Array.isArray(request.events) ? null : (request.events.base ?? null);
    // Rows of the current packing only (an older caller's rows may repeat base fields): see PackedEvents.own.
    const own = !Array.isArray(request.events) && request.events.own === true && typeof request.events.fields !== 'string';
    const input = { ...request, events, base, own };
    // Outside the ingest transaction: an older layout is upgraded in its own.
    if (this.hasSchema() && this.stores.dedup.hasLegacyRows) this.transaction(() => this.stores.dedup.migrateLegacyRows());
    const { results, firstIdleAtMs } = this.transaction(() => this.ingestSync(input, nowMs));
    // The rows are committed: a failure to set the alarm must not make the caller resend them
    // (the next call or alarm schedules it again).
    if (!this.alarmStandsFor(request.nowMs === undefined ? firstIdleAtMs : -Infinity)) {
      await this.scheduleAlarm(nowMs, true).catch((err: unknown) =>
        console.error(JSON.stringify({ msg: 'device alarm could not be set', error: String(err) })),
      );
    }
    this.flushAfterCall();
    return { results };
  }

  /**
   * Sends the outbox once the call's answer has left (a macrotask later): the caller waits for
   * durability, not for the queue. A flush under way is waited for first, and while flushes fail the
   * call sends nothing: the back-off alarm alone retries (one send per back-off, not one per call).
   * Nothing waits for this promise (an object stays alive while its I/O is pending; should it be
   * evicted mid-send, the alarm scheduleAlarm left within FLUSH_SAFETY_MS sends the rows).
   */
  private flushAfterCall(): void {
    const { outbox } = this.stores;
    void (async () => {
      await afterThisTask();
      // The flush under way ends first, its failure recorded, so a failed one stops the others.
      while (this.flushRun) await this.flushRun.catch(() => null);
      // An erasure may be under way or have run in between, or a flush just failed.
      if (this.eraseRun || outbox.failures() > 0 || !this.hasSchema()) return;
      await this.flushOutbox();
    })().catch((err: unknown) => console.error(JSON.stringify({ msg: 'flush after a call failed', error: String(err) })));
  }

  /** The flushOutbox() under way, failure handling and stall clearing included. */
  private flushRun: Promise<FlushRun | null> | null = null;

  /**
   * Drains the outbox and takes back a reported stall; on failure backs off (an alarm) and reports
   * the stall. Null when it failed; `cleared: false` when D1 would not take the stall back.
   */
  private flushOutbox(): Promise<FlushRun | null> {
    const run = this.flushOutboxOnce();
    this.flushRun = run;
    const done = () => {
      if (this.flushRun === run) this.flushRun = null;
    };
    run.then(done, done);
    return run;
  }

  private async flushOutboxOnce(): Promise<FlushRun | null> {
    const { sessions, outbox, live } = this.stores;
    let flushed: number;
    try {
      flushed = await outbox.flush(this.env.INGEST_QUEUE, () => sessions.aliases());
    } catch (err) {
      // The runtime gives up on an alarm that keeps throwing; the outbox must not. Back off and
      // try again for as long as it takes.
      const { failures, delayMs } = outbox.recordFailure();
      console.error(JSON.stringify({ msg: 'outbox flush failed; retrying', failures, delayMs, error: String(err) }));
      // An earlier alarm still standing (a session's end) is kept; one past or running is not.
      const standing = await this.ctx.storage.getAlarm();
      const retryAt = Date.now() + delayMs;
      await this.setAlarmAt(standing !== null && standing > Date.now() ? Math.min(standing, retryAt) : retryAt);
      await outbox.reportStall(this.env.DB, live.ident(), failures, err);
      return null;
    }
    outbox.recordSuccess();
    // A stall was reported: the first flush that succeeds takes it back (the only D1 write of a
    // healthy object, once per recovery), inside the flush so no later one reports in between.
    const cleared = !outbox.stallReported() || (await outbox.clearStall(this.env.DB, live.ident()));
    return { flushed, cleared };
  }

  /**
   * Whether the alarm planned earlier this life already does what planning after a call would: it
   * stands in the future within FLUSH_SAFETY_MS (so within reach of any row waiting), planned with
   * today's gap, and before `firstIdleAtMs`, the earliest idle time of the open sessions the call
   * changed (the others were planned for). Planning after a call only ever pulls the alarm earlier,
   * so it would keep this one.
   */
  private alarmStandsFor(firstIdleAtMs: number): boolean {
    const planned = this.plannedAlarm;
    const now = Date.now();
    return (
      planned !== null &&
      planned.atMs > now &&
      planned.atMs <= now + FLUSH_SAFETY_MS &&
      planned.gapMs === this.stores.live.gapMs() &&
      firstIdleAtMs >= planned.atMs &&
      this.stores.outbox.failures() === 0
    );
  }

  private forgetPlannedAlarm(): void {
    this.plannedAlarm = null;
    this.alarmEpoch++;
  }

  private async setAlarmAt(atMs: number): Promise<void> {
    this.forgetPlannedAlarm();
    await this.ctx.storage.setAlarm(atMs);
  }

  /** Dedup, sessions, then the new events' ids, outbox rows and live state: all in the caller's transaction. */
  private ingestSync(
    input: Omit<DeviceIngest, 'events'> & { events: PackedEvent[]; base: string | null; own: boolean },
    nowMs: number,
  ): { results: DeviceIngestResult['results']; firstIdleAtMs: number } {
    const { dedup, sessions, outbox, live } = this.stores;
    this.ensureSchema(input.gapMs);
    this.meta.drop(RETIRED_META_KEYS);
    live.identify(input.projectId, input.deviceId, input.gapMs);
    sessions.indexEnds(input.gapMs);
    sessions.takeKnown(input.knownSessions ?? []);

    // Dedup against the window and within the request itself.
    const seen = dedup.lookup([...new Set(input.events.map((e) => e.k))]);
    const fresh: number[] = [];
    const firstIndexOfKey = new Map<string, number>();
    input.events.forEach((e, i) => {
      if (seen.has(e.k) || firstIndexOfKey.has(e.k)) return;
      firstIndexOfKey.set(e.k, i);
      fresh.push(i);
    });

    // Sessions: only `track` events make or extend them. Their rows go out before the events. The
    // device's new live state rides in the last session row the call writes (a call of other
    // events only writes it to `meta`).
    const tracked = fresh.filter((i) => input.events[i]!.t === 'track');
    const freshEvents = fresh.map((i) => input.events[i]!);
    const sessionOf = new Map<number, string>();
    let freshSessions: string[] = [];
    // Each event's session, then the live state they make: called once, by assign (when there are
    // sessions to place) or below.
    const settle = (sessionIds: readonly string[]): LiveChange | null => {
      tracked.forEach((i, k) => sessionOf.set(i, sessionIds[k]!));
      freshSessions = fresh.map((i) => sessionOf.get(i) ?? '');
      return live.change(freshEvents, freshSessions, nowMs);
    };
    const assigned = sessions.assign(live.ident()!, tracked.map((i) => input.events[i]!.c), input.gapMs, nowMs, settle);
    const change = tracked.length ? assigned.live : settle([]);

    dedup.record(freshEvents, nowMs);
    // The changed session rows ride with the events' chunk, ahead of them in its message.
    outbox.appendEvents(freshEvents, freshSessions, assigned.rows, input.base, input.own);
    live.record(change, assigned.liveHolder);

    // When the open sessions this call changed go idle (sessions it took in from ClickHouse were
    // not planned for: -Infinity sends the call through the planning).
    let firstIdleAtMs = input.knownSessions?.length ? -Infinity : Infinity;
    for (const row of assigned.rows) {
      if (row.ended === 0 && row.merged_into === '') firstIdleAtMs = Math.min(firstIdleAtMs, row.ended_at_ms + input.gapMs);
    }

    const freshSet = new Set(fresh);
    const priorSession = sessions.at(input.events.filter((e) => e.t === 'track' && seen.has(e.k)).map((e) => seen.get(e.k)!.createdAtMs));
    const results = input.events.map((e, i) => {
      if (freshSet.has(i)) return { status: 'accepted' as const, sessionId: sessionOf.get(i) ?? '', eventId: e.id };
      const prior = seen.get(e.k);
      if (prior) {
        const sessionId = e.t === 'track' ? (priorSession.get(prior.createdAtMs) ?? '') : '';
        return { status: 'duplicate' as const, sessionId, eventId: prior.eventId };
      }
      const first = firstIndexOfKey.get(e.k)!;
      return { status: 'duplicate' as const, sessionId: sessionOf.get(first) ?? '', eventId: input.events[first]!.id };
    });
    return { results, firstIdleAtMs };
  }

  /**
   * The alarm: end idle sessions, prune old ids, flush the outbox, then plan the next run (unless a
   * flush it waited for failed: that flush's back-off alarm is the next run).
   */
  override async alarm(): Promise<void> {
    // This alarm is spent: until planned again, calls plan for themselves.
    this.forgetPlannedAlarm();
    await this.maintain(Date.now());
  }

  async maintain(nowMs: number): Promise<{ ended: number; pruned: number; flushed: number }> {
    if (!this.hasSchema()) return { ended: 0, pruned: 0, flushed: 0 };
    const { dedup, sessions, outbox, live } = this.stores;
    let ended = 0;
    let pruned = 0;
    try {
      if (dedup.hasLegacyRows) this.transaction(() => dedup.migrateLegacyRows());
      ({ ended, pruned } = this.transaction(() => this.endAndPrune(nowMs)));
    } catch (err) {
      // Housekeeping must never hold up the outbox: flush anyway, and try again on the next alarm.
      console.error(JSON.stringify({ msg: 'device housekeeping failed; flushing anyway', error: String(err) }));
    }
    // A flush under way (a call's) and an erasure end first. Should that flush have failed, its
    // back-off alarm retries: sending now would send again into the same failure.
    let waited: FlushRun | null | undefined;
    while (this.flushRun || this.eraseRun) {
      if (this.flushRun) waited = await this.flushRun.catch(() => undefined);
      else await this.eraseRun!.catch(() => null);
    }
    if (waited === null) return { ended, pruned, flushed: 0 };
    if (!this.hasSchema()) return { ended, pruned, flushed: 0 };
    const run = await this.flushOutbox();
    if (run === null) return { ended, pruned, flushed: 0 };
    await this.scheduleAlarm(nowMs, false);
    // Should D1 refuse, the row stays visible until an alarm soon takes it back.
    if (!run.cleared) await this.setAlarmAt(Math.min((await this.ctx.storage.getAlarm()) ?? Infinity, Date.now() + STALL_CLEAR_RETRY_MS));
    return { ended, pruned, flushed: run.flushed };
  }

  private endAndPrune(nowMs: number): { ended: number; pruned: number } {
    const { dedup, sessions, outbox, live } = this.stores;
    const gapMs = live.gapMs();
    const ident = live.ident();
    let ended = 0;
    if (gapMs !== null && ident) {
      const rows = sessions.endIdle(ident, gapMs, nowMs);
      outbox.enqueueSessions(rows);
      ended = rows.length;
    }
    const pruned = dedup.sweep(nowMs);
    dedup.compact();
    // The session row carrying the live state may be among those pruned: `meta` takes it first.
    if (live.heldBefore(nowMs - SESSION_RETENTION_MS)) live.persist();
    sessions.prune(nowMs);
    return { ended, pruned };
  }

  /**
   * Plans the next alarm. After a call (`afterCall`) it only ever pulls the alarm earlier: within
   * FLUSH_SAFETY_MS while rows wait (the call flushes them itself), else to when the next session
   * may end. After an alarm run it sets the exact next time.
   */
  private async scheduleAlarm(nowMs: number, afterCall: boolean): Promise<void> {
    const { dedup, sessions, outbox, live } = this.stores;
    // Whatever was planned no longer covers this call's sessions until this planning ends; one that
    // throws or returns early leaves nothing planned (the next call plans again).
    this.forgetPlannedAlarm();
    const epoch = this.alarmEpoch;
    // Planned against an injected clock (tests, maintain(nowMs)) the alarm is not one a call can trust.
    const realClock = Math.abs(nowMs - Date.now()) < 1000;
    // Rows still waiting were committed by calls whose own flushes come next (after a call, or after
    // an alarm's flush that succeeded), or wait for the back-off alarm that stands while sends fail:
    // this alarm only stands by for them.
    let next: number | null = outbox.pendingRows() > 0 ? Date.now() + FLUSH_SAFETY_MS : null;
    const gapMs = live.gapMs();
    if (gapMs !== null) {
      // A session that goes idle sooner than the flush's safety alarm ends on time.
      const open = sessions.firstOpenEndMs();
      if (open !== null) next = Math.min(next ?? Infinity, Date.now() + Math.max(0, open + gapMs - nowMs));
    }
    if (next === null) {
      // Nothing live: wake up when the oldest id or session leaves its window, so state stays bounded.
      const seenSweep = dedup.nextSweepMs();
      const oldestSession = sessions.oldestEndMs();
      const due = [seenSweep, oldestSession === null ? null : oldestSession + SESSION_RETENTION_MS].filter((t): t is number => t !== null);
      if (due.length) next = Date.now() + Math.max(60_000, Math.min(...due) - nowMs);
    }
    if (next === null) return;
    const current = await this.ctx.storage.getAlarm();
    // Overtaken while it read the alarm (another planning, the alarm's run, a back-off, an
    // erasure): whatever overtook it planned from a state that includes this one's, or must leave
    // no alarm at all. Setting this planning's alarm now would undo that.
    if (this.alarmEpoch !== epoch) return;
    // While flushes fail, the back-off alarm stands: new rows wait for it rather than pulling it
    // earlier on every call (which would send a retry per request into the outage).
    if (afterCall && current !== null && outbox.failures() > 0) return;
    const atMs = current === null || next < current || !afterCall ? next : current;
    if (atMs !== current) await this.ctx.storage.setAlarm(atMs);
    // No later than `next`, which is no later than any open session's idle time (unless something
    // overtook this planning while it set the alarm: then nothing is noted).
    if (gapMs !== null && realClock && this.alarmEpoch === epoch) this.plannedAlarm = { atMs, gapMs };
  }

  /** Live state for GET /v1/devices/:deviceId; null for a device that never sent an event. */
  async state(nowMs = Date.now()): Promise<DeviceState | null> {
    if (!this.hasSchema()) return null;
    const { dedup, sessions, outbox, live } = this.stores;
    return live.state(nowMs, sessions, () => ({
      sessions: sessions.count(),
      seenIds: dedup.count(),
      pendingRows: outbox.pendingRows(),
      storageBytes: databaseBytes(this.sql),
    }));
  }

  /**
   * The fleet recompute's live position for this vehicle (see LiveStore.setFleetLive): kept unless
   * a newer pass wrote one. An object without storage is not created just to hold "none".
   */
  async setFleetLive(update: FleetLiveUpdate): Promise<boolean> {
    if (!this.hasSchema() && update.live === null) return false;
    return this.transaction(() => {
      this.ensureSchema();
      this.stores.live.claim(update.projectId, update.deviceId);
      return this.stores.live.setFleetLive(update);
    });
  }

  /** Forgets the fleet live position (a profile erasure, once its positions are gone): whether there was one. */
  async clearFleetLive(): Promise<boolean> {
    if (!this.hasSchema()) return false;
    return this.transaction(() => this.stores.live.clearFleetLive());
  }

  /** Current (unmerged) sessions, oldest first: for tests and operators. */
  async sessions(): Promise<Array<Session & { ended: boolean }>> {
    if (!this.hasSchema()) return [];
    return this.stores.sessions.list();
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
  async erase(profile?: ProfileErasure): Promise<DeviceErasureResult> {
    while (this.eraseRun) await this.eraseRun.catch(() => null);
    const run = this.eraseHeld(profile);
    this.eraseRun = run;
    try {
      return await run;
    } finally {
      if (this.eraseRun === run) this.eraseRun = null;
      // What others' calls committed meanwhile (a profile's erasure keeps it) goes out now.
      if (this.schemaReady) this.flushAfterCall();
    }
  }

  private async eraseHeld(profile?: ProfileErasure): Promise<DeviceErasureResult> {
    // (Its failure handling too: a back-off alarm set after the deletion would outlive it.)
    while (this.flushRun || this.stores.outbox.inFlight) await (this.flushRun ?? this.stores.outbox.inFlight)!.catch(() => 0);
    this.forgetPlannedAlarm();
    if (!this.hasSchema()) {
      await this.ctx.storage.deleteAlarm();
      this.forgetPlannedAlarm();
      return { held: false, whole: true, outboxEvents: 0, seenIds: 0, sessions: 0 };
    }
    let partial: ReturnType<typeof eraseProfile> | null = null;
    if (profile) {
      partial = this.transaction(() => eraseProfile(this.stores, profile));
      if (partial.othersRemain) return { held: partial.held, whole: false, ...partial.removed };
    }
    const removed = partial?.removed ?? heldCounts(this.stores);
    this.forgetPlannedAlarm();
    await this.ctx.storage.deleteAll();
    await this.ctx.storage.deleteAlarm();
    // Again once deleted: a planning that noted an alarm meanwhile noted one that is gone.
    this.forgetPlannedAlarm();
    this.meta.clear();
    this.stores.dedup.reset();
    this.stores.outbox.reset();
    this.stores.sessions.forget();
    this.stores.live.forget();
    this.schemaReady = false;
    return { held: partial ? partial.held : true, whole: true, ...removed };
  }
}
