// Erasure of a device or a profile: nothing of the subject left in ClickHouse, R2, device objects or
// the read API, everything of others exactly as it was, counts that match, and a run cut short
// anywhere in the archive rewrite converging without a duplicated row.
import { env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { chunkCacheUrl } from '../src/archive/lazy-read';
import { manifestStore, toChunkManifest, type ManifestRow } from '../src/archive/manifest';
import type { ArchiveRow } from '../src/archive/chunk';
import type { CrashPoint } from '../src/erasure/params';
import { erasureRunner } from '../src/erasure/erasure-job';
import type { ErasureResult } from '../src/erasure/steps';
import { hash128, uuidv7At } from '../src/lib/ids';
import { archiveMonth, insertRows } from './archive-helpers';
import { startJob } from '../src/jobs/actions';
import { jobStore } from '../src/jobs/store';
import { admin } from './backfill-helpers';
import {
  archiveOldChunks,
  byTime,
  countRows,
  countTable,
  ingest,
  insertOldEvents,
  JULY,
  JUNE,
  liveEvent,
  oldEvents,
  readArchive,
  startErasure,
  toArchiveRow,
  waitFinished,
  type OldEvent,
} from './erasure-fixtures';
import { ADMIN_TOKEN, ch, createProject, getJson, postBatch, waitUntil, type TestProject } from './helpers';

const A = 'veh-a';
const B = 'veh-b';
const C = 'veh-c';
const P = 'prof-p';
const Q = 'prof-q';

interface Scenario {
  p: TestProject;
  old: OldEvent[];
  chunks: ManifestRow[];
  /** The live events as sent, by device. */
  live: Record<string, unknown[]>;
}

/**
 * veh-a: profile P and anonymous events; veh-b: profile Q only; veh-c: profile P only. Live events
 * (last hour) through the ingest route; June and July 2025 in ClickHouse with their payloads in
 * verified, cleared chunks: two June chunks mixing all three devices, a July chunk of veh-a only
 * and one of veh-b only.
 */
async function scenario(name: string): Promise<Scenario> {
  const p = await createProject(name);
  const t = Date.now() - 40 * 60_000;
  const live: Record<string, unknown[]> = {
    [A]: [liveEvent(A, 'a0', t, P, 'identify'), liveEvent(A, 'a1', t + 60_000, P), liveEvent(A, 'a2', t + 120_000, P), liveEvent(A, 'a3', t + 180_000)],
    [B]: [liveEvent(B, 'b0', t + 5_000, Q, 'identify'), liveEvent(B, 'b1', t + 65_000, Q), liveEvent(B, 'b2', t + 125_000, Q)],
    [C]: [liveEvent(C, 'c0', t + 7_000, P, 'identify'), liveEvent(C, 'c1', t + 67_000, P)],
  };
  await ingest(p, Object.values(live).flat());
  await waitUntil(
    async () => [await countTable('events', p.id), await countTable('event_payloads', p.id), Number((await ch().query<{ n: number }>('SELECT uniqExact(id) AS n FROM sessions WHERE project_id = {p:String}', { p: p.id }))[0]!.n)],
    ([e, pl, s]) => e === 9 && pl === 9 && s === 3,
  );
  const juneA = oldEvents(p.id, A, JUNE, 6, (i) => (i < 4 ? P : ''));
  const juneB = oldEvents(p.id, B, JUNE + 30_000, 6, () => Q);
  const juneC = oldEvents(p.id, C, JUNE + 15_000, 3, () => P);
  const julyA = oldEvents(p.id, A, JULY, 4, (i) => (i < 2 ? P : ''));
  const julyB = oldEvents(p.id, B, JULY + 3_600_000, 3, () => Q);
  const old = [...juneA, ...juneB, ...juneC, ...julyA, ...julyB];
  await insertOldEvents(p.id, old);
  const june = [...juneA, ...juneB, ...juneC].sort(byTime);
  const chunks = [...(await archiveOldChunks(p.id, '2025-06', [june.slice(0, 8), june.slice(8)])), ...(await archiveOldChunks(p.id, '2025-07', [julyA, julyB]))];
  return { p, old, chunks, live };
}

const deviceStub = (projectId: string, deviceId: string) => env.DEVICE.get(env.DEVICE.idFromName(`${projectId}:${deviceId}`));

async function liveIds(projectId: string, where: string, params: Record<string, string>): Promise<string[]> {
  const rows = await ch().query<{ id: string }>(`SELECT DISTINCT toString(id) AS id FROM events WHERE project_id = {p:String} AND ${where} AND created_at_ms > {since:Int64}`, {
    p: projectId,
    since: Date.now() - 86_400_000,
    ...params,
  });
  return rows.map((r) => r.id);
}

async function countIn(table: string, projectId: string, ids: string[]): Promise<number> {
  if (!ids.length) return 0;
  const [r] = await ch().query<{ n: number }>(`SELECT count() AS n FROM ${table} WHERE project_id = {p:String} AND toString(id) IN (SELECT value FROM ids)`, { p: projectId }, { ids });
  return Number(r!.n);
}

/** Every row of the archive, checked against its manifest row; each id exactly once. */
async function archiveRows(projectId: string): Promise<ArchiveRow[]> {
  const rows = (await readArchive(projectId)).flatMap((o) => o.rows);
  expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length);
  return rows.sort(byTime);
}

/** What a device erasure of veh-a must report, from the scenario's own data. */
function deviceAResult(s: Scenario) {
  const oldA = s.old.filter((e) => e.deviceId === A);
  return {
    clickhouse: {
      events: 4 + oldA.length,
      payloads: 4, // the old ones are archived, not in ClickHouse
      sessions: 1 + new Set(oldA.map((e) => e.sessionId)).size,
      profileOps: 1 + oldA.filter((e) => e.type === 'identify').length,
    },
    // June #1 and #2 mix devices: rewritten; July #1 is veh-a's alone: deleted; July #2 untouched.
    r2: { chunksRewritten: 2, objectsDeleted: 3, rows: oldA.length },
    deviceObjects: 1,
  };
}

async function checkDeviceAErased(s: Scenario, liveA: string[], others: Record<string, Awaited<ReturnType<typeof countRows>>>) {
  const { p } = s;
  // ClickHouse: nothing of veh-a in any table; veh-b and veh-c exactly as they were.
  expect(await countTable('events', p.id, 'device_id = {d:String}', { d: A })).toBe(0);
  expect(await countTable('sessions', p.id, 'device_id = {d:String}', { d: A })).toBe(0);
  const idsA = [...liveA, ...s.old.filter((e) => e.deviceId === A).map((e) => e.id)];
  expect(await countIn('event_payloads', p.id, idsA)).toBe(0);
  expect(await countIn('profile_ops', p.id, idsA)).toBe(0);
  for (const d of [B, C]) expect(await countRows(p.id, 'device_id = {d:String}', { d })).toEqual(others[d]);

  // R2: every object decodes against its manifest row, no row of veh-a, every other row once, byte for byte.
  const rows = await archiveRows(p.id);
  expect(rows.filter((r) => r.deviceId === A)).toEqual([]);
  expect(rows).toEqual(s.old.filter((e) => e.deviceId !== A).sort(byTime).map(toArchiveRow));
  const manifest = await manifestStore(env.DB).list(p.id);
  // Each rewritten June chunk holds exactly its old chunk's other rows, verified and still cleared.
  for (const old of s.chunks.filter((c) => c.month === '2025-06')) {
    expect(manifest.find((m) => m.number === old.number && m.month === old.month)).toBeUndefined();
    const kept = s.old.filter((e) => e.deviceId !== A && e.createdAtMs >= old.firstCreatedAtMs && e.createdAtMs <= old.lastCreatedAtMs).sort(byTime).map(toArchiveRow);
    const replacement = (await readArchive(p.id)).find((o) => o.row.month === '2025-06' && o.rows[0]!.id === kept[0]!.id)!;
    expect(replacement.rows).toEqual(kept);
    expect(replacement.row.verifiedAt).not.toBeNull();
    expect(replacement.row.clearedAt).toBe(old.clearedAt);
    expect(replacement.row.number).toBeGreaterThan(2);
  }
  expect(manifest.filter((m) => m.month === '2025-07').map((m) => m.number)).toEqual([2]);

  // Device object: empty, and an event it had seen is new to it again.
  expect(await deviceStub(p.id, A).state()).toBeNull();
  expect(await deviceStub(p.id, A).sessions()).toEqual([]);

  // Read API: nothing of veh-a; veh-b's archived payload still served from its new chunk.
  expect((await getJson<{ events: unknown[] }>(p, `/v1/events?deviceId=${A}`)).body.events).toEqual([]);
  expect((await getJson<{ sessions: unknown[] }>(p, `/v1/sessions?deviceId=${A}`)).body.sessions).toEqual([]);
  expect((await getJson(p, `/v1/devices/${A}`)).status).toBe(404);
  const oldA = s.old.find((e) => e.deviceId === A)!;
  expect((await getJson(p, `/v1/events/${oldA.id}/payload`)).status).toBe(404);
  const oldB = s.old.find((e) => e.deviceId === B)!;
  const payload = await getJson<{ payload: unknown; source: string }>(p, `/v1/events/${oldB.id}/payload`);
  expect(payload.status).toBe(200);
  expect(payload.body).toMatchObject({ source: 'archive', payload: JSON.parse(oldB.payload) });
}

describe('device erasure', () => {
  it('deletes an unreadable object the manifest does not name under a month of the subject: nobody can say it holds none', async () => {
    const s = await scenario('erase-unreadable-orphan');
    const { p } = s;
    const liveA = await liveIds(p.id, 'device_id = {d:String}', { d: A });
    const others = { [B]: await countRows(p.id, 'device_id = {d:String}', { d: B }), [C]: await countRows(p.id, 'device_id = {d:String}', { d: C }) };
    // An upload cut short before it was recorded, and damaged: not gzip, so not readable.
    const orphan = `archives/${p.id}/2025-06/000090.jsonl.gz`;
    await env.ARCHIVE.put(orphan, new TextEncoder().encode('{"id":"half an upload'));

    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: A }));
    expect(job.state, job.error ?? '').toBe('succeeded');
    const expected = deviceAResult(s);
    expect(job.result).toEqual({ ...expected, r2: { ...expected.r2, objectsDeleted: expected.r2.objectsDeleted + 1 } });
    expect(await env.ARCHIVE.head(orphan)).toBeNull();
    // Every object left decodes against its manifest row (readArchive throws on one without).
    await checkDeviceAErased(s, liveA, others);
  });

  it('leaves an unrecorded object alone while another erasure of the project is under way; the next erasure of that month deletes it', async () => {
    const s = await scenario('erase-orphan-beside-erasure');
    const { p } = s;
    // What another erasure's upload looks like before that erasure records it.
    const orphan = `archives/${p.id}/2025-06/000090.jsonl.gz`;
    await env.ARCHIVE.put(orphan, new TextEncoder().encode('{"id":"half an upload'));
    // Another erasure of the project (of veh-b), enqueued: its message never sent, so it stays so.
    const other = await jobStore(env.DB).create(crypto.randomUUID(), 'erasure', { projectId: p.id, deviceId: B }, Date.now());

    const first = await waitFinished(await startErasure({ projectId: p.id, deviceId: A }));
    expect(first.state, first.error ?? '').toBe('succeeded');
    expect(first.result).toEqual(deviceAResult(s));
    expect(await env.ARCHIVE.head(orphan)).not.toBeNull();

    // Once no other erasure of the project is under way, the next erasure of a subject with June
    // rows deletes it: nobody can say it holds none of veh-b.
    await env.DB.prepare("UPDATE jobs SET state = 'cancelled' WHERE id = ?").bind(other.id).run();
    const second = await waitFinished(await startErasure({ projectId: p.id, deviceId: B }));
    expect(second.state, second.error ?? '').toBe('succeeded');
    expect(await env.ARCHIVE.head(orphan)).toBeNull();
    // With veh-a gone, one June chunk holds veh-b and veh-c (rewritten, its old object deleted),
    // the other and July #2 veh-b alone (deleted); and the orphan.
    expect((second.result as ErasureResult).r2).toEqual({ chunksRewritten: 1, objectsDeleted: 4, rows: s.old.filter((e) => e.deviceId === B).length });
  });

  it('removes a device from ClickHouse, the archive, its object and every read route, and nothing of anyone else', async () => {
    const s = await scenario('erase-device');
    const { p } = s;
    const liveA = await liveIds(p.id, 'device_id = {d:String}', { d: A });
    expect(liveA).toHaveLength(4);
    const others = { [B]: await countRows(p.id, 'device_id = {d:String}', { d: B }), [C]: await countRows(p.id, 'device_id = {d:String}', { d: C }) };
    // The chunk of an old veh-a event is read (and cached) before the erasure.
    const oldA = s.old.find((e) => e.deviceId === A)!;
    expect((await getJson<{ source: string }>(p, `/v1/events/${oldA.id}/payload`)).body.source).toBe('archive');
    const cachedChunk = s.chunks.find((c) => c.month === '2025-06' && c.firstCreatedAtMs <= oldA.createdAtMs && oldA.createdAtMs <= c.lastCreatedAtMs)!;
    const cacheUrl = chunkCacheUrl(toChunkManifest(cachedChunk));
    expect(await caches.default.match(cacheUrl)).toBeDefined();
    expect(await deviceStub(p.id, A).state()).not.toBeNull();

    const id = await startErasure({ projectId: p.id, deviceId: A });
    const job = await waitFinished(id);
    // Progress counts work units: 4 archive chunks examined, 1 device object, deletion, check.
    expect(job).toMatchObject({ type: 'erasure', state: 'succeeded', error: null, rowsProcessed: 7, rowsTotal: 7 });
    expect(job.result).toEqual(deviceAResult(s));
    // The cached copy of the rewritten chunk is purged: no copy of the device is left to serve.
    expect(await caches.default.match(cacheUrl)).toBeUndefined();

    await checkDeviceAErased(s, liveA, others);
    // The same event again is not a duplicate: the object no longer knows it.
    const again = await postBatch(p, { events: [s.live[A]![1]] });
    expect(await again.json()).toEqual({ accepted: 1, duplicates: 0, rejected: [] });
  });

  it.each<CrashPoint>(['archive.afterPut', 'archive.afterInsert', 'archive.afterVerify', 'archive.afterObjectDelete', 'clickhouse.afterDelete'])(
    'converges after a crash at %s: no duplicate row in R2, the same result',
    async (crashAt) => {
      const s = await scenario(`erase-crash-${crashAt}`);
      const { p } = s;
      const liveA = await liveIds(p.id, 'device_id = {d:String}', { d: A });
      const others = { [B]: await countRows(p.id, 'device_id = {d:String}', { d: B }), [C]: await countRows(p.id, 'device_id = {d:String}', { d: C }) };
      // Test-only: the route never takes `faults`; the job is started as the route would, plus the fault.
      const started = await startJob(env, 'erasure', { projectId: p.id, deviceId: A, faults: { crashAt } });
      const job = await waitFinished(started.id);
      expect(job.state).toBe('succeeded');
      // It did stop there once (the retry's commit keeps the last error).
      expect(job.error).toContain(`test fault: the chunk stopped at ${crashAt}`);
      expect(job.result).toEqual(deviceAResult(s));
      await checkDeviceAErased(s, liveA, others);
    },
  );
});

describe('profile erasure', () => {
  it("removes a profile's events, payloads, sessions and profile, and clears only its part of a shared device", async () => {
    const s = await scenario('erase-profile');
    const { p } = s;
    const liveP = await liveIds(p.id, 'profile_id = {x:String}', { x: P });
    expect(liveP).toHaveLength(5);
    const anonA = await countRows(p.id, "device_id = {d:String} AND profile_id = ''", { d: A });
    const profQ = await countRows(p.id, 'profile_id = {x:String}', { x: Q });
    expect((await getJson(p, `/v1/profiles/${P}`)).status).toBe(200);
    expect(await deviceStub(p.id, A).state()).toMatchObject({ profileId: P });

    const id = await startErasure({ projectId: p.id, profileId: P });
    const job = await waitFinished(id);
    expect(job).toMatchObject({ type: 'erasure', state: 'succeeded', error: null });
    const oldP = s.old.filter((e) => e.profileId === P);
    expect(job.result).toEqual({
      clickhouse: {
        events: liveP.length + oldP.length,
        payloads: liveP.length,
        // veh-c's live session and its June session hold only P's events; veh-a's sessions are shared.
        sessions: 2,
        profileOps: 2 + oldP.filter((e) => e.type === 'identify').length,
      },
      // June #1, #2 and July #1 (veh-a: P and anonymous) rewritten; July #2 (veh-b) untouched.
      r2: { chunksRewritten: 3, objectsDeleted: 3, rows: oldP.length },
      deviceObjects: 2,
    });

    expect(await countTable('events', p.id, 'profile_id = {x:String}', { x: P })).toBe(0);
    expect(await countTable('profile_ops', p.id, 'profile_id = {x:String}', { x: P })).toBe(0);
    expect(await countIn('event_payloads', p.id, [...liveP, ...oldP.map((e) => e.id)])).toBe(0);
    expect(await countTable('sessions', p.id, 'device_id = {d:String}', { d: C })).toBe(0);
    // The anonymous events of the shared device, and profile Q, are all still there.
    expect(await countRows(p.id, "device_id = {d:String} AND profile_id = ''", { d: A })).toEqual(anonA);
    expect(await countRows(p.id, 'profile_id = {x:String}', { x: Q })).toEqual(profQ);
    expect(anonA).toMatchObject({ events: 1 + 4, payloads: 1, sessions: 3 });

    const rows = await archiveRows(p.id);
    expect(rows).toEqual(s.old.filter((e) => e.profileId !== P).sort(byTime).map(toArchiveRow));

    // veh-c held only P: its object is gone. veh-a keeps its anonymous state, not the profile.
    expect(await deviceStub(p.id, C).state()).toBeNull();
    const a = await deviceStub(p.id, A).state();
    expect(a).toMatchObject({ profileId: null, lastEvent: { name: 'trip_point' } });
    expect(a!.seenIds).toBe(1);

    expect((await getJson(p, `/v1/profiles/${P}`)).status).toBe(404);
    expect((await getJson(p, `/v1/profiles/${Q}`)).status).toBe(200);
    const events = (await getJson<{ events: Array<{ profileId: string; deviceId: string }> }>(p, '/v1/events?limit=1000')).body.events;
    expect(events.filter((e) => e.profileId === P)).toEqual([]);
    expect(events.filter((e) => e.deviceId === C)).toEqual([]);

    // Last, as it stores one of P's events again (about a second later): veh-a forgot P's event ids,
    // not its anonymous one.
    const again = await postBatch(p, { events: [s.live[A]![1], s.live[A]![3]] });
    expect(await again.json()).toEqual({ accepted: 1, duplicates: 1, rejected: [] });
  });
});

describe('erasure requests', () => {
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    SELF.fetch('http://gw/admin/erasures', {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  it("removes a device's fleet history (trips, mileage, live position, registry) and leaves another device's as it was", async () => {
    const p = await createProject('erase-fleet');
    const t0 = Date.now() - 3 * 3_600_000;
    // Two vehicles driving a few hundred metres, a fix every 10 s, through the real ingest path.
    const drive = (deviceId: string, lon0: number) =>
      Array.from({ length: 40 }, (_, i) => ({
        type: 'track',
        payload: { name: 'position', properties: { __deviceId: deviceId, __eventId: `${deviceId}-fix-${i}`, __timestamp: t0 + i * 10_000, lat: 52.5, lon: lon0 + i * 0.0003, speed: 30 } },
      }));
    // Registered before they drive: a zone set after positions arrived would start a rebuild job
    // running beside the erasure.
    for (const d of [A, B]) {
      const put = await SELF.fetch(`http://gw/v1/devices/${d}`, { method: 'PUT', headers: p.headers, body: JSON.stringify({ name: `Van ${d}`, timezone: 'Europe/Berlin' }) });
      expect(put.status).toBe(200);
    }
    const posted = await postBatch(p, { events: [...drive(A, 13.4), ...drive(B, 13.5)] });
    expect(((await posted.json()) as { accepted: number }).accepted).toBe(80);
    const fleetRows = async (deviceId: string) => {
      const counts: Record<string, number> = {};
      for (const table of ['fleet_live', 'fleet_stretches', 'fleet_trips', 'fleet_mileage_days']) {
        const [r] = await ch().query<{ n: number | string }>(`SELECT count() AS n FROM ${table} WHERE project_id = {p:String} AND device_id = {d:String}`, { p: p.id, d: deviceId });
        counts[table] = Number(r!.n);
      }
      return counts;
    };
    await waitUntil(() => fleetRows(A), (c) => (c.fleet_live ?? 0) > 0 && (c.fleet_stretches ?? 0) > 0);
    await waitUntil(() => fleetRows(B), (c) => (c.fleet_live ?? 0) > 0 && (c.fleet_stretches ?? 0) > 0);
    const bBefore = await fleetRows(B);
    // Both objects hold their vehicle's live position.
    for (const d of [A, B]) await waitUntil(() => deviceStub(p.id, d).state(), (st) => st?.fleetLive != null);
    const bLive = (await deviceStub(p.id, B).state())!.fleetLive;

    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: A }));
    expect(job.state).toBe('succeeded');
    expect(await fleetRows(A)).toEqual({ fleet_live: 0, fleet_stretches: 0, fleet_trips: 0, fleet_mileage_days: 0 });
    expect(await fleetRows(B)).toEqual(bBefore);
    expect(await deviceStub(p.id, A).state()).toBeNull();
    expect((await deviceStub(p.id, B).state())!.fleetLive).toEqual(bLive);
    const registry = await getJson<{ devices: Array<{ deviceId: string }> }>(p, '/v1/devices');
    expect(registry.body.devices.map((d) => d.deviceId)).toEqual([B]);
    const live = await getJson<{ vehicles: Array<{ deviceId: string }> }>(p, '/v1/fleet/live');
    expect(live.body.vehicles.map((v) => v.deviceId)).toEqual([B]);
    const cursors = await env.DB.prepare('SELECT count(*) AS n FROM fleet_cursors WHERE project_id = ?1 AND device_id = ?2').bind(p.id, A).first<{ n: number }>();
    expect(cursors!.n).toBe(0);
  });

  it("leaves a shared vehicle's object the live position of the fixes left once a profile's are erased", async () => {
    const p = await createProject('erase-profile-fleet');
    const t0 = Date.now() - 3 * 3_600_000;
    // One vehicle: 30 anonymous fixes, then 20 newer ones sent under profile P (the live position).
    const fix = (i: number, profileId?: string) => ({
      type: 'track',
      payload: { name: 'position', ...(profileId ? { profileId } : {}), properties: { __deviceId: A, __eventId: `shared-fix-${i}`, __timestamp: t0 + i * 10_000, lat: 52.5, lon: 13.4 + i * 0.0003, speed: 30 } },
    });
    const posted = await postBatch(p, { events: Array.from({ length: 50 }, (_, i) => fix(i, i >= 30 ? P : undefined)) });
    expect(((await posted.json()) as { accepted: number }).accepted).toBe(50);
    const liveAt = async () => (await deviceStub(p.id, A).state())?.fleetLive?.fix.atMs ?? null;
    await waitUntil(liveAt, (at) => at === t0 + 49 * 10_000);

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: P }));
    expect(job.state).toBe('succeeded');
    // Once the erasure is done the object never shows one of P's fixes: none, until the recompute
    // job has run, or the last anonymous one.
    expect([null, t0 + 29 * 10_000]).toContain(await liveAt());
    // The recompute the erasure started gives the object, and ClickHouse's copy, the last anonymous fix.
    expect(await waitUntil(liveAt, (at) => at === t0 + 29 * 10_000)).toBe(t0 + 29 * 10_000);
    const own = await getJson<{ live: { at: string; lat: number; lon: number } | null }>(p, `/v1/devices/${A}`);
    expect(own.body.live).toMatchObject({ at: new Date(t0 + 29 * 10_000).toISOString(), lon: 13.4 + 29 * 0.0003 });
    const listed = await waitUntil(
      () => getJson<{ vehicles: Array<{ deviceId: string; at: string }> }>(p, '/v1/fleet/live'),
      (r) => r.body.vehicles[0]?.at === own.body.live!.at,
    );
    expect(listed.body.vehicles.map((v) => v.deviceId)).toEqual([A]);
  });

  it('waits for an archive job of the project to stop before it erases anything', async () => {
    const p = await createProject('erase-after-archive');
    const posted = await postBatch(p, { events: [liveEvent(A, 'w1', Date.now() - 60_000)] });
    expect(((await posted.json()) as { accepted: number }).accepted).toBe(1);
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    // An archive job started just before the erasure (the route would refuse the erasure now).
    const store = jobStore(env.DB);
    const archive = await store.create(crypto.randomUUID(), 'archive', { projectId: p.id, month: '2025-06' }, Date.now());
    expect(await store.transition(archive.id, 'enqueued', 'paused', Date.now())).not.toBeNull();
    const erasure = await startJob(env, 'erasure', { projectId: p.id, deviceId: A });
    const waiting = await waitUntil(() => admin('GET', `/admin/backfills/${erasure.id}`), (r) => r.body.attempts >= 1);
    expect(waiting.body.error).toMatch(/waiting for it to stop/);
    expect(await countTable('events', p.id)).toBe(1);
    // Once the archive job is gone, the erasure goes through.
    expect((await admin('POST', `/admin/backfills/${archive.id}/cancel`)).status).toBe(200);
    expect((await waitFinished(erasure.id)).state).toBe('succeeded');
    expect(await countTable('events', p.id)).toBe(0);
  });

  it('refuses bad input with coded errors', async () => {
    const p = await createProject('erase-input');
    const code = async (res: Response) => ({ status: res.status, code: ((await res.json()) as { error: { code: string } }).error.code });
    expect(await code(await post({ projectId: p.id, deviceId: 'x' }, { authorization: '' }))).toEqual({ status: 401, code: 'unauthorized' });
    expect(await code(await post('{"projectId":'))).toEqual({ status: 400, code: 'invalid_json' });
    expect(await code(await post({ projectId: p.id }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await code(await post({ projectId: p.id, deviceId: 'x', profileId: 'y' }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await code(await post({ projectId: p.id, deviceId: '' }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await code(await post({ projectId: p.id, deviceId: 'x', faults: { crashAt: 'archive.afterPut' } }))).toEqual({ status: 400, code: 'invalid_request' });
    expect(await code(await post({ projectId: 'no-such-project', deviceId: 'x' }))).toEqual({ status: 400, code: 'unknown_project' });
    const del = await SELF.fetch('http://gw/admin/projects/no-such-project', { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(await code(del)).toEqual({ status: 404, code: 'project_not_found' });
    const unauth = await SELF.fetch(`http://gw/admin/projects/${p.id}`, { method: 'DELETE' });
    expect(await code(unauth)).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('refuses while an archive job of the project is under way, and answers a repeated request with the erasure under way', async () => {
    const p = await createProject('erase-conflicts');
    const store = jobStore(env.DB);
    // Job rows without a message: they stay enqueued (no chunk runs) until cancelled below.
    const archive = await store.create(crypto.randomUUID(), 'archive', { projectId: p.id, month: '2025-06' }, Date.now());
    const refused = await admin('POST', '/admin/erasures', { projectId: p.id, deviceId: 'x' });
    expect(refused).toMatchObject({ status: 409, body: { error: { code: 'archive_active', details: { id: archive.id } } } });
    const delRefused = await admin('DELETE', `/admin/projects/${p.id}`);
    expect(delRefused).toMatchObject({ status: 409, body: { error: { code: 'archive_active' } } });
    await store.transition(archive.id, 'enqueued', 'cancelled', Date.now());

    const pending = await store.create(crypto.randomUUID(), 'erasure', { projectId: p.id, profileId: 'someone' }, Date.now());
    const again = await admin('POST', '/admin/erasures', { projectId: p.id, profileId: 'someone' });
    expect(again).toEqual({ status: 202, body: { id: pending.id, state: 'enqueued' } });
    // Another subject of the same project is its own erasure.
    const other = await admin('POST', '/admin/erasures', { projectId: p.id, deviceId: 'someone' });
    expect(other.status).toBe(202);
    expect(other.body.id).not.toBe(pending.id);
    await store.transition(pending.id, 'enqueued', 'cancelled', Date.now());
    // A subject with nothing anywhere: the job succeeds and says it removed nothing.
    expect(await waitFinished(other.body.id)).toMatchObject({
      state: 'succeeded',
      result: { clickhouse: { events: 0, payloads: 0, sessions: 0, profileOps: 0 }, r2: { chunksRewritten: 0, objectsDeleted: 0, rows: 0 }, deviceObjects: 0 },
    });
  });
});

describe('erasure beside archive jobs', () => {
  it('erases a device from a chunk line that names no device (a payload archived before its event reached ClickHouse)', async () => {
    const p = await createProject('erase-deviceless-line');
    const evA = oldEvents(p.id, A, JUNE, 3, () => '');
    const evB = oldEvents(p.id, B, JUNE + 30_000, 2, () => '');
    await insertOldEvents(p.id, [...evA, ...evB]);
    await archiveOldChunks(p.id, '2025-06', [[...evA, ...evB]], (e) => ({ ...toArchiveRow(e), deviceId: e.id === evA[0]!.id ? '' : e.deviceId }));
    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: A }));
    expect(job).toMatchObject({ state: 'succeeded', error: null });
    expect((job.result as ErasureResult).r2).toEqual({ chunksRewritten: 1, objectsDeleted: 1, rows: 3 });
    const left = (await readArchive(p.id)).flatMap((c) => c.rows);
    expect(left.map((r) => r.id).sort()).toEqual(evB.map((e) => e.id).sort());
  });

  it.each(['devices', 'clickhouse', 'verify'])('a retried erasure that stood failed at %s examines the chunks an archive job wrote meanwhile', async (failedAt) => {
    const p = await createProject(`erase-retry-at-${failedAt}`);
    const evA = oldEvents(p.id, A, JUNE, 3, () => '');
    const evB = oldEvents(p.id, B, JUNE + 30_000, 2, () => '');
    await insertOldEvents(p.id, [...evA, ...evB]);
    await archiveOldChunks(p.id, '2025-06', [[...evA, ...evB]]);
    // The erasure's chunks run here one by one, as the engine runs them, up to the step it fails at.
    const params = { projectId: p.id, deviceId: A };
    const row = await jobStore(env.DB).create(crypto.randomUUID(), 'erasure', params, Date.now());
    const input = { id: row.id, params, cursor: null as string | null, maxKey: null, rowsTotal: null, rowsProcessed: 0, rowsSkipped: 0, verifyWrites: false };
    const stepOf = () => (JSON.parse(input.cursor!) as { step: string }).step;
    do input.cursor = (await erasureRunner.runChunk(env, input)).cursor;
    while (stepOf() !== failedAt);
    // It fails there. Meanwhile a late payload of the device arrives for June, and an archive job puts it into a new chunk.
    await env.DB.prepare("UPDATE jobs SET state = 'failed' WHERE id = ?").bind(row.id).run();
    const t = JUNE + 20 * 60_000;
    const late = { id: uuidv7At(t, hash128(`${p.id}/late`)), deviceId: A, createdAtMs: t, receivedAtMs: t + 1500, payload: '{"type":"track","payload":{"name":"late"}}' };
    await insertRows(p.id, [late]);
    expect(await archiveMonth(p.id, '2025-06')).toMatchObject({ state: 'succeeded' });
    expect((await readArchive(p.id)).some((c) => c.rows.some((r) => r.id === late.id))).toBe(true);
    // Retried, it goes on from its cursor to the end.
    input.verifyWrites = true;
    for (let done = false; !done; ) {
      const out = await erasureRunner.runChunk(env, input);
      input.cursor = out.cursor;
      done = out.done;
    }
    const left = (await readArchive(p.id)).flatMap((c) => c.rows);
    expect(left.filter((r) => r.deviceId === A)).toEqual([]);
    expect(left.map((r) => r.id).sort()).toEqual(evB.map((e) => e.id).sort());
    expect((JSON.parse(input.cursor!) as { result: ErasureResult }).result.r2.rows).toBe(4);
  });
});
