// DELETE /admin/projects/:id: the project's credentials stop working, nothing of it is left in
// ClickHouse, R2, D1 or its device objects, the job's counts match, and another project is untouched.
import { env, SELF } from 'cloudflare:test';
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { describe, expect, it } from 'vitest';
import { chunkCacheUrl } from '../src/archive/lazy-read';
import { manifestStore, toChunkManifest } from '../src/archive/manifest';
import { clients, heldEvents, idempotencyKeys, legacyDatasets, projects, rejectedRows, vehicles } from '../src/db/schema';
import { startJob } from '../src/jobs/actions';
import { admin } from './backfill-helpers';
import { archiveOldChunks, byTime, countTable, insertOldEvents, JULY, JUNE, liveEvent, oldEvents, readArchive, toArchiveRow, waitFinished, type OldEvent } from './erasure-fixtures';
import { ch, createProject, getJson, postBatch, waitUntil, type TestProject } from './helpers';

interface Filled {
  p: TestProject;
  old: OldEvent[];
  liveEvents: unknown[];
}

/** Two devices' live events (one batch under an Idempotency-Key), a held legacy event, an id-map row, and two archived months. */
async function filledProject(name: string): Promise<Filled> {
  const p = await createProject(name);
  const t = Date.now() - 20 * 60_000;
  const liveEvents = [liveEvent('veh-1', 'e0', t, 'driver-1', 'identify'), liveEvent('veh-1', 'e1', t + 60_000, 'driver-1'), liveEvent('veh-2', 'e2', t + 90_000)];
  const res = await postBatch(p, { events: liveEvents }, { 'idempotency-key': `k-${name}` });
  expect(await res.json()).toEqual({ accepted: 3, duplicates: 0, rejected: [] });
  // Held until the dataset's import completes (none runs): a D1 row of the project.
  const held = await postBatch(p, { events: [{ type: 'track', payload: { name: 'legacy_ping', properties: { __deviceId: 'veh-9', __dataset: 'citylens', __legacyId: '7' } } }] });
  expect(await held.json()).toEqual({ accepted: 1, duplicates: 0, rejected: [] });
  await waitUntil(async () => [await countTable('events', p.id), await countTable('event_payloads', p.id), await countTable('sessions', p.id)], ([e, pl, s]) => e === 3 && pl === 3 && s! >= 2);
  await ch().insert('legacy_id_map', [{ dataset: 'citylens', legacy_id: '1', new_id: crypto.randomUUID(), project_id: p.id, created_at_ms: JUNE }]);
  const june = [...oldEvents(p.id, 'veh-1', JUNE, 5, () => 'driver-1'), ...oldEvents(p.id, 'veh-2', JUNE + 20_000, 4, () => '')].sort(byTime);
  const july = oldEvents(p.id, 'veh-2', JULY, 3, () => '');
  await insertOldEvents(p.id, [...june, ...july]);
  await archiveOldChunks(p.id, '2025-06', [june.slice(0, 5), june.slice(5)]);
  await archiveOldChunks(p.id, '2025-07', [july]);
  // Fleet state of the project: a registry entry and a daily-mileage row.
  expect((await SELF.fetch('http://gw/v1/devices/veh-1', { method: 'PUT', headers: p.headers, body: JSON.stringify({ name: 'Van 1' }) })).status).toBe(200);
  await ch().insert('fleet_mileage_days', [{ project_id: p.id, device_id: 'veh-1', day: '2025-06-03', bucket_ms: [JUNE], distance_m: [1200.5], moving_ms: [600_000], trip_starts: [1], version: 1 }]);
  return { p, old: [...june, ...july], liveEvents };
}

const TABLES = ['events', 'event_payloads', 'sessions', 'profile_ops', 'legacy_id_map', 'fleet_mileage_days'] as const;

async function projectCounts(projectId: string) {
  const n = async (sql: string) => Number((await ch().query<{ n: number }>(sql, { p: projectId }))[0]!.n);
  return {
    events: await n('SELECT uniqExact(id) AS n FROM events WHERE project_id = {p:String}'),
    payloads: await n('SELECT uniqExact(id) AS n FROM event_payloads WHERE project_id = {p:String}'),
    sessions: await n('SELECT uniqExact(id) AS n FROM sessions WHERE project_id = {p:String}'),
    profileOps: await n('SELECT uniqExact(id) AS n FROM profile_ops WHERE project_id = {p:String}'),
  };
}

async function d1Rows(projectId: string) {
  const db = drizzle(env.DB);
  return {
    projects: (await db.select().from(projects).where(eq(projects.id, projectId)).all()).length,
    clients: (await db.select().from(clients).where(eq(clients.projectId, projectId)).all()).length,
    legacyDatasets: (await db.select().from(legacyDatasets).where(eq(legacyDatasets.projectId, projectId)).all()).length,
    held: (await db.select().from(heldEvents).where(eq(heldEvents.projectId, projectId)).all()).length,
    idempotencyKeys: (await db.select().from(idempotencyKeys).where(eq(idempotencyKeys.projectId, projectId)).all()).length,
    manifest: (await manifestStore(env.DB).list(projectId)).length,
    rejectedRows: (await db.select().from(rejectedRows).where(eq(rejectedRows.projectId, projectId)).all()).length,
    vehicles: (await db.select().from(vehicles).where(eq(vehicles.projectId, projectId)).all()).length,
  };
}

async function r2Keys(projectId: string): Promise<string[]> {
  return (await env.ARCHIVE.list({ prefix: `archives/${projectId}/` })).objects.map((o) => o.key);
}

const deviceState = (projectId: string, deviceId: string) => env.DEVICE.get(env.DEVICE.idFromName(`${projectId}:${deviceId}`)).state();

async function expectGone(f: Filled) {
  const { p } = f;
  for (const table of TABLES) expect(await countTable(table, p.id), table).toBe(0);
  expect(await r2Keys(p.id)).toEqual([]);
  expect(await d1Rows(p.id)).toEqual({ projects: 0, clients: 0, legacyDatasets: 0, held: 0, idempotencyKeys: 0, manifest: 0, rejectedRows: 0, vehicles: 0 });
  expect(await deviceState(p.id, 'veh-1')).toBeNull();
  expect(await deviceState(p.id, 'veh-2')).toBeNull();
  // Its credentials no longer open anything.
  expect((await postBatch(p, { events: [liveEvent('veh-1', 'after', Date.now())] })).status).toBe(401);
  expect((await getJson(p, '/v1/events')).status).toBe(401);
}

describe('project deletion', () => {
  it('deletes a project from every store, revokes its clients and leaves another project as it was', async () => {
    const doomed = await filledProject('doomed');
    const kept = await filledProject('kept');
    // Tracker rows rejected for good are counted per project: they go with it.
    for (const p of [doomed.p, kept.p]) await env.DB.prepare("INSERT INTO rejected_rows VALUES (?1, 'overland', 2, 'validation', 'lat must be between -90 and 90 degrees', ?2)").bind(p.id, Date.now()).run();
    const before = await projectCounts(doomed.p.id);
    expect(before).toEqual({ events: 3 + doomed.old.length, payloads: 3, sessions: 2 + 3, profileOps: 1 + 1 });
    const keptBefore = { counts: await projectCounts(kept.p.id), d1: await d1Rows(kept.p.id), idMap: await countTable('legacy_id_map', kept.p.id) };
    expect(await d1Rows(doomed.p.id)).toEqual({ projects: 1, clients: 1, legacyDatasets: 1, held: 1, idempotencyKeys: 1, manifest: 3, rejectedRows: 1, vehicles: 1 });
    expect(await deviceState(doomed.p.id, 'veh-1')).not.toBeNull();
    // Every chunk of the project is in the Cache API, as lazy reads leave them: the deletion purges them.
    const doomedChunks = await manifestStore(env.DB).list(doomed.p.id);
    const cacheUrl = (row: (typeof doomedChunks)[number]) => chunkCacheUrl(toChunkManifest(row));
    for (const row of doomedChunks) await caches.default.put(cacheUrl(row), new Response('cached chunk', { headers: { 'cache-control': 'max-age=600' } }));
    for (const row of doomedChunks) expect(await caches.default.match(cacheUrl(row))).toBeDefined();

    const started = await admin('DELETE', `/admin/projects/${doomed.p.id}`);
    expect(started).toMatchObject({ status: 202, body: { state: 'enqueued' } });
    // Asked again while it runs: the same job. An erasure in the project meanwhile: refused.
    expect(await admin('DELETE', `/admin/projects/${doomed.p.id}`)).toEqual({ status: 202, body: { id: started.body.id, state: expect.any(String) } });
    expect(await admin('POST', '/admin/erasures', { projectId: doomed.p.id, deviceId: 'veh-1' })).toMatchObject({ status: 409, body: { error: { code: 'project_deletion_active' } } });

    const job = await waitFinished(started.body.id);
    expect(job).toMatchObject({ type: 'project_deletion', state: 'succeeded', error: null });
    expect(job.result).toEqual({ clickhouse: before, r2: { chunksRewritten: 0, objectsDeleted: 3, rows: doomed.old.length }, deviceObjects: 2 });
    await expectGone(doomed);
    for (const row of doomedChunks) expect(await caches.default.match(cacheUrl(row)), `${row.key} purged from the cache`).toBeUndefined();
    expect(await admin('DELETE', `/admin/projects/${doomed.p.id}`)).toMatchObject({ status: 404, body: { error: { code: 'project_not_found' } } });

    // The other project: every row, object and credential as before.
    expect(await projectCounts(kept.p.id)).toEqual(keptBefore.counts);
    expect(await countTable('legacy_id_map', kept.p.id)).toBe(keptBefore.idMap);
    expect(await d1Rows(kept.p.id)).toEqual(keptBefore.d1);
    expect((await readArchive(kept.p.id)).flatMap((o) => o.rows).sort(byTime)).toEqual([...kept.old].sort(byTime).map(toArchiveRow));
    expect(await deviceState(kept.p.id, 'veh-1')).not.toBeNull();
    const events = await getJson<{ events: unknown[] }>(kept.p, '/v1/events');
    expect(events.status).toBe(200);
    expect(events.body.events.length).toBeGreaterThanOrEqual(3);
    expect((await SELF.fetch('http://gw/track/batch', { method: 'POST', headers: kept.p.headers, body: JSON.stringify({ events: [liveEvent('veh-1', 'still', Date.now())] }) })).status).toBe(202);
  });

  it('converges after a crash between deleting the objects and their manifest rows', async () => {
    const doomed = await filledProject('doomed-crash');
    const before = await projectCounts(doomed.p.id);
    // Test-only fault (the route never takes it): the job as the route starts it, plus the crash.
    const started = await startJob(env, 'project_deletion', { projectId: doomed.p.id, faults: { crashAt: 'project.afterObjectsDelete' } });
    const job = await waitFinished(started.id);
    expect(job.state).toBe('succeeded');
    expect(job.error).toContain('test fault: the chunk stopped at project.afterObjectsDelete');
    expect(job.result).toEqual({ clickhouse: before, r2: { chunksRewritten: 0, objectsDeleted: 3, rows: doomed.old.length }, deviceObjects: 2 });
    await expectGone(doomed);
  });
});
