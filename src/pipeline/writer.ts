// The ingest-queue consumer: rows of many devices become one ClickHouse insert per table.
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { markPending, positionSpans, recomputeAfterWrite, type PositionSpan } from '../fleet/recompute';
import { decodeMessage, expandMessage, type EventRow, type IngestBody, type IngestMessage, type PayloadRow, type SessionRow } from './messages';

const ID_CHECK_CHUNK = 5000;

/** Delay before the n-th retry: 2, 4, 8 ... capped at 5 minutes. */
export function retryDelaySeconds(attempts: number): number {
  return Math.min(300, 2 ** Math.max(1, attempts));
}

/** Ids among `rows` that `table` already holds: a redelivered message must not add copies. */
async function existingIds(ch: ClickHouse, table: 'events' | 'event_payloads', rows: Array<{ id: string; project_id: string; created_at_ms: number }>): Promise<Set<string>> {
  const found = new Set<string>();
  // In event-time order, so each check reads only the monthly partitions its chunk's times span.
  const byTime = [...rows].sort((a, b) => a.created_at_ms - b.created_at_ms);
  for (let i = 0; i < byTime.length; i += ID_CHECK_CHUNK) {
    const chunk = byTime.slice(i, i + ID_CHECK_CHUNK);
    const from = chunk[0]!.created_at_ms;
    const to = chunk.at(-1)!.created_at_ms;
    const hits = await ch.query<{ id: string }>(
      `SELECT toString(id) AS id FROM ${table}
        WHERE project_id IN (SELECT value FROM projects)
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
          AND toString(id) IN (SELECT value FROM ids)`,
      { ...dateTimeBounds(from, to), from, to },
      { projects: [...new Set(chunk.map((r) => r.project_id))], ids: chunk.map((r) => r.id) },
    );
    for (const h of hits) found.add(h.id);
  }
  return found;
}

/**
 * `positions`: the devices with `position` events in the messages and the span of their times — all
 * of them, new or already stored (a redelivery after a crash before the recompute redoes it).
 */
export async function writeRows(ch: ClickHouse, messages: readonly IngestMessage[], syncedAtMs: number, mayBeRedelivery: boolean): Promise<{ events: number; sessions: number; positions: PositionSpan[] }> {
  const events: EventRow[] = [];
  const payloads: PayloadRow[] = [];
  const sessions: SessionRow[] = [];
  for (const m of messages) {
    const rows = expandMessage(m, syncedAtMs);
    events.push(...rows.events);
    payloads.push(...rows.payloads);
    sessions.push(...rows.sessions);
  }
  let newEvents = events;
  let newPayloads = payloads;
  if (mayBeRedelivery) {
    const [haveEvents, havePayloads] = await Promise.all([existingIds(ch, 'events', events), existingIds(ch, 'event_payloads', payloads)]);
    newEvents = events.filter((e) => !haveEvents.has(e.id));
    newPayloads = payloads.filter((p) => !havePayloads.has(p.id));
  }
  // Within one delivery the same event can appear twice (an outbox resend batched with the original).
  const dedupe = <T extends { id: string }>(rows: T[]) => [...new Map(rows.map((r) => [r.id, r])).values()];
  // Sessions and payloads first: once a reader sees an event, it also sees the session (and its
  // start) it belongs to and its raw payload.
  // Both settle before a failure is reported: a retry's id check must not race an insert in flight.
  const settled = await Promise.allSettled([ch.insert('sessions', sessions), ch.insert('event_payloads', dedupe(newPayloads))]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insert('events', dedupe(newEvents));
  return { events: newEvents.length, sessions: sessions.length, positions: positionSpans(events) };
}

export async function handleIngestBatch(batch: MessageBatch<IngestBody>, env: Env): Promise<void> {
  const ch = clickhouse(getConfig(env).clickhouse);
  // A body that does not decode is retried alone (parked as it is in the end, then quarantined by the
  // re-drive: see dead-letters.ts); the rest go on.
  const decoded: Array<{ m: Message<IngestBody>; body: IngestMessage }> = [];
  for (const m of batch.messages) {
    try {
      decoded.push({ m, body: decodeMessage(m.body) });
    } catch (err) {
      console.error(JSON.stringify({ msg: 'ingest message could not be decoded; retrying later', id: m.id, attempts: m.attempts, error: String(err) }));
      m.retry({ delaySeconds: retryDelaySeconds(m.attempts) });
    }
  }
  if (!decoded.length) return;
  const bodies = decoded.map((d) => d.body);
  const ackAll = () => (decoded.length === batch.messages.length ? batch.ackAll() : decoded.forEach((d) => d.m.ack()));
  const mayBeRedelivery = decoded.some((d) => d.m.attempts > 1 || d.body.redelivery === true);
  // Fleet state follows the durable insert: the spans are marked pending in D1 before the ack, so
  // a recompute that fails after it (never failing the acked batch) is left to the watchdog.
  const fleet = (positions: PositionSpan[]) => (positions.length ? recomputeAfterWrite(ch, env.DB, positions) : undefined);
  try {
    const { positions } = await writeRows(ch, bodies, Date.now(), mayBeRedelivery);
    await markPending(env.DB, positions);
    ackAll();
    await fleet(positions);
    return;
  } catch (err) {
    // One immediate second try (a stale keep-alive connection after a ClickHouse restart fails once);
    // part of the first try may have landed, so it checks for rows already there.
    console.error(JSON.stringify({ msg: 'ingest write failed; trying once more', messages: batch.messages.length, error: String(err) }));
  }
  try {
    const { positions } = await writeRows(ch, bodies, Date.now(), true);
    await markPending(env.DB, positions);
    ackAll();
    await fleet(positions);
    return;
  } catch (err) {
    console.error(JSON.stringify({ msg: 'ingest write failed twice; writing messages one by one', messages: batch.messages.length, error: String(err) }));
  }
  // One message ClickHouse refuses must not hold up the rows of every other device in the batch.
  const positions: PositionSpan[] = [];
  for (const { m, body } of decoded) {
    try {
      const written = (await writeRows(ch, [body], Date.now(), true)).positions;
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
