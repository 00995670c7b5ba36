// Read API cost: workerd CPU and latency of GET /v1/events (one device's newest page of 100) one
// read after another, against two floors measured in the same run: a request the gateway answers
// without I/O (a 404: what every request costs before any read) and the same events query sent
// straight to ClickHouse (what the storage itself takes). A read's CPU is what an import running
// beside it on the same workerd thread stretches (bench/import.mjs). BENCH_READS_PROFILE=<file>
// records a workerd CPU profile of the reads and prints where they spent it. Prints figures, asserts nothing.
import { benchGateway } from './lib/bench-gateway.mjs';
import { makeBatch } from './lib/batch.mjs';
import { cpuByCommand } from './lib/cpu.mjs';
import { directEventsRequest } from './lib/direct-read.mjs';
import { selfTimeByFunction, startInspectorProfile } from './lib/inspector-profile.mjs';
import { floor, result } from './lib/results.mjs';

const READS = Number(process.env.BENCH_READS ?? 1500);
const DEVICES = 20;

const bench = benchGateway('reads');
const { database } = bench;
let gateway = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs, q) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))];
const workerdCpu = () => cpuByCommand(gateway.wranglerPid).workerd ?? NaN;

/** `count` requests one after another: their latencies (ms) and the workerd CPU per request (µs). */
async function measure(count, send) {
  const lat = [];
  const before = workerdCpu();
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    await send(i);
    lat.push(performance.now() - t);
  }
  return { lat, cpuUs: ((workerdCpu() - before) * 1e6) / count };
}

try {
  gateway = await bench.start();
  const project = gateway.project;
  const headers = { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret, 'content-type': 'application/json' };
  // 2000 recent events on 20 devices, as bench/import.mjs reads them.
  const batch = makeBatch({ count: 2000, devices: DEVICES, devicePrefix: 'live' });
  const posted = await fetch(`${gateway.url}/track/batch`, { method: 'POST', headers, body: JSON.stringify(batch) });
  if (posted.status !== 202) throw new Error(`seeding: ${posted.status} ${await posted.text()}`);
  for (let i = 0; ; i++) {
    const r = await fetch(`${gateway.url}/v1/events?deviceId=live-0&limit=100`, { headers }).then((x) => x.json());
    if (r.events.length >= 100) break;
    if (i > 600) throw new Error('seeded events never became visible');
    await sleep(100);
  }

  const read = async (i) => {
    const res = await fetch(`${gateway.url}/v1/events?deviceId=live-${i % DEVICES}&limit=100`, { headers });
    const body = await res.json();
    if (!res.ok || body.events.length !== 100) throw new Error(`read API answered ${res.status} with ${body.events?.length} events`);
  };
  const noop = async () => {
    const res = await fetch(`${gateway.url}/no-such-route`);
    await res.arrayBuffer();
    if (res.status !== 404) throw new Error(`the 404 answered ${res.status}`);
  };
  const direct = async (i) => {
    const url = directEventsRequest(gateway.clickhouse.url, database, project.id, `live-${i % DEVICES}`);
    const res = await fetch(url, { method: 'POST' });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`ClickHouse answered ${res.status}`);
  };

  // The read API's budget is 300 requests per 10 s per client: reads go in rounds under it.
  const ROUND = 200;
  await measure(100, read); // warm-up
  await sleep(10_000);
  const profiling = process.env.BENCH_READS_PROFILE ? await startInspectorProfile(gateway.inspectorPort) : null;
  const reads = { lat: [], cpuUs: 0 };
  for (let done = 0; done < READS; done += ROUND) {
    const n = Math.min(ROUND, READS - done);
    const started = Date.now();
    const r = await measure(n, (i) => read(done + i));
    reads.lat.push(...r.lat);
    reads.cpuUs += (r.cpuUs * n) / READS;
    if (done + n < READS) await sleep(Math.max(0, 10_500 - (Date.now() - started)));
  }
  if (profiling) {
    for (const p of await profiling.stop(process.env.BENCH_READS_PROFILE)) {
      const { total, rows } = selfTimeByFunction(p, 30);
      console.log(`  workerd profile of the reads, ${total} samples, self time:`);
      for (const [fn, n] of rows) console.log(`    ${((100 * n) / total).toFixed(1).padStart(5)}%  ${fn}`);
    }
  }
  const noops = await measure(READS, noop);
  const directs = await measure(READS, direct);

  const line = (label, r, cpu = true) =>
    console.log(`${label.padEnd(44)} p50 ${quantile(r.lat, 0.5).toFixed(2)} ms, p95 ${quantile(r.lat, 0.95).toFixed(2)} ms${cpu ? `, workerd CPU ${r.cpuUs.toFixed(0)} µs per request` : ''}`);
  console.log(`\n--- read API, ${READS} requests one after another ---`);
  line('GET /v1/events (one device, limit 100)', reads);
  line('floor: a 404 (no I/O)', noops);
  line('floor: the events query straight to ClickHouse', directs, false);
  const own = reads.cpuUs - noops.cpuUs;
  console.log(`a read's own workerd CPU (beyond the 404)    ${own.toFixed(0)} µs`);
  result('read_workerd_cpu_us', reads.cpuUs);
  floor('read_workerd_cpu_us', noops.cpuUs);
  result('read_p50_ms', quantile(reads.lat, 0.5));
  floor('read_p50_ms', quantile(directs.lat, 0.5));
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await bench.cleanup();
}
