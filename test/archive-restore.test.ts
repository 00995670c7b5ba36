// Restore jobs: a (project, month)'s archived payloads back in ClickHouse byte for byte, chunks kept
// and marked restored; a re-run or a run after a cut-short attempt writes nothing twice; a damaged
// chunk fails the job naming its key and writes nothing of it; bad requests get coded 4xx.
import { env, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { manifestStore } from '../src/archive/manifest';
import { monthOfMs } from '../src/archive/month';
import { jobStore } from '../src/jobs/store';
import { archiveMonth, corruptObject, monthEvents, payloadsInClickHouse, withMergesStopped, writeEvents } from './archive-fixtures';
import { admin, getJob, waitJob } from './backfill-helpers';
import { ADMIN_TOKEN, ch, createProject } from './helpers';
import type { JobView } from '../src/jobs/store';

const finished = (j: JobView) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled';

async function restore(projectId: string, month: string): Promise<JobView> {
  const r = await admin('POST', '/admin/archives/restore', { projectId, month, pauseMs: 0 });
  expect(r.status, JSON.stringify(r.body)).toBe(202);
  expect(r.body).toEqual({ id: expect.any(String), state: 'enqueued' });
  return waitJob(r.body.id as string, finished);
}

describe('restore jobs', () => {
  it('writes every archived payload back byte for byte and marks the chunks restored; the chunks stay', async () => {
    const p = await createProject('restore');
    const month = '2025-02';
    const rows = monthEvents(p.id, month, 23);
    const neighbour = monthEvents(p.id, '2025-01', 4, { seed: 'neighbour' });
    await writeEvents(p.id, [...rows, ...neighbour]);
    const archived = await archiveMonth(p.id, month, rows, { chunkRows: 10 });
    expect(archived.manifest.map((m) => m.rowCount)).toEqual([10, 10, 3]);
    expect((await payloadsInClickHouse(p.id, month)).rows).toBe(0);

    const job = await restore(p.id, month);
    expect(job.error).toBeNull();
    expect(job).toMatchObject({ type: 'restore', state: 'succeeded', rowsProcessed: 23, rowsTotal: 23, result: { chunks: 3, rows: 23, inserted: 23 } });

    const back = await payloadsInClickHouse(p.id, month);
    expect(back.rows).toBe(23);
    expect(back.ids).toBe(23);
    for (const e of rows) expect(back.byId.get(e.id)).toBe(e.payload);
    const times = await ch().query<{ id: string; created_at_ms: number; received_at_ms: number }>(
      'SELECT toString(id) AS id, created_at_ms, received_at_ms FROM event_payloads WHERE project_id = {p:String}',
      { p: p.id },
    );
    const byId = new Map(times.map((t) => [t.id, t]));
    for (const e of rows) expect([Number(byId.get(e.id)!.created_at_ms), Number(byId.get(e.id)!.received_at_ms)]).toEqual([e.createdAtMs, e.receivedAtMs]);
    // The neighbouring month was never archived and is untouched.
    expect((await payloadsInClickHouse(p.id, '2025-01')).rows).toBe(4);

    const manifest = await manifestStore(env.DB).list(p.id, month);
    expect(manifest.every((m) => m.restoredAt !== null && m.verifiedAt !== null)).toBe(true);
    for (const m of archived.manifest) {
      const obj = await env.ARCHIVE.head(m.key);
      expect(obj?.size).toBe(m.compressedBytes);
    }

    // Restoring again converges: nothing more is written (merges held off, so a copy would show).
    await withMergesStopped('event_payloads', async () => {
      const again = await restore(p.id, month);
      expect(again).toMatchObject({ state: 'succeeded', rowsProcessed: 23, rowsTotal: 23, result: { chunks: 3, rows: 23, inserted: 0 } });
      const [count] = await ch().query<{ rows: number; ids: number }>(
        'SELECT count() AS rows, uniqExact(id) AS ids FROM event_payloads WHERE project_id = {p:String}',
        { p: p.id },
      );
      expect([Number(count!.rows), Number(count!.ids)]).toEqual([27, 27]);
    });
  });

  it('after an attempt cut short (some rows already back), writes only the rest', async () => {
    const p = await createProject('restore-partial');
    const month = '2025-05';
    const rows = monthEvents(p.id, month, 12);
    await writeEvents(p.id, rows);
    await archiveMonth(p.id, month, rows, { chunkRows: 5 });
    // What a crashed attempt may leave: part of a chunk's rows written back.
    const already = [rows[1]!, rows[6]!, rows[7]!];
    await ch().insert(
      'event_payloads',
      already.map((e) => ({ id: e.id, project_id: p.id, created_at_ms: e.createdAtMs, received_at_ms: e.receivedAtMs, payload: e.payload })),
    );
    await withMergesStopped('event_payloads', async () => {
      const job = await restore(p.id, month);
      expect(job).toMatchObject({ state: 'succeeded', result: { chunks: 3, rows: 12, inserted: 9 } });
      const back = await payloadsInClickHouse(p.id, month);
      expect([back.rows, back.ids]).toEqual([12, 12]);
      for (const e of rows) expect(back.byId.get(e.id)).toBe(e.payload);
    });
  });

  it('a corrupted chunk fails the job with an error naming its key, and nothing of it is written', async () => {
    const p = await createProject('restore-corrupt');
    const month = '2024-08';
    const rows = monthEvents(p.id, month, 10);
    await writeEvents(p.id, rows);
    const archived = await archiveMonth(p.id, month, rows, { chunkRows: 5 });
    const bad = archived.manifest[1]!;
    await corruptObject(bad.key);

    const job = await restore(p.id, month);
    expect(job.state).toBe('failed');
    expect(job.error).toContain(bad.key);
    expect(job.error).toMatch(/sha256_mismatch/);
    expect(job.attempts).toBe(1);
    // The sound chunk before it came back; none of the damaged chunk's rows did.
    const back = await payloadsInClickHouse(p.id, month);
    const badIds = new Set(rows.slice(5).map((e) => e.id));
    expect(back.rows).toBe(5);
    for (const id of back.byId.keys()) expect(badIds.has(id)).toBe(false);
    const manifest = await manifestStore(env.DB).list(p.id, month);
    expect(manifest.map((m) => m.restoredAt !== null)).toEqual([true, false]);
    // Half restored is not restored: the listing says partial.
    const listing = await admin('GET', `/admin/archives?projectId=${p.id}&month=${month}`);
    expect(listing.body.archives).toEqual([expect.objectContaining({ state: 'partial', restoredAt: null, pendingRows: 5 })]);
  });

  it('a chunk missing from R2 fails the job before anything is written', async () => {
    const p = await createProject('restore-missing');
    const month = '2024-09';
    const rows = monthEvents(p.id, month, 6);
    await writeEvents(p.id, rows);
    const archived = await archiveMonth(p.id, month, rows, { chunkRows: 3 });
    await env.ARCHIVE.delete(archived.manifest[1]!.key);
    const job = await restore(p.id, month);
    expect(job.state).toBe('failed');
    expect(job.error).toContain(archived.manifest[1]!.key);
    expect(job.error).toMatch(/missing/);
    expect((await payloadsInClickHouse(p.id, month)).rows).toBe(0);
  });

  it('never runs beside an archive job of the same month: started anyway, it fails at once and writes nothing', async () => {
    const p = await createProject('restore-beside-archive');
    const month = '2024-08';
    const rows = monthEvents(p.id, month, 6);
    await writeEvents(p.id, rows);
    await archiveMonth(p.id, month, rows, { chunkRows: 3 });
    // An archive job of the month holds it (paused: no chunk of it runs); the route would refuse
    // the restore, so it is started as two racing requests could have started it.
    const store = jobStore(env.DB);
    const holder = await store.create(crypto.randomUUID(), 'archive', { projectId: p.id, month }, Date.now() - 1000);
    expect(await store.transition(holder.id, 'enqueued', 'paused', Date.now())).not.toBeNull();
    const { startJob } = await import('../src/jobs/actions');
    const job = await waitJob((await startJob(env, 'restore', { projectId: p.id, month, pauseMs: 0 })).id, (j) => ['succeeded', 'failed'].includes(j.state));
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/holds/);
    expect((await payloadsInClickHouse(p.id, month)).rows).toBe(0);
  });

  it('refuses bad requests with coded 4xx', async () => {
    const p = await createProject('restore-input');
    const month = '2024-07';
    const rows = monthEvents(p.id, month, 2);
    await writeEvents(p.id, rows);
    await archiveMonth(p.id, month, rows);
    const current = monthOfMs(Date.now());
    const future = `${Number(current.slice(0, 4)) + 1}${current.slice(4)}`;
    const cases: Array<[unknown, number, string]> = [
      [{ projectId: p.id, month: '2024-13' }, 400, 'invalid_month'],
      [{ projectId: p.id, month: '2024-7' }, 400, 'invalid_month'],
      [{ projectId: p.id, month: current }, 400, 'current_month'],
      [{ projectId: p.id, month: future }, 400, 'future_month'],
      [{ projectId: 'no-such-project', month }, 400, 'unknown_project'],
      [{ projectId: p.id, month: '2020-01' }, 409, 'nothing_to_restore'],
      [{ projectId: p.id }, 400, 'invalid_request'],
      [{ projectId: p.id, month, extra: true }, 400, 'invalid_request'],
    ];
    for (const [body, status, code] of cases) {
      const r = await admin('POST', '/admin/archives/restore', body);
      expect([r.status, r.body.error?.code], JSON.stringify(body)).toEqual([status, code]);
    }
    const malformed = await SELF.fetch('http://gw/admin/archives/restore', {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: '{"projectId": ',
    });
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    const anon = await SELF.fetch('http://gw/admin/archives/restore', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ projectId: p.id, month }) });
    expect(anon.status).toBe(401);

    // A job of the same (project, month) holding it, or an erasure of the project: 409, nothing started.
    const store = jobStore(env.DB);
    for (const [type, params, code] of [
      ['archive', { projectId: p.id, month }, 'archive_already_active'],
      ['restore', { projectId: p.id, month, pauseMs: 0 }, 'archive_already_active'],
      ['erasure', { projectId: p.id, deviceId: 'dev-a' }, 'erasure_active'],
    ] as const) {
      const blocker = await store.create(crypto.randomUUID(), type, params, Date.now());
      try {
        const r = await admin('POST', '/admin/archives/restore', { projectId: p.id, month });
        expect([r.status, r.body.error?.code, r.body.error?.details?.id], type).toEqual([409, code, blocker.id]);
      } finally {
        // No message was sent for it: settle it so the watchdog never picks it up.
        await store.transition(blocker.id, 'enqueued', 'cancelled', Date.now());
      }
    }
    // With the blockers settled, the restore starts.
    const job = await restore(p.id, month);
    expect(job.state).toBe('succeeded');
    expect((await getJob(job.id)).result).toEqual({ chunks: 1, rows: 2, inserted: 2 });
  });
});
