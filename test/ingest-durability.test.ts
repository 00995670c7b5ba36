// Accepted means durable: ClickHouse outages, redeliveries and dead letters never lose or copy a row.
import { createExecutionContext, createMessageBatch, env, getQueueResult, SELF } from 'cloudflare:test';
import { afterEach, describe, expect, it } from 'vitest';
import worker from '../src/index';
import { writeRows } from '../src/pipeline/writer';
import { hash128, uuidv7At } from '../src/lib/ids';
import type { IngestBody, IngestMessage, OutboxEvent } from '../src/pipeline/messages';
import { ADMIN_TOKEN, ch, countEvents, createProject, getJson, postBatch, trackEvent, waitUntil } from './helpers';

const setClickHouse = (state: 'up' | 'down') => fetch(`${env.TEST_CLICKHOUSE_FAULT_CONTROL}/${state}`).then((r) => r.json());

afterEach(async () => {
  await setClickHouse('up');
});

function events(deviceId: string, n: number, tag: string) {
  const base = Date.now() - 20 * 60_000;
  return Array.from({ length: n }, (_, i) => trackEvent(tag, { __deviceId: deviceId, __timestamp: base + i * 1000, i }));
}

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

describe('durability', () => {
  it('keeps every event accepted while ClickHouse is down and stores each exactly once after it returns', async () => {
    const p = await createProject();
    await setClickHouse('down');
    const health = await SELF.fetch('http://gw/healthz');
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ ok: false, clickhouse: 'down' });

    let accepted = 0;
    for (let b = 0; b < 4; b++) {
      const res = await postBatch(p, { events: events(`outage-${b % 2}`, 250, `outage-${b}`) });
      expect(res.status).toBe(202);
      accepted += ((await res.json()) as { accepted: number }).accepted;
    }
    expect(accepted).toBe(1000);
    // The consumer cannot write: the rows wait in queue retries, not in ClickHouse.
    await new Promise((r) => setTimeout(r, 1500));
    await setClickHouse('up');
    expect(await countEvents(p.id)).toEqual({ rows: 0, ids: 0 });

    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1000, { timeoutMs: 90_000 });
    expect(await countEvents(p.id)).toEqual({ rows: 1000, ids: 1000 });
    const read = await getJson<{ events: Array<{ name: string }> }>(p, '/v1/events?deviceId=outage-0&limit=1000');
    expect(read.body.events.filter((e) => e.name.startsWith('outage-'))).toHaveLength(500);
  });

  it('retries a delivery that fails and never adds a second copy when a delivered message comes again', async () => {
    const p = await createProject();
    const res = await postBatch(p, { events: events('redeliver-1', 20, 'redeliver') });
    expect(((await res.json()) as { accepted: number }).accepted).toBe(20);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 20);
    const rows = await getJson<{ events: Array<{ id: string; name: string }> }>(p, '/v1/events?deviceId=redeliver-1&limit=100');
    expect(rows.body.events.filter((e) => e.name === 'redeliver')).toHaveLength(20);

    // Hand the consumer the same rows again, as a redelivered message (attempt 2).
    const stored = await ch().query<IngestMessage['events'][number]>(
      `SELECT toString(id) AS id, project_id, device_id, session_id, profile_id, type, name, created_at_ms, received_at_ms,
              synced_at_ms, properties, ref_id, ip, country, region, city, timezone, latitude, longitude
         FROM events WHERE project_id = {p:String}`,
      { p: p.id },
    );
    const message: IngestMessage = { events: stored, payloads: [], sessions: [] };
    const ctx = createExecutionContext();

    const down = createMessageBatch<IngestMessage>('driftline-ingest', [{ id: 'm1', timestamp: new Date(), attempts: 1, body: message }]);
    await setClickHouse('down');
    await worker.queue(down, env, ctx);
    const failed = await getQueueResult(down, ctx);
    expect(failed.retryMessages.map((m: { msgId: string }) => m.msgId)).toEqual(['m1']);
    expect(failed.explicitAcks).toEqual([]);
    await setClickHouse('up');

    const again = createMessageBatch<IngestMessage>('driftline-ingest', [{ id: 'm1', timestamp: new Date(), attempts: 2, body: message }]);
    await worker.queue(again, env, ctx);
    const ok = await getQueueResult(again, ctx);
    expect(ok.ackAll).toBe(true);
    expect(await countEvents(p.id)).toEqual({ rows: 20, ids: 20 });
  });

  it('parks exhausted messages in R2 and re-drives them through the admin route exactly once', async () => {
    const p = await createProject();
    const now = Date.now();
    const id = uuidv7At(now - 1000, hash128(`${p.id}:parked`));
    const row: IngestMessage['events'][number] = {
      id, project_id: p.id, device_id: 'dlq-1', session_id: '', profile_id: '', type: 'track', name: 'parked',
      created_at_ms: now - 1000, received_at_ms: now, synced_at_ms: 0, properties: '{}', ref_id: '', ip: '',
      country: '', region: '', city: '', timezone: '', latitude: null, longitude: null,
    };
    // As a device object sends it: JSON text with its outbox entries spliced in.
    const { session_id: _s, synced_at_ms: _t, ...r } = row;
    const message = JSON.stringify({ events: [], payloads: [], sessions: [], entries: [{ s: '', r, p: '{"type":"track"}' }] });
    const ctx = createExecutionContext();
    const before = (await (await SELF.fetch('http://gw/admin/dead-letters', { headers: admin })).json()) as { count: number };
    const dead = createMessageBatch<IngestBody>('driftline-ingest-dlq', [{ id: 'dead-1', timestamp: new Date(), attempts: 1, body: message }]);
    await worker.queue(dead, env, ctx);
    expect((await getQueueResult(dead, ctx)).explicitAcks).toEqual(['dead-1']);
    const listed = (await (await SELF.fetch('http://gw/admin/dead-letters', { headers: admin })).json()) as { count: number };
    expect(listed.count).toBe(before.count + 1);
    const health = (await (await SELF.fetch('http://gw/admin/health', { headers: admin })).json()) as { ingest: { deadLetters: number } };
    expect(health.ingest.deadLetters).toBe(listed.count);

    const replay = await SELF.fetch('http://gw/admin/dead-letters/replay', { method: 'POST', headers: admin });
    expect(replay.status).toBe(200);
    expect(((await replay.json()) as { replayed: number }).replayed).toBe(listed.count);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    const again = await SELF.fetch('http://gw/admin/dead-letters/replay', { method: 'POST', headers: admin });
    expect(((await again.json()) as { replayed: number }).replayed).toBe(0);
    expect(await countEvents(p.id)).toEqual({ rows: 1, ids: 1 });
    const [payload] = await ch().query<{ payload: string }>('SELECT payload FROM event_payloads WHERE project_id = {p:String}', { p: p.id });
    expect(payload!.payload).toBe('{"type":"track"}');
  });

  it('retries a message that does not decode on its own and writes the rest of the delivery', async () => {
    const p = await createProject();
    const now = Date.now();
    const r = {
      id: uuidv7At(now, hash128(`${p.id}:decodes`)), project_id: p.id, device_id: 'decode-1', profile_id: '', type: 'track', name: 'decodes',
      created_at_ms: now, received_at_ms: now, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '',
      timezone: '', latitude: null, longitude: null,
    };
    const good = JSON.stringify({ events: [], payloads: [], sessions: [], entries: [{ s: '', r, p: '{}' }] });
    const batch = createMessageBatch<IngestBody>('driftline-ingest', [
      { id: 'truncated', timestamp: new Date(), attempts: 1, body: good.slice(0, 40) },
      { id: 'not-a-message', timestamp: new Date(), attempts: 1, body: 'null' },
      { id: 'good', timestamp: new Date(), attempts: 1, body: good },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, env, ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.explicitAcks).toEqual(['good']);
    expect(result.retryMessages.map((m: { msgId: string }) => m.msgId).sort()).toEqual(['not-a-message', 'truncated']);
    expect(await countEvents(p.id)).toEqual({ rows: 1, ids: 1 });
  });

  it('writes both message forms in one delivery: text with entries, and json with a chunk string', async () => {
    const p = await createProject();
    const now = Date.now();
    const entry = (name: string): OutboxEvent => ({
      s: '',
      r: {
        id: uuidv7At(now, hash128(`${p.id}:${name}`)), project_id: p.id, device_id: 'forms-1', profile_id: '', type: 'track', name,
        created_at_ms: now, received_at_ms: now, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '',
        timezone: '', latitude: null, longitude: null,
      },
      p: `{"name":"${name}"}`,
    });
    // The json form with `chunk` is what objects sent before text messages; some may be in flight.
    const legacy: IngestMessage = { events: [], payloads: [], sessions: [], chunk: JSON.stringify([entry('as-json')]) };
    const text = JSON.stringify({ events: [], payloads: [], sessions: [], entries: [entry('as-text')] });
    const batch = createMessageBatch<IngestBody>('driftline-ingest', [
      { id: 'text', timestamp: new Date(), attempts: 1, body: text },
      { id: 'json', timestamp: new Date(), attempts: 1, body: legacy },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, env, ctx);
    expect((await getQueueResult(batch, ctx)).ackAll).toBe(true);
    const rows = await ch().query<{ name: string; payload: string }>(
      `SELECT e.name AS name, p.payload AS payload FROM events AS e ANY INNER JOIN (SELECT id, payload FROM event_payloads WHERE project_id = {p:String}) AS p USING id
        WHERE e.project_id = {p:String} ORDER BY name`,
      { p: p.id },
    );
    expect(rows.map((r) => [r.name, r.payload])).toEqual([
      ['as-json', '{"name":"as-json"}'],
      ['as-text', '{"name":"as-text"}'],
    ]);
  });
});

describe('hostile content never blocks accepted rows', () => {
  it('flushes events whose text escapes or encodes large (quotes, CJK) within the queue message limit', async () => {
    const p = await createProject();
    const now = Date.now();
    const quoted = Array.from({ length: 20 }, (_, i) => trackEvent('quoted', { __deviceId: 'wide-1', __timestamp: now - 60_000 + i, v: '"'.repeat(3000) }));
    const cjk = Array.from({ length: 20 }, (_, i) => trackEvent('cjk', { __deviceId: 'wide-1', __timestamp: now - 30_000 + i, v: '中'.repeat(7000) }));
    for (const events of [quoted, cjk]) {
      const res = await postBatch(p, { events });
      expect(((await res.json()) as { accepted: number }).accepted).toBe(20);
    }
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 40, { timeoutMs: 60_000 });
    const [row] = await ch().query<{ n: number }>(
      "SELECT count() AS n FROM event_payloads WHERE project_id = {p:String}",
      { p: p.id },
    );
    expect(Number(row!.n)).toBe(40);
    const device = await getJson<{ lastEvent: { name: string } }>(p, '/v1/devices/wide-1');
    expect(device.body.lastEvent.name).toBe('cjk');
  });

  it('rejects a row with an unpaired surrogate on its own and stores the rest', async () => {
    const p = await createProject();
    const res = await postBatch(
      p,
      '{"events":[{"type":"track","payload":{"name":"bad\\ud800","properties":{"__deviceId":"ls-1"}}},' +
        '{"type":"track","payload":{"name":"ok","properties":{"__deviceId":"ls-1","k\\udc00":1}}},' +
        '{"type":"track","payload":{"name":"fine \\ud83d\\ude00","properties":{"__deviceId":"ls-1","literal":"\\\\ud800"}}}]}',
    );
    const body = (await res.json()) as { accepted: number; rejected: Array<{ index: number; reason: string }> };
    expect(body.rejected.map((r) => [r.index, r.reason])).toEqual([
      [0, 'validation'],
      [1, 'validation'],
    ]);
    expect(body.accepted).toBe(1);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
  });

  it('writes the good messages of a delivery when ClickHouse refuses one of them', async () => {
    const p = await createProject();
    const now = Date.now();
    const row = (name: string): IngestMessage['events'][number] => ({
      id: uuidv7At(now, hash128(`${p.id}:${name}`)), project_id: p.id, device_id: 'mixed-1', session_id: '', profile_id: '', type: 'track',
      name, created_at_ms: now, received_at_ms: now, synced_at_ms: 0, properties: '{}', ref_id: '', ip: '',
      country: '', region: '', city: '', timezone: '', latitude: null, longitude: null,
    });
    const poison = row('poison\ud800'); // reached the queue by some other path: ClickHouse refuses it
    const batch = createMessageBatch<IngestMessage>('driftline-ingest', [
      { id: 'good', timestamp: new Date(), attempts: 1, body: { events: [row('good')], payloads: [], sessions: [] } },
      { id: 'bad', timestamp: new Date(), attempts: 1, body: { events: [poison], payloads: [], sessions: [] } },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, env, ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.explicitAcks).toEqual(['good']);
    expect(result.retryMessages.map((m: { msgId: string }) => m.msgId)).toEqual(['bad']);
    expect(await countEvents(p.id)).toEqual({ rows: 1, ids: 1 });
  });

  it('never shows an event whose raw payload was not stored', async () => {
    // Readers (and the CJK test above, under load) look up an event's payload as soon as they see
    // the event: the payload insert must land first, so a refused payload leaves no event behind.
    const p = await createProject();
    const now = Date.now();
    const id = uuidv7At(now, hash128(`${p.id}:orphan`));
    const event: IngestMessage['events'][number] = {
      id, project_id: p.id, device_id: 'order-1', session_id: '', profile_id: '', type: 'track',
      name: 'orphan', created_at_ms: now, received_at_ms: now, synced_at_ms: 0, properties: '{}', ref_id: '', ip: '',
      country: '', region: '', city: '', timezone: '', latitude: null, longitude: null,
    };
    const refused = { id, project_id: p.id, created_at_ms: now, received_at_ms: now, payload: 'refused\ud800' };
    await expect(writeRows(ch(), [{ events: [event], payloads: [refused], sessions: [] }], now, false)).rejects.toThrow();
    expect(await countEvents(p.id)).toEqual({ rows: 0, ids: 0 });
  });

  it('reads with bounds far in the future', async () => {
    const p = await createProject();
    await postBatch(p, { events: [trackEvent('far', { __deviceId: 'far-1' })] });
    const r = await waitUntil(
      () => getJson<{ events: Array<{ name: string }> }>(p, '/v1/events?deviceId=far-1&since=0&until=999999999999999'),
      (x) => x.body.events.some((e) => e.name === 'far'),
    );
    expect(r.status).toBe(200);
  });
});
