// The ingest consumer defers the fleet recompute of a batch that has more messages queued behind it;
// deferred devices are recomputed by the next batch once the queue drains (or after
// FLEET_DEFER_MAX_MS), whichever consumer takes it, or by the watchdog.
import { createExecutionContext, createMessageBatch, createScheduledController, env, getQueueResult } from 'cloudflare:test';
import { expect, it } from 'vitest';
import worker, { app } from '../src/index';
import { claimPositions, FLEET_DEFER_MAX_MS, recomputeDevice } from '../src/fleet/recompute';
import { ch } from './helpers';
import type { Fix } from '../src/fleet/position';
import type { IngestMessage } from '../src/pipeline/messages';
import { currentFleetRows, positionProperties, shuffledWithDuplicates, storeFixes, syntheticDay } from './fleet-fixtures';
import { createProject, NO_REF_OR_GEO, type TestProject } from './helpers';

const fixes = (at: number, n: number, lon0: number): Fix[] => Array.from({ length: n }, (_, i) => ({ id: crypto.randomUUID(), atMs: at + i * 20_000, lat: 50.1, lon: lon0 + i * 0.001, speedKmh: 30 }));

function message(projectId: string, deviceId: string, fs: readonly Fix[]): IngestMessage {
  const now = Date.now();
  return {
    events: fs.map((f) => ({
      id: f.id, project_id: projectId, device_id: deviceId, session_id: '', profile_id: '', type: 'track', name: 'position',
      created_at_ms: f.atMs, received_at_ms: now, synced_at_ms: 0, properties: JSON.stringify(positionProperties(f)),
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
  env.DB.prepare('SELECT pending_from_ms AS pending, lease_until AS lease, deferred_since AS deferredSince, seq FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2')
    .bind(p.id, deviceId)
    .first<{ pending: number | null; lease: number; deferredSince: number | null; seq: number }>();

/** Marks a device's stored fixes deferred, as a consumer with a backlog did `agoMs` ago. */
async function deferredAgo(p: TestProject, deviceId: string, fs: readonly Fix[], agoMs: number): Promise<void> {
  await storeFixes(p.id, deviceId, fs);
  expect(await claimPositions(env.DB, [{ projectId: p.id, deviceId, fromMs: fs[0]!.atMs, toMs: fs.at(-1)!.atMs }], { defer: true })).toEqual([]);
  const at = Date.now() - agoMs;
  await env.DB.prepare('UPDATE fleet_cursors SET deferred_since = ?3, updated_at = ?3 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, deviceId, at).run();
}

it('defers the recompute while messages wait behind a batch, and recomputes every deferred device once the queue drains', async () => {
  const p = await createProject('fleet-defer');
  const at = Date.now() - 30 * 60_000;
  const a1 = fixes(at, 3, 8.6);
  const a2 = fixes(at + 60_000, 3, 8.603);
  // Two batches of van-a with more queued behind them: stored and acked, marked pending, not recomputed.
  expect((await deliver([message(p.id, 'van-a', a1)], 5)).ackAll).toBe(true);
  const first = (await cursorOf(p, 'van-a'))!;
  expect(first.deferredSince).not.toBeNull();
  await new Promise((r) => setTimeout(r, 5));
  expect((await deliver([message(p.id, 'van-a', a2)], 2)).ackAll).toBe(true);
  // Still deferred since the first batch: a device that keeps sending under a backlog is due in 10 s.
  const deferred = (await cursorOf(p, 'van-a'))!;
  expect(deferred).toMatchObject({ pending: at, lease: 0, deferredSince: first.deferredSince });
  expect(await live(p)).toEqual(new Map());
  // The queue drains with a batch of another vehicle (a backlog no larger than the batch itself
  // counts as none: the figure may include the batch): van-a is recomputed with it.
  const b = fixes(at, 3, 9.1);
  expect((await deliver([message(p.id, 'van-b', b)], 1)).ackAll).toBe(true);
  const vehicles = await live(p);
  expect([...vehicles.keys()].sort()).toEqual(['van-a', 'van-b']);
  expect(vehicles.get('van-a')).toBeCloseTo(8.605, 6);
  expect(vehicles.get('van-b')).toBeCloseTo(9.102, 6);
  expect((await objectLive(p, 'van-a'))!.lon).toBeCloseTo(8.605, 6);
  // One pass over both deferred batches: one lease since.
  expect(await cursorOf(p, 'van-a')).toMatchObject({ pending: null, lease: 0, deferredSince: null, seq: deferred.seq + 1 });
  expect(await cursorOf(p, 'van-b')).toMatchObject({ pending: null, lease: 0 });
});

it(`recomputes a device deferred for ${FLEET_DEFER_MAX_MS / 1000} s even while the backlog lasts, and the watchdog takes one no batch comes for`, async () => {
  const p = await createProject('fleet-defer-bound');
  const at = Date.now() - 30 * 60_000;
  // van-c was deferred a while ago (by some consumer: the record is in D1) and sent nothing since.
  await deferredAgo(p, 'van-c', fixes(at, 3, 8.6), FLEET_DEFER_MAX_MS + 1000);
  // The backlog goes on: van-d's batch is deferred, van-c is recomputed now.
  expect((await deliver([message(p.id, 'van-d', fixes(at, 3, 9.1))], 40)).ackAll).toBe(true);
  const vehicles = await live(p);
  expect([...vehicles.keys()]).toEqual(['van-c']);
  expect(vehicles.get('van-c')).toBeCloseTo(8.602, 6);
  expect(await cursorOf(p, 'van-c')).toMatchObject({ pending: null, deferredSince: null });
  expect(await cursorOf(p, 'van-d')).toMatchObject({ lease: 0 });
  expect((await cursorOf(p, 'van-d'))!.pending).not.toBeNull();
  // Drained: van-d too, taken by a batch of another vehicle.
  expect((await deliver([message(p.id, 'van-e', fixes(at, 3, 7.1))], 0)).ackAll).toBe(true);
  expect([...(await live(p)).keys()].sort()).toEqual(['van-c', 'van-d', 'van-e']);
  // A device deferred past the bound that no batch comes for: the every-minute watchdog takes it
  // (its span was marked just now, too recently for the watchdog's orphan rule alone).
  await deferredAgo(p, 'van-g', fixes(at, 3, 5.1), FLEET_DEFER_MAX_MS + 1000);
  await env.DB.prepare('UPDATE fleet_cursors SET updated_at = ?3 WHERE project_id = ?1 AND device_id = ?2').bind(p.id, 'van-g', Date.now()).run();
  await worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: '* * * * *' }), env, createExecutionContext());
  expect([...(await live(p)).keys()].sort()).toEqual(['van-c', 'van-d', 'van-e', 'van-g']);
});

it('gives the trips, mileage and live position of one recompute of every fix, whichever batches were deferred', async () => {
  const deferredP = await createProject('fleet-defer-day');
  const wholeP = await createProject('fleet-defer-whole');
  const D = Math.floor((Date.now() - 3 * 86_400_000) / 86_400_000) * 86_400_000;
  // Event ids are UUIDs, the same in both projects (ties break alike); delivered shuffled, with duplicates.
  const day = syntheticDay(4242, D).fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
  const sent = shuffledWithDuplicates(day, 99);
  const size = Math.ceil(sent.length / 8);
  // Most batches have a backlog behind them; two in the middle do not, and the last drains the queue.
  const backlogs = [5, 5, 1, 5, 5, 5, 1, 0];
  for (let i = 0, b = 0; i < sent.length; i += size, b++) {
    expect((await deliver([message(deferredP.id, 'van-1', sent.slice(i, i + size))], backlogs[b] ?? 0)).ackAll).toBe(true);
  }
  expect(await cursorOf(deferredP, 'van-1')).toMatchObject({ pending: null, lease: 0, deferredSince: null });
  // The same fixes stored at once and recomputed in one pass.
  await storeFixes(wholeP.id, 'van-1', day);
  const times = day.map((f) => f.atMs);
  await recomputeDevice(ch(), env, wholeP.id, 'van-1', undefined, { fromMs: Math.min(...times), toMs: Math.max(...times) });
  const [a, b] = await Promise.all([currentFleetRows(deferredP.id), currentFleetRows(wholeP.id)]);
  expect(a).toEqual(b);
  expect(a.trips).toHaveLength(3);
  expect((await objectLive(deferredP, 'van-1'))!.lon).toBeCloseTo((await live(wholeP)).get('van-1')!, 9);
});
