// The real OpenPanel SDK, unchanged, pointed at the gateway.
import { OpenPanel } from '@openpanel/sdk';
import { SELF } from 'cloudflare:test';
import { afterEach, describe, expect, it } from 'vitest';
import { createProject, getJson, waitUntil } from './helpers';

const realFetch = globalThis.fetch;

afterEach(() => {
  globalThis.fetch = realFetch;
});

describe('@openpanel/sdk', () => {
  it('tracks an event that the read API shows with the deviceId and sessionId the SDK received', async () => {
    const p = await createProject('sdk');
    // The SDK calls the global fetch; requests to the gateway's host go to the Worker under test.
    globalThis.fetch = ((input: RequestInfo | URL, init?: RequestInit) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      if (url.host !== 'gateway.test') return realFetch(input, init);
      const { keepalive: _keepalive, ...rest } = (init ?? {}) as RequestInit & { keepalive?: boolean };
      return SELF.fetch(url.toString(), rest);
    }) as typeof fetch;

    const op = new OpenPanel({ clientId: p.clientId, clientSecret: p.clientSecret, apiUrl: 'http://gateway.test' });
    await op.track('checkout_started', { plan: 'pro', __deviceId: 'sdk-device-1' });
    const deviceId = op.getDeviceId();
    const sessionId = op.getSessionId();
    expect(deviceId).toBe('sdk-device-1');
    expect(sessionId).toMatch(/^[0-9a-f-]{36}$/);

    const { body } = await waitUntil(
      () => getJson<{ events: Array<{ name: string; deviceId: string; sessionId: string; properties: Record<string, unknown> }> }>(p, `/v1/events?deviceId=${deviceId}`),
      (r) => r.body.events.some((e) => e.name === 'checkout_started'),
    );
    const event = body.events.find((e) => e.name === 'checkout_started')!;
    expect(event.deviceId).toBe(deviceId);
    expect(event.sessionId).toBe(sessionId);
    expect(event.properties.plan).toBe('pro');
  });

  it('gives up on a wrong secret, as it does on any 401', async () => {
    const p = await createProject('sdk-bad');
    let status = 0;
    globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
      const { keepalive: _keepalive, ...rest } = (init ?? {}) as RequestInit & { keepalive?: boolean };
      const res = await SELF.fetch(String(input), rest);
      status = res.status;
      return res;
    }) as typeof fetch;
    const op = new OpenPanel({ clientId: p.clientId, clientSecret: 'sec_wrong', apiUrl: 'http://gateway.test' });
    expect(await op.track('nope')).toBeNull();
    expect(status).toBe(401);
  });
});
