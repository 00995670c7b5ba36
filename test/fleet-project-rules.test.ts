// Fleet rules per project: set through the admin route, applied by the recompute (trips, track) and
// the reads (live status), and history re-derived by a recompute job when they change.
import { createExecutionContext, env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { DEFAULT_FLEET_RULES } from '../src/fleet/rules';
import { admin, waitJob } from './backfill-helpers';
import { ADMIN_TOKEN, createProject, getJson, type TestProject } from './helpers';
import { FixLog, HOME, makeRoute, MIN, positionEvent, prng, sendPositions, settled, tripsOf } from './fleet-fixtures';

type RulesView = { projectId: string; overrides: Record<string, number>; rules: typeof DEFAULT_FLEET_RULES; recompute: { id: string; state: string } | null };
type Track = { geometry: { coordinates: Array<[number, number]> } };
type LiveVehicle = { deviceId: string; status: string };

const rulesPath = (projectId: string) => `/admin/projects/${encodeURIComponent(projectId)}/fleet/rules`;
const putRules = (projectId: string, body: unknown) => admin('PUT', rulesPath(projectId), body);

/** A 1.5 km drive that starts 40 minutes ago, then parked with jitter until 9 minutes ago; three drive fixes report 50 m accuracy. */
function drive() {
  const log = new FixLog(prng(7), 'r');
  const start = Date.now() - 40 * MIN;
  const route = makeRoute(HOME, [[90, 900], [30, 600]]);
  const arrival = log.drive(route, start, { cruiseKmh: 50 });
  log.park(route.vertices[route.vertices.length - 1]!, arrival + MIN, Date.now() - 9 * MIN);
  const driving = log.fixes.filter((f) => f.atMs > start && f.atMs < arrival);
  for (const f of [driving[5]!, driving[10]!, driving[15]!]) f.accuracyM = 50;
  return { fixes: log.fixes, lengthM: route.lengthM };
}

const trackOf = async (p: TestProject) => (await getJson<Track>(p, '/v1/devices/van/track?since=' + new Date(Date.now() - 2 * 3_600_000).toISOString())).body.geometry.coordinates;
const statusOf = async (p: TestProject) => (await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live')).body.vehicles.find((v) => v.deviceId === 'van')?.status;

describe('fleet rules per project', () => {
  it("analyses each project's positions under its own rules, and re-derives history when they change", async () => {
    const [strict, plain] = [await createProject('rules-strict'), await createProject('rules-plain')];
    const set = await putRules(strict.id, { minTripM: 2000, maxAccuracyM: 20, offlineAfterS: 300 });
    expect(set.status).toBe(200);
    expect(set.body).toEqual({
      projectId: strict.id,
      overrides: { minTripM: 2000, maxAccuracyM: 20, offlineAfterS: 300 },
      rules: { ...DEFAULT_FLEET_RULES, minTripM: 2000, maxAccuracyM: 20, offlineAfterS: 300 },
      // No positions yet: nothing to re-derive.
      recompute: null,
    });

    const { fixes, lengthM } = drive();
    // The same fixes to both projects, batches interleaved so that one consumer batch can hold both.
    for (let i = 0; i < fixes.length; i += 25) {
      for (const p of [strict, plain]) await sendPositions(p, fixes.slice(i, i + 25).map((f) => positionEvent('van', f)), 25);
    }
    await settled(strict, 'van', fixes.length);
    await settled(plain, 'van', fixes.length);

    // The defaults: one trip of the route's length, every fix in the track, parked (last fix 9 min ago).
    const plainTrips = (await tripsOf(plain, 'deviceId=van')).body.trips;
    expect(plainTrips).toHaveLength(1);
    // Shorter than the strict project's 2 km minimum.
    expect(plainTrips[0]!.distanceM).toBeGreaterThan(lengthM * 0.97);
    expect(plainTrips[0]!.distanceM).toBeLessThan(lengthM * 1.05);
    expect(await trackOf(plain)).toHaveLength(fixes.length);
    expect(await statusOf(plain)).toBe('parked');
    // The strict project: the trip is under its minimum, the 50 m fixes are ignored, and 5 minutes
    // without a fix is offline.
    expect((await tripsOf(strict, 'deviceId=van')).body.trips).toEqual([]);
    expect(await trackOf(strict)).toHaveLength(fixes.length - 3);
    expect(await statusOf(strict)).toBe('offline');

    // Back to the defaults: a recompute job re-derives the project's history under them.
    const reset = await putRules(strict.id, {});
    expect(reset.status).toBe(200);
    expect(reset.body).toMatchObject({ overrides: {}, rules: DEFAULT_FLEET_RULES, recompute: { state: 'enqueued' } });
    expect((await waitJob(reset.body.recompute.id, (j) => ['succeeded', 'failed'].includes(j.state), 120_000)).state).toBe('succeeded');
    expect((await tripsOf(strict, 'deviceId=van')).body.trips).toEqual(plainTrips);
    expect(await trackOf(strict)).toHaveLength(fixes.length);
    expect(await statusOf(strict)).toBe('parked');
    expect((await admin('GET', rulesPath(strict.id))).body).toEqual({ projectId: strict.id, overrides: {}, rules: DEFAULT_FLEET_RULES, recompute: null });

    // The offline delay only changes how the live position reads: nothing to recompute.
    const offline = await putRules(strict.id, { offlineAfterS: 300 });
    expect(offline.body).toMatchObject({ overrides: { offlineAfterS: 300 }, recompute: null });
    expect(await statusOf(strict)).toBe('offline');
    expect(await statusOf(plain)).toBe('parked');
  });

  it('refuses bad overrides with coded errors and changes nothing', async () => {
    const p = await createProject('rules-bad');
    expect((await putRules(p.id, { stopS: 120 })).status).toBe(200);
    const refused: Array<[unknown, RegExp]> = [
      [{ stopSeconds: 120 }, /stopSeconds/],
      [{ driftM: -1 }, /driftM must be > 0/],
      [{ maxSpeedKmh: '250' }, /maxSpeedKmh must be a number/],
      [{ noDataS: 30 * 86_400 }, /noDataS must be ≤ 604800/],
      [{ minTripM: -5 }, /minTripM must be ≥ 0/],
      [[{ stopS: 60 }], /object/i],
    ];
    for (const [body, message] of refused) {
      const r = await putRules(p.id, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error.code).toBe('invalid_request');
      expect(JSON.stringify(r.body.error)).toMatch(message);
    }
    const raw = (body: string, headers: Record<string, string>) => SELF.fetch(`http://gw${rulesPath(p.id)}`, { method: 'PUT', headers, body });
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    expect((await raw('{"stopS":', { ...auth, 'content-type': 'application/json' })).status).toBe(400);
    // An own `__proto__` key is dropped by the parse: nothing of it reaches the stored rules.
    const proto = await raw('{"__proto__":{"stopS":1},"minTripM":10}', { ...auth, 'content-type': 'application/json' });
    expect(proto.status).toBe(200);
    expect(await proto.json()).toMatchObject({ overrides: { minTripM: 10 }, rules: { stopS: DEFAULT_FLEET_RULES.stopS, minTripM: 10 } });
    expect((await putRules(p.id, { stopS: 120 })).status).toBe(200);
    expect((await raw('{"stopS":60}', { ...auth, 'content-type': 'text/plain' })).status).toBe(415);
    expect((await raw('{"stopS":60}', { 'content-type': 'application/json' })).status).toBe(401);
    expect((await admin('GET', rulesPath(p.id))).body.overrides).toEqual({ stopS: 120 });

    for (const method of ['GET', 'PUT']) {
      const r = await admin(method, rulesPath('no-such-project'), method === 'PUT' ? {} : undefined);
      expect(r.status).toBe(404);
      expect(r.body.error.code).toBe('unknown_project');
    }
  });

  it('changes nothing when the recompute job cannot be enqueued', async () => {
    const p = await createProject('rules-queue');
    const { fixes } = drive();
    await sendPositions(p, fixes.slice(0, 20).map((f) => positionEvent('van', f)), 20);
    await settled(p, 'van', 20);
    const refusing = { ...env, JOBS_QUEUE: { send: () => Promise.reject(new Error('queue unavailable')), sendBatch: () => Promise.reject(new Error('queue unavailable')) } };
    const request = new Request(`http://gw${rulesPath(p.id)}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ minTripM: 5000 }),
    });
    const res = await worker.fetch(request, refusing as unknown as typeof env, createExecutionContext());
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('queue_unavailable');
    expect((await admin('GET', rulesPath(p.id))).body.overrides).toEqual({});
  });
});
