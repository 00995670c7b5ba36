// What crosses the device object's RPC boundary, and the records its stores share. Imports nothing
// at runtime, so the route side (packing, accept, legacy release) never loads the object's module.
import type { EventRow, PayloadRow } from '../pipeline/messages';
import type { LivePosition } from '../fleet/status';
import type { Session } from './sessions';

export interface DeviceEvent {
  dedupKey: string;
  /** The ClickHouse row, without session_id and synced_at_ms (set later). */
  row: Omit<EventRow, 'session_id' | 'synced_at_ms'>;
  /** The raw payload row; its id, project and times are the row's (the outbox keeps only `payload`). */
  payload: PayloadRow;
  /** `[lat, lon]` when its properties carry both as numbers, null when not; absent: read from `row.properties`. */
  position?: [number, number] | null;
}

/**
 * A device event packed for the hand-off: the few fields the object reads, and the row and payload
 * already as JSON (`rp` is `"r":{...},"p":"..."`), so the object neither clones nor re-serialises them.
 */
export interface PackedEvent {
  k: string;
  id: string;
  t: string;
  n: string;
  c: number;
  pr: string;
  pos: [number, number] | null;
  rp: string;
  /** Upper bound of the bytes this event's outbox entry takes inside a queue message (UTF-8). */
  b: number;
}

/**
 * One call's worth of packed events as it crosses the RPC boundary, a column per field: the small
 * fields as arrays of strings and typed arrays of numbers (no JSON to write and parse again per
 * event), and each event's `rp` as a string of its own. `rp` is already JSON: nested in another JSON
 * string it was escaped a second time (a property's quote became four characters), which took a
 * 10 MB batch past the 32 MiB RPC limit.
 */
export interface PackedEvents {
  k?: string[];
  id?: string[];
  t?: string[];
  n?: string[];
  pr?: string[];
  /** `c` of each event (its time, ms). */
  c?: Float64Array;
  /** `[lat, lon]` of each event in turn, NaN for an event without a position. */
  pos?: Float64Array;
  b?: Float64Array;
  rp: string[];
  /**
   * The row fields all the events agree on (JSON of a partial CallBase), left out of each `rp` row:
   * kept once per outbox chunk and sent once per message. Absent: every `rp` row is whole.
   */
  base?: string;
  /**
   * Set when every `rp` row holds exactly the fields `base` leaves to it (the id first), none of
   * the base's: the object may then send its chunk lined (see IngestMessage.lined), the consumer
   * putting the base around each row's text as it is.
   */
  own?: true;
  /** The earlier form of the columns: every event's fields but `rp` as one JSON array. */
  fields?: string;
}

/** A session as the object stores it: its ClickHouse `ended` flag and row version too. */
export type SessionRecord = Session & { ended: number; version: number };

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
  knownSessions?: SessionRecord[];
}

export interface DeviceIngestResult {
  results: Array<{ status: 'accepted' | 'duplicate'; sessionId: string; eventId: string }>;
}

export interface DeviceIdent {
  projectId: string;
  deviceId: string;
}

export type StoredLastEvent = { id: string; type: string; name: string; createdAtMs: number; sessionId: string };

export interface DeviceState {
  projectId: string;
  deviceId: string;
  /** Edge receipt time of the newest request that carried a new event. */
  lastSeenMs: number | null;
  /** The event with the latest event time. */
  lastEvent: StoredLastEvent | null;
  lastPosition: { lat: number; lon: number; atMs: number } | null;
  /**
   * The vehicle's live position from the fleet recompute: the newest fix by event time that its
   * rules accept, with what its status is derived from. Null when none (no positions, or none
   * recomputed yet).
   */
  fleetLive: LivePosition | null;
  /** Profile of the latest event that named one. */
  profileId: string | null;
  /** The session that is still open (not idle for the gap yet), if any. */
  liveSession: { id: string; startMs: number; endMs: number; eventCount: number; idleAtMs: number } | null;
  sessions: number;
  seenIds: number;
  pendingRows: number;
  storageBytes: number;
}

/** The fleet recompute's live position as the object keeps it, with the version of the pass that wrote it. */
export interface StoredFleetLive {
  version: number;
  live: LivePosition | null;
}

/** What a fleet recompute pass hands a device object: its live position at that pass's version. */
export interface FleetLiveUpdate extends DeviceIdent, StoredFleetLive {}

/** What erase() is asked to remove of one profile (the `erasure` job found these in ClickHouse). */
export interface ProfileErasure {
  profileId: string;
  eventIds: string[];
  eventTimesMs: number[];
  sessionIds: string[];
}

export interface DeviceErasureResult {
  held: boolean;
  whole: boolean;
  outboxEvents: number;
  seenIds: number;
  sessions: number;
}
