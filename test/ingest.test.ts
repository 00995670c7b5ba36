// The ingestion contract: status codes, per-row validation, limits, gzip, auth, skew and replays.
import { env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, ch, countEvents, createProject, getJson, postBatch, trackEvent, waitUntil, type TestProject } from './helpers';

type BatchResult = { accepted: number; duplicates: number; rejected: Array<{ index: number; reason: string; error: string; retryable: boolean }> };
type EventsBody = { events: Array<{ id: string; name: string; deviceId: string; sessionId: string; createdAt: string; receivedAt: string; syncedAt: string | null; properties: Record<string, unknown> }> };

async function gzip(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function deviceEvents(deviceId: string, n: number, baseMs = Date.now() - 10 * 60_000) {
  return Array.from({ length: n }, (_, i) =>
    trackEvent('reading', { __deviceId: deviceId, __timestamp: new Date(baseMs + i * 100).toISOString(), seq: i, temp: 20 + (i % 7) }),
  );
}

async function eventsOf(p: TestProject, deviceId: string, expected: number) {
  return waitUntil(
    () => getJson<EventsBody>(p, `/v1/events?deviceId=${encodeURIComponent(deviceId)}&limit=1000`),
    (r) => r.body.events.filter((e) => !e.name.startsWith('session_')).length >= expected,
  );
}

describe('POST /track/batch', () => {
  it('accepts 1997 of 2000 rows and names exactly the 3 malformed indices', async () => {
    const p = await createProject();
    const events: unknown[] = deviceEvents('bulk-1', 2000);
    events[17] = { type: 'track', payload: { properties: { __deviceId: 'bulk-1' } } }; // no name
    events[1024] = { type: 'track', payload: { name: 'x', properties: { __timestamp: 'yesterday-ish' } } };
    events[1999] = 'not an event';
    const res = await postBatch(p, { events });
    expect(res.status).toBe(202);
    const body = (await res.json()) as BatchResult;
    expect(body.accepted).toBe(1997);
    expect(body.duplicates).toBe(0);
    expect(body.rejected.map((r) => r.index)).toEqual([17, 1024, 1999]);
    for (const r of body.rejected) {
      expect(r.reason).toBe('validation');
      expect(r.retryable).toBe(false);
      expect(r.error.length).toBeGreaterThan(0);
    }
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1997);
  });

  it('refuses alias per row as unsupported and __proto__ / deep nesting as validation errors', async () => {
    const p = await createProject();
    let deep: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 20; i++) deep = { deep };
    const res = await postBatch(
      p,
      `{"events":[{"type":"alias","payload":{"profileId":"a","alias":"b"}},` +
        `{"type":"track","payload":{"name":"p","properties":{"__proto__":{"admin":true}}}},` +
        `${JSON.stringify(trackEvent('deep', { deep }))},` +
        `{"type":"track","payload":{"name":"ok","properties":{"__deviceId":"d-hostile"}}}]}`,
    );
    expect(res.status).toBe(202);
    const body = (await res.json()) as BatchResult;
    expect(body.accepted).toBe(1);
    expect(body.rejected.map((r) => [r.index, r.reason])).toEqual([
      [0, 'unsupported'],
      [1, 'validation'],
      [2, 'validation'],
    ]);
    expect(body.rejected[1]!.error).toContain('__proto__');
    expect(({} as Record<string, unknown>).admin).toBeUndefined();
  });

  it('accepts a gzip body and refuses a truncated one with 400', async () => {
    const p = await createProject();
    const text = JSON.stringify({ events: deviceEvents('gz-1', 50) });
    const packed = await gzip(text);
    const ok = await postBatch(p, packed, { 'content-encoding': 'gzip' });
    expect(ok.status).toBe(202);
    expect(((await ok.json()) as BatchResult).accepted).toBe(50);

    const truncated = await postBatch(p, packed.slice(0, Math.floor(packed.length / 2)), { 'content-encoding': 'gzip' });
    expect(truncated.status).toBe(400);
    expect(((await truncated.json()) as { error: { code: string } }).error.code).toBe('invalid_gzip');
  });

  it('answers 413 naming the limit for 2001 events and for 10 MB + 1 byte, even gzipped', async () => {
    const p = await createProject();
    const tooMany = await postBatch(p, { events: deviceEvents('big-1', 2001) });
    expect(tooMany.status).toBe(413);
    const body = (await tooMany.json()) as { error: { code: string; details: { limitEvents: number } } };
    expect(body.error.code).toBe('too_many_events');
    expect(body.error.details.limitEvents).toBe(2000);

    const limit = 10 * 1024 * 1024;
    const prefix = '{"events":[],"pad":"';
    const big = prefix + 'x'.repeat(limit + 1 - prefix.length - 2) + '"}';
    expect(big.length).toBe(limit + 1);
    const tooBig = await postBatch(p, big);
    expect(tooBig.status).toBe(413);
    const bigBody = (await tooBig.json()) as { error: { code: string; details: { limitBytes: number } } };
    expect(bigBody.error.code).toBe('payload_too_large');
    expect(bigBody.error.details.limitBytes).toBe(limit);

    const bomb = await postBatch(p, await gzip(big), { 'content-encoding': 'gzip' });
    expect(bomb.status).toBe(413);

    const exactly = prefix + 'x'.repeat(limit - prefix.length - 2) + '"}';
    expect((await postBatch(p, exactly)).status).toBe(202);
  });

  it('answers 400 for a body that is not JSON or not the shape, 415 for other media types', async () => {
    const p = await createProject();
    const notJson = await postBatch(p, '{"events": [');
    expect(notJson.status).toBe(400);
    expect(((await notJson.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    const deepJson = await postBatch(p, '['.repeat(200_000) + ']'.repeat(200_000));
    expect(deepJson.status).toBe(400);
    const wrongShape = await postBatch(p, { events: 'nope' });
    expect(wrongShape.status).toBe(400);
    expect(((await wrongShape.json()) as { error: { code: string } }).error.code).toBe('invalid_batch');
    const badSentAt = await postBatch(p, { events: [], sentAt: 'tuesday' });
    expect(badSentAt.status).toBe(400);
    const xml = await postBatch(p, '<events/>', { 'content-type': 'application/xml' });
    expect(xml.status).toBe(415);
    const brotli = await postBatch(p, 'abc', { 'content-encoding': 'br' });
    expect(brotli.status).toBe(415);
  });

  it('answers 401 for a wrong secret, an unknown client and missing headers', async () => {
    const p = await createProject();
    const wrong = await postBatch(p, { events: [] }, { 'openpanel-client-secret': 'sec_wrong' });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    expect((await postBatch(p, { events: [] }, { 'openpanel-client-id': crypto.randomUUID() })).status).toBe(401);
    const bare = await SELF.fetch('http://gw/track/batch', { method: 'POST', body: '{"events":[]}' });
    expect(bare.status).toBe(401);
  });

  it('corrects clock skew from sentAt, clamps the future and refuses events older than 5 days', async () => {
    const p = await createProject();
    const now = Date.now();
    const stamp = now - 5 * 60_000;
    const res = await postBatch(p, {
      sentAt: new Date(now + 60 * 60_000).toISOString(), // the device clock runs 1 hour ahead
      events: [trackEvent('skewed', { __deviceId: 'skew-1', __timestamp: new Date(stamp).toISOString() })],
    });
    expect(res.status).toBe(202);
    const future = await postBatch(p, { events: [trackEvent('future', { __deviceId: 'skew-1', __timestamp: now + 2 * 60_000 })] });
    expect(((await future.json()) as BatchResult).accepted).toBe(1);
    const old = await postBatch(p, {
      events: [trackEvent('ancient', { __deviceId: 'skew-1', __timestamp: new Date(now - 6 * 24 * 3600_000).toISOString() })],
    });
    const oldBody = (await old.json()) as BatchResult;
    expect(oldBody.accepted).toBe(0);
    expect(oldBody.rejected).toEqual([{ index: 0, reason: 'too_old', error: expect.any(String), retryable: false }]);

    const { body } = await eventsOf(p, 'skew-1', 2);
    const skewed = body.events.find((e) => e.name === 'skewed')!;
    const shift = stamp - Date.parse(skewed.createdAt);
    expect(Math.abs(shift - 60 * 60_000)).toBeLessThan(5_000); // stored ~1 hour earlier than __timestamp
    const clamped = body.events.find((e) => e.name === 'future')!;
    expect(clamped.createdAt).toBe(clamped.receivedAt);
    expect(skewed.syncedAt).not.toBeNull();
  });

  it('stores a replayed batch once: the read API and ClickHouse agree', async () => {
    const p = await createProject();
    const events = [
      ...deviceEvents('replay-1', 30),
      trackEvent('keyed', { __deviceId: 'replay-1', __eventId: 'client-key-1' }),
    ];
    const first = (await (await postBatch(p, { events })).json()) as BatchResult;
    expect(first).toEqual({ accepted: 31, duplicates: 0, rejected: [] });
    const second = (await (await postBatch(p, { events, sentAt: new Date().toISOString() })).json()) as BatchResult;
    expect(second).toEqual({ accepted: 0, duplicates: 31, rejected: [] });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 31);
    // give a stray second copy time to arrive before asserting there is none
    const sent = await waitUntil(() => getJson<EventsBody>(p, '/v1/events?deviceId=replay-1&limit=1000'), (r) => r.body.events.length >= 31);
    expect(sent.body.events.filter((e) => !e.name.startsWith('session_'))).toHaveLength(31);
    expect(await countEvents(p.id)).toEqual({ rows: 31, ids: 31 });
  });
});

describe('POST /track', () => {
  it('answers 200 with deviceId and sessionId, derives a cookieless device id, refuses alias with 400', async () => {
    const p = await createProject();
    const headers = { ...p.headers, 'user-agent': 'driftline-test/1', 'cf-connecting-ip': '203.0.113.7' };
    const send = (body: unknown) => SELF.fetch('http://gw/track', { method: 'POST', headers, body: JSON.stringify(body) });
    const a = await send({ type: 'track', payload: { name: 'open' } });
    expect(a.status).toBe(200);
    const ab = (await a.json()) as { deviceId: string; sessionId: string };
    expect(ab.deviceId).toMatch(/^[0-9a-f]{32}$/);
    expect(ab.sessionId).toMatch(/^[0-9a-f-]{36}$/);
    const b = (await (await send({ type: 'track', payload: { name: 'tap' } })).json()) as { deviceId: string; sessionId: string };
    expect(b).toEqual(ab); // same IP + user agent on the same day: same device, same live session

    const alias = await send({ type: 'alias', payload: { profileId: 'a', alias: 'b' } });
    expect(alias.status).toBe(400);
    expect(((await alias.json()) as { error: { code: string } }).error.code).toBe('unsupported');
    const invalid = await send({ type: 'track', payload: {} });
    expect(invalid.status).toBe(400);
    expect(((await invalid.json()) as { error: { code: string } }).error.code).toBe('invalid_event');
  });

  it('answers 429 with Retry-After once a client spends its request budget', async () => {
    const p = await createProject();
    let limited: Response | undefined;
    // Past the test budget (120 per minute per client; vitest.config.mts), in parallel waves.
    for (let wave = 0; wave < 40 && !limited; wave++) {
      const responses = await Promise.all(Array.from({ length: 10 }, () => postBatch(p, { events: [] })));
      for (const res of responses) {
        if (res.status === 429) limited ??= res;
        else {
          expect(res.status).toBe(202);
          await res.body?.cancel();
        }
      }
    }
    expect(limited).toBeDefined();
    expect(Number(limited!.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await limited!.json()) as { error: { code: string } }).error.code).toBe('rate_limited');
  });
});

describe('read API and admin', () => {
  it('never shows one project the events of another', async () => {
    const a = await createProject('a');
    const b = await createProject('b');
    await postBatch(a, { events: deviceEvents('shared-device', 3) });
    await postBatch(b, { events: deviceEvents('shared-device', 2) });
    const ra = await eventsOf(a, 'shared-device', 3);
    const rb = await eventsOf(b, 'shared-device', 2);
    const own = (r: typeof ra) => r.body.events.filter((e) => e.name === 'reading');
    expect(own(ra)).toHaveLength(3);
    expect(own(rb)).toHaveLength(2);
    const idsA = new Set(own(ra).map((e) => e.id));
    expect(own(rb).some((e) => idsA.has(e.id))).toBe(false);
    const sessionsOf = (p: TestProject) =>
      waitUntil(() => getJson<{ sessions: Array<{ id: string }> }>(p, '/v1/sessions?deviceId=shared-device'), (r) => r.body.sessions.length > 0);
    const sa = await sessionsOf(a);
    const sb = await sessionsOf(b);
    expect(sa.body.sessions).toHaveLength(1);
    expect(sb.body.sessions).toHaveLength(1);
    expect(sa.body.sessions[0]!.id).not.toBe(sb.body.sessions[0]!.id);
  });

  it('validates read queries and admin credentials', async () => {
    const p = await createProject();
    expect((await getJson(p, '/v1/events?limit=0')).status).toBe(400);
    expect((await getJson(p, '/v1/events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z')).status).toBe(400);
    // Across all devices a window spans at most 92 days; one device's may be as wide as it likes.
    for (const route of ['events', 'sessions']) {
      const wide = await getJson<{ error: { code: string; details: { maxWindowMs: number } } }>(p, `/v1/${route}?since=2025-01-01T00:00:00Z&until=2026-01-01T00:00:00Z`);
      expect(wide.status).toBe(400);
      expect(wide.body.error.code).toBe('window_too_large');
      expect(wide.body.error.details.maxWindowMs).toBe(92 * 24 * 3600 * 1000);
      expect((await getJson(p, `/v1/${route}?since=2025-10-01T00:00:00Z&until=2026-01-01T00:00:00Z`)).status).toBe(200);
      expect((await getJson(p, `/v1/${route}?deviceId=d1&since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z`)).status).toBe(200);
    }
    const noToken = await SELF.fetch('http://gw/admin/projects', { method: 'POST', body: '{"name":"x"}' });
    expect(noToken.status).toBe(401);
    const wrongToken = await SELF.fetch('http://gw/admin/projects', {
      method: 'POST',
      headers: { authorization: 'Bearer nope', 'content-type': 'application/json' },
      body: '{"name":"x"}',
    });
    expect(wrongToken.status).toBe(401);
    const badBody = await SELF.fetch('http://gw/admin/projects', {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: '{"name":""}',
    });
    expect(badBody.status).toBe(400);
    expect(((await badBody.json()) as { error: { code: string } }).error.code).toBe('invalid_request');
    expect((await SELF.fetch('http://gw/nowhere')).status).toBe(404);
  });

  it('stores the geo of the request and the __ip override', async () => {
    const p = await createProject();
    await postBatch(p, { events: [trackEvent('geo', { __deviceId: 'geo-1', __ip: '198.51.100.9' })] });
    await eventsOf(p, 'geo-1', 1);
    const [row] = await ch().query<{ ip: string; country: string }>(
      'SELECT ip, country FROM events WHERE project_id = {p:String} AND device_id = {d:String}',
      { p: p.id, d: 'geo-1' },
    );
    expect(row!.ip).toBe('198.51.100.9');
    expect(row!.country).toBe(''); // an overridden IP is not geo-located by the edge
    const stored = env.CLICKHOUSE_URL;
    expect(stored).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });
});
