// A legacy import stores each source row (every column, as JSON) as its event's raw payload,
// exactly once: a re-run, or a replay after an attempt cut short between the two writes, adds none.
import { describe, expect, it } from 'vitest';
import { deleteRows } from '../src/clickhouse/mutations';
import type { JobView } from '../src/jobs/store';
import { legacyEventId } from '../src/legacy/translate';
import { withMergesStopped } from './archive-fixtures';
import { importBody, startImport, suffix, waitJob, withPg } from './backfill-helpers';
import { ch, createProject } from './helpers';

const COLUMNS = ['id', 'device_id', 'created_at', 'speed', 'label', 'meta', 'active', 'odometer', 'tags', 'note', 'recorded'];
const ROWS = 240;
/** Rows without a device cannot become events (skipped), so they get no payload either. */
const SKIPPED = ROWS / 40;

const finished = (j: JobView) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled';

async function createSourceTable(table: string): Promise<void> {
  await withPg(async (c) => {
    await c.query(`DROP TABLE IF EXISTS ${table}`);
    await c.query(`CREATE TABLE ${table} (
      id bigint PRIMARY KEY, device_id text, created_at timestamptz NOT NULL, speed double precision, label text,
      meta jsonb, active boolean, odometer bigint, tags text[], note text, recorded date)`);
    await c.query(
      `INSERT INTO ${table}
       SELECT g, CASE WHEN g % 40 = 0 THEN NULL ELSE 'veh-' || (g % 7) END,
              timestamptz '2023-06-01 00:00:00.123456+00' + g * interval '37 seconds',
              g / 4.0, 'trip "' || (g / 10) || E'"\\n', jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x')),
              g % 2 = 0, 9007199254740993 + g, ARRAY['a', 'b' || g], CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END,
              date '2023-06-01' + g
         FROM generate_series(1, $1::int) g`,
      [ROWS],
    );
  });
}

interface SourceRow {
  id: string;
  device_id: string | null;
  created_at_iso: string;
  created_at_ms: string;
  speed: number;
  label: string;
  meta: unknown;
  active: boolean;
  odometer: string;
  tags: string[];
  note: string | null;
  recorded: string;
}

async function sourceRows(table: string): Promise<SourceRow[]> {
  return withPg(async (c) => {
    const r = await c.query<SourceRow>(
      `SELECT id::text AS id, device_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at_iso,
              (extract(epoch from created_at) * 1000)::bigint::text AS created_at_ms, speed, label, meta, active, odometer::text AS odometer,
              tags, note, recorded::text AS recorded
         FROM ${table} ORDER BY created_at`,
    );
    return r.rows;
  });
}

async function payloadCounts(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>('SELECT count() AS rows, uniqExact(id) AS ids FROM event_payloads WHERE project_id = {p:String}', { p: projectId });
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

async function eventCounts(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>('SELECT count() AS rows, uniqExact(id) AS ids FROM events WHERE project_id = {p:String}', { p: projectId });
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

async function runImport(projectId: string, table: string): Promise<JobView> {
  const id = await startImport(importBody(projectId, 'citylens', table, { chunkSize: 100 }));
  const job = await waitJob(id, finished);
  expect(job.error).toBeNull();
  expect(job.state).toBe('succeeded');
  return job;
}

describe('legacy import payloads', () => {
  it('stores every imported row, all its columns, as the raw payload of its event, once', async () => {
    const table = `legacy_payloads_${suffix()}`;
    await createSourceTable(table);
    const p = await createProject('legacy-payloads');
    const job = await runImport(p.id, table);
    expect(job).toMatchObject({ rowsProcessed: ROWS, rowsSkipped: SKIPPED });

    const imported = ROWS - SKIPPED;
    expect(await payloadCounts(p.id)).toEqual({ rows: imported, ids: imported });
    expect(await eventCounts(p.id)).toEqual({ rows: imported, ids: imported });

    const payloads = await ch().query<{ id: string; created_at_ms: number; received_at_ms: number; payload: string }>(
      'SELECT toString(id) AS id, created_at_ms, received_at_ms, payload FROM event_payloads WHERE project_id = {p:String}',
      { p: p.id },
    );
    const events = new Map(
      (
        await ch().query<{ id: string; created_at_ms: number; received_at_ms: number }>(
          'SELECT toString(id) AS id, created_at_ms, received_at_ms FROM events WHERE project_id = {p:String}',
          { p: p.id },
        )
      ).map((e) => [e.id, e]),
    );
    const byId = new Map(payloads.map((r) => [r.id, r]));
    for (const src of await sourceRows(table)) {
      const id = legacyEventId('citylens', src.id, Number(src.created_at_ms));
      const row = byId.get(id);
      if (src.device_id === null) {
        expect(row).toBeUndefined();
        continue;
      }
      expect(row, `payload of legacy row ${src.id}`).toBeDefined();
      // The payload row is its event's: same id, same times.
      const event = events.get(id)!;
      expect([Number(row!.created_at_ms), Number(row!.received_at_ms)]).toEqual([Number(event.created_at_ms), Number(event.received_at_ms)]);
      const payload = JSON.parse(row!.payload) as Record<string, unknown>;
      expect(Object.keys(payload)).toEqual(COLUMNS);
      expect(payload).toEqual({
        id: src.id,
        device_id: src.device_id,
        created_at: src.created_at_iso,
        speed: src.speed,
        label: src.label,
        meta: src.meta,
        active: src.active,
        odometer: src.odometer,
        tags: src.tags,
        note: src.note,
        recorded: `${src.recorded}T00:00:00.000Z`,
      });
    }

    // A re-run (another import of the same dataset into the project) adds nothing.
    await runImport(p.id, table);
    expect(await payloadCounts(p.id)).toEqual({ rows: imported, ids: imported });
    expect(await eventCounts(p.id)).toEqual({ rows: imported, ids: imported });
  });

  it('a replay writes a payload only with its event: never twice, never again once its event is in', async () => {
    const table = `legacy_payloads_replay_${suffix()}`;
    await createSourceTable(table);
    const p = await createProject('legacy-payloads-replay');
    await runImport(p.id, table);
    const imported = ROWS - SKIPPED;
    const src = await sourceRows(table);
    const ms = (k: number) => Number(src[k - 1]!.created_at_ms);

    // Rows 1–60: an attempt cut short after the payloads, before the events (payloads in, events not).
    await deleteRows(ch(), 'events', 'project_id = {p:String} AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}', { p: p.id, from: ms(1), to: ms(60) });
    // Rows 101–140: payloads gone while the events stay (as an archive run leaves them: in R2, cleared here).
    await deleteRows(ch(), 'event_payloads', 'project_id = {p:String} AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}', {
      p: p.id,
      from: ms(101),
      to: ms(140),
    });
    const eventsLost = src.slice(0, 60).filter((r) => r.device_id !== null).length;
    const payloadsCleared = src.slice(100, 140).filter((r) => r.device_id !== null).length;
    expect(await eventCounts(p.id)).toEqual({ rows: imported - eventsLost, ids: imported - eventsLost });
    expect(await payloadCounts(p.id)).toEqual({ rows: imported - payloadsCleared, ids: imported - payloadsCleared });

    // Merges held off (after the deletes: they are mutations), so a copy written twice would show.
    await withMergesStopped('event_payloads', async () => {
      await runImport(p.id, table);
      // Events are whole again; the payloads that were there are not doubled, the cleared ones not rewritten.
      expect(await eventCounts(p.id)).toEqual({ rows: imported, ids: imported });
      expect(await payloadCounts(p.id)).toEqual({ rows: imported - payloadsCleared, ids: imported - payloadsCleared });
    });
  });
});
