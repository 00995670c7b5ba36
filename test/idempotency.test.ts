// SDK retries: a request retried with the same Idempotency-Key and body is answered as the first one
// was and stores nothing new, even for rows without __eventId or __timestamp.
import { createExecutionContext, createScheduledController, env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { IDEMPOTENCY_TTL_MS } from '../src/ingest/idempotency';
import { ch, countEvents, createProject, getJson, postBatch, trackEvent, waitUntil } from './helpers';

interface BatchResult {
  accepted: number;
  duplicates: number;
  rejected: unknown[];
}

/** Rows an SDK builds without an event id or a timestamp: only the key tells a retry apart. */
const untimed = (device: string, n: number) => ({ events: Array.from({ length: n }, (_, i) => trackEvent('tap', { __deviceId: device, i })) });

describe('Idempotency-Key', () => {
  it('answers a retried batch as the first time and stores its rows once', async () => {
    const p = await createProject();
    const body = JSON.stringify(untimed('idem-1', 20));
    const first = await postBatch(p, body, { 'idempotency-key': 'retry-1' });
    expect(first.status).toBe(202);
    const firstBody = (await first.json()) as BatchResult;
    expect(firstBody.accepted).toBe(20);
    const again = await postBatch(p, body, { 'idempotency-key': 'retry-1' });
    expect(again.status).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(await again.json()).toEqual(firstBody);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 20);
    // Without a key the same body is new data: these rows have no id or time of their own.
    await postBatch(p, body);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 40);
    expect(await countEvents(p.id)).toEqual({ rows: 40, ids: 40 });
  });

  it('stores one copy when identical requests with one key race each other', async () => {
    const p = await createProject();
    const body = JSON.stringify(untimed('idem-race', 10));
    const answers = await Promise.all(Array.from({ length: 5 }, () => postBatch(p, body, { 'idempotency-key': 'race' })));
    const statuses = answers.map((r) => r.status);
    expect(statuses.filter((s) => s === 202).length).toBeGreaterThanOrEqual(1);
    for (const r of answers.filter((r) => r.status === 409)) {
      expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('idempotency_in_progress');
    }
    expect(statuses.every((s) => s === 202 || s === 409)).toBe(true);
    // The losers retry and get the first answer.
    const retried = await postBatch(p, body, { 'idempotency-key': 'race' });
    expect(((await retried.json()) as BatchResult).accepted).toBe(10);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 10);
    expect(await countEvents(p.id)).toEqual({ rows: 10, ids: 10 });
  });

  it('refuses a key reused for another body, and a malformed key', async () => {
    const p = await createProject();
    expect((await postBatch(p, untimed('idem-2', 1), { 'idempotency-key': 'k' })).status).toBe(202);
    const other = await postBatch(p, untimed('idem-2', 2), { 'idempotency-key': 'k' });
    expect(other.status).toBe(422);
    expect(((await other.json()) as { error: { code: string } }).error.code).toBe('idempotency_key_reused');
    const bad = await postBatch(p, untimed('idem-2', 1), { 'idempotency-key': 'has space' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('invalid_idempotency_key');
    // Keys are per project: another project may use the same one.
    const q = await createProject();
    expect((await postBatch(q, untimed('idem-2', 2), { 'idempotency-key': 'k' })).status).toBe(202);
  });

  it('answers a retried /track with the same device and session, one event stored', async () => {
    const p = await createProject();
    const body = JSON.stringify(trackEvent('opened', { __deviceId: 'idem-track' }));
    const send = () => SELF.fetch('http://gw/track', { method: 'POST', headers: { ...p.headers, 'idempotency-key': 'open-1' }, body });
    const first = await send();
    const again = await send();
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual(await first.json());
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
  });

  it('redoes a request whose holder died with its first receipt time, so accepted rows count as duplicates', async () => {
    const p = await createProject();
    const body = JSON.stringify(untimed('idem-dead', 5));
    const first = await postBatch(p, body, { 'idempotency-key': 'dead' });
    expect(((await first.json()) as BatchResult).accepted).toBe(5);
    // As if the first request died after its rows were accepted and before its answer was stored.
    const row = await env.DB.prepare('SELECT received_at_ms FROM idempotency_keys WHERE project_id = ?1 AND key = ?2').bind(p.id, 'dead').first<{ received_at_ms: number }>();
    await env.DB.prepare('UPDATE idempotency_keys SET status = NULL, response = NULL, held_at = ?3 WHERE project_id = ?1 AND key = ?2').bind(p.id, 'dead', Date.now() - 120_000).run();
    const retry = await postBatch(p, body, { 'idempotency-key': 'dead' });
    expect(await retry.json()).toEqual({ accepted: 0, duplicates: 5, rejected: [] });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 5);
    const events = await getJson<{ events: Array<{ name: string; createdAt: string }> }>(p, '/v1/events?deviceId=idem-dead');
    for (const e of events.body.events.filter((e) => e.name === 'tap')) expect(Date.parse(e.createdAt)).toBe(row!.received_at_ms);
  });

  it('forgets keys after 24 hours (the cron prunes them)', async () => {
    const p = await createProject();
    expect((await postBatch(p, untimed('idem-old', 1), { 'idempotency-key': 'old' })).status).toBe(202);
    await env.DB.prepare('UPDATE idempotency_keys SET created_at = ?3 WHERE project_id = ?1 AND key = ?2').bind(p.id, 'old', Date.now() - IDEMPOTENCY_TTL_MS - 1000).run();
    await worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: '* * * * *' }), env, createExecutionContext()).catch(() => {});
    const left = await env.DB.prepare('SELECT count(*) AS n FROM idempotency_keys WHERE project_id = ?1').bind(p.id).first<{ n: number }>();
    expect(left!.n).toBe(0);
  });

  it('takes over a key past its TTL that the cron has not pruned yet, as a new key', async () => {
    const p = await createProject();
    expect((await postBatch(p, untimed('idem-expired', 1), { 'idempotency-key': 'expired' })).status).toBe(202);
    await env.DB.prepare('UPDATE idempotency_keys SET created_at = ?3 WHERE project_id = ?1 AND key = ?2').bind(p.id, 'expired', Date.now() - IDEMPOTENCY_TTL_MS - 1000).run();
    // Another body under the forgotten key is new data, not a reuse.
    const next = await postBatch(p, untimed('idem-expired', 3), { 'idempotency-key': 'expired' });
    expect(next.status).toBe(202);
    expect(((await next.json()) as BatchResult).accepted).toBe(3);
    const again = await postBatch(p, untimed('idem-expired', 3), { 'idempotency-key': 'expired' });
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 4);
  });

  it('answers 503 idempotency_unavailable and stores nothing when the key store fails', async () => {
    const p = await createProject();
    await env.DB.exec('ALTER TABLE idempotency_keys RENAME TO idempotency_keys_away');
    let res: Response;
    try {
      res = await postBatch(p, untimed('idem-d1', 4), { 'idempotency-key': 'd1-down' });
    } finally {
      await env.DB.exec('ALTER TABLE idempotency_keys_away RENAME TO idempotency_keys');
    }
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    const body = (await res.json()) as { error: { code: string; details: { retryable: boolean } } };
    expect(body.error.code).toBe('idempotency_unavailable');
    expect(body.error.details.retryable).toBe(true);
    // The retry goes through; the failed attempt left nothing behind (only the retry's 4 rows).
    const retry = await postBatch(p, untimed('idem-d1', 4), { 'idempotency-key': 'd1-down' });
    expect(((await retry.json()) as BatchResult).accepted).toBe(4);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 4);
    expect(await countEvents(p.id)).toEqual({ rows: 4, ids: 4 });
  });

  it('redoes a retry from another network as the first request: same cookieless device, rows counted as duplicates', async () => {
    const p = await createProject();
    // No __deviceId: the device id is derived from the client's address and user agent.
    const body = JSON.stringify({ events: Array.from({ length: 4 }, (_, i) => trackEvent('tap', { i })) });
    const wifi = { 'idempotency-key': 'moved', 'cf-connecting-ip': '198.51.100.7', 'user-agent': 'app/1.0' };
    const first = await postBatch(p, body, wifi);
    expect(((await first.json()) as BatchResult).accepted).toBe(4);
    // The first request died before its answer was stored; the phone retries from cellular.
    await env.DB.prepare('UPDATE idempotency_keys SET status = NULL, response = NULL, held_at = ?3 WHERE project_id = ?1 AND key = ?2').bind(p.id, 'moved', Date.now() - 120_000).run();
    const retry = await postBatch(p, body, { ...wifi, 'cf-connecting-ip': '203.0.113.99' });
    expect(await retry.json()).toEqual({ accepted: 0, duplicates: 4, rejected: [] });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 4);
    const devices = await ch().query<{ d: string }>('SELECT DISTINCT device_id AS d FROM events WHERE project_id = {p:String}', { p: p.id });
    expect(devices).toHaveLength(1);
  });
});
