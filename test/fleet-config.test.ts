// FLEET_OFFLINE_AFTER_S: how long without a fix before a vehicle shows `offline` in the live view.
import { createExecutionContext, createScheduledController, env } from 'cloudflare:test';
import { expect, it } from 'vitest';
import worker, { app } from '../src/index';
import type { Fix } from '../src/fleet/position';
import { storeFixes } from './fleet-fixtures';
import { createProject, postBatch, waitUntil, type TestProject } from './helpers';

/** Three fixes 20 s apart, stored straight into ClickHouse (as a consumer that went away left them). */
/** The live list as the project's client reads it. */
async function liveVehicles(p: TestProject): Promise<Array<{ deviceId: string; lon: number }>> {
  const res = await app.fetch(new Request('http://gw/v1/fleet/live', { headers: p.headers }), env, createExecutionContext());
  return ((await res.json()) as { vehicles: Array<{ deviceId: string; lon: number }> }).vehicles;
}

/** The every-minute cron (the watchdog), run once. */
const watchdog = () => worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: '* * * * *' }), env, createExecutionContext()).catch(() => {});

const threeFixes = (at: number): Fix[] => [0, 1, 2].map((i) => ({ id: crypto.randomUUID(), atMs: at + i * 20_000, lat: 50.1, lon: 8.6 + i * 0.001, speedKmh: 30 }));

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

it('recomputes, from the cron, a span left pending when no recompute followed the insert', async () => {
  const { markPending } = await import('../src/fleet/recompute');
  const p = await createProject('fleet-orphan');
  const at = Date.now() - 30 * 60_000;
  // Positions stored, their span marked pending, and then the consumer went away before recomputing.
  await storeFixes(p.id, 'van-9', threeFixes(at));
  await markPending(env.DB, [{ projectId: p.id, deviceId: 'van-9', fromMs: at, toMs: at + 40_000 }], Date.now() - 5 * 60_000);
  const liveNow = () => liveVehicles(p);
  expect(await liveNow()).toEqual([]);
  await watchdog();
  const vehicles = await liveNow();
  expect(vehicles.map((v) => v.deviceId)).toEqual(['van-9']);
  expect(vehicles[0]!.lon).toBeCloseTo(8.602, 6);
  const left = await env.DB.prepare('SELECT pending_from_ms FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'van-9').first<{ pending_from_ms: number | null }>();
  expect(left!.pending_from_ms).toBeNull();
});

it('leaves a device a consumer leased before its ack to that lease, then recomputes it from the cron once the lease ran out', async () => {
  const { claimPositions } = await import('../src/fleet/recompute');
  const p = await createProject('fleet-claimed');
  const at = Date.now() - 30 * 60_000;
  await storeFixes(p.id, 'van-8', threeFixes(at));
  // The consumer marked and leased the device before its ack, then went away before recomputing.
  const [claim] = await claimPositions(env.DB, [{ projectId: p.id, deviceId: 'van-8', fromMs: at, toMs: at + 40_000 }]);
  expect(claim!.held.map((h) => h.deviceId)).toEqual(['van-8']);
  const liveNow = () => liveVehicles(p);
  const cron = watchdog;
  const cursor = () => env.DB.prepare('UPDATE fleet_cursors SET updated_at = ?3 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'van-8', Date.now() - 5 * 60_000).run();
  // Long pending, but leased: the watchdog leaves it to the holder.
  await cursor();
  await cron();
  expect(await liveNow()).toEqual([]);
  // The lease ran out: the watchdog recomputes it.
  await env.DB.prepare('UPDATE fleet_cursors SET lease_until = ?3 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'van-8', Date.now() - 1000).run();
  await cron();
  const vehicles = await liveNow();
  expect(vehicles.map((v) => v.deviceId)).toEqual(['van-8']);
  expect(vehicles[0]!.lon).toBeCloseTo(8.602, 6);
});
