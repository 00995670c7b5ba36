// Fleet rules per project: set through the admin route, applied by the recompute (trips, track) and
// the reads (live status), and history re-derived by a recompute job when they change.
import { createExecutionContext, env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { DEFAULT_FLEET_RULES } from '../src/fleet/rules';
import { rekickStalledJobs, STALL_MS } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import { admin, waitJob } from './backfill-helpers';
import { ADMIN_TOKEN, createProject, getJson, type TestProject } from './helpers';
import { destination, FixLog, HOME, makeRoute, MIN, positionEvent, prng, sendPositions, settled, tripsOf } from './fleet-fixtures';

type RulesView = { projectId: string; overrides: Record<string, number>; rules: typeof DEFAULT_FLEET_RULES; recompute: { id: string; state: string } | null };
type Track = { geometry: { coordinates: Array<[number, number]> } };
type LiveVehicle = { deviceId: string; status: string; at: string };

const rulesPath = (projectId: string) => `/admin/projects/${encodeURIComponent(projectId)}/fleet/rules`;
const putRules = (projectId: string, body: unknown) => admin('PUT', rulesPath(projectId), body);

/**
 * A 1.5 km drive that starts 40 minutes ago, then parked with jitter until 9 minutes ago, and a last
 * fix 10 m off 8 minutes ago; three drive fixes and the last one report 50 m accuracy.
 */
function drive() {
  const log = new FixLog(prng(7), 'r');
  const start = Date.now() - 40 * MIN;
  const route = makeRoute(HOME, [[90, 900], [30, 600]]);
  const arrival = log.drive(route, start, { cruiseKmh: 50 });
  const end = route.vertices[route.vertices.length - 1]!;
  log.park(end, arrival + MIN, Date.now() - 9 * MIN);
  const lastSure = log.fixes[log.fixes.length - 1]!;
  const fuzzy = log.add({ atMs: Date.now() - 8 * MIN, ...destination(end, 0, 10), speedKmh: 0, accuracyM: 50 });
  const driving = log.fixes.filter((f) => f.atMs > start && f.atMs < arrival);
  for (const f of [driving[5]!, driving[10]!, driving[15]!]) f.accuracyM = 50;
  return { fixes: log.fixes, lengthM: route.lengthM, lastSure, fuzzy };
}

const iso = (ms: number) => new Date(ms).toISOString();
const trackOf = async (p: TestProject) => (await getJson<Track>(p, '/v1/devices/van/track?since=' + iso(Date.now() - 2 * 3_600_000))).body.geometry.coordinates;
const liveOf = async (p: TestProject, deviceId = 'van') => (await getJson<{ vehicles: LiveVehicle[] }>(p, '/v1/fleet/live')).body.vehicles.find((v) => v.deviceId === deviceId);
const jobDone = async (id: string) => (await waitJob(id, (j) => ['succeeded', 'failed'].includes(j.state), 120_000)).state;

describe('fleet rules per project', () => {
  it("analyses each project's positions under its own rules, and re-derives history when they change", async () => {
    const [strict, plain] = [await createProject('rules-strict'), await createProject('rules-plain')];
    const STRICT = { minTripM: 2000, maxAccuracyM: 20, offlineAfterS: 300 };
    const set = await putRules(strict.id, STRICT);
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ projectId: strict.id, overrides: STRICT, rules: { ...DEFAULT_FLEET_RULES, ...STRICT }, recompute: { state: 'enqueued' } });
    // No positions yet: the job finds nothing to do.
    expect(await jobDone(set.body.recompute.id)).toBe('succeeded');

    const { fixes, lengthM, lastSure, fuzzy } = drive();
    // The same fixes to both projects, batches interleaved so that one consumer batch can hold both.
    for (let i = 0; i < fixes.length; i += 25) {
      for (const p of [strict, plain]) await sendPositions(p, fixes.slice(i, i + 25).map((f) => positionEvent('van', f)), 25);
    }
    // A second vehicle of the plain project whose every fix reports 50 m accuracy.
    const blurred = fixes.slice(-5).map((f) => ({ ...f, id: `b-${f.id}`, accuracyM: 50 }));
    await sendPositions(plain, blurred.map((f) => positionEvent('blur', f)), 5);
    await settled(strict, 'van', fixes.length);
    await settled(plain, 'van', fixes.length);
    await settled(plain, 'blur', blurred.length);
    expect(await liveOf(plain, 'blur')).toMatchObject({ at: iso(blurred[blurred.length - 1]!.atMs) });

    // The defaults: one trip of the route's length, every fix in the track, the last fix live, parked.
    const plainTrips = (await tripsOf(plain, 'deviceId=van')).body.trips;
    expect(plainTrips).toHaveLength(1);
    // Shorter than the strict project's 2 km minimum.
    expect(plainTrips[0]!.distanceM).toBeGreaterThan(lengthM * 0.97);
    expect(plainTrips[0]!.distanceM).toBeLessThan(lengthM * 1.05);
    expect(await trackOf(plain)).toHaveLength(fixes.length);
    expect(await liveOf(plain)).toMatchObject({ at: iso(fuzzy.atMs), status: 'parked' });
    // The strict project: the trip is under its minimum, the 50 m fixes are ignored (the live fix is
    // the last sure one), and 5 minutes without a fix is offline.
    expect((await tripsOf(strict, 'deviceId=van')).body.trips).toEqual([]);
    expect(await trackOf(strict)).toHaveLength(fixes.length - 4);
    expect(await liveOf(strict)).toMatchObject({ at: iso(lastSure.atMs), status: 'offline' });

    // Back to the defaults: the job re-derives the strict project's history under them.
    const reset = await putRules(strict.id, {});
    expect(reset.status).toBe(200);
    expect(reset.body).toMatchObject({ overrides: {}, rules: DEFAULT_FLEET_RULES, recompute: { state: 'enqueued' } });
    expect(await jobDone(reset.body.recompute.id)).toBe('succeeded');
    expect((await tripsOf(strict, 'deviceId=van')).body.trips).toEqual(plainTrips);
    expect(await trackOf(strict)).toHaveLength(fixes.length);
    expect(await liveOf(strict)).toMatchObject({ at: iso(fuzzy.atMs), status: 'parked' });
    expect((await admin('GET', rulesPath(strict.id))).body).toEqual({ projectId: strict.id, overrides: {}, rules: DEFAULT_FLEET_RULES, recompute: null });

    // Tightened after the fact: the job applies the project's new rules to what is stored.
    const tightened = await putRules(plain.id, { minTripM: 2000, maxAccuracyM: 20 });
    expect(await jobDone(tightened.body.recompute.id)).toBe('succeeded');
    expect((await tripsOf(plain, 'deviceId=van')).body.trips).toEqual([]);
    expect(await trackOf(plain)).toHaveLength(fixes.length - 4);
    expect(await liveOf(plain)).toMatchObject({ at: iso(lastSure.atMs), status: 'parked' });
    // No fix of the blurred vehicle is accepted any more: it has no live position.
    expect(await liveOf(plain, 'blur')).toBeUndefined();
    const devices = (await getJson<{ devices: Array<{ deviceId: string; live: unknown }> }>(plain, '/v1/devices')).body.devices;
    expect(devices.find((d) => d.deviceId === 'blur')).toMatchObject({ live: null });

    // The offline delay only changes how the live position reads: nothing to recompute.
    const offline = await putRules(strict.id, { offlineAfterS: 300 });
    expect(offline.body).toMatchObject({ overrides: { offlineAfterS: 300 }, recompute: null });
    expect((await liveOf(strict))!.status).toBe('offline');
    expect((await liveOf(plain))!.status).toBe('parked');
  });

  it('applies the defaults, then FLEET_OFFLINE_AFTER_S, then the project\'s overrides', async () => {
    const p = await createProject('rules-precedence');
    const read = async () => {
      const res = await worker.fetch(new Request(`http://gw${rulesPath(p.id)}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }), { ...env, FLEET_OFFLINE_AFTER_S: '600' } as typeof env, createExecutionContext());
      return ((await res.json()) as RulesView).rules;
    };
    expect(await read()).toEqual({ ...DEFAULT_FLEET_RULES, offlineAfterS: 600 });
    expect((await putRules(p.id, { offlineAfterS: 120, stopS: 60 })).status).toBe(200);
    expect(await read()).toEqual({ ...DEFAULT_FLEET_RULES, offlineAfterS: 120, stopS: 60 });
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

  it('stores the rules with their job when the job queue is down; the watchdog sends the job', async () => {
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
    expect(res.status).toBe(200);
    const body = (await res.json()) as RulesView;
    expect(body).toMatchObject({ overrides: { minTripM: 5000 }, recompute: { state: 'enqueued' } });
    expect((await admin('GET', rulesPath(p.id))).body.overrides).toEqual({ minTripM: 5000 });
    const job = (await jobStore(env.DB).get(body.recompute!.id))!;
    expect(JSON.parse(job.params)).toMatchObject({ projectId: p.id, reason: 'rules' });
    // No message went out: the watchdog's lost-message rule sends one, and the job runs.
    expect(await rekickStalledJobs(env, job.lastUpdateAt + STALL_MS + 1)).toContain(job.id);
    expect(await jobDone(job.id)).toBe('succeeded');
  });
});
