// FLEET_OFFLINE_AFTER_S: how long without a fix before a vehicle shows `offline` in the live view.
import { createExecutionContext, env } from 'cloudflare:test';
import { expect, it } from 'vitest';
import { app } from '../src/index';
import { createProject, postBatch, waitUntil } from './helpers';

it('reports a vehicle offline after FLEET_OFFLINE_AFTER_S without a fix, and rejects a bad value as misconfigured', async () => {
  const p = await createProject('fleet-offline');
  const at = Date.now() - 10 * 60_000; // ten minutes ago: parked with the default of an hour
  const fix = { type: 'track', payload: { name: 'position', properties: { __deviceId: 'van-1', __eventId: 'van-1-fix', __timestamp: at, lat: 48.1, lon: 11.5, speed: 0 } } };
  expect(((await (await postBatch(p, { events: [fix] })).json()) as { accepted: number }).accepted).toBe(1);
  const live = async (vars: Record<string, string>) => {
    const res = await app.fetch(new Request('http://gw/v1/fleet/live', { headers: p.headers }), { ...env, ...vars }, createExecutionContext());
    return { status: res.status, body: (await res.json()) as { vehicles?: Array<{ deviceId: string; status: string }>; error?: { code: string } } };
  };
  const byDefault = await waitUntil(() => live({}), (r) => (r.body.vehicles ?? []).length === 1);
  expect(byDefault.body.vehicles![0]).toMatchObject({ deviceId: 'van-1', status: 'parked' });
  expect((await live({ FLEET_OFFLINE_AFTER_S: '300' })).body.vehicles![0]).toMatchObject({ deviceId: 'van-1', status: 'offline' });
  const bad = await live({ FLEET_OFFLINE_AFTER_S: 'soon' });
  expect(bad.status).toBe(503);
  expect(bad.body.error!.code).toBe('misconfigured');
});
