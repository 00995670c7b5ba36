import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { countEvents, createProject, getJson, postBatch, trackEvent, waitUntil } from './helpers';

describe('walking skeleton', () => {
  it('answers healthz with ClickHouse up', async () => {
    const res = await SELF.fetch('http://gw/healthz');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true, clickhouse: 'ok' });
  });

  it('takes a batch into ClickHouse and reads it back', async () => {
    const p = await createProject();
    const now = Date.now();
    const events = Array.from({ length: 5 }, (_, i) =>
      trackEvent('ping', { __deviceId: 'dev-1', __timestamp: now - 60_000 + i * 1000, i }),
    );
    const res = await postBatch(p, { events });
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({ accepted: 5, duplicates: 0, rejected: [] });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 5);
    // Session rows are a separate insert from event rows: wait for the read API to show both.
    const { status, body } = await waitUntil(
      () => getJson<{ events: Array<{ name: string; deviceId: string }> }>(p, '/v1/events?deviceId=dev-1'),
      (r) => r.body.events.some((e) => e.name === 'session_start'),
    );
    expect(status).toBe(200);
    expect(body.events.filter((e) => e.name === 'ping')).toHaveLength(5);
    expect(body.events.filter((e) => e.name === 'session_start')).toHaveLength(1);
  });
});
