// End to end: events/s from HTTP 202 to rows visible in ClickHouse through a local gateway, and
// its ratio to inserting the same rows straight into the same ClickHouse. Target: ≥ 0.5.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway } from '../scripts/lib/gateway.mjs';
import { importBundled, makeBatch } from './lib/batch.mjs';

const TARGET_RATIO = 0.5;
const BATCHES = Number(process.env.BENCH_E2E_BATCHES ?? 50);
const BATCH_EVENTS = 2000;
const DEVICES = Number(process.env.BENCH_E2E_DEVICES ?? 1000);
const DEVICES_PER_BATCH = Number(process.env.BENCH_E2E_DEVICES_PER_BATCH ?? 100);
const CONCURRENCY = Number(process.env.BENCH_E2E_CONCURRENCY ?? 4);
const VISIBLE_TIMEOUT_MS = Number(process.env.BENCH_E2E_TIMEOUT_MS ?? 300_000);
const TOTAL = BATCHES * BATCH_EVENTS;
const NAMES = "('trip_point','trip_point_ext')";

const dataDir = mkdtempSync(join(tmpdir(), 'driftline-e2e-'));
const database = `bench_e2e_${randomBytes(4).toString('hex')}`;
let gateway = null;
let cleaning = null;

async function cleanup() {
  cleaning ??= (async () => {
    if (gateway) {
      await chQuery(`DROP DATABASE IF EXISTS ${database}`).catch(() => {});
      await gateway.stop();
    }
    rmSync(dataDir, { recursive: true, force: true });
  })();
  return cleaning;
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    void cleanup().then(() => process.exit(130));
  });
}

async function chQuery(sql, body) {
  const u = new URL(gateway.clickhouse.url);
  u.searchParams.set('database', database);
  u.searchParams.set('query', sql);
  const res = await fetch(u, { method: 'POST', body: body ?? '' });
  const text = await res.text();
  if (!res.ok) throw new Error(`ClickHouse ${res.status}: ${text.slice(0, 300)}`);
  return text;
}

/** CPU seconds (user + system) used so far by the processes of a process group, or by one pid (Linux). */
function cpuSeconds({ pgid, pid }) {
  let ticks = 0;
  let pids;
  try {
    pids = pid ? [String(pid)] : readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return null;
  }
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (pgid && Number(f[2]) !== pgid) continue;
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* exited */
    }
  }
  return ticks / 100;
}

async function pool(items, limit, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

/** Batch `b` covers DEVICES_PER_BATCH devices (rotating through the fleet), 20 events each. */
function batchBody(b, nowMs) {
  const first = (b * DEVICES_PER_BATCH) % DEVICES;
  const batch = makeBatch({ count: BATCH_EVENTS, devices: DEVICES_PER_BATCH, devicePrefix: `fleet`, nowMs, seed: b + 1 });
  for (const e of batch.events) {
    const k = Number(e.payload.properties.__deviceId.slice('fleet-'.length));
    e.payload.properties.__deviceId = `fleet-${(first + k) % DEVICES}`;
  }
  return batch;
}

async function main() {
  console.log(`e2e: starting a gateway (own data dir, ClickHouse database ${database})...`);
  const t = Date.now();
  gateway = await startGateway({ localClickHouse: process.env.LOCAL_CLICKHOUSE || 'server', port: 0, dataDir, quiet: process.env.BENCH_VERBOSE !== '1', crons: false, clickhouseDatabase: database, adminToken: randomBytes(18).toString('hex'), log: () => {} });
  console.log(`  gateway ${gateway.url} up in ${((Date.now() - t) / 1000).toFixed(1)} s; ClickHouse ${gateway.clickhouse.url}${gateway.clickhouse.started ? ' (started for this run)' : ''}`);
  const { project } = gateway;
  const headers = {
    'content-type': 'application/json',
    'openpanel-client-id': project.clientId,
    'openpanel-client-secret': project.clientSecret,
  };

  const nowMs = Date.now();
  const bodies = Array.from({ length: BATCHES }, (_, b) => JSON.stringify(batchBody(b, nowMs)));

  // Warm-up: wake every device object once (cold objects are not what this measures), then wait.
  const warm = await fetch(`${gateway.url}/track/batch`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ events: Array.from({ length: DEVICES }, (_, d) => ({ type: 'track', payload: { name: 'warmup', properties: { __deviceId: `fleet-${d}` } } })) }),
  });
  if (warm.status !== 202) throw new Error(`warm-up batch answered ${warm.status}: ${(await warm.text()).slice(0, 300)}`);
  await warm.text();
  const countVisible = async () => Number((await chQuery(`SELECT count() FROM events WHERE project_id = '${project.id}' AND name IN ${NAMES}`)).trim());
  const countWarm = async () => Number((await chQuery(`SELECT count() FROM events WHERE project_id = '${project.id}' AND name = 'warmup'`)).trim());
  for (const deadline = Date.now() + 60_000; (await countWarm()) < DEVICES; ) {
    if (Date.now() > deadline) throw new Error('warm-up events never reached ClickHouse');
    await new Promise((r) => setTimeout(r, 200));
  }

  // Through the gateway.
  let accepted = 0;
  let duplicates = 0;
  let rejected = 0;
  let lastAcceptedAt = 0;
  const cpuBefore = { workerd: cpuSeconds({ pgid: gateway.wranglerPid }), clickhouse: gateway.clickhousePid ? cpuSeconds({ pid: gateway.clickhousePid }) : null };
  const started = performance.now();
  let polling = true;
  let visibleAt = null;
  let visible = 0;
  const poller = (async () => {
    while (polling) {
      visible = await countVisible().catch(() => visible);
      if (visible >= TOTAL) {
        visibleAt = performance.now();
        return;
      }
      if (performance.now() - started > VISIBLE_TIMEOUT_MS) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const latencies = [];
  let retries = 0;
  await pool(bodies, CONCURRENCY, async (body) => {
    if (!polling) return;
    const t0 = performance.now();
    for (let attempt = 1; ; attempt++) {
      const res = await fetch(`${gateway.url}/track/batch`, { method: 'POST', headers, body });
      const text = await res.text();
      // A local runtime restart (seen on an overloaded machine) is retryable: rows are deduplicated.
      if (res.status === 503 && attempt < 4) {
        retries++;
        await new Promise((r) => setTimeout(r, 500 * attempt));
        continue;
      }
      if (res.status !== 202) {
        polling = false;
        throw new Error(`POST /track/batch answered ${res.status}: ${text.slice(0, 300)}`);
      }
      const r = JSON.parse(text);
      accepted += r.accepted;
      duplicates += r.duplicates;
      rejected += r.rejected.length;
      break;
    }
    latencies.push(performance.now() - t0);
    lastAcceptedAt = performance.now();
  });
  await poller;
  polling = false;
  if (visibleAt === null) throw new Error(`only ${visible} of ${TOTAL} events visible after ${VISIBLE_TIMEOUT_MS} ms`);
  if (rejected !== 0 || accepted + duplicates < TOTAL || (retries === 0 && accepted !== TOTAL)) {
    throw new Error(`accepted ${accepted} of ${TOTAL} (duplicates ${duplicates}, rejected ${rejected}, retried batches ${retries})`);
  }
  const gatewaySec = (visibleAt - started) / 1000;
  const gatewayCpu = cpuSeconds({ pgid: gateway.wranglerPid }) - cpuBefore.workerd;
  const gatewayChCpu = cpuBefore.clickhouse === null ? null : cpuSeconds({ pid: gateway.clickhousePid }) - cpuBefore.clickhouse;
  const acceptSec = (lastAcceptedAt - started) / 1000;
  const distinct = Number((await chQuery(`SELECT uniqExact(id) FROM events WHERE project_id = '${project.id}' AND name IN ${NAMES}`)).trim());

  // Straight into the same ClickHouse: the same rows (as the consumer builds them), same batches.
  const core = await importBundled(`
    import { normalizeEvent } from './src/ingest/normalize';
    import { toDeviceEvent } from './src/ingest/accept';
    export function rowsOf(body: any, projectId: string, receivedAtMs: number) {
      const ctx = { receivedAtMs, sentAtMs: Date.parse(body.sentAt), ip: '127.0.0.1', userAgent: 'bench',
        geo: { country: 'US', region: 'Texas', city: 'Austin', timezone: 'America/Chicago', latitude: 30.27, longitude: -97.74 } };
      return body.events.map((raw: unknown, i: number) => {
        const r = normalizeEvent(raw, ctx, i);
        if (!r.ok) throw new Error(r.rejection.error);
        return toDeviceEvent(projectId, r.event.deviceId!, r.event).row;
      });
    }
  `);
  await chQuery('CREATE TABLE events_direct AS events');
  const directProject = randomUUID();
  const directBodies = bodies.map((b) =>
    core
      .rowsOf(JSON.parse(b), directProject, nowMs)
      .map((row) => JSON.stringify({ ...row, session_id: randomUUID(), synced_at_ms: Date.now() }))
      .join('\n'),
  );
  const directChCpuBefore = gateway.clickhousePid ? cpuSeconds({ pid: gateway.clickhousePid }) : null;
  const directStarted = performance.now();
  await pool(directBodies, CONCURRENCY, (body) => chQuery('INSERT INTO events_direct FORMAT JSONEachRow', body));
  const directSec = (performance.now() - directStarted) / 1000;
  const directChCpu = directChCpuBefore === null ? null : cpuSeconds({ pid: gateway.clickhousePid }) - directChCpuBefore;
  const directCount = Number((await chQuery('SELECT count() FROM events_direct')).trim());
  if (directCount !== TOTAL) throw new Error(`direct insert stored ${directCount} of ${TOTAL}`);

  const gatewayRate = TOTAL / gatewaySec;
  const directRate = TOTAL / directSec;
  const ratio = gatewayRate / directRate;
  latencies.sort((a, b) => a - b);
  const bytes = bodies.reduce((n, b) => n + b.length, 0);
  console.log(`  ${TOTAL} events: ${BATCHES} batches of ${BATCH_EVENTS} (${(bytes / BATCHES / 1024).toFixed(0)} KB each), ${DEVICES} devices (${DEVICES_PER_BATCH} per batch), ${CONCURRENCY} requests in flight`);
  console.log(`  gateway: all 202s after ${acceptSec.toFixed(2)} s (batch p50 ${latencies[latencies.length >> 1].toFixed(0)} ms, p95 ${latencies[Math.floor(latencies.length * 0.95)].toFixed(0)} ms); all rows visible after ${gatewaySec.toFixed(2)} s${retries ? `; ${retries} batch(es) retried after a 503` : ''}`);
  console.log(`  gateway → ClickHouse   ${Math.round(gatewayRate).toLocaleString('en-US')} events/s  (distinct ids stored ${distinct})`);
  console.log(`  direct JSONEachRow     ${Math.round(directRate).toLocaleString('en-US')} rows/s  (${BATCHES} inserts of ${BATCH_EVENTS} rows, ${CONCURRENCY} in flight, ${directSec.toFixed(2)} s)`);
  const perEvent = (cpu) => `${((cpu * 1e6) / TOTAL).toFixed(0)} µs/event`;
  console.log(`  CPU while ingesting    wrangler+workerd ${gatewayCpu.toFixed(1)} s (${perEvent(gatewayCpu)})${gatewayChCpu === null ? '' : `, clickhouse-server ${gatewayChCpu.toFixed(1)} s (${perEvent(gatewayChCpu)})`}; ${os.cpus().length} CPUs`);
  if (directChCpu !== null) console.log(`  CPU of direct insert   clickhouse-server ${directChCpu.toFixed(1)} s (${perEvent(directChCpu)})`);
  console.log(`  ratio                  ${ratio.toFixed(3)}  (target ≥ ${TARGET_RATIO}) ${ratio >= TARGET_RATIO ? 'OK' : 'BELOW TARGET'}`);
  if (distinct !== TOTAL) throw new Error(`ClickHouse holds ${distinct} distinct events, expected ${TOTAL}`);
  if (process.env.BENCH_STRICT === '1' && ratio < TARGET_RATIO) process.exitCode = 1;
}

try {
  await main();
} catch (err) {
  console.error(`e2e failed: ${err.stack ?? err.message}`);
  if (gateway) console.error(`--- wrangler output (tail) ---\n${gateway.output().slice(-4000)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
