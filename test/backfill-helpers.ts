// Helpers for the backfill tests: a legacy Postgres filled with generate_series, admin calls, polling.
import { env, SELF } from 'cloudflare:test';
import pg from 'pg';
import type { JobView } from '../src/jobs/store';
import { endQuietly } from '../src/legacy/source';
import { ADMIN_TOKEN, ch, waitUntil } from './helpers';

export async function withPg<T>(fn: (c: pg.Client) => Promise<T>, database?: string): Promise<T> {
  const url = new URL(env.TEST_POSTGRES_URL);
  if (database) url.pathname = `/${database}`;
  const c = new pg.Client({ connectionString: url.toString() });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await endQuietly(c);
  }
}

/** A legacy table of `rows` tracks: bigint key, a device column, a timestamp and two payload columns. */
export async function createLegacyTable(table: string, rows: number): Promise<void> {
  await withPg(async (c) => {
    await c.query(`DROP TABLE IF EXISTS ${table}`);
    await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text NOT NULL, created_at timestamptz NOT NULL, speed double precision, label text)`);
    await c.query(
      `INSERT INTO ${table}
       SELECT g, 'veh-' || (g % 97), timestamptz '2023-03-01 00:00:00+00' + g * interval '37 seconds', (g % 130) / 3.0, 'trip ' || (g / 100)
         FROM generate_series(1, $1::int) g`,
      [rows],
    );
  });
}

export function importBody(projectId: string, dataset: string, table: string, extra: Record<string, unknown> = {}) {
  return {
    type: 'legacy_import',
    projectId,
    dataset,
    source: { table, key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_track' },
    chunkSize: 5000,
    pauseMs: 0,
    ...extra,
  };
}

export async function admin(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await SELF.fetch(`http://gw${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: await res.json() };
}

export async function startImport(body: unknown): Promise<string> {
  const r = await admin('POST', '/admin/backfills', body);
  if (r.status !== 202) throw new Error(`start: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.id as string;
}

export async function getJob(id: string): Promise<JobView> {
  const r = await admin('GET', `/admin/backfills/${id}`);
  if (r.status !== 200) throw new Error(`get job: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as JobView;
}

export function waitJob(id: string, ok: (j: JobView) => boolean, timeoutMs = 60_000): Promise<JobView> {
  return waitUntil(() => getJob(id), ok, { timeoutMs, intervalMs: 100 });
}

/** Order-independent checksum over what a project holds: ids, devices, times, names, payloads. */
export async function eventsChecksum(projectId: string): Promise<{ rows: number; ids: number; sum: string }> {
  const [r] = await ch().query<{ rows: number; ids: number; sum: string }>(
    `SELECT count() AS rows, uniqExact(id) AS ids,
            toString(sum(cityHash64(toString(id), device_id, toString(created_at_ms), name, properties))) AS sum
       FROM events WHERE project_id = {p:String}`,
    { p: projectId },
  );
  return { rows: Number(r!.rows), ids: Number(r!.ids), sum: r!.sum };
}

export const suffix = () => Math.random().toString(36).slice(2, 8);
