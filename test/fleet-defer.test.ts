// The ingest consumer defers the fleet recompute of a batch that has more messages queued behind it,
// and recomputes the devices it deferred once the queue drains (or after FLEET_DEFER_MAX_MS).
import { createExecutionContext, createMessageBatch, env, getQueueResult } from 'cloudflare:test';
import { expect, it } from 'vitest';
import worker, { app } from '../src/index';
import { deferPositions, FLEET_DEFER_MAX_MS } from '../src/fleet/recompute';
import type { Fix } from '../src/fleet/position';
import type { IngestMessage } from '../src/pipeline/messages';
import { storeFixes } from './fleet-fixtures';
import { createProject, NO_REF_OR_GEO, type TestProject } from './helpers';

const fixes = (at: number, n: number, lon0: number): Fix[] => Array.from({ length: n }, (_, i) => ({ id: crypto.randomUUID(), atMs: at + i * 20_000, lat: 50.1, lon: lon0 + i * 0.001, speedKmh: 30 }));

function message(projectId: string, deviceId: string, fs: readonly Fix[]): IngestMessage {
  const now = Date.now();
  return {
    events: fs.map((f) => ({
      id: f.id, project_id: projectId, device_id: deviceId, session_id: '', profile_id: '', type: 'track', name: 'position',
      created_at_ms: f.atMs, received_at_ms: now, synced_at_ms: 0, properties: JSON.stringify({ lat: f.lat, lon: f.lon, speed: f.speedKmh }),
      ...NO_REF_OR_GEO,
    })),
    payloads: [],
    sessions: [],
  };
}

/** One delivery of the ingest queue, with `backlog` messages said to be queued behind it. */
async function deliver(bodies: IngestMessage[], backlog: number) {
  const batch = createMessageBatch<IngestMessage>('driftline-ingest', bodies.map((body, i) => ({ id: `m-${crypto.randomUUID()}-${i}`, timestamp: new Date(), attempts: 1, body })));
  batch.metadata.metrics.backlogCount = backlog;
  const ctx = createExecutionContext();
  await worker.queue(batch, env, ctx);
  return getQueueResult(batch, ctx);
}

async function live(p: TestProject): Promise<Map<string, number>> {
  const res = await app.fetch(new Request('http://gw/v1/fleet/live', { headers: p.headers }), env, createExecutionContext());
  const { vehicles } = (await res.json()) as { vehicles: Array<{ deviceId: string; lon: number }> };
  return new Map(vehicles.map((v) => [v.deviceId, v.lon]));
}

async function objectLive(p: TestProject, deviceId: string): Promise<{ lon: number } | null> {
  const res = await app.fetch(new Request(`http://gw/v1/devices/${deviceId}`, { headers: p.headers }), env, createExecutionContext());
  return ((await res.json()) as { live: { lon: number } | null }).live;
}

const cursorOf = (p: TestProject, deviceId: string) =>
  env.DB.prepare('SELECT pending_from_ms AS pending, lease_until AS lease FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2')
    .bind(p.id, deviceId)
    .first<{ pending: number | null; lease: number }>();

it('defers the recompute while messages wait behind a batch, and recomputes every deferred device once the queue drains', async () => {
  const p = await createProject('fleet-defer');
  const at = Date.now() - 30 * 60_000;
  const a1 = fixes(at, 3, 8.6);
  const a2 = fixes(at + 60_000, 3, 8.603);
  // Two batches of van-a with more queued behind them: stored and acked, marked pending, not recomputed.
  expect((await deliver([message(p.id, 'van-a', a1)], 5)).ackAll).toBe(true);
  expect((await deliver([message(p.id, 'van-a', a2)], 2)).ackAll).toBe(true);
  expect(await cursorOf(p, 'van-a')).toMatchObject({ pending: at, lease: 0 });
  expect(await live(p)).toEqual(new Map());
  // The queue drains with a batch of another vehicle: van-a is recomputed with it, over both batches.
  const b = fixes(at, 3, 9.1);
  expect((await deliver([message(p.id, 'van-b', b)], 0)).ackAll).toBe(true);
  const vehicles = await live(p);
  expect([...vehicles.keys()].sort()).toEqual(['van-a', 'van-b']);
  expect(vehicles.get('van-a')).toBeCloseTo(8.605, 6);
  expect(vehicles.get('van-b')).toBeCloseTo(9.102, 6);
  expect((await objectLive(p, 'van-a'))!.lon).toBeCloseTo(8.605, 6);
  expect(await cursorOf(p, 'van-a')).toMatchObject({ pending: null, lease: 0 });
  expect(await cursorOf(p, 'van-b')).toMatchObject({ pending: null, lease: 0 });
});

it(`recomputes a device deferred for ${FLEET_DEFER_MAX_MS / 1000} s even while the backlog lasts`, async () => {
  const p = await createProject('fleet-defer-bound');
  const at = Date.now() - 30 * 60_000;
  // van-c was deferred a while ago (its batch had a backlog behind it) and sent nothing since.
  const c = fixes(at, 3, 8.6);
  await storeFixes(p.id, 'van-c', c);
  await deferPositions(env.DB, [{ projectId: p.id, deviceId: 'van-c', fromMs: c[0]!.atMs, toMs: c[2]!.atMs }], Date.now() - FLEET_DEFER_MAX_MS - 1000);
  // The backlog goes on: van-d's batch is deferred, van-c is recomputed now.
  expect((await deliver([message(p.id, 'van-d', fixes(at, 3, 9.1))], 40)).ackAll).toBe(true);
  const vehicles = await live(p);
  expect([...vehicles.keys()]).toEqual(['van-c']);
  expect(vehicles.get('van-c')).toBeCloseTo(8.602, 6);
  expect(await cursorOf(p, 'van-d')).toMatchObject({ lease: 0 });
  expect((await cursorOf(p, 'van-d'))!.pending).not.toBeNull();
  // Drained: van-d too.
  expect((await deliver([message(p.id, 'van-e', fixes(at, 3, 7.1))], 0)).ackAll).toBe(true);
  expect([...(await live(p)).keys()].sort()).toEqual(['van-c', 'van-d', 'van-e']);
});
