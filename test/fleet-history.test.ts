// Positions that arrive through a legacy import join the fleet views: the import's completion starts
// a fleet recompute over the span it imported.
import { expect, it } from 'vitest';
import { admin, importBody, startImport, suffix, waitJob, withPg } from './backfill-helpers';
import { createProject, getJson, waitUntil } from './helpers';

const finished = (j: { state: string }) => ['succeeded', 'failed', 'cancelled'].includes(j.state);

it('recomputes the fleet views after an import of positions', async () => {
  const table = `legacy_positions_${suffix()}`;
  await withPg(async (c) => {
    await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text, created_at timestamptz, lat double precision, lon double precision, speed double precision)`);
    // Twenty days ago: a van driving east for ten minutes, a fix every 20 s.
    await c.query(
      `INSERT INTO ${table} SELECT g, 'van-7', now() - interval '20 days' + g * interval '20 seconds', 52.52, 13.40 + g * 0.001, 40 FROM generate_series(1, 30) g`,
    );
  });
  const p = await createProject('fleet-history');
  const body = importBody(p.id, 'fleetone', table);
  body.source = { ...body.source, name: 'position' };
  const job = await waitJob(await startImport(body), finished, 90_000);
  expect(job.state).toBe('succeeded');
  // The import's completion started the recompute; it runs on the job engine like any job.
  const recompute = await waitUntil(
    async () => ((await admin('GET', '/admin/backfills')).body.backfills as Array<{ id: string; type: string; state: string }>).find((j) => j.type === 'fleet_recompute' && j.id !== job.id),
    (j) => j !== undefined && finished(j),
    { timeoutMs: 90_000 },
  );
  expect(recompute!.state).toBe('succeeded');
  const live = await getJson<{ vehicles: Array<{ deviceId: string; lat: number; lon: number }> }>(p, '/v1/fleet/live');
  expect(live.body.vehicles).toEqual([expect.objectContaining({ deviceId: 'van-7', lat: 52.52 })]);
  expect(live.body.vehicles[0]!.lon).toBeCloseTo(13.43, 6);
});
