// Deleting rows on both generations: a lightweight DELETE (26.x) or a mutation awaited in
// system.mutations (18.16); when deleteRows returns, the rows are gone and nothing else is.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { deleteRows } from '../src/clickhouse/mutations';
import { hash128, uuidv7At } from '../src/lib/ids';
import { ch } from './helpers';

const T0 = Date.UTC(2026, 0, 15);

function payload(projectId: string, i: number) {
  return { id: uuidv7At(T0 + i, hash128(`${projectId}:${i}`)), project_id: projectId, created_at_ms: T0 + i, received_at_ms: T0 + i, payload: `{"i":${i}}` };
}

async function ids(projectId: string): Promise<string[]> {
  const rows = await ch().query<{ id: string }>('SELECT toString(id) AS id FROM event_payloads WHERE project_id = {p:String} ORDER BY id', { p: projectId });
  return rows.map((r) => r.id);
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

  it('refuses a table outside the list', async () => {
    await expect(deleteRows(ch(), 'projects' as never, '1', {})).rejects.toThrow(/cannot be deleted/);
  });
});
