// Deleting rows on both generations: a lightweight DELETE (26.x) or a mutation awaited in
// system.mutations (18.16); when deleteRows returns, the rows are gone and nothing else is. A
// partition that holds nothing but the rows to delete is dropped instead where the server can move
// a partition aside first (26.x), and a write that races the drop survives it.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { PART_DROP_TRIES, deleteRows, dropPartitionsOf, unparkPartitions } from '../src/clickhouse/mutations';
import { hash128, uuidv7At } from '../src/lib/ids';
import { ch } from './helpers';

const T0 = Date.UTC(2026, 0, 15);

function payload(projectId: string, i: number, t0 = T0) {
  return { id: uuidv7At(t0 + i, hash128(`${projectId}:${i}`)), project_id: projectId, created_at_ms: t0 + i, received_at_ms: t0 + i, payload: `{"i":${i}}` };
}

async function ids(projectId: string, table = 'event_payloads'): Promise<string[]> {
  const rows = await ch().query<{ id: string }>(`SELECT DISTINCT toString(id) AS id FROM ${table} WHERE project_id = {p:String} ORDER BY id`, { p: projectId });
  return rows.map((r) => r.id);
}

/** Active parts of one partition of a table (0 once the partition is dropped). */
async function activeParts(table: string, partition: number): Promise<number> {
  const [row] = await ch().query<{ n: number | string }>(
    'SELECT count() AS n FROM system.parts WHERE database = currentDatabase() AND table = {t:String} AND partition = {p:String} AND active AND rows > 0',
    { t: table, p: String(partition) },
  );
  return Number(row?.n ?? 0);
}

describe(`deleteRows on ClickHouse ${env.TEST_CLICKHOUSE_GENERATION}`, () => {
  it('removes exactly the matching rows, with a subquery on another table, before it returns', async () => {
    const a = `mut-a-${crypto.randomUUID()}`;
    const b = `mut-b-${crypto.randomUUID()}`;
    const rowsA = Array.from({ length: 10 }, (_, i) => payload(a, i));
    const rowsB = Array.from({ length: 5 }, (_, i) => payload(b, i));
    await ch().insert('event_payloads', [...rowsA, ...rowsB]);
    // The subject's ids come from another table, as an erasure finds a device's payloads through events.
    await ch().insert(
      'events',
      rowsA.slice(0, 4).map((r) => ({ id: r.id, project_id: a, device_id: 'gone', session_id: '', profile_id: '', type: 'track', name: 'x', created_at_ms: r.created_at_ms, received_at_ms: r.received_at_ms, synced_at_ms: 0, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '', timezone: '', latitude: null, longitude: null })),
    );
    await deleteRows(ch(), 'event_payloads', 'project_id = {p:String} AND id IN (SELECT id FROM events WHERE project_id = {p:String} AND device_id = {d:String})', { p: a, d: 'gone' });
    expect(await ids(a)).toEqual(rowsA.slice(4).map((r) => r.id).sort());
    expect(await ids(b)).toEqual(rowsB.map((r) => r.id).sort());

    await deleteRows(ch(), 'event_payloads', 'project_id = {p:String} AND created_at_ms >= {from:Int64} AND created_at_ms < {to:Int64}', { p: a, from: T0 + 4, to: T0 + 8 });
    expect(await ids(a)).toEqual(rowsA.slice(8).map((r) => r.id).sort());
    expect(await ids(b)).toHaveLength(5);
  });

  it('deletes parked rows of the table too: a partition moved aside and left there by a crash cannot bring them back', async () => {
    const a = `mut-park-${crypto.randomUUID()}`;
    const rows = Array.from({ length: 4 }, (_, i) => payload(a, i));
    await ch().insert('event_payloads_parked', rows);
    await deleteRows(ch(), 'event_payloads', 'project_id = {p:String} AND created_at_ms < {to:Int64}', { p: a, to: T0 + 2 });
    const v = await ch().version();
    // 18.16 never parks anything (it cannot move a partition), so nothing there is touched.
    expect(await ids(a, 'event_payloads_parked')).toEqual((v.movePartition ? rows.slice(2) : rows).map((r) => r.id).sort());
    await ch().command('ALTER TABLE event_payloads_parked DELETE WHERE project_id = {p:String}', { p: a }, v.lightweightDelete ? { mutations_sync: 2 } : undefined);
  });

  it('drops a partition that holds nothing but the rows to delete (26.x), keeps a row written after the move, and leaves a shared partition to a row delete', async () => {
    // Months no other test writes: their partitions hold only what this test puts there.
    const soloT0 = Date.UTC(2017, 2, 10);
    const sharedT0 = Date.UTC(2017, 3, 10);
    const a = `mut-drop-a-${crypto.randomUUID()}`;
    const b = `mut-drop-b-${crypto.randomUUID()}`;
    const soloA = Array.from({ length: 6 }, (_, i) => payload(a, i, soloT0));
    const afterB = payload(b, 100, soloT0);
    const sharedA = Array.from({ length: 3 }, (_, i) => payload(a, i, sharedT0));
    const sharedB = Array.from({ length: 2 }, (_, i) => payload(b, i, sharedT0));
    await ch().insert('event_payloads', [...soloA, ...sharedA, ...sharedB]);
    const v = await ch().version();
    const ofA = 'project_id = {p:String} AND created_at_ms >= {from:Int64} AND created_at_ms < {to:Int64}';

    // The shared month: another project's rows are there, so no partition is touched.
    const shared = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a, from: sharedT0, to: sharedT0 + 1000 });
    expect(shared).toEqual({ dropped: null, reason: v.movePartition ? 'shared' : 'unsupported' });
    expect(await activeParts('event_payloads', 201704)).toBeGreaterThan(0);

    // The solo month: b's row is written once the partition was moved aside, into a new part.
    let moved: number[] = [];
    const solo = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a, from: soloT0, to: soloT0 + 1000 }, {
      afterMove: async (partitions) => {
        moved = partitions;
        await ch().insert('event_payloads', [afterB]);
      },
    });
    if (!v.movePartition) {
      expect(solo).toEqual({ dropped: null, reason: 'unsupported' });
      expect(moved).toEqual([]);
      expect(await ids(a)).toEqual([...soloA, ...sharedA].map((r) => r.id).sort());
      return;
    }
    expect(solo).toEqual({ dropped: [201703] });
    expect(moved).toEqual([201703]);
    expect(await ids(a)).toEqual(sharedA.map((r) => r.id).sort());
    expect(await ids(b)).toEqual([afterB, ...sharedB].map((r) => r.id).sort());
    expect(await ids(a, 'event_payloads_parked')).toEqual([]);
    // The partition holds b's new part alone: a's rows went with their parts, not with a delete.
    expect(await activeParts('event_payloads', 201703)).toBe(1);
    expect(await activeParts('event_payloads_parked', 201703)).toBe(0);

    // Nothing of a's left in that month: no partition to drop.
    expect(await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a, from: soloT0, to: soloT0 + 1000 })).toEqual({ dropped: null, reason: 'empty' });
  });

  it('a row written between the check and the move goes aside with the partition and comes back; only the matching rows are gone (26.x)', async () => {
    const t0 = Date.UTC(2017, 4, 10);
    const a = `mut-race-a-${crypto.randomUUID()}`;
    const b = `mut-race-b-${crypto.randomUUID()}`;
    const rowsA = Array.from({ length: 5 }, (_, i) => payload(a, i, t0));
    const racing = payload(b, 7, t0);
    await ch().insert('event_payloads', rowsA);
    const v = await ch().version();
    const ofA = 'project_id = {p:String}';
    // In the parking table the moved parts and the racing row's part look alike: this is what a
    // write between the check and the move leaves there.
    const result = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a }, { afterMove: () => ch().insert('event_payloads_parked', [racing]) });
    if (!v.movePartition) {
      expect(result).toEqual({ dropped: null, reason: 'unsupported' });
      expect(await ids(a)).toEqual(rowsA.map((r) => r.id).sort());
      return;
    }
    expect(result).toEqual({ dropped: null, reason: 'raced' });
    expect(await ids(a)).toEqual([]);
    expect(await ids(a, 'event_payloads_parked')).toEqual([]);
    expect(await ids(b)).toEqual([racing.id]);
    expect(await ids(b, 'event_payloads_parked')).toEqual([]);
    const [back] = await ch().query<{ payload: string }>('SELECT payload FROM event_payloads WHERE id = {id:UUID}', { id: racing.id });
    expect(back?.payload).toBe(racing.payload);
  });

  it('drops only the parts it checked: a part merged meanwhile is read and checked again, one that keeps changing sends the clear the long way, a part that arrives meanwhile stays parked until moved back (26.x)', async () => {
    const v = await ch().version();
    const a = `mut-parts-a-${crypto.randomUUID()}`;
    const b = `mut-parts-b-${crypto.randomUUID()}`;
    const ofA = 'project_id = {p:String}';
    const merge = (part: number) => ch().command('OPTIMIZE TABLE event_payloads_parked PARTITION {part:UInt32} FINAL', { part });

    // A merge of the parked parts between the check and the first drop (as a background merge
    // does): the part read by name is gone, the merged one is read, checked and dropped.
    const merged = Array.from({ length: 4 }, (_, i) => payload(a, i, Date.UTC(2017, 7, 10)));
    await ch().insert('event_payloads', merged.slice(0, 2));
    await ch().insert('event_payloads', merged.slice(2));
    const seen: string[][] = [];
    const first = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a }, {
      beforeDrop: async (part, names) => {
        seen.push([...names]);
        if (seen.length === 1) await merge(part);
      },
    });
    if (!v.movePartition) {
      expect(first).toEqual({ dropped: null, reason: 'unsupported' });
      return;
    }
    expect(first).toEqual({ dropped: [201708] });
    // Read twice, the second time a part the first read did not name (the merge's); how many parts
    // the first read found depends on whether the server merged the two inserts already.
    expect(seen).toHaveLength(2);
    expect(seen[1]).toHaveLength(1);
    expect(seen[0]).not.toContain(seen[1]![0]);
    expect(await ids(a)).toEqual([]);
    expect(await ids(a, 'event_payloads_parked')).toEqual([]);
    expect(await activeParts('event_payloads', 201708)).toBe(0);
    expect(await activeParts('event_payloads_parked', 201708)).toBe(0);

    // Parts rewritten before every drop: after PART_DROP_TRIES reads the rows are deleted and the partition moved back.
    const churned = Array.from({ length: 4 }, (_, i) => payload(a, i, Date.UTC(2017, 9, 10)));
    await ch().insert('event_payloads', churned.slice(0, 2));
    await ch().insert('event_payloads', churned.slice(2));
    let tries = 0;
    const longWay = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: a }, {
      beforeDrop: async (part) => {
        tries++;
        await merge(part);
      },
    });
    expect(longWay).toEqual({ dropped: null, reason: 'raced' });
    expect(tries).toBe(PART_DROP_TRIES);
    expect(await ids(a)).toEqual([]);
    expect(await ids(a, 'event_payloads_parked')).toEqual([]);

    // A part that lands in the parking table after the parts were read (another drop's move) is not dropped.
    const c = `mut-parts-c-${crypto.randomUUID()}`;
    const mine = Array.from({ length: 3 }, (_, i) => payload(c, i, Date.UTC(2017, 8, 10)));
    const theirs = payload(b, 9, Date.UTC(2017, 8, 10));
    await ch().insert('event_payloads', mine);
    const second = await dropPartitionsOf(ch(), 'event_payloads', ofA, { p: c }, { beforeDrop: () => ch().insert('event_payloads_parked', [theirs]) });
    expect(second).toEqual({ dropped: [201709] });
    expect(await ids(c)).toEqual([]);
    expect(await ids(b, 'event_payloads_parked')).toEqual([theirs.id]);
    expect(await unparkPartitions(ch(), 'event_payloads', { partitions: [201709] })).toBe(1);
    expect(await ids(b)).toEqual([theirs.id]);
    expect(await ids(b, 'event_payloads_parked')).toEqual([]);
  });

  it('moves back what a cut-short drop left parked, only in the partitions asked for', async () => {
    const a = `mut-unpark-${crypto.randomUUID()}`;
    const june = Array.from({ length: 3 }, (_, i) => payload(a, i, Date.UTC(2017, 5, 3)));
    const july = Array.from({ length: 2 }, (_, i) => payload(a, i, Date.UTC(2017, 6, 3)));
    await ch().insert('event_payloads_parked', [...june, ...july]);
    const v = await ch().version();
    const back = await unparkPartitions(ch(), 'event_payloads', { fromSec: Date.UTC(2017, 5, 1) / 1000, toSec: Date.UTC(2017, 6, 1) / 1000 - 1 });
    if (!v.movePartition) {
      expect(back).toBe(0);
      await ch().command('ALTER TABLE event_payloads_parked DELETE WHERE project_id = {p:String}', { p: a });
      return;
    }
    expect(back).toBe(3);
    expect(await ids(a)).toEqual(june.map((r) => r.id).sort());
    expect(await ids(a, 'event_payloads_parked')).toEqual(july.map((r) => r.id).sort());
    expect(await unparkPartitions(ch(), 'event_payloads', { partitions: [201707] })).toBe(2);
    expect(await ids(a)).toEqual([...june, ...july].map((r) => r.id).sort());
    expect(await ids(a, 'event_payloads_parked')).toEqual([]);
  });

  it('refuses a table outside the list', async () => {
    await expect(deleteRows(ch(), 'projects' as never, '1', {})).rejects.toThrow(/cannot be deleted/);
  });
});
