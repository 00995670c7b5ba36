// Hostile and broken requests on every route: each answer is a coded 4xx (or a coded 503 that is the
// deployment's fault), nothing is stored, and no 5xx comes from the input.
import { createExecutionContext, env, SELF } from 'cloudflare:test';
import { afterEach, describe, expect, it, vi } from 'vitest';
import worker from '../src/index';
import { ADMIN_TOKEN, countEvents, createProject, getJson, postBatch, trackEvent, waitUntil, type TestProject } from './helpers';

interface ErrorBody {
  error: { code: string; message: string; details?: unknown };
}
interface BatchResult {
  accepted: number;
  duplicates: number;
  rejected: Array<{ index: number; reason: string; error: string; retryable: boolean }>;
}

const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };
const setClickHouse = (state: 'up' | 'down') => fetch(`${env.TEST_CLICKHOUSE_FAULT_CONTROL}/${state}`).then((r) => r.json());

afterEach(async () => {
  await setClickHouse('up');
});

async function expectCoded(res: Response, status: number, code?: string): Promise<ErrorBody> {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  const body = JSON.parse(text) as ErrorBody;
  expect(typeof body.error.code).toBe('string');
  expect(body.error.code.length).toBeGreaterThan(0);
  if (code) expect(body.error.code).toBe(code);
  return body;
}

/** Every JSON-taking route with its credentials. */
function jsonRoutes(p: TestProject): Array<{ method: string; path: string; headers: Record<string, string> }> {
  return [
    { method: 'POST', path: '/track', headers: p.headers },
    { method: 'POST', path: '/track/batch', headers: p.headers },
    { method: 'POST', path: '/admin/projects', headers: admin },
    { method: 'POST', path: '/admin/backfills', headers: admin },
    { method: 'POST', path: '/admin/archives', headers: admin },
    { method: 'POST', path: '/admin/archives/restore', headers: admin },
    { method: 'POST', path: '/admin/erasures', headers: admin },
    { method: 'POST', path: '/admin/fleet/recompute', headers: admin },
    { method: 'PUT', path: '/v1/devices/van-1', headers: p.headers },
    { method: 'POST', path: '/ingest/overland', headers: p.headers },
  ];
}

describe('hostile requests', () => {
  it('answers malformed JSON on every JSON route with a coded 400', async () => {
    const p = await createProject();
    for (const body of ['{"name":', '{bad json}', '', '\u0000\u0001', '[1,2', '"just a string"', 'null']) {
      for (const route of jsonRoutes(p)) {
        const res = await SELF.fetch(`http://gw${route.path}`, { method: route.method, headers: route.headers, body });
        const text = await res.text();
        expect(res.status, `${route.path} ${JSON.stringify(body)}: ${text}`).toBeGreaterThanOrEqual(400);
        expect(res.status, `${route.path} ${JSON.stringify(body)}: ${text}`).toBeLessThan(500);
        expect((JSON.parse(text) as ErrorBody).error.code).toMatch(/^[a-z_]+$/);
      }
    }
    expect(await countEvents(p.id)).toEqual({ rows: 0, ids: 0 });
  });

  it('answers wrong types with a coded 400 on admin routes', async () => {
    const p = await createProject();
    await expectCoded(await SELF.fetch('http://gw/admin/projects', { method: 'POST', headers: admin, body: JSON.stringify({ name: 42 }) }), 400, 'invalid_request');
    await expectCoded(await SELF.fetch('http://gw/admin/projects', { method: 'POST', headers: admin, body: JSON.stringify({ name: 'x', __proto__: { sessionGapMs: 1 }, sessionGapMs: 'soon' }) }), 400, 'invalid_request');
    const backfill = await SELF.fetch('http://gw/admin/backfills', {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ type: 'legacy_import', projectId: p.id, dataset: ['citylens'], source: 'tracks' }),
    });
    await expectCoded(backfill, 400, 'invalid_request');
    await expectCoded(await SELF.fetch('http://gw/admin/backfills/not-a-job/pause', { method: 'POST', headers: admin }), 404);
  });

  it('counts the 32 KB event limit in UTF-8 bytes in batches, as /track does', async () => {
    const p = await createProject();
    // 12 000 CJK characters: 12 000 UTF-16 units (under the limit) but 36 000 UTF-8 bytes (over it).
    const wide = trackEvent('wide', { __deviceId: 'utf8-1', text: '中'.repeat(12_000) });
    const narrow = trackEvent('narrow', { __deviceId: 'utf8-1', text: 'a'.repeat(12_000) });
    const res = await postBatch(p, { events: [wide, narrow] });
    const body = (await res.json()) as BatchResult;
    expect(body.accepted).toBe(1);
    expect(body.rejected).toEqual([{ index: 0, reason: 'validation', error: expect.stringContaining('UTF-8'), retryable: false }]);
    const single = await SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: JSON.stringify(wide) });
    expect([400, 413]).toContain(single.status);
    await expectCoded(single, single.status);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
  });

  it('refuses client rows named session_* per row, on /track and in batches', async () => {
    const p = await createProject();
    const res = await postBatch(p, {
      events: [trackEvent('session_start', { __deviceId: 'forge-1' }), trackEvent('session_end', { __deviceId: 'forge-1' }), trackEvent('session_whatever'), trackEvent('real', { __deviceId: 'forge-1' })],
    });
    const body = (await res.json()) as BatchResult;
    expect(body.accepted).toBe(1);
    expect(body.rejected.map((r) => [r.index, r.reason])).toEqual([
      [0, 'validation'],
      [1, 'validation'],
      [2, 'validation'],
    ]);
    await expectCoded(await SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: JSON.stringify(trackEvent('session_start')) }), 400, 'invalid_event');
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    const events = await getJson<{ events: Array<{ name: string }> }>(p, '/v1/events?deviceId=forge-1');
    // The one real event plus its derived session start: never a forged one.
    expect(events.body.events.filter((e) => e.name === 'session_start')).toHaveLength(1);
    expect(events.body.events.filter((e) => e.name === 'session_end')).toHaveLength(0);
  });

  it('refuses a 50 MB body without reading it all, and forged reserved properties per row', async () => {
    const p = await createProject();
    const huge = new Uint8Array(50 * 1024 * 1024).fill(0x20);
    huge.set(new TextEncoder().encode('{"events":['), 0);
    await expectCoded(await postBatch(p, huge), 413, 'payload_too_large');
    await expectCoded(await SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: huge }), 413);
    const forged = await postBatch(p, {
      events: [
        trackEvent('t', { __timestamp: 'yesterday' }),
        trackEvent('t', { __deviceId: { $ne: null } }),
        trackEvent('t', { __eventId: 'x'.repeat(10_000) }),
        trackEvent('t', { __ip: 12 }),
        { type: 'track', payload: { name: 'x'.repeat(300) } },
        { type: 'track', payload: { name: 'p', properties: JSON.parse('{"constructor":{"prototype":{"polluted":true}}}') } },
      ],
    });
    const body = (await forged.json()) as BatchResult;
    expect(body.accepted).toBe(0);
    expect(body.rejected.map((r) => r.reason)).toEqual(Array(6).fill('validation'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(await countEvents(p.id)).toEqual({ rows: 0, ids: 0 });
  });

  it('refuses an oversized body on the registry and admin routes before reading it whole, streamed or declared', async () => {
    const p = await createProject();
    const huge = new Uint8Array(8 * 1024 * 1024).fill(0x61);
    huge.set(new TextEncoder().encode('{"name":"'), 0);
    for (const { method, path, headers } of jsonRoutes(p).filter((r) => r.path.startsWith('/v1/') || r.path.startsWith('/admin/'))) {
      const declared = await SELF.fetch(`http://gw${path}`, { method, headers, body: huge });
      // An operator answer is never cached, a refusal included.
      if (path.startsWith('/admin/')) expect(declared.headers.get('cache-control'), path).toBe('no-store');
      expect((await expectCoded(declared, 413, 'payload_too_large')).error.details).toEqual({ limitBytes: 1024 * 1024 });
      // Without a length (chunked): refused once the first MiB has come in.
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent >= huge.length) return controller.close();
          controller.enqueue(huge.subarray(sent, sent + 64 * 1024));
          sent += 64 * 1024;
        },
      });
      await expectCoded(await SELF.fetch(`http://gw${path}`, { method, headers, body: stream, duplex: 'half' } as RequestInit), 413, 'payload_too_large');
    }
    // A body within the limit still reaches its route.
    const vehicle = await SELF.fetch('http://gw/v1/devices/van-1', { method: 'PUT', headers: p.headers, body: JSON.stringify({ name: 'Van 1' }) });
    expect(vehicle.status).toBe(200);
  });

  it('refuses text with an unpaired surrogate on the registry and project routes instead of storing it changed', async () => {
    const p = await createProject();
    for (const [path, method, headers, body] of [
      ['/v1/devices/van-2', 'PUT', p.headers, '{"name":"\\ud800"}'],
      ['/v1/devices/van-2', 'PUT', p.headers, '{"plate":"x\\udc00y"}'],
      ['/admin/projects', 'POST', admin, '{"name":"\\ud800x"}'],
    ] as const) {
      const res = await SELF.fetch(`http://gw${path}`, { method, headers, body });
      const err = await expectCoded(res, 400, 'invalid_request');
      expect(JSON.stringify(err), path).toMatch(/unpaired UTF-16 surrogate/);
    }
    // A well-formed pair (an emoji) is text like any other.
    expect((await SELF.fetch('http://gw/v1/devices/van-2', { method: 'PUT', headers: p.headers, body: '{"name":"Van \\ud83d\\ude90"}' })).status).toBe(200);
    const devices = await getJson<{ devices: Array<{ deviceId: string; name: string | null }> }>(p, '/v1/devices');
    expect(devices.body.devices.find((d) => d.deviceId === 'van-2')?.name).toBe('Van \u{1F690}');
  });

  it('refuses per row a number beyond a double (read as Infinity, it would be stored as null), on /track and in batches', async () => {
    const p = await createProject();
    const res = await SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: '{"type":"track","payload":{"name":"m","properties":{"__deviceId":"inf","v":1e400}}}' });
    expect(JSON.stringify(await expectCoded(res, 400, 'invalid_event'))).toMatch(/range of a double/);
    const batch = await postBatch(p, '{"events":[{"type":"track","payload":{"name":"m","properties":{"__deviceId":"inf","deep":[{"v":-1e999}]}}},{"type":"track","payload":{"name":"m","properties":{"__deviceId":"inf","v":1.7e308}}}]}');
    const body = (await batch.json()) as BatchResult;
    expect([body.accepted, body.rejected.map((r) => [r.index, r.reason])]).toEqual([1, [[0, 'validation']]]);
  });

  it('refuses per row a row nested past what can be stored, beside its payload, and stores the rest (not a 500)', async () => {
    const p = await createProject();
    const deep = `${'['.repeat(50_000)}${']'.repeat(50_000)}`;
    const batch = await postBatch(p, `{"events":[{"type":"track","payload":{"name":"m","properties":{"__deviceId":"deep"}},"x":${deep}},{"type":"track","payload":{"name":"m","properties":{"__deviceId":"deep"}}}]}`);
    expect(batch.status).toBe(202);
    const body = (await batch.json()) as BatchResult;
    expect([body.accepted, body.rejected.map((r) => [r.index, r.reason, r.retryable])]).toEqual([1, [[0, 'validation', false]]]);
    // workerd writes even this depth out (then it is over the 32 KB row limit); a runtime with a
    // smaller stack throws instead, which is refused per row too.
    expect(body.rejected[0]!.error).toMatch(/nested too deeply|larger than 32768 bytes/);
  });

  it('refuses a counter step too large to add up, so a profile never reads an overflowed sum back as 0', async () => {
    const p = await createProject();
    const step = (value: number, profileId = 'ovf') => ({ type: 'increment', payload: { profileId, property: 'n', value } });
    await expectCoded(await SELF.fetch('http://gw/track', { method: 'POST', headers: p.headers, body: JSON.stringify(step(1e308)) }), 400, 'invalid_event');
    const batch = (await (await postBatch(p, { events: [step(-1e300), step(Number.MAX_SAFE_INTEGER, 'big'), step(1000), step(2)] })).json()) as BatchResult;
    expect(batch.accepted).toBe(3);
    expect(batch.rejected.map((r) => r.reason)).toEqual(['validation']);
    const profile = await waitUntil(
      () => getJson<{ properties: Record<string, unknown> }>(p, '/v1/profiles/ovf'),
      (r) => r.status === 200 && r.body.properties.n === 1002,
    );
    expect(profile.body.properties).toEqual({ n: 1002 });
  });

  it('clamps far-future times to receipt and refuses the year 3000 as nothing else', async () => {
    const p = await createProject();
    const before = Date.now();
    const res = await postBatch(p, { events: [trackEvent('future', { __deviceId: 'future-1', __timestamp: '3000-01-01T00:00:00Z' })] });
    expect(((await res.json()) as BatchResult).accepted).toBe(1);
    const events = await waitUntil(
      () => getJson<{ events: Array<{ name: string; createdAt: string }> }>(p, '/v1/events?deviceId=future-1'),
      (r) => r.body.events.some((e) => e.name === 'future'),
    );
    const stored = Date.parse(events.body.events.find((e) => e.name === 'future')!.createdAt);
    expect(stored).toBeGreaterThanOrEqual(before);
    expect(stored).toBeLessThanOrEqual(Date.now());
  });
});

describe('failures that are not the client\'s', () => {
  it('answers reads 503 storage_unavailable with Retry-After while ClickHouse is down, and at once after it is back', async () => {
    const p = await createProject();
    const ok = await postBatch(p, { events: [{ type: 'identify', payload: { profileId: 'prof-1', firstName: 'A', properties: { __deviceId: 'down-1' } } }] });
    expect(((await ok.json()) as BatchResult).accepted).toBe(1);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    // A pooled keep-alive connection exists now; cutting ClickHouse kills it.
    expect((await getJson(p, '/v1/events')).status).toBe(200);
    await setClickHouse('down');
    for (const path of ['/v1/events', '/v1/sessions', '/v1/profiles/prof-1', '/v1/devices/down-1']) {
      const res = await SELF.fetch(`http://gw${path}`, { headers: p.headers });
      const text = await res.text();
      expect(res.status, `${path}: ${text}`).toBe(503);
      expect(res.headers.get('retry-after'), path).toMatch(/^\d+$/);
      expect((JSON.parse(text) as ErrorBody).error.code, path).toBe('storage_unavailable');
      // No text of ClickHouse's or of the connection reaches the client.
      expect(text, path).not.toMatch(/clickhouse|network|connection|127\.0\.0\.1/i);
    }
    await setClickHouse('up');
    // The first read after the outage meets the dead pooled connection and is retried once.
    for (const path of ['/v1/events', '/v1/sessions', '/v1/profiles/prof-1', '/v1/devices/down-1']) {
      expect((await getJson(p, path)).status, path).toBe(200);
    }
  });

  it('answers 503 misconfigured for a bad setting, naming it only in the log', async () => {
    const p = await createProject();
    const badEnv = { ...env, CLICKHOUSE_URL: 'not a url', SESSION_GAP_MS: 'soon' };
    const res = await worker.fetch(
      new Request('http://gw/track/batch', { method: 'POST', headers: p.headers, body: JSON.stringify({ events: [trackEvent('x')] }) }),
      badEnv,
      createExecutionContext(),
    );
    const body = await expectCoded(res, 503, 'misconfigured');
    expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(body.error.message).not.toMatch(/CLICKHOUSE_URL|not a url/);
    // The operator learns which settings: /admin/health names them.
    const health = await worker.fetch(new Request('http://gw/admin/health', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }), badEnv, createExecutionContext());
    expect(health.status).toBe(503);
    const report = (await health.json()) as { ok: boolean; misconfigured: string[]; errors: string[] };
    expect(report.ok).toBe(false);
    expect(report.misconfigured).toEqual(['CLICKHOUSE_URL', 'SESSION_GAP_MS']);
  });

  it('logs a failed request on the Traccar path-token route without the token', async () => {
    const p = await createProject();
    const badEnv = { ...env, CLICKHOUSE_URL: 'not a url' };
    const logged: string[] = [];
    const spy = vi.spyOn(console, 'error').mockImplementation((...args: unknown[]) => void logged.push(args.map(String).join(' ')));
    try {
      const path = `/ingest/traccar/${encodeURIComponent(`${p.clientId}:${p.clientSecret}`)}?id=t-1&lat=1&lon=2`;
      await expectCoded(await worker.fetch(new Request(`http://gw${path}`), badEnv, createExecutionContext()), 503, 'misconfigured');
    } finally {
      spy.mockRestore();
    }
    const line = logged.find((l) => l.includes('misconfigured'));
    expect(line).toContain('"path":"/ingest/traccar/<token>"');
    expect(logged.join('\n')).not.toContain(p.clientSecret);
  });
});
