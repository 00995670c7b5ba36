// The device's identity and live state in `meta` (ids, session gap, last event, position, profile,
// last seen), and the state() answer built from it and the other stores' figures.
import type { MetaStore } from './schema';
import type { DeviceIdent, DeviceState, FleetLiveUpdate, PackedEvent, StoredFleetLive, StoredLastEvent } from './types';

type LastProfile = { id: string; atMs: number };

/** What a call changes, kept in one `meta` row (`live`): one row written per call, not one per field. */
type LiveState = {
  lastEvent: StoredLastEvent | null;
  lastPosition: DeviceState['lastPosition'];
  lastProfile: LastProfile | null;
  lastSeenMs: number | null;
};

/** The keys an older layout kept the same fields in, one a row: read until `live` is first written. */
const FIELD_KEYS = ['lastEvent', 'lastPosition', 'lastProfile', 'lastSeenMs'] as const;

export class LiveStore {
  constructor(private readonly meta: MetaStore) {}

  private live(): LiveState {
    const live = this.meta.get<LiveState>('live');
    if (live) return live;
    const [lastEvent, lastPosition, lastProfile, lastSeenMs] = FIELD_KEYS.map((k) => this.meta.get(k));
    return { lastEvent, lastPosition, lastProfile, lastSeenMs } as LiveState;
  }

  private setLive(live: LiveState): void {
    this.meta.set('live', live);
    this.meta.drop(FIELD_KEYS);
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

  /** Takes in new events (with their sessions): the latest by event time wins; `nowMs` is their receipt. */
  record(events: readonly PackedEvent[], sessionIds: readonly string[], nowMs: number): void {
    if (!events.length) return;
    let { lastEvent: last, lastPosition, lastProfile, lastSeenMs } = this.live();
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
    this.setLive({ lastEvent: last, lastPosition, lastProfile, lastSeenMs: Math.max(lastSeenMs ?? 0, nowMs) });
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
