// Shared test helpers: real projects through the admin route, real ClickHouse queries, polling.
import { env, SELF } from 'cloudflare:test';
import { clickhouse } from '../src/clickhouse/client';
import { getConfig } from '../src/config';
import { fingerprint } from '../src/device/seen-index';

export const ADMIN_TOKEN = 'test-admin-token';

export interface TestProject {
  id: string;
  clientId: string;
  clientSecret: string;
  headers: Record<string, string>;
}

export async function createProject(name = 'test', extra: Record<string, unknown> = {}): Promise<TestProject> {
  const res = await SELF.fetch('http://gw/admin/projects', {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name, ...extra }),
  });
  if (res.status !== 201) throw new Error(`create project: ${res.status} ${await res.text()}`);
  const p = (await res.json()) as Omit<TestProject, 'headers'>;
  return {
    ...p,
    headers: { 'openpanel-client-id': p.clientId, 'openpanel-client-secret': p.clientSecret, 'content-type': 'application/json' },
  };
}

export function ch() {
  return clickhouse(getConfig(env).clickhouse);
}

export async function postBatch(p: TestProject, body: unknown, headers: Record<string, string> = {}) {
  return SELF.fetch('http://gw/track/batch', {
    method: 'POST',
    headers: { ...p.headers, ...headers },
    body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
  });
}

export async function getJson<T>(p: TestProject, path: string): Promise<{ status: number; body: T }> {
  const res = await SELF.fetch(`http://gw${path}`, { headers: p.headers });
  return { status: res.status, body: (await res.json()) as T };
}

export async function waitUntil<T>(fn: () => Promise<T>, ok: (v: T) => boolean, { timeoutMs = 60_000, intervalMs = 200 } = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T = await fn();
  while (!ok(last)) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms; last value: ${JSON.stringify(last).slice(0, 500)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
    last = await fn();
  }
  return last;
}

export async function countEvents(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>(
    'SELECT count() AS rows, uniqExact(id) AS ids FROM events WHERE project_id = {p:String}',
    { p: projectId },
  );
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

export function trackEvent(name: string, properties: Record<string, unknown> = {}) {
  return { type: 'track', payload: { name, properties } };
}

/** Two different keys with the same 31-bit fingerprint (a birthday search: about 2^16 tries). */
export function collidingKeys(prefix: string): [string, string] {
  const byFp = new Map<number, string>();
  for (let i = 0; ; i++) {
    const key = `${prefix}${i}`;
    const fp = fingerprint(key);
    const other = byFp.get(fp);
    if (other !== undefined) return [other, key];
    byFp.set(fp, key);
  }
}

/** The columns of an `events` row a test that writes one directly leaves empty: no legacy ref, no geo. */
export const NO_REF_OR_GEO = { ref_id: '', ip: '', country: '', region: '', city: '', timezone: '', latitude: null, longitude: null } as const;
