// Rows as ClickHouse stores them, and the ingest-queue message that carries them.

export interface EventRow {
  id: string;
  project_id: string;
  device_id: string;
  session_id: string;
  profile_id: string;
  type: string;
  name: string;
  created_at_ms: number;
  received_at_ms: number;
  synced_at_ms: number;
  properties: string;
  ref_id: string;
  ip: string;
  country: string;
  region: string;
  city: string;
  timezone: string;
  latitude: number | null;
  longitude: number | null;
}

export interface PayloadRow {
  id: string;
  project_id: string;
  created_at_ms: number;
  received_at_ms: number;
  payload: string;
}

export interface SessionRow {
  project_id: string;
  device_id: string;
  id: string;
  started_at_ms: number;
  ended_at_ms: number;
  event_count: number;
  ended: number;
  merged_into: string;
  version: number;
  updated_at_ms: number;
}

/**
 * Row fields the events of one device call usually share (its project and device, and the request's
 * time, address and place): those all of them agree on are written once per outbox chunk as its
 * `base`, not once per event.
 */
export const CALL_BASE_FIELDS = ['project_id', 'device_id', 'received_at_ms', 'ip', 'country', 'region', 'city', 'timezone', 'latitude', 'longitude'] as const;
export type CallBaseField = (typeof CALL_BASE_FIELDS)[number];
export type CallBase = Pick<EventRow, CallBaseField>;

/** An event's row as its outbox entry holds it: without the fields its chunk's base holds. */
export type OutboxRow = Omit<EventRow, 'session_id' | 'synced_at_ms' | CallBaseField> & Partial<CallBase>;

/** One event as a device object's outbox keeps it: its session when written, its row, its raw payload. */
export interface OutboxEvent {
  s: string;
  r: OutboxRow;
  p: string;
}

/** An entry's whole row: its chunk's base under its own fields (entries written before bases carry every field). */
export function entryRow(entry: OutboxEvent, base: Partial<CallBase> | undefined): Omit<EventRow, 'session_id' | 'synced_at_ms'> {
  return (base ? { ...base, ...entry.r } : entry.r) as Omit<EventRow, 'session_id' | 'synced_at_ms'>;
}

export interface IngestMessage {
  events: EventRow[];
  payloads: PayloadRow[];
  sessions: SessionRow[];
  /**
   * Events exactly as a device object's outbox stored them (a JSON array of OutboxEvent): the object
   * sends its stored chunk as is and the consumer expands it, so flushing costs the object no JSON work.
   */
  chunk?: string;
  /** Events as a device object's outbox stored them, spliced into a text message (see IngestBody). */
  entries?: OutboxEvent[];
  /** The row fields the entries share (see CALL_BASE_FIELDS); absent in messages of entries that carry them all. */
  base?: Partial<CallBase>;
  /** Sessions absorbed by a merge since `chunk` was written, mapped to their survivor. */
  aliases?: Record<string, string>;
  /** Set when some rows may already be in ClickHouse (a resend after an unconfirmed send). */
  redelivery?: boolean;
  /**
   * The device and profile of payloads sent apart from their event (an oversized event goes out as
   * two messages), so that an erasure's tombstone can be applied to them too.
   */
  owner?: { device_id: string; profile_id: string };
}

/**
 * An ingest-queue message body: an IngestMessage (content type `json`), or its JSON text (content
 * type `text`). Device objects send text with their stored outbox chunk spliced in as `entries`, so
 * a flush neither parses nor escapes the chunk, and the consumer parses each event once.
 */
export type IngestBody = IngestMessage | string;

export function decodeMessage(body: IngestBody): IngestMessage {
  const m: unknown = typeof body === 'string' ? JSON.parse(body) : body;
  if (typeof m !== 'object' || m === null || !Array.isArray((m as IngestMessage).sessions)) throw new Error('not an ingest message');
  return m as IngestMessage;
}

/** The rows a message carries, with its outbox entries expanded and merged sessions resolved. */
export function expandMessage(m: IngestMessage, syncedAtMs: number): { events: EventRow[]; payloads: PayloadRow[]; sessions: SessionRow[] } {
  const events = m.events.map((e) => ({ ...e, synced_at_ms: syncedAtMs }));
  const payloads = [...m.payloads];
  const aliases = m.aliases ?? {};
  // `chunk` is the earlier form of `entries` (a JSON string inside a json message); both may be in flight.
  const entries = m.entries ?? (m.chunk ? (JSON.parse(m.chunk) as OutboxEvent[]) : []);
  for (const entry of entries) {
    // entryRow's object and this row's in one copy (a row per event of every message).
    const row = { ...m.base, ...entry.r, session_id: aliases[entry.s] ?? entry.s, synced_at_ms: syncedAtMs } as EventRow;
    events.push(row);
    payloads.push({ id: row.id, project_id: row.project_id, created_at_ms: row.created_at_ms, received_at_ms: row.received_at_ms, payload: entry.p });
  }
  return { events, payloads, sessions: m.sessions };
}

/** Queue limits: 128 KB per message, 256 KB and 100 messages per sendBatch. Keep headroom. */
export const MAX_MESSAGE_BYTES = 100 * 1024;
export const MAX_SEND_BATCH_BYTES = 220 * 1024;
export const MAX_SEND_BATCH_MESSAGES = 100;

const utf8 = new TextEncoder();
const scratch = new Uint8Array(512 * 1024);

/** The UTF-8 size of `s` (the queue's unit); strings of a message's size reuse one buffer. */
export function utf8Bytes(s: string): number {
  return s.length * 3 <= scratch.length ? utf8.encodeInto(s, scratch).written : utf8.encode(s).byteLength;
}

/** Sends messages in as few sendBatch calls as the queue limits allow. */
export async function sendMessages(queue: Queue<IngestBody>, messages: Array<{ body: IngestBody; bytes: number }>): Promise<void> {
  let batch: MessageSendRequest<IngestBody>[] = [];
  let bytes = 0;
  for (const m of messages) {
    if (batch.length && (batch.length >= MAX_SEND_BATCH_MESSAGES || bytes + m.bytes > MAX_SEND_BATCH_BYTES)) {
      await queue.sendBatch(batch, { delaySeconds: 0 });
      batch = [];
      bytes = 0;
    }
    batch.push({ body: m.body, contentType: typeof m.body === 'string' ? 'text' : 'json' });
    bytes += m.bytes;
  }
  if (batch.length) await queue.sendBatch(batch);
}
