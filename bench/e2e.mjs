// End to end: events/s from HTTP 202 to rows visible in ClickHouse through a local gateway, and
// its ratio to inserting the same rows straight into the same ClickHouse (target ≥ 0.5); workerd and
// ClickHouse CPU per event for the default mix and for one device per batch; the estimated bill.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway } from '../scripts/lib/gateway.mjs';
import { importBundled, makeBatch } from './lib/batch.mjs';
import { printCost, queueOperationsPerMessage } from './lib/cost.mjs';
import { startDeviceProfile } from './lib/device-profile.mjs';
import { cpuByCommand, cpuSeconds } from './lib/cpu.mjs';
import { floor, result } from './lib/results.mjs';
import { allocationByFunction, selfTimeByFunction, startInspectorHeapSampling, startInspectorProfile } from './lib/inspector-profile.mjs';

const TARGET_RATIO = 0.5;
const BATCHES = Number(process.env.BENCH_E2E_BATCHES ?? 50);
const BATCH_EVENTS = 2000;
const DEVICES = Number(process.env.BENCH_E2E_DEVICES ?? 1000);
const DEVICES_PER_BATCH = Number(process.env.BENCH_E2E_DEVICES_PER_BATCH ?? 100);
const CONCURRENCY = Number(process.env.BENCH_E2E_CONCURRENCY ?? 4);
const VISIBLE_TIMEOUT_MS = Number(process.env.BENCH_E2E_TIMEOUT_MS ?? 300_000);
const SINGLE_BATCHES = Number(process.env.BENCH_E2E_SINGLE_BATCHES ?? BATCHES);
// ClickHouse CPU is counted until its merges have been quiet this long, for the gateway and the floor alike.
const SETTLE_MS = Number(process.env.BENCH_E2E_SETTLE_MS ?? 3000);
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

/** Queries of this script (polls, merge checks): their ClickHouse CPU is the bench's, not the gateway's. */
let benchQueries = 0;
async function chQuery(sql, body) {
  benchQueries++;
  const u = new URL(gateway.clickhouse.url);
  u.searchParams.set('database', database);
  u.searchParams.set('query', sql);
  const res = await fetch(u, { method: 'POST', body: body ?? '' });
  const text = await res.text();
  if (!res.ok) throw new Error(`ClickHouse ${res.status}: ${text.slice(0, 300)}`);
  return text;
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

/** Batch `b` of the single-device run: all its events from one (warm) device of the fleet. */
function singleBody(b, nowMs) {
  const batch = makeBatch({ count: BATCH_EVENTS, devices: 1, devicePrefix: 'fleet', nowMs, seed: 100_000 + b });
  for (const e of batch.events) e.payload.properties.__deviceId = `fleet-${(b * 37) % DEVICES}`;
  return batch;
}

/**
 * Where clickhouse-server's CPU went between two instants (BENCH_E2E_BREAKDOWN=1: needs the server
 * started with CLICKHOUSE_QUERY_LOG=1): query CPU by kind from system.query_log, merges from part_log.
 */
async function breakdown(label, fromSec, toSec) {
  if (process.env.BENCH_E2E_BREAKDOWN !== '1') return;
  await new Promise((r) => setTimeout(r, 2500));
  const cpu = "(arrayElement(ProfileEvents.Values, indexOf(ProfileEvents.Names, 'UserTimeMicroseconds')) + arrayElement(ProfileEvents.Values, indexOf(ProfileEvents.Names, 'SystemTimeMicroseconds')))";
  const rows = await chQuery(`SELECT substring(replaceRegexpAll(query, '[0-9a-f-]{36}|[0-9]+|\\s+', ' '), 1, 70) AS kind, count() AS n, round(sum(${cpu}) / 1e6, 2) AS cpu_s, sum(written_rows) AS written, sum(read_rows) AS read FROM system.query_log WHERE type = 2 AND event_time >= toDateTime(${fromSec}) AND event_time <= toDateTime(${toSec}) GROUP BY kind ORDER BY cpu_s DESC LIMIT 12 FORMAT TSV`);
  const parts = await chQuery(`SELECT table, event_type, count(), sum(rows), round(sum(duration_ms) / 1000, 2) FROM system.part_log WHERE database = '${database}' AND event_time >= toDateTime(${fromSec}) AND event_time <= toDateTime(${toSec}) GROUP BY table, event_type ORDER BY table, event_type FORMAT TSV`).catch((e) => e.message);
  console.log(`  [breakdown ${label}] queries: kind, count, CPU s, written rows, read rows\n${rows.replace(/^/gm, '    ')}  parts: table, event_type (1 new, 2 merge), count, rows, merge s\n${parts.replace(/^/gm, '    ')}`);
}
const nowSec = () => Math.floor(Date.now() / 1000);

/**
 * Waits until ClickHouse has run no merge for SETTLE_MS: a window that ends here holds the merges its
 * own inserts caused (without it the floor, a few seconds of inserts, left its merges out).
 */
async function settle() {
  const deadline = Date.now() + 120_000;
  let quietSince = Date.now();
  while (Date.now() - quietSince < SETTLE_MS && Date.now() < deadline) {
    if (Number((await chQuery(`SELECT count() FROM system.merges WHERE database = currentDatabase()`)).trim()) > 0) quietSince = Date.now();
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** ClickHouse CPU of one of this script's small queries, measured on the idle server (each HTTP query has a cost of its own). */
async function benchQueryCpu() {
  await settle();
  const before = cpuSeconds({ pid: gateway.clickhousePid });
  for (let i = 0; i < 100; i++) await partRows('events');
  return (cpuSeconds({ pid: gateway.clickhousePid }) - before) / 100;
}

/** Rows in the active parts of a table: metadata only, so polling it costs ClickHouse next to nothing. */
const partRows = async (table) => Number((await chQuery(`SELECT sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = '${table}' AND active`)).trim());

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
};

async function main() {
  console.log(`e2e: starting a gateway (own data dir, ClickHouse database ${database})...`);
  const t = Date.now();
  gateway = await startGateway({ localClickHouse: process.env.LOCAL_CLICKHOUSE || 'server', port: 0, dataDir, quiet: process.env.BENCH_VERBOSE !== '1', crons: false, localObservability: false, clickhouseDatabase: database, adminToken: randomBytes(18).toString('hex'), log: () => {} });
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
  for (const deadline = Date.now() + VISIBLE_TIMEOUT_MS; (await countWarm()) < DEVICES; ) {
    if (Date.now() > deadline) throw new Error('warm-up events never reached ClickHouse');
    await new Promise((r) => setTimeout(r, 200));
  }

  const queryCpu = gateway.clickhousePid ? await benchQueryCpu() : 0;
  if (gateway.clickhousePid) console.log(`  ClickHouse CPU of one of this script's polls: ${(queryCpu * 1000).toFixed(2)} ms (subtracted from every window below)`);

  // Through the gateway: the default mix, then one device per batch, each timed to the last row visible.
  let visibleBefore = 0;
  async function throughGateway(label, bodies) {
    const events = bodies.length * BATCH_EVENTS;
    const want = visibleBefore + events;
    await settle();
    const partRowsWanted = (await partRows('events')) + events;
    let accepted = 0;
    let duplicates = 0;
    let rejected = 0;
    let lastAcceptedAt = 0;
    const byCommandBefore = cpuByCommand(gateway.wranglerPid);
    const cpuBefore = { workerd: cpuSeconds({ pgid: gateway.wranglerPid }), clickhouse: gateway.clickhousePid ? cpuSeconds({ pid: gateway.clickhousePid }) : null };
    const queriesBefore = benchQueries;
    const started = performance.now();
    const startedSec = nowSec();
    let polling = true;
    let visibleAt = null;
    let visible = 0;
    const poller = (async () => {
      // The exact count reads the table: it runs only once the parts hold enough rows (a count() ten
      // times a second was most of the ClickHouse CPU that was not the gateway's).
      for (let tick = 1; polling; tick++) {
        // every 5 s regardless: a merge that collapsed copies leaves the parts short of the mark
        const enough = tick % 50 === 0 || (await partRows('events').then((n) => n >= partRowsWanted).catch(() => false));
        if (enough) visible = await countVisible().catch(() => visible);
        if (enough && visible >= want) {
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
    if (visibleAt === null) throw new Error(`${label}: only ${visible - visibleBefore} of ${events} events visible after ${VISIBLE_TIMEOUT_MS} ms`);
    if (rejected !== 0 || accepted + duplicates < events || (retries === 0 && accepted !== events)) {
      throw new Error(`${label}: accepted ${accepted} of ${events} (duplicates ${duplicates}, rejected ${rejected}, retried batches ${retries})`);
    }
    visibleBefore = want;
    latencies.sort((a, b) => a - b);
    const workerdCpu = cpuSeconds({ pgid: gateway.wranglerPid }) - cpuBefore.workerd;
    const byCommand = Object.entries(cpuByCommand(gateway.wranglerPid)).map(([comm, s]) => `${comm} ${(s - (byCommandBefore[comm] ?? 0)).toFixed(1)} s`);
    console.log(`  ${label}: gateway CPU by process: ${byCommand.join(', ')}`);
    await settle();
    const measured = {
      label,
      events,
      sec: (visibleAt - started) / 1000,
      acceptSec: (lastAcceptedAt - started) / 1000,
      workerdCpu,
      clickhouseCpu: cpuBefore.clickhouse === null ? null : cpuSeconds({ pid: gateway.clickhousePid }) - cpuBefore.clickhouse - (benchQueries - queriesBefore) * queryCpu,
      benchQueries: benchQueries - queriesBefore,
      p50: median(latencies),
      p95: latencies[Math.floor(latencies.length * 0.95)],
      retries,
    };
    await breakdown(label, startedSec, nowSec());
    return measured;
  }
  // One profile at a time: each one's sampling would distort the other's.
  const profiling = process.env.BENCH_E2E_PROFILE ? await startInspectorProfile(gateway.inspectorPort) : null;
  const heapSampling = !profiling && process.env.BENCH_E2E_HEAP ? await startInspectorHeapSampling(gateway.inspectorPort) : null;
  const mix = await throughGateway('default mix', bodies);
  if (profiling) {
    const profiles = await profiling.stop(process.env.BENCH_E2E_PROFILE);
    for (const p of profiles) {
      const { total, rows } = selfTimeByFunction(p);
      console.log(`  workerd profile (default mix), ${total} samples, self time:`);
      for (const [fn, n] of rows) console.log(`    ${((100 * n) / total).toFixed(1).padStart(5)}%  ${fn}`);
    }
  }
  if (heapSampling) {
    for (const p of await heapSampling.stop(process.env.BENCH_E2E_HEAP)) {
      const { total, rows } = allocationByFunction(p);
      console.log(`  workerd allocations (default mix): ${(total / 1e6).toFixed(0)} MB sampled, ${Math.round(total / TOTAL).toLocaleString('en-US')} bytes per event; by function:`);
      for (const [fn, n] of rows) console.log(`    ${((100 * n) / total).toFixed(1).padStart(5)}%  ${(n / 1e6).toFixed(0).padStart(5)} MB  ${fn}`);
    }
  }
  const singleBodies = Array.from({ length: SINGLE_BATCHES }, (_, b) => JSON.stringify(singleBody(b, nowMs)));
  const single = await throughGateway('one device per batch', singleBodies);
  const gatewaySec = mix.sec;
  const gatewayCpu = mix.workerdCpu;
  const gatewayChCpu = mix.clickhouseCpu;
  const acceptSec = mix.acceptSec;
  const distinct = Number((await chQuery(`SELECT uniqExact(id) FROM events WHERE project_id = '${project.id}' AND name IN ${NAMES}`)).trim());

  // Straight into the same ClickHouse: the same rows (as the consumer builds them), same batches,
  // same concurrency, into copies of the tables. Two floors: `events` alone (the floor before), and
  // what the gateway stores for each batch — its events, their raw payloads and one session row per
  // device of the batch — one insert per table, sessions and payloads before events as the consumer does.
  const core = await importBundled(`
    import { normalizeEvent } from './src/ingest/normalize';
    import { toDeviceEvent } from './src/ingest/accept';
    export function rowsOf(body: any, projectId: string, receivedAtMs: number) {
      const ctx = { receivedAtMs, sentAtMs: Date.parse(body.sentAt), ip: '127.0.0.1', userAgent: 'bench',
        geo: { country: 'US', region: 'Texas', city: 'Austin', timezone: 'America/Chicago', latitude: 30.27, longitude: -97.74 } };
      return body.events.map((raw: unknown, i: number) => {
        const r = normalizeEvent(raw, ctx, i);
        if (!r.ok) throw new Error(r.rejection.error);
        return toDeviceEvent(projectId, r.event.deviceId!, r.event);
      });
    }
  `);
  for (const t of ['events', 'event_payloads', 'sessions']) await chQuery(`CREATE TABLE ${t}_direct AS ${t}`);
  const directProject = randomUUID();
  const sessionIds = new Map();
  let sessionVersion = 0;
  const directBatches = bodies.map((b) => {
    const rows = core.rowsOf(JSON.parse(b), directProject, nowMs);
    const syncedAtMs = Date.now();
    const byDevice = new Map();
    for (const { row } of rows) {
      const s = byDevice.get(row.device_id) ?? { from: row.created_at_ms, to: row.created_at_ms, n: 0 };
      s.from = Math.min(s.from, row.created_at_ms);
      s.to = Math.max(s.to, row.created_at_ms);
      s.n++;
      byDevice.set(row.device_id, s);
    }
    const sessionOf = (device) => {
      if (!sessionIds.has(device)) sessionIds.set(device, randomUUID());
      return sessionIds.get(device);
    };
    const lines = (xs) => xs.map((x) => JSON.stringify(x)).join('\n');
    return {
      events: lines(rows.map(({ row }) => ({ ...row, session_id: sessionOf(row.device_id), synced_at_ms: syncedAtMs }))),
      payloads: lines(rows.map(({ payload }) => payload)),
      sessions: lines(
        [...byDevice].map(([device, s]) => ({ project_id: directProject, device_id: device, id: sessionOf(device), started_at_ms: s.from, ended_at_ms: s.to,
          event_count: s.n, ended: 0, merged_into: '', version: ++sessionVersion, updated_at_ms: syncedAtMs })),
      ),
    };
  });
  const insert = (table, body) => {
    benchQueries--; // the floor's own work, not a poll
    return chQuery(`INSERT INTO ${table}_direct FORMAT JSONEachRow`, body);
  };
  /** `spreadSec`: start the batches evenly over this long, one at a time, instead of all at once. */
  async function direct(label, write, spreadSec = 0) {
    await settle();
    const cpuBefore = gateway.clickhousePid ? cpuSeconds({ pid: gateway.clickhousePid }) : null;
    const queriesBefore = benchQueries;
    const startedSec = nowSec();
    const started = performance.now();
    if (spreadSec > 0) {
      for (const [i, b] of directBatches.entries()) {
        const due = started + (i * spreadSec * 1000) / directBatches.length;
        await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
        await write(b);
      }
    } else {
      await pool(directBatches, CONCURRENCY, write);
    }
    const sec = (performance.now() - started) / 1000;
    await settle();
    const cpu = cpuBefore === null ? null : cpuSeconds({ pid: gateway.clickhousePid }) - cpuBefore - (benchQueries - queriesBefore) * queryCpu;
    await breakdown(label, startedSec, nowSec());
    return { sec, cpu };
  }
  const dropDirect = async () => {
    for (const t of ['events', 'event_payloads', 'sessions']) {
      await chQuery(`DROP TABLE ${t}_direct`);
      await chQuery(`CREATE TABLE ${t}_direct AS ${t}`);
    }
  };
  const directEvents = await direct('direct: events', (b) => insert('events', b.events));
  const directCount = Number((await chQuery('SELECT count() FROM events_direct')).trim());
  if (directCount !== TOTAL) throw new Error(`direct insert stored ${directCount} of ${TOTAL}`);
  await dropDirect();
  const writeAll = async (b) => {
    await Promise.all([insert('sessions', b.sessions), insert('event_payloads', b.payloads)]);
    await insert('events', b.events);
  };
  const directAll = await direct('direct: events, payloads, sessions', writeAll);
  await dropDirect();
  // The same, spread over the time the gateway's rows took to arrive: merges of parts that come one
  // by one cost more than of parts that come at once, whoever sends them.
  const directPaced = await direct('direct, spread like the gateway', writeAll, mix.sec);
  const directSec = directEvents.sec;
  const directChCpu = directAll.cpu;

  const gatewayRate = TOTAL / gatewaySec;
  const directRate = TOTAL / directSec;
  const ratio = gatewayRate / directRate;
  const bytes = bodies.reduce((n, b) => n + b.length, 0);
  const perEventUs = (cpu, n = TOTAL) => (cpu * 1e6) / n;
  const perEvent = (cpu, n = TOTAL) => `${perEventUs(cpu, n).toFixed(0)} µs/event`;
  console.log(`  ${TOTAL} events: ${BATCHES} batches of ${BATCH_EVENTS} (${(bytes / BATCHES / 1024).toFixed(0)} KB each), ${DEVICES} devices (${DEVICES_PER_BATCH} per batch), ${CONCURRENCY} requests in flight`);
  for (const r of [mix, single]) {
    console.log(`  ${r.label}: all 202s after ${r.acceptSec.toFixed(2)} s (batch p50 ${r.p50.toFixed(0)} ms, p95 ${r.p95.toFixed(0)} ms); all rows visible after ${r.sec.toFixed(2)} s${r.retries ? `; ${r.retries} batch(es) retried after a 503` : ''}`);
    console.log(`    CPU: wrangler+workerd ${r.workerdCpu.toFixed(1)} s (${perEvent(r.workerdCpu, r.events)})${r.clickhouseCpu === null ? '' : `, clickhouse-server ${r.clickhouseCpu.toFixed(1)} s (${perEvent(r.clickhouseCpu, r.events)})`}; ${os.cpus().length} CPUs`);
  }
  console.log(`  gateway → ClickHouse   ${Math.round(gatewayRate).toLocaleString('en-US')} events/s, default mix  (distinct ids stored ${distinct})`);
  console.log(`  direct JSONEachRow     ${Math.round(directRate).toLocaleString('en-US')} rows/s  (${BATCHES} inserts of ${BATCH_EVENTS} rows, ${CONCURRENCY} in flight, ${directSec.toFixed(2)} s)`);
  if (directChCpu !== null) {
    console.log(`  ClickHouse CPU, merges included (counted until ${SETTLE_MS / 1000} s without a merge; idle server: ~2 ms/s):`);
    console.log(`    through the gateway, default mix         ${gatewayChCpu.toFixed(1)} s (${perEvent(gatewayChCpu)}), ${mix.sec.toFixed(0)} s to visible`);
    console.log(`    direct: events, payloads, sessions       ${directChCpu.toFixed(1)} s (${perEvent(directChCpu)})  → ratio ${(gatewayChCpu / directChCpu).toFixed(2)}×`);
    console.log(`    direct: events only (the earlier floor)  ${directEvents.cpu.toFixed(1)} s (${perEvent(directEvents.cpu)})  → ratio ${(gatewayChCpu / directEvents.cpu).toFixed(2)}×`);
    console.log(`    direct: all three, spread over ${mix.sec.toFixed(0)} s      ${directPaced.cpu.toFixed(1)} s (${perEvent(directPaced.cpu)})  → ratio ${(gatewayChCpu / directPaced.cpu).toFixed(2)}×`);
    console.log(`    (polls subtracted: ${mix.benchQueries} in the gateway window)`);
  }
  console.log(`  ratio                  ${ratio.toFixed(3)}  (target ≥ ${TARGET_RATIO}) ${ratio >= TARGET_RATIO ? 'OK' : 'BELOW TARGET'}`);
  console.log(`  batch p50, default mix vs one device per batch: ${(mix.p50 / single.p50).toFixed(2)}×`);
  result('e2e_cpu_us_per_event', perEventUs(mix.workerdCpu));
  result('e2e_cpu_us_per_event_single', perEventUs(single.workerdCpu, single.events));
  result('batch_p50_ratio', mix.p50 / single.p50);
  result('e2e_events_per_s', gatewayRate);
  floor('e2e_events_per_s', directRate);
  if (gatewayChCpu !== null && directChCpu !== null && directChCpu > 0) {
    result('clickhouse_cpu_ratio', gatewayChCpu / directChCpu);
    floor('clickhouse_cpu_ratio', perEventUs(directChCpu));
    result('clickhouse_cpu_ratio_events_only', gatewayChCpu / directEvents.cpu);
    result('clickhouse_cpu_ratio_spread', gatewayChCpu / directPaced.cpu);
  }

  // The bill: requests and device calls as this run made them; what each device call writes, alarms
  // and sends, from the same calls on the real object in workerd (the profile), counted per event.
  const profile = await startDeviceProfile();
  let calls;
  try {
    // A smaller fleet, each device called once after its first call, as in this run's mix.
    await profile.run({ batches: 4, devicesPerBatch: DEVICES_PER_BATCH, fleet: 4 * DEVICES_PER_BATCH });
    calls = await profile.run({ batches: 4, devicesPerBatch: DEVICES_PER_BATCH, fleet: 4 * DEVICES_PER_BATCH });
  } finally {
    await profile.dispose();
  }
  const deviceCallsPerEvent = bodies.reduce((n, b) => n + new Set(JSON.parse(b).events.map((e) => e.payload.properties.__deviceId)).size, 0) / TOTAL;
  const perCall = (n) => (n / calls.calls) * deviceCallsPerEvent;
  const queueOps = calls.consumed.opsBytes.reduce((n, b) => n + queueOperationsPerMessage(b), 0);
  const consumerInvocations = calls.consumed.messages / 100;
  const perEventCounts = {
    workersRequests: 1 / BATCH_EVENTS + (consumerInvocations / calls.calls) * deviceCallsPerEvent,
    workersCpuMs: perEventUs(mix.workerdCpu) / 1000,
    doRequests: perCall(calls.calls + calls.alarms),
    doActiveSeconds: perCall(calls.objectMs / 1000),
    doRowsWritten: perCall(calls.rowsWritten),
    queueOperations: perCall(queueOps),
  };
  console.log(`  per device call (${(1 / deviceCallsPerEvent).toFixed(0)} events): ${(calls.rowsWritten / calls.calls).toFixed(1)} rows written, ${(calls.statements / calls.calls).toFixed(1)} SQL statements, ${(calls.alarms / calls.calls).toFixed(2)} alarm runs, ${(calls.consumed.messages / calls.calls).toFixed(2)} queue messages`);
  const cost = printCost(perEventCounts, {
    measured: 'Workers requests (batches), device calls per event, workerd CPU (route, objects and consumer; all priced as Workers CPU), rows written, alarm runs and queue messages per call (the profiled calls)',
    estimated: 'consumer invocations (100 messages each); object duration = its own time per call and alarm, queue-send waits left out (local broker)',
  });
  result('cost_usd_per_million_events', cost);
  if (distinct !== TOTAL + single.events) throw new Error(`ClickHouse holds ${distinct} distinct events, expected ${TOTAL + single.events}`);
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
