// The ingest-queue consumer: rows of many devices become one ClickHouse insert per table.
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { claimPositions, FLEET_DEFER_MAX_MS, markPending, positionSpans, recomputeAfterWrite, recomputeClaimed, type PositionSpan } from '../fleet/recompute';
import { addSubjects, Forgotten, noSubjects, tombstonesOf } from '../erasure/tombstones';
import { decodeIngestBody, expandMessage, linesOfPieces, parsePieces, type EventRow, type IngestBody, type PayloadRow, type ReadMessage, type RowLine, type SessionRow } from './messages';

const ID_CHECK_CHUNK = 5000;

/** Delay before the n-th retry: 2, 4, 8 ... capped at 5 minutes. */
export function retryDelaySeconds(attempts: number): number {
  return Math.min(300, 2 ** Math.max(1, attempts));
}

/**
 * Ids among `rows` that `table` already holds: a redelivered message must not add copies. On
 * `events` the check reads only the granules its rows can be in (project, device and time are the
 * sorting key), so its cost follows the batch, not the project. On `event_payloads` only the
 * monthly partitions bound it (UUIDs do not sort by time in ClickHouse): the writer asks it only
 * about ids that `events` lacks.
 */
async function existingIds(ch: ClickHouse, table: 'events' | 'event_payloads', rows: ReadonlyArray<{ id: string; project_id: string; device_id?: string; created_at_ms: number }>): Promise<Set<string>> {
  const found = new Set<string>();
  // In event-time order, so each check reads only the monthly partitions its chunk's times span.
  const byTime = [...rows].sort((a, b) => a.created_at_ms - b.created_at_ms);
  for (let i = 0; i < byTime.length; i += ID_CHECK_CHUNK) {
    const chunk = byTime.slice(i, i + ID_CHECK_CHUNK);
    const from = chunk[0]!.created_at_ms;
    const to = chunk.at(-1)!.created_at_ms;
    const lists: Record<string, string[]> = { projects: [...new Set(chunk.map((r) => r.project_id))], ids: chunk.map((r) => r.id) };
    if (table === 'events') lists.devices = [...new Set(chunk.map((r) => r.device_id ?? ''))];
    // Not `AS id`: the alias would stand for the column in WHERE, and a String hides the key from the index.
    const hits = await ch.query<{ hit: string }>(
      `SELECT toString(id) AS hit FROM ${table}
        WHERE project_id IN (SELECT value FROM projects)
          ${table === 'events' ? 'AND device_id IN (SELECT value FROM devices)' : ''}
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
          AND id IN (SELECT toUUID(value) FROM ids)`,
      { ...dateTimeBounds(from, to), from, to },
      lists,
    );
    for (const h of hits) found.add(h.hit);
  }
  return found;
}

/** Within one delivery the same row can appear twice (an outbox resend batched with the original, which it is flagged as). */
const dedupeById = <T extends { id: string }>(rows: readonly T[]) => [...new Map(rows.map((r) => [r.id, r])).values()];

/**
 * A session's rows in one delivery, reduced to its highest version (the table keeps only that one
 * anyway): consecutive calls of a device each send the session they extended.
 */
function latestSessions(rows: readonly SessionRow[]): SessionRow[] {
  const latest = new Map<string, SessionRow>();
  for (const r of rows) {
    const key = `${r.project_id}\u0000${r.device_id}\u0000${r.id}`;
    const seen = latest.get(key);
    if (!seen || r.version >= seen.version) latest.set(key, r);
  }
  return [...latest.values()];
}

/** A row of an object message as a line for ClickHouse (what the client's JSONEachRow encoding writes). */
const lineOf = (row: EventRow | PayloadRow, deviceId: string): RowLine => ({ id: row.id, project_id: row.project_id, device_id: deviceId, created_at_ms: row.created_at_ms, line: JSON.stringify(row) });

/**
 * `mayBeRedelivery`: for all messages, or one flag per message. Only the rows of a message that may
 * have been written before (a platform redelivery, a device object's resend, a retry of ours) are
 * checked against ClickHouse; a first delivery's rows cannot be there, so they cost no read.
 * `positions`: the devices with `position` events in the messages and the span of their times — all
 * of them, new or already stored (a redelivery after a crash before the recompute redoes it).
 * A lined message (see decodeIngestBody) is written from its text; one with rows an erasure may
 * have forgotten is parsed first, so that its rows can be judged one by one.
 */
export async function writeRows(
  ch: ClickHouse,
  messages: readonly ReadMessage[],
  syncedAtMs: number,
  mayBeRedelivery: boolean | readonly boolean[],
  forgotten?: Forgotten,
): Promise<{ events: number; sessions: number; positions: PositionSpan[] }> {
  const events: RowLine[] = [];
  const payloads: RowLine[] = [];
  const sessions: SessionRow[] = [];
  const checkEvents: RowLine[] = [];
  // Payloads of checked messages, each with whether its own message also carries its event.
  const checkPayloads: Array<{ row: RowLine; withEvent: boolean }> = [];
  const spans: PositionSpan[] = [];
  let dropped = 0;
  messages.forEach((read, i) => {
    const erasing = forgotten !== undefined && !forgotten.empty;
    let lines: { events: RowLine[]; payloads: RowLine[]; sessions: SessionRow[] };
    if (read.pieces && read.lined && !erasing) {
      lines = { ...linesOfPieces(read, read.pieces, syncedAtMs), sessions: read.sessions };
      const pos = read.lined.pos;
      if (pos) spans.push({ projectId: read.base!.project_id!, deviceId: read.base!.device_id!, fromMs: pos[0], toMs: pos[1] });
    } else {
      const m = parsePieces(read);
      let rows = expandMessage(m, syncedAtMs);
      if (erasing) {
        const kept = forgotten.keep(m, rows);
        dropped += kept.dropped;
        rows = kept;
      }
      spans.push(...positionSpans(rows.events));
      // A payload's device, for the checks: its event's (payloads only sent apart from it have none here).
      const deviceOf = new Map(rows.events.map((e) => [e.id, e.device_id]));
      lines = {
        events: rows.events.map((e) => lineOf(e, e.device_id)),
        payloads: rows.payloads.map((p) => lineOf(p, deviceOf.get(p.id) ?? '')),
        sessions: rows.sessions,
      };
    }
    events.push(...lines.events);
    payloads.push(...lines.payloads);
    sessions.push(...lines.sessions);
    if (typeof mayBeRedelivery === 'boolean' ? mayBeRedelivery : mayBeRedelivery[i] !== false) {
      checkEvents.push(...lines.events);
      const carried = new Set(lines.events.map((e) => e.id));
      for (const row of lines.payloads) checkPayloads.push({ row, withEvent: carried.has(row.id) });
    }
  });
  if (dropped) console.log(JSON.stringify({ msg: 'rows of an erased subject dropped on their way to ClickHouse', rows: dropped }));
  // A row comes twice in one delivery only with a resend, and a resend is checked: a delivery of
  // first sends only holds each row once.
  const checking = checkEvents.length > 0 || checkPayloads.length > 0;
  let newEvents = checking ? dedupeById(events) : events;
  let newPayloads = checking ? dedupeById(payloads) : payloads;
  if (checking) {
    // A message's payloads are inserted before its events: a stored event vouches for the payload
    // (or its archived copy) that came in the same message. A payload sent apart from its event (an
    // oversized chunk goes out a row per message, and one of those sends may have failed) is looked
    // up itself.
    const haveEvents = await existingIds(ch, 'events', dedupeById(checkEvents));
    const vouched = new Set(checkPayloads.filter((p) => p.withEvent && haveEvents.has(p.row.id)).map((p) => p.row.id));
    const unvouched = dedupeById(checkPayloads.filter((p) => !vouched.has(p.row.id)).map((p) => p.row));
    const havePayloads = unvouched.length ? await existingIds(ch, 'event_payloads', unvouched) : new Set<string>();
    newEvents = newEvents.filter((e) => !haveEvents.has(e.id));
    newPayloads = newPayloads.filter((p) => !vouched.has(p.id) && !havePayloads.has(p.id));
  }
  // Sessions and payloads first: once a reader sees an event, it also sees the session (and its
  // start) it belongs to and its raw payload.
  // Both settle before a failure is reported: a retry's id check must not race an insert in flight.
  const writtenSessions = latestSessions(sessions);
  const settled = await Promise.allSettled([ch.insert('sessions', writtenSessions), ch.insertJsonLines('event_payloads', textOf(newPayloads))]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insertJsonLines('events', textOf(newEvents));
  return { events: newEvents.length, sessions: writtenSessions.length, positions: mergeSpans(spans) };
}

/** Rows' lines as one JSONEachRow text ('' for none: no insert). */
function textOf(rows: readonly RowLine[]): string {
  if (!rows.length) return '';
  const lines = new Array<string>(rows.length + 1);
  for (let i = 0; i < rows.length; i++) lines[i] = rows[i]!.line;
  lines[rows.length] = '';
  return lines.join('\n');
}

/** One span per device: the messages of a delivery can hold several of the same device. */
function mergeSpans(spans: readonly PositionSpan[]): PositionSpan[] {
  const merged = new Map<string, PositionSpan>();
  for (const s of spans) {
    const key = `${s.projectId}\u0000${s.deviceId}`;
    const seen = merged.get(key);
    if (!seen) merged.set(key, { ...s });
    else {
      seen.fromMs = Math.min(seen.fromMs, s.fromMs);
      seen.toMs = Math.max(seen.toMs, s.toMs);
    }
  }
  return [...merged.values()];
}

export async function handleIngestBatch(batch: MessageBatch<IngestBody>, env: Env): Promise<void> {
  const ch = clickhouse(getConfig(env).clickhouse);
  // A body that does not decode is retried alone (parked as it is in the end, then quarantined by the
  // re-drive: see dead-letters.ts); the rest go on.
  const decoded: Array<{ m: Message<IngestBody>; body: ReadMessage }> = [];
  for (const m of batch.messages) {
    try {
      decoded.push({ m, body: decodeIngestBody(m.body) });
    } catch (err) {
      console.error(JSON.stringify({ msg: 'ingest message could not be decoded; retrying later', id: m.id, attempts: m.attempts, error: String(err) }));
      m.retry({ delaySeconds: retryDelaySeconds(m.attempts) });
    }
  }
  if (!decoded.length) return;
  const bodies = decoded.map((d) => d.body);
  const ackAll = () => (decoded.length === batch.messages.length ? batch.ackAll() : decoded.forEach((d) => d.m.ack()));
  const mayBeRedelivery = decoded.map((d) => d.m.attempts > 1 || d.body.redelivery === true);
  // Fleet state follows the durable insert: the spans are marked pending in D1 before the ack, so
  // a recompute that fails after it (never failing the acked batch) is left to the watchdog.
  const fleet = (positions: PositionSpan[]) => (positions.length ? recomputeAfterWrite(ch, env, positions) : undefined);
  // Marked and leased in one D1 round trip before the ack; recomputed after it. With more messages
  // queued than this batch holds (runtimes differ on whether the count includes the batch), the
  // recompute is deferred: spans marked only, since the next batch of the same devices would redo
  // it. Any batch with positions also takes deferred devices that are due: all of them once
  // nothing is queued behind it, else those deferred for FLEET_DEFER_MAX_MS.
  const defer = (batch.metadata?.metrics?.backlogCount ?? 0) > batch.messages.length;
  // Rows an erasure forgot that were still on their way (see erasure/tombstones.ts): one D1 read
  // per try, so a tombstone written during the tries is seen by the next one.
  const subjects = noSubjects();
  for (const b of bodies) addSubjects(subjects, b);
  const forgotten = async () => new Forgotten(await tombstonesOf(env.DB, subjects));
  const claimed = async (positions: PositionSpan[]) =>
    positions.length ? claimPositions(env.DB, positions, { defer, dueBeforeMs: Date.now() - (defer ? FLEET_DEFER_MAX_MS : 0) }) : [];
  try {
    const { positions } = await writeRows(ch, bodies, Date.now(), mayBeRedelivery, await forgotten());
    const claims = await claimed(positions);
    ackAll();
    await recomputeClaimed(ch, env, claims);
    return;
  } catch (err) {
    // One immediate second try (a stale keep-alive connection after a ClickHouse restart fails once);
    // part of the first try may have landed, so it checks for rows already there.
    console.error(JSON.stringify({ msg: 'ingest write failed; trying once more', messages: batch.messages.length, error: String(err) }));
  }
  try {
    const { positions } = await writeRows(ch, bodies, Date.now(), true, await forgotten());
    const claims = await claimed(positions);
    ackAll();
    await recomputeClaimed(ch, env, claims);
    return;
  } catch (err) {
    console.error(JSON.stringify({ msg: 'ingest write failed twice; writing messages one by one', messages: batch.messages.length, error: String(err) }));
  }
  // One message ClickHouse refuses must not hold up the rows of every other device in the batch.
  const positions: PositionSpan[] = [];
  for (const { m, body } of decoded) {
    try {
      // Read for each message: this loop can outlast a whole erasure.
      const erased = new Forgotten(await tombstonesOf(env.DB, addSubjects(noSubjects(), body)));
      const written = (await writeRows(ch, [body], Date.now(), true, erased)).positions;
      await markPending(env.DB, written);
      positions.push(...written);
      m.ack();
    } catch (err) {
      console.error(JSON.stringify({ msg: 'ingest message write failed; retrying later', id: m.id, attempts: m.attempts, error: String(err) }));
      m.retry({ delaySeconds: retryDelaySeconds(m.attempts) });
    }
  }
  await fleet(positions);
}
