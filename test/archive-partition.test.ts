// An archive job empties a month by dropping its partition when nothing else is in it (every
// project of the month archived) and the server can do so without racing a writer (26.x: the
// partition is moved aside, what should stay goes back, then it is dropped); a month another
// project shares loses only the archived rows; a crash with the partition moved aside converges.
// The months here are written by no other test, so their partitions hold only what these put there.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { ArchiveRow } from '../src/archive/chunk';
import { archiveMonth, chunksOf, expectConverged, insertRows, listArchives, makeRows, payloadsInClickHouse, runArchiveJob } from './archive-helpers';
import { startErasure, waitFinished } from './erasure-fixtures';
import { ch, createProject } from './helpers';

/** Live rows of one partition of a table, and its active parts (none once it was dropped). */
async function partition(table: 'event_payloads' | 'event_payloads_parked', month: string): Promise<{ rows: number; parts: number }> {
  const id = month.replace('-', '');
  const [live] = await ch().query<{ n: number | string }>(`SELECT count() AS n FROM ${table} WHERE toYYYYMM(created_at) = {m:UInt32}`, { m: Number(id) });
  const [parts] = await ch().query<{ n: number | string }>(
    'SELECT count() AS n FROM system.parts WHERE database = currentDatabase() AND table = {t:String} AND partition = {p:String} AND active AND rows > 0',
    { t: table, p: id },
  );
  return { rows: Number(live?.n ?? 0), parts: Number(parts?.n ?? 0) };
}

const byId = (rows: readonly ArchiveRow[]) => new Map(rows.map((r) => [r.id, r]));

async function seed(tag: string, month: string, count = 7): Promise<{ projectId: string; rows: ArchiveRow[] }> {
  const p = await createProject(`part-${tag}`);
  const rows = makeRows(`part-${tag}`, count, Date.parse(`${month}-03T08:00:00.000Z`), 3_600_000);
  await insertRows(p.id, rows);
  return { projectId: p.id, rows };
}

describe(`archive clears by partition on ClickHouse ${env.TEST_CLICKHOUSE_GENERATION}`, () => {
  it('drops the partition of a month that holds nothing but the archived payloads (26.x; a delete on 18.16): archived exactly either way', async () => {
    const { projectId, rows } = await seed('solo', '2019-02');
    const movable = (await ch().version()).movePartition;
    expect(await partition('event_payloads', '2019-02')).toMatchObject({ rows: 7 });
    const job = await archiveMonth(projectId, '2019-02', { chunkRows: 3 });
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { chunks: 3, rows: 7, state: 'archived', pendingRows: 0 } });
    expect(await expectConverged(projectId, '2019-02')).toEqual(byId(rows));
    // A lightweight delete leaves its parts in place (rows masked); a drop leaves none.
    expect(await partition('event_payloads', '2019-02')).toEqual({ rows: 0, parts: movable ? 0 : expect.any(Number) });
    expect(await partition('event_payloads_parked', '2019-02')).toEqual({ rows: 0, parts: 0 });
  });

  it('clears only the archived rows of a month another project shares; the last project archived drops the partition (26.x)', async () => {
    const a = await seed('shared-a', '2019-03');
    const b = await seed('shared-b', '2019-03', 4);
    const movable = (await ch().version()).movePartition;
    // The seam stops a clear by partition drop after the move: never reached while b's rows are there.
    const first = await runArchiveJob({ projectId: a.projectId, month: '2019-03', chunkRows: 3, faults: { at: 'afterMove', mode: 'fail' } });
    expect(first).toMatchObject({ state: 'succeeded', error: null, result: { chunks: 3, rows: 7, state: 'archived' } });
    expect(await expectConverged(a.projectId, '2019-03')).toEqual(byId(a.rows));
    expect(await payloadsInClickHouse(b.projectId, '2019-03')).toEqual(new Map(b.rows.map((r) => [r.id, r.payload])));
    expect((await partition('event_payloads', '2019-03')).parts).toBeGreaterThan(0);

    const second = await runArchiveJob({ projectId: b.projectId, month: '2019-03', faults: { at: 'afterMove', mode: 'fail' } });
    if (!movable) {
      expect(second).toMatchObject({ state: 'succeeded', result: { chunks: 1, rows: 4, state: 'archived' } });
    } else {
      // Now the month holds only b's payloads: the drop is under way when the seam stops it.
      expect(second).toMatchObject({ state: 'failed', error: expect.stringContaining('injected crash (test seam) afterMove of chunk 1') });
      expect(await archiveMonth(b.projectId, '2019-03')).toMatchObject({ state: 'succeeded', result: { chunks: 0, monthChunks: 1, state: 'archived', pendingRows: 0 } });
    }
    expect(await expectConverged(b.projectId, '2019-03')).toEqual(byId(b.rows));
    expect(await expectConverged(a.projectId, '2019-03')).toEqual(byId(a.rows));
    expect(await partition('event_payloads', '2019-03')).toEqual({ rows: 0, parts: movable ? 0 : expect.any(Number) });
  });

  it('a crash with the partition moved aside loses nothing: a re-run puts back what was parked, clears what its chunks hold, and archives a row written meanwhile; another project\'s row stays', async () => {
    const { projectId, rows } = await seed('crash', '2019-05');
    const other = await createProject('part-crash-other');
    const movable = (await ch().version()).movePartition;
    const crashed = await runArchiveJob({ projectId, month: '2019-05', chunkRows: 3, faults: { at: 'afterMove', chunk: 2, mode: 'fail' } });
    if (!movable) {
      // 18.16 cannot move a partition: the month is cleared by a delete and the seam never fires.
      expect(crashed).toMatchObject({ state: 'succeeded', error: null, result: { chunks: 3, rows: 7 } });
      expect(await expectConverged(projectId, '2019-05')).toEqual(byId(rows));
      return;
    }
    expect(crashed).toMatchObject({ state: 'failed', error: expect.stringContaining('injected crash (test seam) afterMove of chunk 2') });
    // Every chunk verified, none cleared; the payloads are parked, not lost.
    expect((await chunksOf(projectId, '2019-05')).map((c) => [c.number, c.verifiedAt !== null, c.clearedAt])).toEqual([
      [1, true, null],
      [2, true, null],
      [3, true, null],
    ]);
    expect((await payloadsInClickHouse(projectId, '2019-05')).size).toBe(0);
    expect(await partition('event_payloads_parked', '2019-05')).toMatchObject({ rows: 7 });
    // Parked payloads still count as the month's, waiting: the month shows partial, and the sweep sees it.
    const listed = await listArchives(`?projectId=${projectId}&month=2019-05`);
    expect(listed.body.archives).toEqual([expect.objectContaining({ state: 'partial', chunks: 3, pendingRows: 7 })]);
    // Rows written between the check and the move went aside with the rest: a late one of this
    // project (in no chunk) and one of another project.
    const late = makeRows('part-crash-late', 1, Date.parse('2019-05-20T00:00:00.000Z'));
    const theirs = makeRows('part-crash-theirs', 1, Date.parse('2019-05-21T00:00:00.000Z'));
    await insertRows(projectId, late, true, 'event_payloads_parked');
    await insertRows(other.id, theirs, true, 'event_payloads_parked');

    const rerun = await archiveMonth(projectId, '2019-05', { chunkRows: 3 });
    expect(rerun).toMatchObject({ state: 'succeeded', error: null, result: { chunks: 1, rows: 1, monthChunks: 4, state: 'archived', pendingRows: 0 } });
    expect(await expectConverged(projectId, '2019-05')).toEqual(byId([...rows, ...late]));
    expect(await payloadsInClickHouse(other.id, '2019-05')).toEqual(new Map([[theirs[0]!.id, theirs[0]!.payload]]));
    expect(await partition('event_payloads_parked', '2019-05')).toEqual({ rows: 0, parts: 0 });
    expect(await archiveMonth(projectId, '2019-05')).toMatchObject({ state: 'succeeded', result: { chunks: 0, monthChunks: 4 } });
  });

  it('the engine retries a chunk cut short with the partition moved aside, and the same job converges', async () => {
    const { projectId, rows } = await seed('retry', '2019-06');
    const job = await runArchiveJob({ projectId, month: '2019-06', chunkRows: 3, faults: { at: 'afterMove', mode: 'retry' } });
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: 7, result: { rows: 7, monthChunks: 3, state: 'archived', pendingRows: 0 } });
    // The cut-short attempt's error stays on the job record (18.16 never gets there).
    if ((await ch().version()).movePartition) expect(job.error).toContain('injected crash (test seam) afterMove of chunk 1');
    else expect(job.error).toBeNull();
    expect(await expectConverged(projectId, '2019-06')).toEqual(byId(rows));
    expect(await partition('event_payloads', '2019-06')).toMatchObject({ rows: 0 });
    expect(await partition('event_payloads_parked', '2019-06')).toEqual({ rows: 0, parts: 0 });
  });

  it('an erasure moves back what a cut-short drop left parked, then counts and removes the subject\'s payloads (26.x)', async () => {
    const { projectId, rows } = await seed('erase', '2019-07', 9);
    const movable = (await ch().version()).movePartition;
    const crashed = await runArchiveJob({ projectId, month: '2019-07', chunkRows: 3, faults: { at: 'afterMove', mode: 'fail' } });
    if (!movable) {
      expect(crashed).toMatchObject({ state: 'succeeded', result: { rows: 9 } });
      return;
    }
    expect(crashed).toMatchObject({ state: 'failed', error: expect.stringContaining('afterMove') });
    expect(await partition('event_payloads_parked', '2019-07')).toMatchObject({ rows: 9 });
    const gone = rows.filter((r) => r.deviceId === 'dev-1');
    const erasure = await waitFinished(await startErasure({ projectId, deviceId: 'dev-1' }));
    expect(erasure).toMatchObject({ state: 'succeeded', result: { clickhouse: { payloads: gone.length }, r2: { rows: gone.length } } });
    const [left] = await ch().query<{ n: number | string }>(
      `SELECT count() AS n FROM event_payloads_parked WHERE project_id = {p:String} AND id IN {ids:Array(UUID)}`,
      { p: projectId, ids: gone.map((r) => r.id) },
    );
    expect(Number(left?.n)).toBe(0);
    // The erasure moved the parked partition back before it counted: the others' payloads wait in ClickHouse.
    expect(await partition('event_payloads_parked', '2019-07')).toEqual({ rows: 0, parts: 0 });
    expect(new Set((await payloadsInClickHouse(projectId, '2019-07')).keys())).toEqual(new Set(rows.filter((r) => r.deviceId !== 'dev-1').map((r) => r.id)));
    // The rest of the month archives as usual afterwards.
    expect(await archiveMonth(projectId, '2019-07', { chunkRows: 3 })).toMatchObject({ state: 'succeeded' });
    expect(await expectConverged(projectId, '2019-07')).toEqual(byId(rows.filter((r) => r.deviceId !== 'dev-1')));
    expect(await partition('event_payloads_parked', '2019-07')).toEqual({ rows: 0, parts: 0 });
  });
});
