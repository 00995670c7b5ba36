// Outages longer than the ingest retry budget: dead letters are parked, never dropped, and re-driven by
// the cron once ClickHouse answers — every accepted row stored exactly once, with no operator action.
import { createExecutionContext, createMessageBatch, createScheduledController, env, getQueueResult, SELF } from 'cloudflare:test';
import { afterEach, describe, expect, it } from 'vitest';
import worker from '../src/index';
import { hash128, uuidv7At } from '../src/lib/ids';
import type { IngestBody, OutboxEvent } from '../src/pipeline/messages';
import { MAX_REDRIVES, redriveDeadLetters, REDRIVE_LOCK_KEY } from '../src/pipeline/dead-letters';
import { ADMIN_TOKEN, ch, countEvents, createProject, waitUntil } from './helpers';

/** Deliveries the ingest queue makes before dead-lettering: the first and `max_retries = 8` (wrangler.toml). */
const INGEST_DELIVERIES = 9;

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
const setClickHouse = (state: 'up' | 'down') => fetch(`${env.TEST_CLICKHOUSE_FAULT_CONTROL}/${state}`).then((r) => r.json());

afterEach(async () => {
  await setClickHouse('up');
});

interface DeadLetters {
  parked: number;
  oldestAgeSec: number | null;
  quarantined: number;
  truncated: boolean;
}

async function deadLetters(): Promise<DeadLetters> {
  const res = await SELF.fetch('http://gw/admin/health', { headers: admin });
  return ((await res.json()) as { deadLetters: DeadLetters }).deadLetters;
}

async function runCron() {
  await worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: '* * * * *' }), env, createExecutionContext());
}

function entry(projectId: string, deviceId: string, name: string, atMs: number): OutboxEvent {
  return {
    s: '',
    r: {
      id: uuidv7At(atMs, hash128(`${projectId}:${name}:${atMs}`)), project_id: projectId, device_id: deviceId, profile_id: '', type: 'track',
      name, created_at_ms: atMs, received_at_ms: atMs, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '',
      timezone: '', latitude: null, longitude: null,
    },
    p: `{"name":"${name}"}`,
  };
}

/** A message as a device object sends it: JSON text with its outbox entries spliced in. */
function deviceMessage(projectId: string, deviceId: string, name: string, n: number, fromMs: number): string {
  const entries = Array.from({ length: n }, (_, i) => entry(projectId, deviceId, name, fromMs + i));
  return JSON.stringify({ events: [], payloads: [], sessions: [], entries });
}

async function countPayloads(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>(
    'SELECT count() AS rows, uniqExact(id) AS ids FROM event_payloads WHERE project_id = {p:String}',
    { p: projectId },
  );
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

describe('outages longer than the retry budget', () => {
  it('parks what outlived its retries and re-drives it by cron once ClickHouse answers: 0 lost, 0 extra', async () => {
    const p = await createProject('long-outage');
    const start = Date.now() - 10 * 60_000;
    const messages = Array.from({ length: 5 }, (_, m) => ({ id: `long-${m}`, body: deviceMessage(p.id, `long-${m % 2}`, `long-${m}`, 40, start + m * 1000) }));

    // The first message was written before the outage but its ack was lost: it comes round again.
    const ctx = createExecutionContext();
    const early = createMessageBatch<IngestBody>('driftline-ingest', [{ ...messages[0]!, timestamp: new Date(), attempts: 1 }]);
    await worker.queue(early, env, ctx);
    expect((await getQueueResult(early, ctx)).ackAll).toBe(true);
    expect(await countEvents(p.id)).toEqual({ rows: 40, ids: 40 });

    const before = await deadLetters();
    await setClickHouse('down');
    // Every delivery of the budget fails; the consumer asks for a retry each time and never acks an unwritten row.
    for (let attempts = 1; attempts <= INGEST_DELIVERIES; attempts++) {
      const batch = createMessageBatch<IngestBody>('driftline-ingest', messages.map((m) => ({ ...m, timestamp: new Date(), attempts })));
      const c = createExecutionContext();
      await worker.queue(batch, env, c);
      const result = await getQueueResult(batch, c);
      expect(result.ackAll).toBe(false);
      expect(result.explicitAcks).toEqual([]);
      expect(result.retryMessages.map((m) => m.msgId).sort()).toEqual(messages.map((m) => m.id).sort());
    }

    // Budget spent: the platform moves them to the dead-letter queue (at least once: one of them twice),
    // whose consumer parks them in R2.
    await env.INGEST_DLQ.sendBatch([...messages, messages[1]!].map((m) => ({ body: m.body, contentType: 'text' as const })));
    const parked = await waitUntil(deadLetters, (d) => d.parked === before.parked + 6);
    expect(parked.oldestAgeSec).toEqual(expect.any(Number));

    // While ClickHouse is still down the cron leaves them parked.
    await runCron();
    expect((await deadLetters()).parked).toBe(before.parked + 6);

    await setClickHouse('up');
    await runCron();
    expect(await deadLetters()).toMatchObject({ parked: 0, oldestAgeSec: null });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 200, { timeoutMs: 90_000 });
    expect(await countEvents(p.id)).toEqual({ rows: 200, ids: 200 });
    expect(await countPayloads(p.id)).toEqual({ rows: 200, ids: 200 });
  });

  it('quarantines a parked message that does not decode, shows it, and re-drives the others past it', async () => {
    const p = await createProject('quarantine');
    const now = Date.now();
    const before = await deadLetters();
    // Parked an hour earlier than the good ones, so they are first in line.
    const truncated = deviceMessage(p.id, 'q-1', 'lost-half', 1, now).slice(0, 60);
    const wrongShape = '{"events":"not rows","payloads":[],"sessions":[]}';
    const badKeys = [`${now - 3_600_000}-bad-truncated.json`, `${now - 3_600_000}-bad-shape.json`];
    await env.ARCHIVE.put(`dead-letters/ingest/${badKeys[0]}`, truncated);
    await env.ARCHIVE.put(`dead-letters/ingest/${badKeys[1]}`, wrongShape);
    await env.INGEST_DLQ.sendBatch([
      { body: deviceMessage(p.id, 'q-1', 'good-a', 10, now - 60_000), contentType: 'text' },
      { body: deviceMessage(p.id, 'q-2', 'good-b', 10, now - 30_000), contentType: 'text' },
    ]);
    const waiting = await waitUntil(deadLetters, (d) => d.parked === before.parked + 4);
    expect(waiting.oldestAgeSec).toBeGreaterThanOrEqual(3600);

    await runCron();
    expect(await deadLetters()).toMatchObject({ parked: 0, oldestAgeSec: null, quarantined: before.quarantined + 2 });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 20);
    expect(await countEvents(p.id)).toEqual({ rows: 20, ids: 20 });

    // Shown to operators with the reason, and kept byte for byte.
    const listed = (await (await SELF.fetch('http://gw/admin/dead-letters', { headers: admin })).json()) as {
      quarantined: number;
      quarantine: Array<{ key: string; parkedKey: string; reason: string }>;
    };
    expect(listed.quarantined).toBe(before.quarantined + 2);
    for (const key of badKeys) {
      const shown = listed.quarantine.find((q) => q.key === `dead-letters/quarantine/${key}`);
      expect(shown).toMatchObject({ parkedKey: `dead-letters/ingest/${key}`, reason: expect.stringMatching(/^does not decode/) });
    }
    expect(await (await env.ARCHIVE.get(`dead-letters/quarantine/${badKeys[0]}`))!.text()).toBe(truncated);
    expect(await (await env.ARCHIVE.get(`dead-letters/quarantine/${badKeys[1]}`))!.text()).toBe(wrongShape);

    // Another run changes nothing.
    await runCron();
    expect(await deadLetters()).toMatchObject({ parked: 0, quarantined: before.quarantined + 2 });
    expect(await countEvents(p.id)).toEqual({ rows: 20, ids: 20 });
  });

  it('quarantines a message ClickHouse keeps refusing over its re-drives for a day, instead of cycling it forever; re-drives it within that day', async () => {
    const p = await createProject('refused');
    const now = Date.now();
    const before = await deadLetters();
    // Both back from their fifth re-drive and parked again: ClickHouse answered every time and refused them.
    const refused = JSON.stringify({ ...JSON.parse(deviceMessage(p.id, 'r-1', 'refused', 2, now - 1000)), redrives: MAX_REDRIVES, parkedAtMs: now - 25 * 3_600_000 });
    const key = `${now - 25 * 3_600_000}-refused.json`;
    await env.ARCHIVE.put(`dead-letters/ingest/${key}`, refused);
    // Parked an hour ago: an outage in which ClickHouse answered pings but refused inserts may last that long.
    const recent = JSON.stringify({ ...JSON.parse(deviceMessage(p.id, 'r-2', 'refused', 3, now)), redrives: MAX_REDRIVES, parkedAtMs: now - 3_600_000 });
    const recentKey = `${now - 3_600_000}-refused-recent.json`;
    await env.ARCHIVE.put(`dead-letters/ingest/${recentKey}`, recent);
    await runCron();
    expect(await deadLetters()).toMatchObject({ parked: before.parked, quarantined: before.quarantined + 1 });
    expect(await (await env.ARCHIVE.get(`dead-letters/quarantine/${key}`))!.text()).toBe(refused);
    expect(await env.ARCHIVE.head(`dead-letters/ingest/${key}`)).toBeNull();
    // The recent one went back to the ingest queue, and ClickHouse took it this time.
    expect(await env.ARCHIVE.head(`dead-letters/ingest/${recentKey}`)).toBeNull();
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
    expect(await countEvents(p.id)).toEqual({ rows: 3, ids: 3 });
  });

  it('never drops a dead letter R2 refuses: a fresh copy goes round the dead-letter queue again', async () => {
    const p = await createProject('r2-refuses');
    const body = deviceMessage(p.id, 'r2-1', 'refused', 3, Date.now() - 60_000);
    const before = await deadLetters();
    const refusingR2 = { put: () => Promise.reject(new Error('R2 unavailable')) } as unknown as R2Bucket;
    const requeued: Array<QueueSendOptions | undefined> = [];
    // Forwards the copy at once, so the test need not wait out its delay.
    const dlq = {
      send: async (b: unknown, o?: QueueSendOptions) => {
        requeued.push(o);
        await env.INGEST_DLQ.send(b, { ...o, delaySeconds: 0 });
      },
    } as unknown as Queue<unknown>;
    // Its last attempt (max_retries = 100): a retry now would be the platform deleting it.
    const batch = createMessageBatch<IngestBody>('driftline-ingest-dlq', [{ id: 'refused', timestamp: new Date(), attempts: 101, body }]);
    const ctx = createExecutionContext();
    await worker.queue(batch, { ...env, ARCHIVE: refusingR2, INGEST_DLQ: dlq }, ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.explicitAcks).toEqual(['refused']);
    expect(requeued).toEqual([{ contentType: 'text', delaySeconds: expect.any(Number) }]);

    await waitUntil(deadLetters, (d) => d.parked === before.parked + 1);
    await runCron();
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
    expect(await countEvents(p.id)).toEqual({ rows: 3, ids: 3 });

    // Neither R2 nor the queue takes it: it stays with the platform's retries, never acked.
    const refusingQueue = { send: () => Promise.reject(new Error('queue unavailable')) } as unknown as Queue<unknown>;
    const stuck = createMessageBatch<IngestBody>('driftline-ingest-dlq', [{ id: 'stuck', timestamp: new Date(), attempts: 1, body }]);
    const ctx2 = createExecutionContext();
    await worker.queue(stuck, { ...env, ARCHIVE: refusingR2, INGEST_DLQ: refusingQueue }, ctx2);
    const stuckResult = await getQueueResult(stuck, ctx2);
    expect(stuckResult.explicitAcks).toEqual([]);
    expect(stuckResult.retryMessages.map((m) => m.msgId)).toEqual(['stuck']);
  });

  it('never runs two re-drives at once: the cron and a replay racing send each parked message once', async () => {
    const p = await createProject('redrive-race');
    const now = Date.now();
    for (let i = 0; i < 6; i++) await env.ARCHIVE.put(`dead-letters/ingest/${now - 60_000 + i}-race-${i}.json`, deviceMessage(p.id, `race-${i}`, 'race', 2, now - 60_000 + i * 10));
    const [a, b] = await Promise.all([redriveDeadLetters(env, now, { requireClickHouse: false }), redriveDeadLetters(env, now, { requireClickHouse: false })]);
    expect([a.skipped, b.skipped].filter((s) => s === 'busy')).toHaveLength(1);
    expect(a.redriven + b.redriven).toBe(6);
    expect(await env.ARCHIVE.head(REDRIVE_LOCK_KEY)).toBeNull();
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 12);
    expect(await countEvents(p.id)).toEqual({ rows: 12, ids: 12 });

    // An operator's replay while the lock is held is told so; a lock left by a dead run goes stale.
    await env.ARCHIVE.put(REDRIVE_LOCK_KEY, 'someone', { customMetadata: { takenAt: String(Date.now()) } });
    const busy = await SELF.fetch('http://gw/admin/dead-letters/replay', { method: 'POST', headers: admin });
    expect(busy.status).toBe(409);
    expect(((await busy.json()) as { error: { code: string } }).error.code).toBe('redrive_in_progress');
    await env.ARCHIVE.put(REDRIVE_LOCK_KEY, 'dead run', { customMetadata: { takenAt: String(Date.now() - 10 * 60_000) } });
    expect((await SELF.fetch('http://gw/admin/dead-letters/replay', { method: 'POST', headers: admin })).status).toBe(200);
    expect(await env.ARCHIVE.head(REDRIVE_LOCK_KEY)).toBeNull();
    // Two runs finding the same stale lock: one takes it over, the other backs off.
    await env.ARCHIVE.put(REDRIVE_LOCK_KEY, 'dead again', { customMetadata: { takenAt: String(Date.now() - 10 * 60_000) } });
    const racing = await Promise.all([redriveDeadLetters(env, Date.now(), { requireClickHouse: false }), redriveDeadLetters(env, Date.now(), { requireClickHouse: false })]);
    expect(racing.filter((r) => r.skipped === 'busy')).toHaveLength(1);
    expect(await env.ARCHIVE.head(REDRIVE_LOCK_KEY)).toBeNull();
  });
});
