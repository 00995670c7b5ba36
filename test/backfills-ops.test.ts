// Operating legacy imports: an unreachable legacy database with realtime events held meanwhile,
// pause / resume / cancel / retry, a chunk that throws, progress that adds up, request validation.
import { env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { jobStore, type JobView } from '../src/jobs/store';
import { legacyEventId } from '../src/legacy/translate';
import { admin, createLegacyTable, getJob, importBody, startImport, suffix, waitJob, withPg } from './backfill-helpers';
import { ch, countEvents, createProject, getJson, postBatch, trackEvent, waitUntil } from './helpers';

const legacyDbName = () => new URL(env.TEST_POSTGRES_URL).pathname.slice(1) || 'postgres';

/** Makes the legacy database refuse every connection (as an outage would), or accept them again. */
async function setLegacyReachable(reachable: boolean) {
  const db = legacyDbName();
  await withPg(async (c) => {
    await c.query(`ALTER DATABASE ${c.escapeIdentifier(db)} ALLOW_CONNECTIONS ${reachable ? 'true' : 'false'}`);
    if (!reachable) await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db]);
  }, 'template1');
}

const finished = (j: JobView) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled';

describe('legacy import operations', () => {
  it('fails fast when the legacy database is unreachable, keeps realtime events held, and lets them flow translated after a retry', async () => {
    const table = `fleet_legacy_${suffix()}`;
    await createLegacyTable(table, 3000);
    const p = await createProject('fleet');
    const now = Date.now();
    const realtime = [3, 42, 2999].map((k, i) =>
      trackEvent('trip_update', { __dataset: 'fleetone', __legacyId: String(k), __deviceId: `veh-${k % 97}`, __timestamp: now - 5000 + i, __eventId: `rt-${k}`, odometer: k }),
    );
    const plain = trackEvent('plain', { __deviceId: 'veh-plain', __timestamp: now - 1000 });
    const accepted = await postBatch(p, { events: [...realtime, plain] });
    expect(accepted.status).toBe(202);
    expect(await accepted.json()).toEqual({ accepted: 4, duplicates: 0, rejected: [] });
    // Held, not dropped and not processed: the unrelated event flows, the legacy ones wait.
    // Bulky ones too: D1 takes them in statements under its size limit.
    const blobs = Array.from({ length: 30 }, (_, i) =>
      trackEvent('trip_blob', { __dataset: 'fleetone', __legacyId: String(100 + i), __deviceId: 'veh-blob', __timestamp: now - 4000 + i, blob: 'x'.repeat(8000) }),
    );
    expect(await (await postBatch(p, { events: blobs })).json()).toEqual({ accepted: 30, duplicates: 0, rejected: [] });
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    expect((await admin('GET', `/admin/datasets/fleetone?projectId=${p.id}`)).body).toEqual({ dataset: 'fleetone', projectId: p.id, initialMigrationCompletedAt: null, mapped: 0, held: 33 });

    await setLegacyReachable(false);
    let id: string;
    try {
      id = await startImport(importBody(p.id, 'fleetone', table, { chunkSize: 1000 }));
      const failed = await waitJob(id, finished);
      expect(failed.state).toBe('failed');
      expect(failed.attempts).toBe(1);
      expect(failed.error).toMatch(/legacy database unreachable/);
      expect(failed.rowsProcessed).toBe(0);
    } finally {
      await setLegacyReachable(true);
    }
    const health = await admin('GET', '/admin/health');
    expect(health.body.jobs.failed).toContainEqual(expect.objectContaining({ id, state: 'failed', error: expect.stringMatching(/legacy database unreachable/) }));
    expect(health.body.jobs.running.map((j: JobView) => j.id)).not.toContain(id);
    expect((await admin('GET', `/admin/datasets/fleetone?projectId=${p.id}`)).body).toMatchObject({ initialMigrationCompletedAt: null, held: 33 });
    expect((await countEvents(p.id)).ids).toBe(1);

    const retried = await admin('POST', `/admin/backfills/${id}/retry`);
    expect(retried.status).toBe(200);
    expect(retried.body).toMatchObject({ state: 'enqueued', rowsProcessed: 0, rowsTotal: null, attempts: 0, error: null, endedAt: null });
    expect(await waitJob(id, finished)).toMatchObject({ state: 'succeeded', rowsProcessed: 3000, rowsTotal: 3000 });
    expect((await admin('GET', '/admin/health')).body.jobs.failed.map((j: JobView) => j.id)).not.toContain(id);

    // The held events flow by themselves, each pointing at the new id of its legacy row.
    const legacyMs = (k: number) => Date.parse('2023-03-01T00:00:00Z') + k * 37_000;
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1 + 3000 + 33);
    const { body } = await getJson<{ events: Array<{ name: string; refId?: string; properties: { __legacyId?: string } }> }>(p, '/v1/events?limit=1000');
    const updates = body.events.filter((e) => e.name === 'trip_update');
    expect(updates).toHaveLength(3);
    for (const e of updates) expect(e.refId).toBe(legacyEventId('fleetone', e.properties.__legacyId!, legacyMs(Number(e.properties.__legacyId))));
    expect((await admin('GET', `/admin/datasets/fleetone?projectId=${p.id}`)).body).toMatchObject({ mapped: 3000, held: 0, initialMigrationCompletedAt: expect.any(String) });

    // Once the flag is set, new realtime events are translated on the way in.
    const live = await postBatch(p, { events: [trackEvent('trip_update', { __dataset: 'fleetone', __legacyId: 7, __deviceId: 'veh-7', __eventId: 'rt-live' })] });
    expect(await live.json()).toEqual({ accepted: 1, duplicates: 0, rejected: [] });
    const [row] = await waitUntil(
      () => ch().query<{ ref_id: string }>(`SELECT ref_id FROM events WHERE project_id = {p:String} AND visitParamExtractRaw(properties, '__legacyId') = '7'`, { p: p.id }),
      (rows) => rows.length === 1,
    );
    expect(row!.ref_id).toBe(legacyEventId('fleetone', '7', legacyMs(7)));
  });

  it('pauses, resumes, fails at once when the source table vanishes, cancels and retries; progress adds up and the ETA falls', async () => {
    const table = `legacy_ops_${suffix()}`;
    const ROWS = 20_000;
    await createLegacyTable(table, ROWS);
    const p = await createProject('ops');
    const id = await startImport(importBody(p.id, 'citylens', table, { chunkSize: 500, pauseMs: 100 }));
    expect((await admin('POST', `/admin/backfills/${id}/resume`)).body.error.code).toBe('invalid_transition');

    // ETA falls as the job advances.
    const etas: number[] = [];
    // Whole seconds: two reads within one second may show the same ETA, so watch until it falls.
    await waitJob(id, (j) => {
      if (j.etaSec !== null && j.rowsProcessed > 0) etas.push(j.etaSec);
      return j.rowsProcessed >= 3000 && etas.length > 1 && etas.at(-1)! < etas[0]!;
    });
    expect(etas.length).toBeGreaterThan(1);
    expect(etas.at(-1)!).toBeLessThan(etas[0]!);

    const pause = await admin('POST', `/admin/backfills/${id}/pause`);
    expect(pause.status).toBe(200);
    expect(['pausing', 'paused']).toContain(pause.body.state);
    const paused = await waitJob(id, (j) => j.state === 'paused');
    expect((await admin('POST', `/admin/backfills/${id}/pause`)).status).toBe(409);
    expect((await admin('POST', `/admin/backfills/${id}/retry`)).status).toBe(409);
    // One import of a dataset into a project at a time, paused ones included.
    const twice = await admin('POST', '/admin/backfills', importBody(p.id, 'citylens', table));
    expect(twice.status).toBe(409);
    expect(twice.body.error).toMatchObject({ code: 'import_already_active', details: { id, state: 'paused' } });
    expect((await getJob(id)).rowsProcessed).toBe(paused.rowsProcessed);

    // A chunk whose source table vanished fails the job at once with the database's message (no
    // retry can mend a missing table); once the table is back, a retry goes on from the same cursor.
    await withPg((c) => c.query(`ALTER TABLE ${table} RENAME TO ${table}_gone`));
    try {
      const resumed = await admin('POST', `/admin/backfills/${id}/resume`);
      expect(resumed.status).toBe(200);
      expect(resumed.body.state).toBe('enqueued');
      const failed = await waitJob(id, finished);
      expect(failed).toMatchObject({ state: 'failed', attempts: 1, cursor: paused.cursor });
      expect(failed.error).toMatch(new RegExp(`relation "${table}" does not exist`));
    } finally {
      await withPg((c) => c.query(`ALTER TABLE ${table}_gone RENAME TO ${table}`));
    }
    expect((await admin('POST', `/admin/backfills/${id}/retry`)).status).toBe(200);
    const moving = await waitJob(id, (j) => j.rowsProcessed > paused.rowsProcessed && j.attempts === 0, 90_000);
    expect(moving.state).toBe('running');

    const cancel = await admin('POST', `/admin/backfills/${id}/cancel`);
    expect(cancel.status).toBe(200);
    expect(['cancelling', 'cancelled']).toContain(cancel.body.state);
    const cancelled = await waitJob(id, finished);
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.rowsProcessed).toBeLessThan(ROWS);
    expect(cancelled.endedAt).not.toBeNull();
    // Cancel stops between chunks: nothing moves afterwards.
    expect((await countEvents(p.id)).ids).toBe(cancelled.rowsProcessed);
    expect((await admin('POST', `/admin/backfills/${id}/cancel`)).status).toBe(409);
    expect((await admin('POST', `/admin/backfills/${id}/resume`)).status).toBe(409);

    // Retry resets progress and re-counts it honestly over the cursor, then finishes.
    const retry = await admin('POST', `/admin/backfills/${id}/retry`);
    expect(retry.body).toMatchObject({ state: 'enqueued', rowsProcessed: 0, rowsTotal: null, ratePerSec: null, etaSec: null, error: null, endedAt: null });
    const replanned = await waitJob(id, (j) => j.rowsTotal !== null);
    expect(replanned.rowsTotal).toBe(ROWS);
    expect(replanned.rowsProcessed).toBeGreaterThanOrEqual(cancelled.rowsProcessed);
    await withPg((c) => c.query(`UPDATE ${table} SET label = 'x' WHERE id = 1`)); // harmless churn
    const done = await waitJob(id, finished, 90_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS, rowsTotal: ROWS, etaSec: 0, attempts: 0 });
    expect(await countEvents(p.id)).toEqual({ rows: ROWS, ids: ROWS });
    expect((await admin('GET', '/admin/backfills')).body.backfills.map((j: JobView) => j.id)).toContain(id);
  });

  it('rows inserted during an import stay out of it (max-key snapshot)', async () => {
    const table = `legacy_growing_${suffix()}`;
    await createLegacyTable(table, 2000);
    const p = await createProject('growing');
    const id = await startImport(importBody(p.id, 'citylens', table, { chunkSize: 200, pauseMs: 50 }));
    await waitJob(id, (j) => j.rowsTotal !== null);
    await withPg((c) => c.query(`INSERT INTO ${table} SELECT g, 'veh-late', now(), 0, 'late' FROM generate_series(100001, 100500) g`));
    expect(await waitJob(id, finished)).toMatchObject({ state: 'succeeded', rowsProcessed: 2000, rowsTotal: 2000, cursor: '2000' });
    expect((await countEvents(p.id)).ids).toBe(2000);
  });

  it('validates requests: enabled datasets, known projects, plain identifiers, known jobs', async () => {
    const p = await createProject('validation');
    const bad = await admin('POST', '/admin/backfills', importBody(p.id, 'otherset', 'tracks'));
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('dataset_not_enabled');
    const noProject = await admin('POST', '/admin/backfills', importBody('no-such-project', 'citylens', 'tracks'));
    expect(noProject.status).toBe(400);
    expect(noProject.body.error.code).toBe('unknown_project');
    for (const table of ['tracks; DROP TABLE x', 'a"b', 'public.tracks', '']) {
      const r = await admin('POST', '/admin/backfills', importBody(p.id, 'citylens', table));
      expect(r.status).toBe(400);
      expect(r.body.error.code).toBe('invalid_request');
    }
    const badKey = await admin('POST', '/admin/backfills', { ...importBody(p.id, 'citylens', 'tracks'), source: { table: 'tracks', key: 'id)--', createdAt: 'c', deviceId: 'd', name: 'n' } });
    expect(badKey.status).toBe(400);
    expect((await admin('POST', '/admin/backfills', { ...importBody(p.id, 'citylens', 'tracks'), chunkSize: 0 })).status).toBe(400);
    // The throttle's switch and bounds are checked too, and a client cannot hand in controller state.
    for (const extra of [{ throttle: 'yes' }, { throttle: null }, { pauseMs: 60_001 }, { chunkSize: 50_001 }, { throttleState: { duty: 1, stepRows: 1e9 } }]) {
      const r = await admin('POST', '/admin/backfills', { ...importBody(p.id, 'citylens', 'tracks'), ...extra });
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(r.body.error.code).toBe('invalid_request');
    }
    expect((await admin('POST', '/admin/backfills', { ...importBody(p.id, 'citylens', 'tracks'), type: 'other' })).status).toBe(400);
    const missing = await admin('GET', '/admin/backfills/00000000-0000-0000-0000-000000000000');
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe('job_not_found');
    expect((await admin('POST', '/admin/backfills/00000000-0000-0000-0000-000000000000/pause')).status).toBe(404);
    expect((await admin('GET', '/admin/datasets/otherset')).status).toBe(404);
    expect((await SELF.fetch('http://gw/admin/backfills')).status).toBe(401);
  });

  it('reports a failure to read job state in /admin/health instead of swallowing it', async () => {
    await env.DB.prepare('ALTER TABLE jobs RENAME TO jobs_unreadable').run();
    try {
      const r = await admin('GET', '/admin/health');
      expect(r.status).toBe(503);
      expect(r.body.ok).toBe(false);
      expect(r.body.jobs).toEqual({ running: null, failed: null });
      expect(r.body.errors.join(' ')).toMatch(/jobs: .*no such table: jobs/);
    } finally {
      await env.DB.prepare('ALTER TABLE jobs_unreadable RENAME TO jobs').run();
    }
    const ok = await admin('GET', '/admin/health');
    expect(ok.body.jobs.running).toEqual(expect.any(Array));
  });
});

describe('retrying a job beside one started while it stood', () => {
  it('refuses with the code its start would get, and goes ahead once the other has ended', async () => {
    const p = await createProject('retry-guards');
    const setState = (id: string, state: string) => env.DB.prepare('UPDATE jobs SET state = ? WHERE id = ?').bind(state, id).run();
    // Job rows as the routes write them (no chunk message sent: they stay as set here).
    const job = async (type: string, params: unknown, state: string) => {
      const row = await jobStore(env.DB).create(crypto.randomUUID(), type, params, Date.now());
      await setState(row.id, state);
      return row.id;
    };
    const retry = async (id: string) => {
      const res = await admin('POST', `/admin/backfills/${id}/retry`);
      return [res.status, res.body.error?.code ?? res.body.state];
    };
    const month = { projectId: p.id, month: '2025-03' };
    const failedArchive = await job('archive', month, 'failed');
    const restore = await job('restore', month, 'paused');
    expect(await retry(failedArchive)).toEqual([409, 'archive_already_active']);
    const failedErasure = await job('erasure', { projectId: p.id, deviceId: 'veh-1' }, 'failed');
    expect(await retry(failedErasure)).toEqual([409, 'archive_active']);
    const failedImport = await job('legacy_import', importBody(p.id, 'fleetone', 'some_table'), 'cancelled');
    const running = await job('legacy_import', importBody(p.id, 'fleetone', 'other_table'), 'running');
    expect(await retry(failedImport)).toEqual([409, 'import_already_active']);
    // Nothing changed by a refusal.
    expect((await getJob(failedArchive)).state).toBe('failed');
    await setState(restore, 'cancelled');
    await setState(running, 'failed');
    const deletion = await job('project_deletion', { projectId: p.id }, 'paused');
    expect(await retry(failedErasure)).toEqual([409, 'project_deletion_active']);
    expect(await retry(failedArchive)).toEqual([409, 'erasure_active']);
    await setState(deletion, 'cancelled');
    const sameSubject = await job('erasure', { projectId: p.id, deviceId: 'veh-1' }, 'paused');
    expect(await retry(failedErasure)).toEqual([409, 'erasure_conflict']);
    await setState(sameSubject, 'cancelled');
    expect(await retry(failedArchive)).toEqual([200, 'enqueued']);
    expect((await waitJob(failedArchive, finished)).state).toBe('succeeded');
  });
});
