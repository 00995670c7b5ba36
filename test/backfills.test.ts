// Legacy import end to end: a generated Postgres dataset into ClickHouse, exactly once, through
// a clean run, a run whose chunk dies holding its lease (resumed by the watchdog), and re-runs.
import { createExecutionContext, createMessageBatch, createScheduledController, env, getQueueResult } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { chunkInput, LEASE_MS } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import { legacyImportRunner } from '../src/legacy/import-job';
import { legacyEventId } from '../src/legacy/translate';
import { uuidv7Time } from '../src/lib/ids';
import { admin, createLegacyTable, eventsChecksum, getJob, importBody, startImport, waitJob, withPg } from './backfill-helpers';
import { ch, createProject } from './helpers';

const ROWS = 60_000;
const TABLE = `legacy_tracks_${Date.now().toString(36)}`;
let clean: { rows: number; ids: number; sum: string } | null = null;

async function runWatchdog(scheduledTime: number) {
  await worker.scheduled!(createScheduledController({ scheduledTime, cron: '* * * * *' }), env, createExecutionContext());
}

describe('legacy import', () => {
  it(`imports ${ROWS} legacy rows: one event each, UUIDv7 ids carrying the legacy time, mapping complete, flag set last`, async () => {
    await createLegacyTable(TABLE, ROWS);
    const p = await createProject('legacy-clean');
    const before = await admin('GET', `/admin/datasets/citylens?projectId=${p.id}`);
    expect(before.body.initialMigrationCompletedAt).toBeNull();

    const start = await admin('POST', '/admin/backfills', importBody(p.id, 'citylens', TABLE, { chunkSize: 10_000 }));
    expect(start.status).toBe(202);
    expect(start.body).toEqual({ id: expect.any(String), state: 'enqueued' });
    const id = start.body.id as string;

    // Whenever the flag is visible, every row must already be in: the flag is the last write.
    const job = await waitJob(id, (j) => j.state === 'succeeded' || j.state === 'failed', 60_000);
    expect(job.error).toBeNull();
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS, rowsTotal: ROWS, etaSec: 0, type: 'legacy_import' });
    expect(job.cursor).toBe(String(ROWS));
    expect(job.ratePerSec).toBeGreaterThan(0);
    for (const k of ['createdAt', 'startedAt', 'endedAt', 'lastUpdateAt'] as const) expect(Date.parse(job[k]!)).not.toBeNaN();

    const sum = await eventsChecksum(p.id);
    expect(sum.rows).toBe(ROWS);
    expect(sum.ids).toBe(ROWS);
    clean = sum;

    // Every id is the UUIDv7 of (dataset, legacy key) at the legacy created_at.
    const rows = await ch().query<{ id: string; created_at_ms: number; properties: string; device_id: string; name: string; max_received: number }>(
      `SELECT toString(id) AS id, created_at_ms, properties, device_id, name FROM events WHERE project_id = {p:String}`,
      { p: p.id },
    );
    const legacy = await withPg((c) => c.query<{ id: string; ms: string; device_id: string }>(`SELECT id::text AS id, (extract(epoch from created_at) * 1000)::bigint::text AS ms, device_id FROM ${TABLE}`));
    const byKey = new Map(legacy.rows.map((r) => [r.id, r]));
    const seen = new Set<string>();
    for (const r of rows) {
      const props = JSON.parse(r.properties) as { id: string; speed: number; label: string };
      const src = byKey.get(String(props.id))!;
      expect(src).toBeDefined();
      seen.add(String(props.id));
      expect(r.id[14]).toBe('7');
      expect(uuidv7Time(r.id)).toBe(Number(src.ms));
      expect(Number(r.created_at_ms)).toBe(Number(src.ms));
      expect(r.id).toBe(legacyEventId('citylens', String(props.id), Number(src.ms)));
      expect(r.device_id).toBe(src.device_id);
      expect(r.name).toBe('legacy_track');
      expect(Object.keys(props).sort()).toEqual(['id', 'label', 'speed']);
    }
    expect(seen.size).toBe(ROWS);

    // Mapping complete, and the flag was set after the last row landed and before the job ended.
    const ds = await admin('GET', `/admin/datasets/citylens?projectId=${p.id}`);
    expect(ds.body).toMatchObject({ dataset: 'citylens', projectId: p.id, mapped: ROWS, held: 0 });
    const flagAt = Date.parse(ds.body.initialMigrationCompletedAt);
    const [last] = await ch().query<{ at: number }>('SELECT max(received_at_ms) AS at FROM events WHERE project_id = {p:String}', { p: p.id });
    expect(flagAt).toBeGreaterThanOrEqual(Number(last!.at));
    expect(flagAt).toBeLessThanOrEqual(Date.parse(job.endedAt!));
    const map = await ch().query<{ legacy_id: string; new_id: string }>(
      `SELECT legacy_id, toString(new_id) AS new_id FROM legacy_id_map WHERE project_id = {p:String} AND dataset = 'citylens' LIMIT 1 BY legacy_id`,
      { p: p.id },
    );
    expect(map).toHaveLength(ROWS);
    for (const m of map) expect(m.new_id).toBe(legacyEventId('citylens', m.legacy_id, Number(byKey.get(m.legacy_id)!.ms)));
  });

  it('a chunk that dies holding its lease is resumed by the watchdog, never run twice at once, and ends as a clean run; a re-run changes nothing', async () => {
    expect(clean).not.toBeNull();
    const p = await createProject('legacy-crash');
    const id = await startImport(importBody(p.id, 'citylens', TABLE, { chunkSize: 5000 }));
    await waitJob(id, (j) => j.rowsProcessed >= 15_000);
    expect((await admin('POST', `/admin/backfills/${id}/pause`)).status).toBe(200);
    const paused = await waitJob(id, (j) => j.state === 'paused');
    expect(paused.rowsProcessed).toBeLessThan(ROWS);

    // A worker claims the next chunk, writes its rows to ClickHouse, and dies before committing.
    const store = jobStore(env.DB);
    const row = (await store.get(id))!;
    const now = Date.now();
    await env.DB.prepare(`UPDATE jobs SET state = 'running', lease_version = lease_version + 1, lease_until = ? WHERE id = ?`).bind(now + LEASE_MS, id).run();
    const dead = await legacyImportRunner.runChunk(env, chunkInput(row));
    expect(dead.rows).toBe(5000);
    const midway = await eventsChecksum(p.id);
    expect(midway.rows).toBe(paused.rowsProcessed + 5000);

    // A stale copy of an earlier chunk message is a no-op while the lease is held.
    const held = (await store.get(id))!;
    const batch = createMessageBatch('driftline-jobs', [{ id: 'stale', timestamp: new Date(), attempts: 1, body: { jobId: id, version: held.leaseVersion - 1 } }]);
    const ctx = createExecutionContext();
    await worker.queue!(batch, env, ctx);
    expect((await getQueueResult(batch, ctx)).explicitAcks).toEqual(['stale']);
    // So is a duplicate of the current one: the lease is live, the claim fails.
    const dup = createMessageBatch('driftline-jobs', [{ id: 'dup', timestamp: new Date(), attempts: 1, body: { jobId: id, version: held.leaseVersion } }]);
    await worker.queue!(dup, env, ctx);
    expect((await store.get(id))!).toMatchObject({ leaseVersion: held.leaseVersion, leaseUntil: held.leaseUntil, rowsProcessed: paused.rowsProcessed });

    // The watchdog leaves a live lease alone...
    await runWatchdog(Date.now());
    expect((await store.get(id))!.leaseVersion).toBe(held.leaseVersion);
    // ...and re-kicks the job once the lease has lapsed; the replayed chunk adds no copies.
    await runWatchdog(now + LEASE_MS + 1000);
    expect((await store.get(id))!.leaseVersion).toBe(held.leaseVersion + 1);
    const done = await waitJob(id, (j) => j.state === 'succeeded' || j.state === 'failed');
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS, rowsTotal: ROWS, error: null });
    expect(await eventsChecksum(p.id)).toEqual(clean);

    // Run it again: the same final state.
    const again = await startImport(importBody(p.id, 'citylens', TABLE, { chunkSize: 20_000 }));
    expect(await waitJob(again, (j) => j.state === 'succeeded' || j.state === 'failed')).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS });
    expect(await eventsChecksum(p.id)).toEqual(clean);
    expect((await admin('GET', `/admin/datasets/citylens?projectId=${p.id}`)).body.mapped).toBe(ROWS);
    expect((await getJob(id)).state).toBe('succeeded');
  });
});
