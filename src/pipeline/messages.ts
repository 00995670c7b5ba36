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
  /**
   * Set on a device object's message whose `entries` stand one per line (see LINED_ENTRIES), each
   * with its session already resolved: the consumer writes their ClickHouse lines from the text
   * without parsing them. What it still needs of them rides here.
   */
  lined?: LinedHeader;
}

/** What a lined message tells of its entries: how many, their profiles, the span of their positions. */
export interface LinedHeader {
  n: number;
  /** The distinct non-empty profile ids of the entries (an erasure's tombstones are looked up by them). */
  prs: string[];
  /** The first and last event time of its `position` events, or null (the fleet's recompute span). */
  pos: [number, number] | null;
}

/**
 * Where a lined message's entries begin: each entry is followed by `,\n` but the last, and the array
 * closes with `\n]}` (JSON all the same, for any reader that parses it whole). No entry holds a line
 * feed: JSON text escapes one inside a string. The header before it holds no key `entries`.
 */
export const LINED_ENTRIES = ',"entries":[\n';

/**
 * An ingest-queue message body: an IngestMessage (content type `json`), or its JSON text (content
 * type `text`). Device objects send text with their stored outbox chunk spliced in as `entries`, so
 * a flush neither parses nor escapes the chunk, and the consumer parses each event once.
 */
export type IngestBody = IngestMessage | string;

export function decodeMessage(body: IngestBody): IngestMessage {
  const m: unknown = typeof body === 'string' ? JSON.parse(body) : body;
  if (typeof m !== 'object' || m === null || !Array.isArray((m as IngestMessage).sessions)) throw new Error('not an ingest message');
  // Parsed whole, its entries are objects: what `lined` says of their text no longer applies.
  if ('lined' in m) delete (m as IngestMessage).lined;
  return m as IngestMessage;
}

/**
 * A message as the writer reads it: a lined one as its header and its entries' texts (`pieces`),
 * anything else parsed whole (decodeMessage). A lined body whose entries do not split into the
 * count its header gives is parsed whole too.
 */
export function decodeIngestBody(body: IngestBody): ReadMessage {
  if (typeof body === 'string') {
    const at = body.indexOf(LINED_ENTRIES);
    if (at > 0 && body.endsWith('\n]}')) {
      const m = JSON.parse(`${body.slice(0, at)}}`) as IngestMessage;
      const lined = m?.lined;
      // Rows a lined message carries anywhere but its entries would be missed: none may (nor aliases).
      const plain = Array.isArray(m.events) && !m.events.length && Array.isArray(m.payloads) && !m.payloads.length && m.chunk === undefined && m.aliases === undefined && m.owner === undefined;
      if (plain && Array.isArray(m.sessions) && lined && Number.isInteger(lined.n) && lined.n > 0 && Array.isArray(lined.prs) && linedBase(m.base)) {
        const pieces = body.slice(at + LINED_ENTRIES.length, -3).split(',\n');
        if (pieces.length === lined.n) return Object.assign(m, { pieces });
      }
    }
  }
  return decodeMessage(body);
}

/** A message as the writer holds it: a lined one with its entries' texts (see decodeIngestBody). */
export type ReadMessage = IngestMessage & { pieces?: readonly string[] };

/** Whether a base holds what a lined message's payload lines take from it. */
function linedBase(base: Partial<CallBase> | undefined): boolean {
  return typeof base === 'object' && base !== null && typeof base.project_id === 'string' && typeof base.device_id === 'string' && typeof base.received_at_ms === 'number';
}

/** A lined message's entries parsed, as a message of any other kind has them (see IngestMessage.entries). */
export function parsePieces(m: ReadMessage): IngestMessage {
  if (!m.pieces) return m;
  const { lined: _, pieces, ...rest } = m;
  return { ...rest, entries: pieces.map((p) => JSON.parse(p) as OutboxEvent) };
}

/** A row on its way to ClickHouse: its JSONEachRow line (no line feed) and what the writer checks it by. */
export interface RowLine {
  id: string;
  project_id: string;
  device_id: string;
  created_at_ms: number;
  line: string;
}

const R_KEY = ',"r":{';
const P_KEY = '},"p":';
const ID_KEY = '"id":"';
const CREATED_KEY = '"created_at_ms":';
const UUID_LENGTH = 36;

/**
 * The ClickHouse lines of a lined message's entries, cut from their text: an entry is
 * `{"s":<session>,"r":{<row>},"p":<payload>}`, its row without the fields of the message's base.
 * The events line is the session and sync time, the base's fields and the row's, as JSON text as
 * it came; the payload line takes the payload's JSON string as it came. Nothing is parsed or
 * escaped again. An entry of any other layout is parsed and written as an object would be.
 */
export function linesOfPieces(m: IngestMessage, pieces: readonly string[], syncedAtMs: number): { events: RowLine[]; payloads: RowLine[] } {
  const base = m.base!;
  const baseJson = JSON.stringify(base);
  const baseInner = baseJson.length > 2 ? `${baseJson.slice(1, -1)},` : '';
  const projectId = base.project_id!;
  const deviceId = base.device_id!;
  const payloadMid = `","project_id":${JSON.stringify(projectId)},"created_at_ms":`;
  const payloadEnd = `,"received_at_ms":${JSON.stringify(base.received_at_ms)},"payload":`;
  const synced = `,"synced_at_ms":${syncedAtMs},`;
  const events: RowLine[] = new Array(pieces.length);
  const payloads: RowLine[] = new Array(pieces.length);
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i]!;
    const r = piece.indexOf(R_KEY);
    const p = piece.lastIndexOf(P_KEY);
    const row = r + R_KEY.length;
    const created = p > row ? piece.indexOf(CREATED_KEY, row) : -1;
    const createdAt = created > 0 && created < p ? numberAt(piece, created + CREATED_KEY.length, p) : NaN;
    if (
      !piece.startsWith('{"s":"') ||
      r < 0 ||
      piece.charCodeAt(r - 1) !== 34 ||
      !piece.startsWith(ID_KEY, row) ||
      piece.charCodeAt(row + ID_KEY.length + UUID_LENGTH) !== 34 ||
      !piece.endsWith('"}') ||
      Number.isNaN(createdAt)
    ) {
      const e = JSON.parse(piece) as OutboxEvent;
      const object = { ...base, ...e.r, session_id: e.s, synced_at_ms: syncedAtMs } as EventRow;
      const payload: PayloadRow = { id: object.id, project_id: object.project_id, created_at_ms: object.created_at_ms, received_at_ms: object.received_at_ms, payload: e.p };
      events[i] = { id: object.id, project_id: object.project_id, device_id: object.device_id, created_at_ms: object.created_at_ms, line: JSON.stringify(object) };
      payloads[i] = { id: payload.id, project_id: payload.project_id, device_id: object.device_id, created_at_ms: payload.created_at_ms, line: JSON.stringify(payload) };
      continue;
    }
    const id = piece.slice(row + ID_KEY.length, row + ID_KEY.length + UUID_LENGTH);
    events[i] = { id, project_id: projectId, device_id: deviceId, created_at_ms: createdAt, line: `{"session_id":${piece.slice(5, r)}${synced}${baseInner}${piece.slice(row, p)}}` };
    payloads[i] = { id, project_id: projectId, device_id: deviceId, created_at_ms: createdAt, line: `{"id":"${id}${payloadMid}${createdAt}${payloadEnd}${piece.slice(p + P_KEY.length, -1)}}` };
  }
  return { events, payloads };
}

/** The integer JSON number at `at` (up to the next `,`, else `end`), NaN when there is none. */
function numberAt(text: string, at: number, end: number): number {
  const comma = text.indexOf(',', at);
  const digits = text.slice(at, comma > 0 && comma < end ? comma : end);
  const n = digits.length ? Number(digits) : NaN;
  return Number.isSafeInteger(n) ? n : NaN;
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
