// Erasure across the device object's stores: what one profile left in each of them, or the counts of
// everything before the whole object is deleted.
import type { DedupStore } from './dedup-store';
import type { LiveStore } from './live-store';
import type { OutboxStore } from './outbox-store';
import type { SessionStore } from './session-store';
import type { ProfileErasure } from './types';

export interface DeviceStores {
  dedup: DedupStore;
  sessions: SessionStore;
  outbox: OutboxStore;
  live: LiveStore;
}

export type ErasedCounts = { outboxEvents: number; seenIds: number; sessions: number };

/** What the whole object holds, as erase() reports it before deleting everything. */
export function heldCounts(s: DeviceStores): ErasedCounts {
  return { outboxEvents: s.outbox.pendingEvents(), seenIds: s.dedup.count(), sessions: s.sessions.countAll() };
}

/**
 * Removes what the stores hold of one profile — its events still in the outbox, the dedup entries
 * of its events (those given, and those found in the outbox), the sessions made only of its events
 * (those given, and those whose every event was among its unsent ones),
 * and the last event, position, fleet live position and profile when they are its. Run inside one transaction. Returns
 * what it removed, whether it removed anything, and whether anything of anyone else is left.
 */
export function eraseProfile(s: DeviceStores, p: ProfileErasure): { held: boolean; othersRemain: boolean; removed: ErasedCounts } {
  // The current live state into `meta` first: the session row carrying it may be among those erased.
  s.live.persist();
  const ids = new Set(p.eventIds.map((id) => id.toLowerCase()));
  const times = new Set(p.eventTimesMs);
  const bySession = new Map<string, number>();
  const keptSessions = new Set<string>();
  const outboxEvents = s.outbox.eraseProfileEvents(p.profileId, ids, times, bySession, keptSessions);
  const seenIds = s.dedup.eraseEvents(ids);
  // ClickHouse names the profile's sessions it has seen (made only of its events there); a session
  // made only of its unsent events (a stalled outbox) is found here. Neither goes while someone
  // else's unsent event is in it.
  const survivor = s.sessions.survivors();
  const inUse = new Set([...keptSessions].map(survivor));
  const sessionIds = [...p.sessionIds, ...s.sessions.madeOnlyOf(bySession)].filter((id) => !inUse.has(survivor(id)));
  const sessions = s.sessions.erase(sessionIds);
  s.outbox.dropSessionRows(sessionIds);
  const cleared = s.live.eraseProfile(p.profileId, ids, times);
  // Older live states in session rows may name the profile's events, position or id.
  s.sessions.clearLives();
  const othersRemain = s.dedup.holdsAny() || s.sessions.countAll() > 0 || s.outbox.pendingRows() > 0 || s.live.hasLastEvent() || s.live.fleetLive()?.live != null;
  return {
    held: outboxEvents + seenIds + sessions > 0 || cleared.profile || cleared.lastEvent || cleared.position || cleared.fleet,
    othersRemain,
    removed: { outboxEvents, seenIds, sessions },
  };
}
