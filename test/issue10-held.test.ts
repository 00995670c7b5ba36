// A documented-maximum batch (10 MB: 320 events of 32 KB) of realtime events for a dataset whose
// import has not completed is held whole, and released page by page (bounded in bytes) once it has.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { MAX_BODY_BYTES, MAX_EVENT_BYTES } from '../src/ingest/wire';
import { countHeld, releaseHeldEvents, releasePageEnd } from '../src/legacy/realtime';
import { admin, createLegacyTable, importBody, suffix, waitJob } from './backfill-helpers';
import { ch, createProject, postBatch, trackEvent, waitUntil } from './helpers';

const utf8 = (s: string) => new TextEncoder().encode(s).length;

/** A row of exactly `bytes` UTF-8 bytes, many short fields (escaping grows it when held as JSON). */
function heavyRow(bytes: number, props: Record<string, unknown>) {
  const properties: Record<string, unknown> = { place: 'Łódź', ...props, pad: '' };
  const row = trackEvent('telemetry', properties);
  let size = utf8(JSON.stringify(row));
  for (let k = 0; size + 24 < bytes; k++) {
    properties[`f${k}`] = `"${k}"`;
    size += utf8(`"f${k}":${JSON.stringify(`"${k}"`)},`);
  }
  properties.pad = 'x'.repeat(Math.max(0, bytes - utf8(JSON.stringify(row))));
  return row;
}

async function storedTelemetry(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>(
    "SELECT count() AS rows, uniqExact(id) AS ids FROM events WHERE project_id = {p:String} AND name = 'telemetry'",
    { p: projectId },
  );
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

describe('held realtime events at the batch limits', { timeout: 600_000 }, () => {
  it('holds a 10 MB batch of 320 events of 32 KB whole, and releases every one once the import completes', async () => {
    const p = await createProject('held-10mb');
    const base = Date.now() - 30 * 60_000;
    const events = Array.from({ length: 320 }, (_, i) =>
      heavyRow(MAX_EVENT_BYTES - 100, { __deviceId: `truck-${i % 3}`, __dataset: 'fleetone', __legacyId: `big-${i}`, __timestamp: base + i * 1000, seq: i }),
    );
    const body = JSON.stringify({ events });
    expect(utf8(body)).toBeLessThanOrEqual(MAX_BODY_BYTES);
    expect(utf8(body)).toBeGreaterThan(MAX_BODY_BYTES - 100 * 1024);
    const res = await postBatch(p, body);
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({ accepted: 320, duplicates: 0, rejected: [] });
    const key = { projectId: p.id, dataset: 'fleetone' };
    expect(await countHeld(env.DB, key)).toBe(320);
    expect((await admin('GET', `/admin/datasets/fleetone?projectId=${p.id}`)).body).toMatchObject({ held: 320, initialMigrationCompletedAt: null });
    expect(await storedTelemetry(p.id)).toEqual({ rows: 0, ids: 0 });

    // The project's import of the dataset completes: its last step releases the backlog (as much
    // as fits its time budget); a further release, as the watchdog runs it, takes the rest.
    const table = `held_big_${suffix()}`;
    await createLegacyTable(table, 20);
    const job = await admin('POST', '/admin/backfills', importBody(p.id, 'fleetone', table));
    expect(job.status).toBe(202);
    expect(await waitJob(job.body.id, (j) => j.state === 'succeeded' || j.state === 'failed', 300_000)).toMatchObject({ state: 'succeeded' });
    await releaseHeldEvents(env, key, { maxMs: 600_000 });
    expect(await countHeld(env.DB, key)).toBe(0);
    expect((await admin('GET', `/admin/datasets/fleetone?projectId=${p.id}`)).body).toMatchObject({ held: 0 });
    await waitUntil(() => storedTelemetry(p.id), (c) => c.ids >= 320, { timeoutMs: 300_000 });
    expect(await storedTelemetry(p.id)).toEqual({ rows: 320, ids: 320 });
  });
});

describe('a release page', () => {
  it('ends at the byte budget, and always takes at least one row', () => {
    const rows = (sizes: number[]) => sizes.map((bytes, i) => ({ seq: i + 1, bytes }));
    expect(releasePageEnd([], 100)).toBeNull();
    expect(releasePageEnd(rows([10, 20, 30]), 100)).toBe(3);
    expect(releasePageEnd(rows([40, 40, 40]), 100)).toBe(2);
    expect(releasePageEnd(rows([60, 40, 1]), 100)).toBe(2);
    // A single row over the budget still goes, alone: a page never stalls the release.
    expect(releasePageEnd(rows([500, 1]), 100)).toBe(1);
  });
});
