// Fleet benchmarks through a local gateway:
// 1. positions ingest: workerd CPU (and wall time until visible and recomputed) per position vs per
//    plain event, equal batches in the same run. Target ≤ 1.2×. BENCH_FLEET_ROUNDS=n alternates n
//    position runs with plain ones (the machine's load varies; more rounds, a steadier ratio).
//    BENCH_FLEET_SKIP_INGEST=1 / BENCH_FLEET_SKIP_MILEAGE=1 skip a half. Besides its text, it prints
//    `RESULT <field> <number>` lines for bench/results.json.
// 2. daily mileage of 1 000 vehicles × 30 local days in Berlin, Tokyo and New York: rows ClickHouse
//    reads per request as the route itself reports them (Server-Timing; target ≤ 1 per
//    vehicle-day) and the time, for the last 30 days and, with 60 more days stored before them, for
//    those days again and a calendar month, beside reading raw fixes.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway } from '../scripts/lib/gateway.mjs';
import { cpuSeconds } from './lib/cpu.mjs';

const INGEST_DEVICES = Number(process.env.BENCH_FLEET_DEVICES ?? 50);
const INGEST_BATCHES = Number(process.env.BENCH_FLEET_BATCHES ?? 20);
const BATCH_EVENTS = 1000;
const VEHICLES = Number(process.env.BENCH_FLEET_VEHICLES ?? 1000);
const DAYS = 30;
/** Days stored before the window for the second reading (history a real fleet has). */
const HISTORY_DAYS = Number(process.env.BENCH_FLEET_HISTORY_DAYS ?? 60);
const RAW_VEHICLES = Number(process.env.BENCH_FLEET_RAW_VEHICLES ?? 100);
const ROUNDS = Math.max(1, Number(process.env.BENCH_FLEET_ROUNDS ?? 1));
const TARGET_CPU_RATIO = 1.2;
/** Pause after each run before its CPU is read. */
const SETTLE_MS = 1500;
const DAY_MS = 86_400_000;

const dataDir = mkdtempSync(join(tmpdir(), 'driftline-fleet-'));
const database = `bench_fleet_${randomBytes(4).toString('hex')}`;
let gateway = null;

async function cleanup() {
  if (gateway) {
    await chQuery(`DROP DATABASE IF EXISTS ${database}`).catch(() => {});
    await gateway.stop();
    gateway = null;
  }
  rmSync(dataDir, { recursive: true, force: true });
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => void cleanup().then(() => process.exit(130)));

async function chQuery(sql, body) {
  const u = new URL(gateway.clickhouse.url);
  u.searchParams.set('database', database);
  if (body !== undefined) u.searchParams.set('query', sql);
  // Once more on a dropped connection: a kept-alive socket the server closed after 5 s idle (the
  // reads between two inserts take longer) fails the write with EPIPE. A repeated insert is
  // harmless here: same keys and version, and reads take one row per key.
  const res = await fetch(u, { method: 'POST', body: body ?? sql }).catch(() => fetch(u, { method: 'POST', body: body ?? sql }));
  const text = await res.text();
  if (!res.ok) throw new Error(`ClickHouse ${res.status}: ${text.slice(0, 300)}`);
  return text;
}

/** Rows read and elapsed time ClickHouse reports for a query (FORMAT JSON statistics: both generations). */
async function chStats(sql) {
  const out = JSON.parse(await chQuery(`${sql} FORMAT JSON`));
  return { rows: out.rows, rowsRead: Number(out.statistics?.rows_read ?? NaN), elapsedMs: Number(out.statistics?.elapsed ?? NaN) * 1000 };
}

async function pool(items, limit, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Batch b: BATCH_EVENTS events over all devices, each device driving east at 50 km/h, one fix per 5 s (or a reading of the same numbers). */
function batch(kind, b, baseMs) {
  const perDevice = BATCH_EVENTS / INGEST_DEVICES;
  const events = [];
  for (let d = 0; d < INGEST_DEVICES; d++) {
    for (let i = 0; i < perDevice; i++) {
      const k = b * perDevice + i;
      const atMs = baseMs + k * 5000;
      const properties = { __deviceId: `${kind}-${d}`, __eventId: `${kind}-${d}-${k}`, __timestamp: atMs };
      // A plain event carries the same numbers under other names (a sensor reading of the same
      // size): the ratio is what handling a position costs, not a longer payload.
      const values = [52 + d * 0.01, 13 + k * 0.0001, 50, 5];
      if (kind.startsWith('pos')) Object.assign(properties, { lat: values[0], lon: values[1], speed: values[2], accuracy: values[3] });
      else Object.assign(properties, { ch1: values[0], ch2: values[1], ch3: values[2], ch4: values[3] });
      events.push({ type: 'track', payload: { name: kind.startsWith('pos') ? 'position' : 'reading', properties } });
    }
  }
  return JSON.stringify({ events });
}

async function ingest(kind, headers, baseMs) {
  const count = async () => Number((await chQuery(`SELECT count() FROM events WHERE project_id = '${gateway.project.id}' AND device_id LIKE '${kind}-%'`)).trim());
  const cpu0 = cpuSeconds({ pgid: gateway.wranglerPid });
  const t0 = performance.now();
  const bodies = Array.from({ length: INGEST_BATCHES }, (_, b) => batch(kind, b, baseMs));
  // In order, one at a time, as a fleet draining its buffers posts them (faster than the local
  // consumer drains the queue: batches with a backlog behind them defer their recompute).
  for (const body of bodies) {
    const res = await fetch(`${gateway.url}/track/batch`, { method: 'POST', headers, body });
    const r = await res.json();
    if (res.status !== 202 || r.rejected.length) throw new Error(`batch answered ${res.status}: ${JSON.stringify(r).slice(0, 300)}`);
  }
  const total = INGEST_BATCHES * BATCH_EVENTS;
  const lastFixMs = baseMs + (INGEST_BATCHES * (BATCH_EVENTS / INGEST_DEVICES) - 1) * 5000;
  // The gateway runs without its crons here. A recompute that failed (on a loaded machine, a
  // ClickHouse timeout) waits for the device's next batch or the every-minute watchdog; after the
  // last batch only the watchdog is left, so it is fired by hand once things stall.
  const postedAt = Date.now();
  let lastKick = postedAt;
  let kicks = 0;
  for (const deadline = Date.now() + 600_000; ; ) {
    let done = (await count()) >= total;
    // Recomputed: every device's live position is its newest fix. Asked of ClickHouse, not the
    // gateway, so the polling costs no workerd CPU (the device objects take theirs first; checked
    // through the gateway once the run is measured).
    if (done && kind.startsWith('pos')) done = (await liveAtNewest(kind, lastFixMs)) === INGEST_DEVICES;
    if (done) break;
    if (kind.startsWith('pos') && Date.now() - lastKick > 90_000) {
      await (await fetch(`${gateway.url}/cdn-cgi/handler/scheduled?cron=${encodeURIComponent('* * * * *')}`)).text();
      lastKick = Date.now();
      kicks++;
    }
    if (Date.now() > deadline) {
      const stored = await count();
      const devices = kind.startsWith('pos') ? (await (await fetch(`${gateway.url}/v1/devices`, { headers })).json()).devices.filter((d) => d.deviceId.startsWith(`${kind}-`)) : [];
      const behind = devices.filter((d) => !d.live || Date.parse(d.live.at) !== lastFixMs).map((d) => `${d.deviceId}@${d.live?.at ?? 'none'}`);
      throw new Error(`${kind}: not visible/recomputed in time (${stored}/${total} stored; live behind: ${behind.slice(0, 5).join(', ') || 'none'}${behind.length > 5 ? ` and ${behind.length - 5} more` : ''})`);
    }
    await sleep(200);
  }
  const wallSec = (performance.now() - t0) / 1000;
  // What a run set going after its rows became visible (a pass's last writes, its lease) is its
  // own, not the next run's: both kinds settle as long before the CPU is read.
  await sleep(SETTLE_MS);
  const run = { events: total, wallSec, cpuSec: cpuSeconds({ pgid: gateway.wranglerPid }) - cpu0 };
  if (kind.startsWith('pos')) {
    const devices = (await (await fetch(`${gateway.url}/v1/devices`, { headers })).json()).devices.filter((d) => d.deviceId.startsWith(`${kind}-`));
    const own = await Promise.all(devices.map(async (d) => (await (await fetch(`${gateway.url}/v1/devices/${d.deviceId}`, { headers })).json()).live));
    if (devices.length !== INGEST_DEVICES || !devices.every((d, i) => d.live && Date.parse(d.live.at) === lastFixMs && own[i]?.at === d.live.at)) {
      throw new Error(`${kind}: the gateway does not show every device's newest fix as live (lists and device objects)`);
    }
  }
  // Each run as it ends: a long run on a busy machine still leaves its figures behind.
  console.log(`  run ${kind}: workerd CPU ${run.cpuSec.toFixed(2)} s, wall ${run.wallSec.toFixed(1)} s${kicks ? ` (the watchdog fired ${kicks}× to finish recomputes that had failed)` : ''}`);
  return run;
}

/** Devices of the run whose live position (ClickHouse's copy) is the fix at `atMs`. */
async function liveAtNewest(kind, atMs) {
  const sql = `SELECT countIf(at = ${Number(atMs)}) FROM (
      SELECT device_id, argMax(at_ms, version) AS at FROM fleet_live
       WHERE project_id = '${gateway.project.id}' AND device_id LIKE '${kind}-%' GROUP BY device_id)`;
  return Number((await chQuery(sql)).trim());
}

async function main() {
  console.log(`fleet: starting a gateway (ClickHouse database ${database})...`);
  gateway = await startGateway({ localClickHouse: process.env.LOCAL_CLICKHOUSE || 'server', port: 0, dataDir, quiet: process.env.BENCH_VERBOSE !== '1', crons: false, localObservability: false, clickhouseDatabase: database, adminToken: randomBytes(18).toString('hex'), log: () => {} });
  const { project } = gateway;
  const headers = { 'content-type': 'application/json', 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret };

  // 1. Ingest: warm-up runs of both kinds, plain events, then positions and plain again (ROUNDS times); the ratio
  // uses the mean of the plain runs.
  if (process.env.BENCH_FLEET_SKIP_INGEST !== '1') await ingestBench(headers);
  if (process.env.BENCH_FLEET_SKIP_MILEAGE !== '1') await mileageBench(project, headers);
}

async function ingestBench(headers) {
  const baseMs = Date.now() - 3 * 3600_000;
  // A first run warms the runtime up (bundling, JIT) and is left out.
  // Both kinds: the fleet code warms up too, not in the first position run.
  const warm = await ingest('warm', headers, baseMs);
  const warmPositions = await ingest('poswarm', headers, baseMs);
  const plains = [await ingest('plain', headers, baseMs)];
  const positions = [];
  for (let r = 0; r < ROUNDS; r++) {
    positions.push(await ingest(r === 0 ? 'pos' : `pos${r + 1}`, headers, baseMs));
    plains.push(await ingest(r === 0 ? 'plainb' : `plain${r + 2}`, headers, baseMs));
  }
  const mean = (runs, f) => runs.reduce((sum, x) => sum + f(x), 0) / runs.length;
  const plainCpu = mean(plains, (x) => x.cpuSec);
  const plainWall = mean(plains, (x) => x.wallSec);
  const pos = { events: positions[0].events, cpuSec: mean(positions, (x) => x.cpuSec), wallSec: mean(positions, (x) => x.wallSec) };
  const perEvent = (s) => ((s * 1e6) / pos.events).toFixed(0);
  const runs = (xs) => xs.map((x) => `${x.cpuSec.toFixed(2)} s`).join(', ');
  console.log(`positions ingest (${INGEST_BATCHES} batches × ${BATCH_EVENTS}, ${INGEST_DEVICES} devices, in order, recomputed until every live position is the newest fix; warm-up runs of ${warm.cpuSec.toFixed(2)} s and ${warmPositions.cpuSec.toFixed(2)} s CPU left out):`);
  console.log(`  plain events : workerd CPU ${perEvent(plainCpu)} µs/event, wall ${perEvent(plainWall)} µs/event (runs: ${runs(plains)} CPU)`);
  console.log(`  positions    : workerd CPU ${perEvent(pos.cpuSec)} µs/event, wall ${perEvent(pos.wallSec)} µs/event (until visible and recomputed${ROUNDS > 1 ? `; runs: ${runs(positions)} CPU` : ''})`);
  const ratio = pos.cpuSec / plainCpu;
  console.log(`  CPU ratio position/plain: ${ratio.toFixed(2)}× (target ≤ ${TARGET_CPU_RATIO}×) ${ratio <= TARGET_CPU_RATIO ? 'OK' : 'OVER TARGET'}; wall ratio ${(pos.wallSec / plainWall).toFixed(2)}×`);
  // The CPU of a run drifts over a session (JIT, the machine's load): each position run against
  // the plain runs on either side of it cancels the drift.
  const paired = positions.map((p, k) => p.cpuSec / ((plains[k].cpuSec + plains[k + 1].cpuSec) / 2));
  if (paired.length > 1) console.log(`  paired: ${paired.map((r) => `${r.toFixed(2)}×`).join(', ')} (each position run against the plain runs before and after it; mean ${(paired.reduce((a, b) => a + b, 0) / paired.length).toFixed(2)}×)`);
  console.log(`RESULT fleet_position_cpu_us_per_event ${perEvent(pos.cpuSec)}`);
  console.log(`RESULT fleet_position_cpu_us_per_event_floor ${perEvent(plainCpu)}`);
  console.log(`RESULT fleet_position_cpu_ratio ${ratio.toFixed(3)}`);
}

/** Epoch ms of a local wall-clock time in `zone` (no transition near the hours used here). */
function zonedMs(zone, y, m, d, h) {
  const wall = Date.UTC(y, m - 1, d, h);
  const offset = (t) => {
    const f = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }).formatToParts(new Date(t)).map((p) => [p.type, p.value]));
    return Date.UTC(+f.year, +f.month - 1, +f.day, +f.hour, +f.minute, +f.second) - t;
  };
  return wall - offset(wall - offset(wall));
}

const ZONES = ['Europe/Berlin', 'Asia/Tokyo', 'America/New_York'];
const LOCAL_HOURS = [7, 12, 19];

/**
 * One vehicle's day rows for DAYS local days from `firstDay` (YYYY-MM-DD): three trips a day of
 * three 15-minute buckets each, at 07:00, 12:00 and 19:00 local time (Tokyo's morning and New
 * York's evening trips cross UTC midnight). `byZone`: rows keyed by the vehicle's local dates, as
 * the recompute writes them now; else by UTC dates, as it wrote them before.
 */
function vehicleRows(projectId, deviceId, zone, firstDay, byZone, days = DAYS) {
  const [y, m, d0] = firstDay.split('-').map(Number);
  const rows = new Map();
  for (let d = 0; d < days; d++) {
    const local = new Date(Date.UTC(y, m - 1, d0 + d)).toISOString().slice(0, 10);
    for (const h of LOCAL_HOURS) {
      const start = zonedMs(zone, y, m, d0 + d, h);
      for (let q = 0; q < 3; q++) {
        const at = start + q * 900_000;
        const day = byZone ? local : new Date(at).toISOString().slice(0, 10);
        let row = rows.get(day);
        if (!row) rows.set(day, (row = { project_id: projectId, device_id: deviceId, day, zone: byZone ? zone : '', bucket_ms: [], distance_m: [], moving_ms: [], trip_starts: [], version: 1 }));
        row.bucket_ms.push(at);
        row.distance_m.push(9000);
        row.moving_ms.push(900_000);
        row.trip_starts.push(q === 0 ? 1 : 0);
      }
    }
  }
  return [...rows.values()].map((r) => JSON.stringify(r));
}

async function mileageBench(project, headers) {
  // 2. Mileage: 1 000 vehicles × 30 local days of aggregate rows, a third each in Berlin, Tokyo and
  // New York, registered in one group, rows keyed by local days, read through the route. (Rows keyed
  // by UTC days, as written before rows named their zone, are no longer compared here: the reads
  // widen only for vehicles D1 marks as holding another zone's rows, which the API cannot set.)
  const today = Math.floor(Date.now() / DAY_MS) * DAY_MS;
  const firstDay = new Date(today - DAYS * DAY_MS).toISOString().slice(0, 10);
  const lastDay = new Date(today - DAY_MS).toISOString().slice(0, 10);
  const layouts = [{ label: 'rows by local day', project, headers, byZone: true }];
  for (const l of layouts) {
    // Registered first: a zone set on a vehicle with rows of another zone starts their rebuild.
    await pool(Array.from({ length: VEHICLES }, (_, v) => v), 8, async (v) => {
      for (;;) {
        const res = await fetch(`${gateway.url}/v1/devices/veh-${v}`, { method: 'PUT', headers: l.headers, body: JSON.stringify({ group: 'bench', timezone: ZONES[v % ZONES.length] }) });
        await res.text();
        // The read budget (300 requests / 10 s) covers registry writes too.
        if (res.status === 429) {
          await sleep(1000 * Number(res.headers.get('retry-after') ?? 1));
          continue;
        }
        if (res.status !== 200) throw new Error(`PUT answered ${res.status}`);
        break;
      }
    });
    const rows = [];
    for (let v = 0; v < VEHICLES; v++) rows.push(...vehicleRows(l.project.id, `veh-${v}`, ZONES[v % ZONES.length], firstDay, l.byZone));
    l.stored = rows.length;
    await chQuery('INSERT INTO fleet_mileage_days FORMAT JSONEachRow', rows.join('\n'));
  }
  const vehicleDays = VEHICLES * DAYS;
  console.log(`daily mileage of ${VEHICLES} vehicles × ${DAYS} local days (${ZONES.join(', ')}; trips at ${LOCAL_HOURS.map((h) => `${h}:00`).join(', ')} local):`);
  /** Five reads of the window through the route: the median time and the route's own ClickHouse figures. */
  const readWindow = async (l, from, to, expectDays) => {
    const times = [];
    let timing = null;
    let days = 0;
    for (let k = 0; k < 5; k++) {
      const t0 = performance.now();
      const res = await fetch(`${gateway.url}/v1/mileage?group=bench&from=${from}&to=${to}`, { headers: l.headers });
      const body = await res.json();
      if (res.status !== 200) throw new Error(`mileage answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
      times.push(performance.now() - t0);
      days = body.days.length;
      if (days !== expectDays || body.days.some((d) => d.trips !== 3 || Math.abs(d.distanceM - 81_000) > 1e-6)) throw new Error(`${l.label}: not ${expectDays} days of 3 trips of 81 km`);
      // The route's own reads: `clickhouse;desc="rows=<kept> read_rows=<read>"`.
      timing = /rows=(\d+) read_rows=(\d+)/.exec(res.headers.get('server-timing') ?? '');
    }
    times.sort((a, b) => a - b);
    const rowsRead = timing ? Number(timing[2]) : NaN;
    return { days, kept: timing?.[1], rowsRead, perVehicleDay: rowsRead / days, times };
  };
  for (const l of layouts) {
    const r = await readWindow(l, firstDay, lastDay, vehicleDays);
    l.perVehicleDay = r.perVehicleDay;
    l.medianMs = r.times[2];
    console.log(`  ${l.label}: ${l.stored} rows stored; GET /v1/mileage?group= (${r.days} days answered) median ${r.times[2].toFixed(0)} ms (min ${r.times[0].toFixed(0)}, max ${r.times[4].toFixed(0)});`);
    console.log(`    ${r.kept} day rows used, ClickHouse read ${r.rowsRead} = ${r.perVehicleDay.toFixed(3)} per vehicle-day (target ≤ 1)`);
  }
  // The same fleet with HISTORY_DAYS more days stored before the window: the table is sorted by
  // (project, day, device) in monthly partitions, so a fleet read takes the granules of its own
  // days (it read every row of each month it touched when sorted by device first).
  const histFirst = new Date(today - (DAYS + HISTORY_DAYS) * DAY_MS).toISOString().slice(0, 10);
  const hist = [];
  for (let v = 0; v < VEHICLES; v++) hist.push(...vehicleRows(project.id, `veh-${v}`, ZONES[v % ZONES.length], histFirst, true, HISTORY_DAYS));
  await chQuery('INSERT INTO fleet_mileage_days FORMAT JSONEachRow', hist.join('\n'));
  // Merged first, as background merges leave a table: an insert's own part holds only its days, so
  // unmerged, a window that matches the inserts reads no granule of any other day.
  await chQuery('OPTIMIZE TABLE fleet_mileage_days FINAL');
  const rolling = await readWindow(layouts[0], firstDay, lastDay, vehicleDays);
  // The first whole calendar month among the stored days.
  const h = new Date(`${histFirst}T00:00:00Z`);
  const monthStart = h.getUTCDate() === 1 ? h : new Date(Date.UTC(h.getUTCFullYear(), h.getUTCMonth() + 1, 1));
  const monthEnd = new Date(Date.UTC(monthStart.getUTCFullYear(), monthStart.getUTCMonth() + 1, 0));
  const monthDays = monthEnd.getUTCDate();
  const month = await readWindow(layouts[0], monthStart.toISOString().slice(0, 10), monthEnd.toISOString().slice(0, 10), VEHICLES * monthDays);
  console.log(`  with ${HISTORY_DAYS} more days stored before the window (rows by local day, parts merged):`);
  console.log(`    the last ${DAYS} days again: ClickHouse read ${rolling.rowsRead} = ${rolling.perVehicleDay.toFixed(3)} per vehicle-day, median ${rolling.times[2].toFixed(0)} ms`);
  console.log(`    calendar month ${monthStart.toISOString().slice(0, 7)} (${monthDays} days): read ${month.rowsRead} = ${month.perVehicleDay.toFixed(3)} per vehicle-day, median ${month.times[2].toFixed(0)} ms`);
  console.log(`RESULT fleet_mileage_rows_per_vehicle_day_rolling_with_history ${rolling.perVehicleDay.toFixed(3)}`);
  console.log(`RESULT fleet_mileage_rows_per_vehicle_day_calendar_month ${month.perVehicleDay.toFixed(3)}`);
  const now = layouts[0];
  console.log(`RESULT fleet_mileage_rows_per_vehicle_day ${now.perVehicleDay.toFixed(3)}`);
  console.log(`RESULT fleet_mileage_median_ms ${now.medianMs.toFixed(0)}`);

  const firstDayMs = today - DAYS * DAY_MS;
  // Raw fixes beside it: RAW_VEHICLES vehicles × 30 days at one fix a minute while driving (3 × 40 min a day).
  const raw = [];
  for (let v = 0; v < RAW_VEHICLES; v++) {
    for (let d = 0; d < DAYS; d++) {
      for (const h of [7, 12, 17]) {
        for (let m = 0; m < 40; m++) {
          const at = firstDayMs + d * DAY_MS + h * 3600_000 + m * 60_000;
          raw.push(JSON.stringify({ id: `00000000-0000-4000-8000-${String(raw.length).padStart(12, '0')}`, project_id: project.id, device_id: `veh-${v}`, session_id: '', profile_id: '', type: 'track', name: 'position', created_at_ms: at, received_at_ms: at, synced_at_ms: at, properties: JSON.stringify({ lat: 52 + m * 0.001, lon: 13, speed: 50 }), ref_id: '', ip: '', country: '', region: '', city: '', timezone: '', latitude: null, longitude: null }));
        }
      }
    }
  }
  for (let i = 0; i < raw.length; i += 50_000) await chQuery('INSERT INTO events FORMAT JSONEachRow', raw.slice(i, i + 50_000).join('\n'));
  const rawList = Array.from({ length: RAW_VEHICLES }, (_, v) => `'veh-${v}'`).join(',');
  const rawStats = await chStats(
    `SELECT device_id, created_at_ms, properties FROM events
      WHERE project_id = '${project.id}' AND device_id IN (${rawList}) AND name = 'position'
        AND created_at >= toDateTime(${Math.floor((firstDayMs - DAY_MS) / 1000)}) AND created_at_ms <= ${today}`,
  );
  const rawVehicleDays = RAW_VEHICLES * DAYS;
  console.log(`  raw fixes of ${RAW_VEHICLES} vehicles × ${DAYS} days (120 fixes a day): ${rawStats.rowsRead} rows read = ${(rawStats.rowsRead / rawVehicleDays).toFixed(1)} per vehicle-day, ${rawStats.elapsedMs.toFixed(1)} ms in ClickHouse just to read them (before any analysis; ×${VEHICLES / RAW_VEHICLES} for the whole fleet)`);
}

main()
  .then(cleanup)
  .catch(async (err) => {
    console.error(err);
    await cleanup();
    process.exit(1);
  });
