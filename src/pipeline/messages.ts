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

/** One event as a device object's outbox keeps it: its session when written, its row, its raw payload. */
export interface OutboxEvent {
  s: string;
  r: Omit<EventRow, 'session_id' | 'synced_at_ms'>;
  p: string;
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
  /** Sessions absorbed by a merge since `chunk` was written, mapped to their survivor. */
  aliases?: Record<string, string>;
  /** Set when some rows may already be in ClickHouse (a resend after an unconfirmed send). */
  redelivery?: boolean;
}

/** The rows a message carries, with `chunk` expanded and merged sessions resolved. */
export function expandMessage(m: IngestMessage, syncedAtMs: number): { events: EventRow[]; payloads: PayloadRow[]; sessions: SessionRow[] } {
  const events = m.events.map((e) => ({ ...e, synced_at_ms: syncedAtMs }));
  const payloads = [...m.payloads];
  if (m.chunk) {
    const aliases = m.aliases ?? {};
    for (const entry of JSON.parse(m.chunk) as OutboxEvent[]) {
      const row: EventRow = { ...entry.r, session_id: aliases[entry.s] ?? entry.s, synced_at_ms: syncedAtMs };
      events.push(row);
      payloads.push({ id: row.id, project_id: row.project_id, created_at_ms: row.created_at_ms, received_at_ms: row.received_at_ms, payload: entry.p });
    }
  }
  return { events, payloads, sessions: m.sessions };
}

/** Queue limits: 128 KB per message, 256 KB and 100 messages per sendBatch. Keep headroom. */
export const MAX_MESSAGE_BYTES = 100 * 1024;
export const MAX_SEND_BATCH_BYTES = 220 * 1024;
export const MAX_SEND_BATCH_MESSAGES = 100;

/**
 * An upper bound of the bytes `s` takes once written as a JSON string inside a message: quotes,
 * backslashes and control characters escaped, everything sized in UTF-8 (the queue's unit).
 */
export function jsonStringBytes(s: string): number {
  let n = 2;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 34 || c === 92) n += 2;
    else if (c < 0x20) n += 6;
    else if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else n += 3;
  }
  return n;
}

/** Sends messages in as few sendBatch calls as the queue limits allow. */
export async function sendMessages(queue: Queue<IngestMessage>, messages: Array<{ body: IngestMessage; bytes: number }>): Promise<void> {
  let batch: MessageSendRequest<IngestMessage>[] = [];
  let bytes = 0;
  for (const m of messages) {
    if (batch.length && (batch.length >= MAX_SEND_BATCH_MESSAGES || bytes + m.bytes > MAX_SEND_BATCH_BYTES)) {
      await queue.sendBatch(batch, { delaySeconds: 0 });
      batch = [];
      bytes = 0;
    }
    batch.push({ body: m.body, contentType: 'json' });
    bytes += m.bytes;
  }
  if (batch.length) await queue.sendBatch(batch);
}
