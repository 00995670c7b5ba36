// Erasure of parked ingest messages (dead letters): the subject's rows are taken out of every parked
// and quarantined object, so that no re-drive or replay brings them back after the erasure.
import { DEAD_LETTER_PREFIX, QUARANTINE_PREFIX, takeRedriveLock, type ParkedMessage } from './dead-letters';
import { decodeMessage, expandMessage, type EventRow, type OutboxEvent, type SessionRow } from './messages';

/** Whose rows an erasure takes out of parked messages: a device or a profile of a project, or a whole project. */
export type DeadLetterSubject =
  | { kind: 'device'; projectId: string; deviceId: string }
  | { kind: 'profile'; projectId: string; profileId: string }
  | { kind: 'project'; projectId: string };

/**
 * Where an erasure of parked messages stands (kept in the job's cursor). `scan` reads every object
 * first for what one message alone does not tell: the ids of the subject's events parked apart
 * from their payloads (an oversized event goes out as a payload message and an event message),
 * the sessions of its parked events and, for a profile, the devices they came from; `sessions`
 * then collects, for a profile, which of its sessions (parked or in ClickHouse) also hold someone
 * else's parked event (looked for on its devices only: a session belongs to one device). `erase`
 * rewrites or deletes objects.
 */
export interface DeadLetterCursor {
  phase: 'scan' | 'sessions' | 'erase';
  /** The last key examined in this phase ('' before the first). */
  after: string;
  subjectIds: string[];
  subjectSessions: string[];
  /** Profile: the devices of its events (ClickHouse's, and those of its parked events). */
  devices?: string[];
  /** Profile: its sessions (parked or in ClickHouse) that also hold anyone else's parked events. */
  otherSessions?: string[];
}

/** `devices`: a profile's devices as ClickHouse knows them. */
export const startDeadLetterErasure = (s: DeadLetterSubject, devices: readonly string[] = []): DeadLetterCursor => ({
  phase: s.kind === 'project' ? 'erase' : 'scan',
  after: '',
  subjectIds: [],
  subjectSessions: [],
  ...(s.kind === 'profile' ? { devices: [...devices] } : {}),
});

/** The phase after `c`'s, once every object was examined in it. */
function nextPhase(s: DeadLetterSubject, c: DeadLetterCursor): DeadLetterCursor | null {
  if (c.phase === 'scan' && s.kind === 'profile' && c.devices?.length) return { ...c, phase: 'sessions', after: '', otherSessions: [] };
  if (c.phase !== 'erase') return { ...c, phase: 'erase', after: '' };
  return null;
}

/** What ClickHouse knows that no parked message tells (dead letters are erased before ClickHouse is). */
export interface SubjectLookup {
  /** Which of these event ids are the subject's events. */
  subjectEventIds(ids: readonly string[]): Promise<Set<string>>;
  /** Of these sessions, those holding an event of the profile, and those holding an event of anyone else. */
  profileSessions(sessionIds: readonly string[]): Promise<{ subject: Set<string>; others: Set<string> }>;
}

/** What one call did. `rows`: the subject's events (or payloads parked apart from them) taken out. */
export interface DeadLetterStep {
  rewritten: number;
  deleted: number;
  rows: number;
  /** Where to go on from; null once every object was examined in the `erase` phase. */
  cursor: DeadLetterCursor | null;
  /** A re-drive held the lock the whole time: nothing was examined, the same cursor goes on. */
  busy: boolean;
}

/** Objects examined per call; an erasure step commits between calls. */
export const ERASE_PAGE = 100;
/** What the scan may collect into a job's cursor (a subject's own parked sessions and split events: few). */
export const MAX_SCAN_IDS = 20_000;
const LOCK_WAIT_MS = 10_000;
const LOCK_POLL_MS = 500;
const ROOT = 'dead-letters/';

interface Decoded {
  message: ParkedMessage;
  rows: ReturnType<typeof expandMessage>;
}

function decode(bytes: ArrayBuffer): Decoded | null {
  try {
    const message = decodeMessage(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes)) as ParkedMessage;
    return { message, rows: expandMessage(message, 0) };
  } catch {
    return null;
  }
}

const inProject = (s: DeadLetterSubject, r: { project_id: string }) => r.project_id === s.projectId;
const isSubjectEvent = (s: DeadLetterSubject, e: EventRow) =>
  inProject(s, e) && (s.kind === 'project' || (s.kind === 'device' ? e.device_id === s.deviceId : e.profile_id === s.profileId));

/** What the scan phase takes from one message: the subject's events without their payload here, the sessions and devices of its events. */
export function scanMessage(s: DeadLetterSubject, rows: Decoded['rows']): { splitIds: string[]; sessions: string[]; devices: string[] } {
  const payloadIds = new Set(rows.payloads.map((p) => p.id));
  const mine = rows.events.filter((e) => isSubjectEvent(s, e));
  return {
    splitIds: mine.filter((e) => !payloadIds.has(e.id)).map((e) => e.id),
    sessions: [...new Set(mine.map((e) => e.session_id).filter((id) => id !== ''))],
    devices: [...new Set(mine.map((e) => e.device_id))],
  };
}

/** The sessions phase: the sessions of everyone else's events in one message on the profile's devices. */
export function sharedIn(s: DeadLetterSubject, rows: Decoded['rows'], devices: ReadonlySet<string>): string[] {
  return [...new Set(rows.events.filter((e) => inProject(s, e) && !isSubjectEvent(s, e) && e.session_id !== '' && devices.has(e.device_id)).map((e) => e.session_id))];
}

/** Everything known of the subject when one message is filtered. */
export interface SubjectKnowledge {
  /** Event ids of the subject parked or stored elsewhere (a payload here whose event is not). */
  eventIds: ReadonlySet<string>;
  /** Profile erasure: sessions holding an event of the profile, and sessions holding anyone else's. */
  subjectSessions: ReadonlySet<string>;
  otherSessions: ReadonlySet<string>;
}

export type Verdict = { action: 'keep' } | { action: 'delete'; rows: number } | { action: 'rewrite'; body: string; rows: number };

/**
 * A parked message without the subject's rows: its events, their payloads (also one parked apart
 * from its event), and its session rows. For a profile, a session goes when an event of the
 * profile is in it and no one else's is (here or elsewhere), and so do the sessions merged into
 * it, as in ClickHouse. What is left keeps the message's own form (outbox entries stay entries, so
 * the re-drive's size bound holds) and what the re-drive counts: its first-parked time and re-drives.
 */
export function filterMessage(s: DeadLetterSubject, { message, rows }: Decoded, know: SubjectKnowledge): Verdict {
  const eventIds = new Set(rows.events.map((e) => e.id));
  const removed = new Set(rows.events.filter((e) => isSubjectEvent(s, e)).map((e) => e.id));
  for (const p of rows.payloads) {
    if (inProject(s, p) && !eventIds.has(p.id) && (s.kind === 'project' || know.eventIds.has(p.id))) removed.add(p.id);
  }
  const keptEvents = rows.events.filter((e) => !removed.has(e.id));
  let dropSession: (r: SessionRow) => boolean;
  if (s.kind === 'profile') {
    const mine = new Set(know.subjectSessions);
    for (const e of rows.events) if (removed.has(e.id) && e.session_id) mine.add(e.session_id);
    const others = new Set(know.otherSessions);
    for (const e of keptEvents) if (inProject(s, e) && e.session_id) others.add(e.session_id);
    const gone = new Set([...mine].filter((id) => !others.has(id)));
    dropSession = (r) => inProject(s, r) && (gone.has(r.id) || gone.has(r.merged_into));
  } else {
    dropSession = (r) => inProject(s, r) && (s.kind === 'project' || r.device_id === s.deviceId);
  }
  const keptPayloads = rows.payloads.filter((p) => !(inProject(s, p) && removed.has(p.id)));
  const keptSessions = rows.sessions.filter((r) => !dropSession(r));
  if (keptEvents.length === rows.events.length && keptPayloads.length === rows.payloads.length && keptSessions.length === rows.sessions.length) return { action: 'keep' };
  if (!keptEvents.length && !keptPayloads.length && !keptSessions.length) return { action: 'delete', rows: removed.size };
  const entries = message.entries ?? (message.chunk ? (JSON.parse(message.chunk) as OutboxEvent[]) : undefined);
  const keptEntries = entries?.filter((e) => !removed.has(e.r.id));
  // The base holds values every entry shares: it stays while an entry does, and goes with the last.
  const { chunk: _chunk, entries: _entries, base, ...rest } = message;
  const body = JSON.stringify({
    ...rest,
    events: message.events.filter((e) => !removed.has(e.id)),
    payloads: message.payloads.filter((p) => !(inProject(s, p) && removed.has(p.id))),
    sessions: keptSessions,
    ...(keptEntries?.length && base ? { base } : {}),
    ...(keptEntries ? { entries: keptEntries } : {}),
  });
  return { action: 'rewrite', body, rows: removed.size };
}

/**
 * Whether an object that does not decode names the subject: a `"project_id":` field with its
 * project, and (unless the whole project goes) a `"device_id":` or `"profile_id":` field with its
 * id, as JSON writes them, also escaped inside a string (a `chunk`). Such an object cannot be split
 * row by row.
 */
export function namesSubject(text: string, s: DeadLetterSubject): boolean {
  const field = (name: string, v: string) => {
    const pair = `${JSON.stringify(name)}:${JSON.stringify(v)}`;
    return text.includes(pair) || text.includes(JSON.stringify(pair).slice(1, -1));
  };
  return field('project_id', s.projectId) && (s.kind === 'project' || (s.kind === 'device' ? field('device_id', s.deviceId) : field('profile_id', s.profileId)));
}

async function lockOrWait(bucket: R2Bucket): Promise<(() => Promise<void>) | null> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const release = await takeRedriveLock(bucket, Date.now());
    if (release || Date.now() >= deadline) return release;
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
  }
}

/** What ClickHouse adds to the scan's knowledge for one message. */
async function knowledgeFor(s: DeadLetterSubject, d: Decoded, c: DeadLetterCursor, lookup: SubjectLookup): Promise<SubjectKnowledge> {
  const eventIds = new Set(c.subjectIds);
  const events = new Set(d.rows.events.map((e) => e.id));
  const lone = d.rows.payloads.filter((p) => inProject(s, p) && !events.has(p.id) && !eventIds.has(p.id)).map((p) => p.id);
  if (lone.length && s.kind !== 'project') for (const id of await lookup.subjectEventIds(lone)) eventIds.add(id);
  const subjectSessions = new Set(c.subjectSessions);
  const otherSessions = new Set(c.otherSessions ?? []);
  if (s.kind === 'profile') {
    const ids = new Set<string>();
    for (const r of d.rows.sessions) if (inProject(s, r)) for (const id of [r.id, r.merged_into]) if (id) ids.add(id);
    for (const e of d.rows.events) if (inProject(s, e) && e.session_id) ids.add(e.session_id);
    if (ids.size) {
      const known = await lookup.profileSessions([...ids]);
      for (const id of known.subject) subjectSessions.add(id);
      for (const id of known.others) otherSessions.add(id);
    }
  }
  return { eventIds, subjectSessions, otherSessions };
}

/**
 * One page of the erasure of parked messages, under the re-drive lock (a re-drive never sends an
 * object while it is rewritten; while one holds the lock, this waits a little and then reports
 * `busy`). Objects without a row of the subject stay byte for byte; one holding only its rows is
 * deleted, one holding others' too is rewritten in place; a quarantined object that does not
 * decode goes whole when it names the subject.
 */
export async function eraseDeadLetters(bucket: R2Bucket, s: DeadLetterSubject, lookup: SubjectLookup, c: DeadLetterCursor): Promise<DeadLetterStep> {
  const result: DeadLetterStep = { rewritten: 0, deleted: 0, rows: 0, cursor: c, busy: false };
  const release = await lockOrWait(bucket);
  if (!release) return { ...result, busy: true };
  try {
    const listing = await bucket.list({ prefix: ROOT, limit: ERASE_PAGE, ...(c.after ? { startAfter: c.after } : {}) });
    const next: DeadLetterCursor = { ...c, subjectIds: [...c.subjectIds], subjectSessions: [...c.subjectSessions] };
    const projectText = JSON.stringify(s.projectId).slice(1, -1);
    for (const o of listing.objects) {
      next.after = o.key;
      if (!o.key.startsWith(DEAD_LETTER_PREFIX) && !o.key.startsWith(QUARANTINE_PREFIX)) continue;
      const obj = await bucket.get(o.key);
      if (!obj) continue;
      const bytes = await obj.arrayBuffer();
      const text = new TextDecoder().decode(bytes);
      // Every row carries its project id: an object without it holds nothing of the subject.
      if (!text.includes(projectText)) continue;
      const d = decode(bytes);
      if (c.phase === 'sessions') {
        const others = d ? sharedIn(s, d.rows, new Set(c.devices)) : [];
        if (others.length) {
          // Only the profile's own sessions matter (parked, or in ClickHouse): the list stays as short as its history.
          const mine = new Set([...c.subjectSessions, ...(await lookup.profileSessions(others)).subject]);
          next.otherSessions = [...new Set([...(next.otherSessions ?? []), ...others.filter((id) => mine.has(id))])];
        }
        if ((next.otherSessions?.length ?? 0) > MAX_SCAN_IDS) throw new Error(`parked messages hold more than ${MAX_SCAN_IDS} sessions on the profile's devices; re-drive them first (they are then erased from ClickHouse)`);
        continue;
      }
      if (c.phase === 'scan') {
        if (!d) continue;
        const found = scanMessage(s, d.rows);
        next.subjectIds = [...new Set([...next.subjectIds, ...found.splitIds])];
        next.subjectSessions = [...new Set([...next.subjectSessions, ...found.sessions])];
        if (next.devices) next.devices = [...new Set([...next.devices, ...found.devices])];
        if (next.subjectIds.length + next.subjectSessions.length > MAX_SCAN_IDS) {
          throw new Error(`parked messages hold more than ${MAX_SCAN_IDS} split events and sessions of the subject; re-drive them first (they are then erased from ClickHouse)`);
        }
        continue;
      }
      const verdict: Verdict = d ? filterMessage(s, d, await knowledgeFor(s, d, c, lookup)) : namesSubject(text, s) ? { action: 'delete', rows: 0 } : { action: 'keep' };
      if (verdict.action === 'keep') continue;
      if (verdict.action === 'delete') {
        // The key only: a parked message's rows never go into a log.
        console.log(JSON.stringify({ msg: 'erasure: parked message deleted (only rows of the subject, or not readable row by row)', key: o.key }));
        await bucket.delete(o.key);
        result.deleted += 1;
      } else {
        await bucket.put(o.key, verdict.body, { httpMetadata: { contentType: 'application/json' }, ...(obj.customMetadata ? { customMetadata: obj.customMetadata } : {}) });
        result.rewritten += 1;
      }
      result.rows += verdict.rows;
    }
    if (listing.truncated) return { ...result, cursor: next };
    return { ...result, cursor: nextPhase(s, next) };
  } finally {
    await release().catch((err: unknown) => console.error(JSON.stringify({ msg: 're-drive lock not released; the next run takes it once stale', error: String(err) })));
  }
}
