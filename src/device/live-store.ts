// The device's identity and live state (ids, session gap, last event, position, profile, last
// seen), and the state() answer built from it and the other stores' figures. A call's live state
// rides in the session row the call writes anyway (see SessionStore.assign); `meta` holds it when
// no session row is written, and before the row that holds it may go.
import type { MetaStore } from './schema';
import type { DeviceIdent, DeviceState, FleetLiveUpdate, PackedEvent, StoredFleetLive, StoredLastEvent } from './types';

type LastProfile = { id: string; atMs: number };

/** What a call changes, kept as one value: one row written per call, not one per field. */
type LiveState = {
  lastEvent: StoredLastEvent | null;
  lastPosition: DeviceState['lastPosition'];
  lastProfile: LastProfile | null;
  lastSeenMs: number | null;
};

/** The keys an older layout kept the same fields in, one a row: read until `live` is first written. */
const FIELD_KEYS = ['lastEvent', 'lastPosition', 'lastProfile', 'lastSeenMs'] as const;

/** A live state a call makes, numbered: the highest number, in `meta` or in a session row, is current. */
export interface LiveChange {
  state: LiveState;
  v: number;
  /** The state as JSON, for the session row that carries it. */
  json: string;
}

/** A session row carrying a live state (SessionStore.latestLive). */
export interface CarriedLive {
  json: string;
  v: number;
  sessionId: string;
  endMs: number;
}

/** The session row the current live state rides in, while no `meta` row holds it as well. */
type Holder = { sessionId: string; endMs: number };

/**
 * Whether state `a` (numbered `av`) is newer than `b`: seen later, or seen at the same time and
 * numbered higher. Every change keeps or raises the time last seen and raises the number; the time
 * also puts a `meta` row written by a release before this layout (no number) after older rows.
 */
function newer(a: LiveState, av: number, b: LiveState, bv: number): boolean {
  const at = a.lastSeenMs ?? 0;
  const bt = b.lastSeenMs ?? 0;
  return at > bt || (at === bt && av > bv);
}

export class LiveStore {
  /** The current live state, its number and where it is held; null: read again. */
  private current: { state: LiveState; v: number; holder: Holder | null } | null = null;

  constructor(
    private readonly meta: MetaStore,
    /** The session row with the highest-numbered live state, if any. */
    private readonly carried: () => CarriedLive | null,
  ) {}

  /** Forgets what it holds in memory: after a rollback, or once storage is deleted. */
  forget(): void {
    this.current = null;
  }

  private load(): { state: LiveState; v: number; holder: Holder | null } {
    if (this.current) return this.current;
    const stored = this.meta.get<LiveState & { v?: number }>('live');
    let state: LiveState;
    let v = 0;
    if (stored) {
      const { v: n, ...rest } = stored;
      state = rest;
      v = n ?? 0;
    } else {
      const [lastEvent, lastPosition, lastProfile, lastSeenMs] = FIELD_KEYS.map((k) => this.meta.get(k));
      state = { lastEvent, lastPosition, lastProfile, lastSeenMs } as LiveState;
    }
    const row = this.carried();
    if (row) {
      const carried = JSON.parse(row.json) as LiveState;
      if (newer(carried, row.v, state, v)) return (this.current = { state: carried, v: row.v, holder: { sessionId: row.sessionId, endMs: row.endMs } });
    }
    return (this.current = { state, v, holder: null });
  }

  private live(): LiveState {
    return this.load().state;
  }

  /** Writes `state` to `meta` under the next number: it is then the current one wherever rows go. */
  private setLive(state: LiveState): void {
    const v = this.load().v + 1;
    this.meta.set('live', { ...state, v });
    this.meta.drop(FIELD_KEYS);
    this.current = { state, v, holder: null };
  }

  /**
   * Copies the current state into `meta` when only a session row holds it: before that row may be
   * deleted (a prune, an erasure). Nothing to write otherwise.
   */
  persist(): void {
    const c = this.load();
    if (c.holder) this.setLive(c.state);
  }

  /** Whether pruning sessions that ended before `cutoffMs` could delete the row holding the live state. */
  heldBefore(cutoffMs: number): boolean {
    const holder = this.load().holder;
    return holder !== null && holder.endMs < cutoffMs;
  }

  ident(): DeviceIdent | null {
    return this.meta.get<DeviceIdent>('ident');
  }

  /** Forgets the live position (an erasure's positions were in it); the version stays, so no older pass brings it back. */
  clearFleetLive(): boolean {
    const current = this.fleetLive();
    if (!current?.live) return false;
    this.meta.set('fleet', { version: current.version, live: null });
    return true;
  }

  /** Records who the object is, once (an object the fleet recompute reaches before any ingest call). */
  claim(projectId: string, deviceId: string): void {
    if (!this.meta.get('ident')) this.meta.set('ident', { projectId, deviceId });
  }

  /** Records who the object is (once) and the project's current session gap. */
  identify(projectId: string, deviceId: string, gapMs: number): void {
    if (!this.meta.get('ident')) this.meta.set('ident', { projectId, deviceId });
    this.meta.set('gapMs', gapMs);
  }

  gapMs(): number | null {
    return this.meta.get<number>('gapMs');
  }

  /**
   * The live state after new events (with their sessions): the latest by event time wins; `nowMs`
   * is their receipt. Null without events. Nothing is written until record().
   */
  change(events: readonly PackedEvent[], sessionIds: readonly string[], nowMs: number): LiveChange | null {
    if (!events.length) return null;
    const current = this.load();
    let { lastEvent: last, lastPosition, lastProfile, lastSeenMs } = current.state;
    events.forEach((e, i) => {
      if (!last || e.c >= last.createdAtMs) {
        last = { id: e.id, type: e.t, name: e.n, createdAtMs: e.c, sessionId: sessionIds[i]! };
      }
      if (e.pos && (!lastPosition || e.c >= lastPosition.atMs)) {
        lastPosition = { lat: e.pos[0], lon: e.pos[1], atMs: e.c };
      }
      if (e.pr && (!lastProfile || e.c >= lastProfile.atMs)) {
        lastProfile = { id: e.pr, atMs: e.c };
      }
    });
    const state = { lastEvent: last, lastPosition, lastProfile, lastSeenMs: Math.max(lastSeenMs ?? 0, nowMs) };
    return { state, v: current.v + 1, json: JSON.stringify(state) };
  }

  /**
   * Takes a change as current: carried by the session row `holder` (written by the caller in the
   * same transaction), or, with none, written to `meta`.
   */
  record(change: LiveChange | null, holder: Holder | null): void {
    if (!change) return;
    if (!holder) return this.setLive(change.state);
    this.current = { state: change.state, v: change.v, holder };
    // An older layout's rows (once): the session row now holds what they did.
    this.meta.drop(FIELD_KEYS);
  }

  hasLastEvent(): boolean {
    return this.live().lastEvent !== null;
  }

  /**
   * The vehicle's live position as the fleet recompute derived it from the set of its fixes (its own
   * `fleet` row: written by the recompute, not by ingest calls). Null before any, or once deleted.
   */
  fleetLive(): StoredFleetLive | null {
    return this.meta.get<StoredFleetLive>('fleet');
  }

  /**
   * Takes the recompute's live position (null: none is left) unless a newer recompute already wrote
   * one: versions only grow, so a pass that finishes late never sets an older answer back.
   */
  setFleetLive(update: Pick<FleetLiveUpdate, 'version' | 'live'>): boolean {
    const current = this.fleetLive();
    // An equal version is the same pass's answer again: each lease moves the cursor's seq on, so
    // two passes never share a version.
    if (current && current.version > update.version) return false;
    this.meta.set('fleet', { version: update.version, live: update.live });
    return true;
  }

  /**
   * Live state; null for a device that never sent an event. `sessions` answers for the session
   * store (the live session, what a merged session id now is); `counts` are the stores' sizes.
   */
  state(
    nowMs: number,
    sessions: { live(gapMs: number, nowMs: number): DeviceState['liveSession']; current(id: string): string },
    counts: () => Pick<DeviceState, 'sessions' | 'seenIds' | 'pendingRows' | 'storageBytes'>,
  ): DeviceState | null {
    const ident = this.ident();
    if (!ident) return null;
    const gapMs = this.gapMs() ?? 0;
    const liveSession = sessions.live(gapMs, nowMs);
    const live = this.live();
    const last = live.lastEvent;
    // The last event's session may have been merged into another since it was recorded.
    const lastSessionId = last?.sessionId ? sessions.current(last.sessionId) : '';
    return {
      ...ident,
      lastSeenMs: live.lastSeenMs,
      lastEvent: last ? { ...last, sessionId: lastSessionId } : null,
      lastPosition: live.lastPosition,
      fleetLive: this.fleetLive()?.live ?? null,
      profileId: live.lastProfile?.id ?? null,
      liveSession,
      ...counts(),
    };
  }

  /**
   * Clears the last event, position and profile when they are the erased profile's: events of its
   * (`ids`, `times`), or at the very time of its newest event. Returns what it cleared.
   */
  eraseProfile(profileId: string, ids: ReadonlySet<string>, times: ReadonlySet<number>): { profile: boolean; lastEvent: boolean; position: boolean; fleet: boolean } {
    const live = this.live();
    const { lastProfile, lastEvent: last, lastPosition: position } = live;
    const ofProfile = lastProfile?.id === profileId;
    // The newest event naming a profile was this one's: an event or fix at that very time was it.
    const itsTime = (atMs: number) => times.has(atMs) || (ofProfile && atMs === lastProfile!.atMs);
    const lastCleared = last !== null && (ids.has(last.id) || itsTime(last.createdAtMs));
    const positionCleared = position !== null && itsTime(position.atMs);
    if (ofProfile || lastCleared || positionCleared) {
      this.setLive({ ...live, lastProfile: ofProfile ? null : lastProfile, lastEvent: lastCleared ? null : last, lastPosition: positionCleared ? null : position });
    }
    // The fleet live position goes when its fix was the profile's; the erasure's recompute job then
    // writes what the remaining fixes give (at a higher version).
    const fleet = this.fleetLive();
    const fix = fleet?.live?.fix;
    const fleetCleared = fix !== undefined && (ids.has(fix.id.toLowerCase()) || itsTime(fix.atMs));
    if (fleetCleared) this.meta.set('fleet', { version: fleet!.version, live: null });
    return { profile: ofProfile, lastEvent: lastCleared, position: positionCleared, fleet: fleetCleared };
  }
}
