// Legacy import: rows/s from Postgres into ClickHouse through a local gateway (target ≥ 50k/s),
// and the read API's p95 idle versus during an import (target ≤ 2×): unthrottled, hand-tuned, and
// throttling itself with no pacing given (its rows/s as a share of the unthrottled rate, target
// ≥ 0.5, with readers at p95 ≤ 2× idle). Beside the readers, the same query straight to ClickHouse
// and a request the gateway answers without I/O show where a read's extra time comes from.
// BENCH_IMPORT_PROFILE=<file> records workerd CPU profiles of two imports. Prints figures, asserts nothing.
import { join } from 'node:path';
import pg from 'pg';
import { benchGateway } from './lib/bench-gateway.mjs';
import { startPostgres } from '../scripts/lib/services.mjs';
import { makeBatch } from './lib/batch.mjs';
import { cpuByCommand, cpuSeconds } from './lib/cpu.mjs';
import { directEventsRequest } from './lib/direct-read.mjs';
import { selfTimeByFunction, startInspectorProfile } from './lib/inspector-profile.mjs';

const ROWS = Number(process.env.BENCH_IMPORT_ROWS ?? 300_000);
const FAST_CHUNK = Number(process.env.BENCH_IMPORT_CHUNK ?? 50_000);
const YIELD_CHUNK = Number(process.env.BENCH_IMPORT_YIELD_CHUNK ?? 2500);
const YIELD_PAUSE_MS = Number(process.env.BENCH_IMPORT_YIELD_PAUSE_MS ?? 200);
/** BENCH_IMPORT_HAND_TUNED=0 skips the hand-tuned import (the pacing before the throttle). */
const HAND_TUNED = process.env.BENCH_IMPORT_HAND_TUNED !== '0';
const READERS = Number(process.env.BENCH_IMPORT_READERS ?? 2);
/** A reader's pause between reads: together they stay inside the read API's budget (300 requests / 10 s). */
const READ_GAP_MS = Number(process.env.BENCH_IMPORT_READ_GAP_MS ?? 80);
const IDLE_READS = 300;
const IMPORT_TIMEOUT_MS = Number(process.env.BENCH_IMPORT_TIMEOUT_MS ?? 300_000);
const TARGET_ROWS_PER_SEC = 50_000;
const TARGET_P95_RATIO = 2;
const TARGET_THROTTLED_SHARE = 0.5;

const bench = benchGateway('import');
const { dataDir, database } = bench;
let gateway = null;
let postgres = null;
bench.onCleanup(async () => {
  if (postgres) await postgres.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const p95 = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.95))];
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (n) => Math.round(n).toLocaleString('en-US');

async function admin(method, path, body) {
  const res = await fetch(`${gateway.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${gateway.adminToken}`, 'content-type': 'application/json' },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function seedLegacy(table, rows) {
  const c = new pg.Client({ connectionString: postgres.url });
  await c.connect();
  await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text NOT NULL, created_at timestamptz NOT NULL,
                  lat double precision, lon double precision, speed double precision, label text)`);
  await c.query(
    `INSERT INTO ${table}
     SELECT g, 'veh-' || (g % 5000), timestamptz '2022-01-01 00:00:00+00' + g * interval '13 seconds',
            48.8 + (g % 1000) / 10000.0, 2.3 + (g % 777) / 10000.0, (g % 130) / 3.0, 'trip ' || (g / 500)
       FROM generate_series(1, $1::int) g`,
    [rows],
  );
  await c.query(`ANALYZE ${table}`);
  await c.end();
}

/** One reader: the read API for one device's recent events, one read after another, until `until()` is true. */
async function readLoop(headers, until, out) {
  let i = 0;
  while (!until() && !bench.stopping) {
    const t = performance.now();
    const res = await fetch(`${gateway.url}/v1/events?deviceId=live-${i++ % 20}&limit=100`, { headers });
    await res.arrayBuffer();
    if (res.status === 429) {
      // Over the read budget: not a latency the import caused; wait as told and read again.
      await sleep(1000 * Number(res.headers.get('retry-after') ?? 1));
      continue;
    }
    if (!res.ok) throw new Error(`read API answered ${res.status}`);
    out.push(performance.now() - t);
    await sleep(READ_GAP_MS);
  }
}

/**
 * The read API's events query (not its sessions query) sent straight to ClickHouse, one after
 * another like a reader: what ClickHouse itself answers in while an import runs, apart from the
 * gateway's thread.
 */
async function directReadLoop(until, out) {
  let i = 0;
  while (!until() && !bench.stopping) {
    const url = directEventsRequest(gateway.clickhouse.url, database, gateway.project.id, `live-${i++ % 20}`);
    const t = performance.now();
    const res = await fetch(url, { method: 'POST' });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`ClickHouse answered ${res.status}`);
    out.push(performance.now() - t);
    // A request the gateway answers without any I/O (a 404): what its one thread and the local
    // proxy add to every request, apart from ClickHouse.
    const t2 = performance.now();
    await (await fetch(`${gateway.url}/no-such-route`)).arrayBuffer();
    out.noop.push(performance.now() - t2);
    await sleep(READ_GAP_MS);
  }
}

async function readFor(headers, count) {
  const lat = [];
  const direct = Object.assign([], { noop: [] });
  await Promise.all([...Array.from({ length: READERS }, () => readLoop(headers, () => lat.length >= count, lat)), directReadLoop(() => lat.length >= count, direct)]);
  return Object.assign(lat, { direct });
}

/** Runs one import; readers (if any) measure the read API until it ends. */
async function runImport(label, body, headers) {
  const lat = Object.assign([], { direct: Object.assign([], { noop: [] }) });
  let done = false;
  const readers = headers
    ? Promise.all([...Array.from({ length: READERS }, () => readLoop(headers, () => done, lat)), directReadLoop(() => done, lat.direct)])
    : Promise.resolve();
  // A reader's failure is reported once the import ends (below), not as an unhandled rejection that
  // would end the process before it cleans up.
  readers.catch(() => {});
  const cpuBefore = cpuNow();
  const wallStart = Date.now();
  const { id } = await admin('POST', '/admin/backfills', body);
  let job;
  let lastPrint = 0;
  try {
    for (;;) {
      job = await admin('GET', `/admin/backfills/${id}`);
      if (['succeeded', 'failed', 'cancelled'].includes(job.state)) break;
      if (Date.now() - lastPrint > 5000) {
        lastPrint = Date.now();
        console.log(`  ${label}: ${job.state} ${fmt(job.rowsProcessed)}/${fmt(job.rowsTotal ?? 0)} rows, ${fmt(job.ratePerSec ?? 0)} rows/s, ETA ${job.etaSec ?? '?'} s`);
      }
      if (Date.now() - wallStart > IMPORT_TIMEOUT_MS) throw new Error(`${label}: not done after ${IMPORT_TIMEOUT_MS / 1000} s: ${JSON.stringify(job)}`);
      await sleep(100);
    }
  } finally {
    done = true;
  }
  const cpuAfter = cpuNow();
  await readers;
  const wallMs = Date.now() - wallStart;
  if (job.state !== 'succeeded') throw new Error(`${label}: job ${job.state}: ${job.error}`);
  const runMs = Date.parse(job.endedAt) - Date.parse(job.startedAt);
  const cpuUsPerRow = (k) => (cpuBefore[k] === null ? NaN : ((cpuAfter[k] - cpuBefore[k]) * 1e6) / job.rowsProcessed);
  return { job, wallMs, runMs, rowsPerSec: (job.rowsProcessed * 1000) / runMs, lat, cpu: { workerd: cpuUsPerRow('workerd'), clickhouse: cpuUsPerRow('clickhouse') } };
}

/** CPU seconds so far of the gateway's workerd and of ClickHouse (null without a process of its own). */
function cpuNow() {
  return { workerd: cpuByCommand(gateway.wranglerPid).workerd ?? null, clickhouse: gateway.clickhousePid ? cpuSeconds({ pid: gateway.clickhousePid }) : null };
}

/** BENCH_IMPORT_PROFILE=<file>: where the workerd thread went during the import alone and the self-throttled one. */
function printProfile(profiles, label) {
  for (const p of profiles) {
    const { total, rows } = selfTimeByFunction(p, 25);
    console.log(`  workerd profile (${label}), ${total} samples, self time:`);
    for (const [fn, n] of rows) console.log(`    ${((100 * n) / total).toFixed(1).padStart(5)}%  ${fn}`);
  }
}

try {
  postgres = await startPostgres({ dir: join(dataDir, 'postgres') });
  process.env.CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_LEGACY_DB = postgres.url;
  const tables = ['bench_alone', 'bench_fast', ...(HAND_TUNED ? ['bench_yield'] : []), 'bench_auto'];
  console.log(`Postgres: ${postgres.url}; generating ${fmt(ROWS)} legacy rows in each of ${tables.length} tables`);
  await Promise.all(tables.map((t) => seedLegacy(t, ROWS)));

  gateway = await bench.start({ vars: { LEGACY_DATASETS: tables.join(',') } });
  const project = gateway.project;
  const headers = { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret, 'content-type': 'application/json' };

  // Live data for the read API: 2000 recent events on 20 devices.
  const batch = makeBatch({ count: 2000, devices: 20, devicePrefix: 'live' });
  const posted = await fetch(`${gateway.url}/track/batch`, { method: 'POST', headers, body: JSON.stringify(batch) });
  if (posted.status !== 202) throw new Error(`seeding live events: ${posted.status} ${await posted.text()}`);
  for (let i = 0; ; i++) {
    const r = await fetch(`${gateway.url}/v1/events?deviceId=live-0&limit=1000`, { headers }).then((x) => x.json());
    if (r.events.filter((e) => e.name.startsWith('trip_point')).length >= 100) break;
    if (i > 600) throw new Error('live events never became visible');
    await sleep(100);
  }

  const source = (table) => ({ table, key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_track' });
  await readFor(headers, 50); // warm-up
  const idle = await readFor(headers, IDLE_READS);

  const body = (dataset, pacing) => ({ type: 'legacy_import', projectId: project.id, dataset, source: source(dataset), ...pacing });
  const unthrottled = { chunkSize: FAST_CHUNK, pauseMs: 0, throttle: false };
  console.log(`\nimport 1: throughput alone (throttle off, chunkSize ${fmt(FAST_CHUNK)}, pauseMs 0), no readers`);
  const profiling = process.env.BENCH_IMPORT_PROFILE ? await startInspectorProfile(gateway.inspectorPort) : null;
  const alone = await runImport('alone', body('bench_alone', unthrottled), null);
  if (profiling) printProfile(await profiling.stop(process.env.BENCH_IMPORT_PROFILE), 'import alone');
  console.log(`\nimport 2: unthrottled (throttle off, chunkSize ${fmt(FAST_CHUNK)}, pauseMs 0), readers running`);
  const fast = await runImport('unthrottled', body('bench_fast', unthrottled), headers);
  let handTuned = null;
  if (HAND_TUNED) {
    console.log(`\nimport 3: hand-tuned (throttle off, chunkSize ${fmt(YIELD_CHUNK)}, pauseMs ${YIELD_PAUSE_MS}), readers running`);
    handTuned = await runImport('hand-tuned', body('bench_yield', { chunkSize: YIELD_CHUNK, pauseMs: YIELD_PAUSE_MS, throttle: false }), headers);
  }
  console.log('\nimport 4: throttling itself (no chunkSize or pauseMs given), readers running');
  const profilingAuto = process.env.BENCH_IMPORT_PROFILE ? await startInspectorProfile(gateway.inspectorPort) : null;
  const auto = await runImport('self-throttled', body('bench_auto', {}), headers);
  if (profilingAuto) printProfile(await profilingAuto.stop(`${process.env.BENCH_IMPORT_PROFILE}.throttled`), 'self-throttled import, readers running');
  const idleAgain = await readFor(headers, IDLE_READS);

  const [{ n }] = await fetch(`${gateway.clickhouse.url}/?database=${database}&query=${encodeURIComponent("SELECT count() AS n FROM events WHERE name = 'legacy_track' FORMAT JSONEachRow")}`, { method: 'POST' })
    .then((r) => r.text())
    .then((t) => t.trim().split('\n').map((l) => JSON.parse(l)));

  const runs = [
    ['alone (no readers, throttle off)', alone],
    ['unthrottled, readers running', fast],
    ...(handTuned ? [['hand-tuned, readers running', handTuned]] : []),
    ['self-throttled, readers running', auto],
  ];
  const idleP95 = p95([...idle, ...idleAgain]);
  console.log('\n--- legacy import ---');
  console.log(`rows per import                      ${fmt(ROWS)} (ClickHouse holds ${fmt(Number(n))} imported rows for ${runs.length} imports)`);
  for (const [label, r] of runs) {
    const share = r.rowsPerSec / alone.rowsPerSec;
    console.log(`${label.padEnd(36)} ${fmt(r.rowsPerSec)} rows/s, ${share.toFixed(2)} of unthrottled (job ${(r.runMs / 1000).toFixed(1)} s, wall ${(r.wallMs / 1000).toFixed(1)} s; target ≥ ${fmt(TARGET_ROWS_PER_SEC)}: ${r.rowsPerSec >= TARGET_ROWS_PER_SEC ? 'met' : 'NOT met'})`);
  }
  console.log(
    `CPU per imported row, import alone         workerd ${alone.cpu.workerd.toFixed(1)} µs, ClickHouse ${alone.cpu.clickhouse.toFixed(1)} µs (the whole import: Postgres reads, translation, inserts and their merges)`,
  );
  if (auto.job.throttle) console.log(`self-throttled controller at the end ${JSON.stringify(auto.job.throttle)}`);
  console.log(`\n--- read API /v1/events (one device, limit 100), ${READERS} readers, ${READ_GAP_MS} ms between a reader's reads ---`);
  console.log(`idle                                 p50 ${median([...idle, ...idleAgain]).toFixed(1)} ms, p95 ${idleP95.toFixed(1)} ms (${idle.length + idleAgain.length} reads)`);
  for (const [label, r] of runs.slice(1)) {
    const ratio = p95(r.lat) / idleP95;
    console.log(`during ${label.replace(', readers running', '').padEnd(29)} p50 ${median(r.lat).toFixed(1)} ms, p95 ${p95(r.lat).toFixed(1)} ms (${r.lat.length} reads) → ${ratio.toFixed(2)}× idle (target ≤ ${TARGET_P95_RATIO}×: ${ratio <= TARGET_P95_RATIO ? 'met' : 'NOT met'})`);
  }
  const idleDirect = [...idle.direct, ...idleAgain.direct];
  console.log(`\n--- the same query straight to ClickHouse (one reader beside them, bypassing the gateway) ---`);
  console.log(`idle                                 p50 ${median(idleDirect).toFixed(1)} ms, p95 ${p95(idleDirect).toFixed(1)} ms (${idleDirect.length} reads)`);
  for (const [label, r] of runs.slice(1)) {
    console.log(`during ${label.replace(', readers running', '').padEnd(29)} p50 ${median(r.lat.direct).toFixed(1)} ms, p95 ${p95(r.lat.direct).toFixed(1)} ms (${r.lat.direct.length} reads) → ${(p95(r.lat.direct) / p95(idleDirect)).toFixed(2)}× idle`);
  }
  const idleNoop = [...idle.direct.noop, ...idleAgain.direct.noop];
  console.log(`\n--- a request the gateway answers without I/O (a 404), beside the direct reader ---`);
  console.log(`idle                                 p50 ${median(idleNoop).toFixed(1)} ms, p95 ${p95(idleNoop).toFixed(1)} ms, longest ${Math.max(...idleNoop).toFixed(1)} ms`);
  for (const [label, r] of runs.slice(1)) {
    const xs = r.lat.direct.noop;
    console.log(`during ${label.replace(', readers running', '').padEnd(29)} p50 ${median(xs).toFixed(1)} ms, p95 ${p95(xs).toFixed(1)} ms, longest ${Math.max(...xs).toFixed(1)} ms`);
  }

  const share = auto.rowsPerSec / alone.rowsPerSec;
  const p95Ratio = p95(auto.lat) / idleP95;
  console.log('\n--- self-throttled import, no hand tuning ---');
  console.log(`import_throttled_share   ${share.toFixed(2)} of the unthrottled rate (target ≥ ${TARGET_THROTTLED_SHARE}: ${share >= TARGET_THROTTLED_SHARE ? 'met' : 'NOT met'})`);
  console.log(`import_read_p95_ratio    ${p95Ratio.toFixed(2)}× idle (target ≤ ${TARGET_P95_RATIO}×: ${p95Ratio <= TARGET_P95_RATIO ? 'met' : 'NOT met'})`);
  console.log(`RESULT import_throttled_share ${share.toFixed(3)}`);
  console.log(`RESULT import_rows_per_s ${Math.round(alone.rowsPerSec)}`);
  console.log(`RESULT import_throttled_rows_per_s ${Math.round(auto.rowsPerSec)}`);
  if (Number.isFinite(alone.cpu.workerd)) console.log(`RESULT import_workerd_cpu_us_per_row ${alone.cpu.workerd.toFixed(2)}`);
  if (Number.isFinite(alone.cpu.clickhouse)) console.log(`RESULT import_clickhouse_cpu_us_per_row ${alone.cpu.clickhouse.toFixed(2)}`);
  console.log(`RESULT import_read_p95_ratio ${p95Ratio.toFixed(3)}`);
  console.log(`RESULT import_direct_read_p95_ratio ${(p95(auto.lat.direct) / p95([...idle.direct, ...idleAgain.direct])).toFixed(3)}`);
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await bench.cleanup();
}
