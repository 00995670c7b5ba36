// Edge CPU: validation and normalisation of a full 2000-event batch, against the floor of
// JSON.parse + JSON.stringify of the same body, both measured in this run. Target: ≤ 2× the floor.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { importBundled, makeBatch } from './lib/batch.mjs';
import { floor, result } from './lib/results.mjs';

// A full collection before each timed section, so neither pays for the other's garbage.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

const TARGET_RATIO = 2;
const WARMUP = Number(process.env.BENCH_WARMUP ?? 30);
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 200);

// The pure part of POST /track/batch: body shape, then per row normalizeEvent and the device-object
// row (ids, dedup key), grouped by device as acceptEvents does before calling the objects.
const core = await importBundled(`
  import { BatchBody } from './src/ingest/wire';
  import { normalizeEvent } from './src/ingest/normalize';
  import { toDeviceEvent } from './src/ingest/accept';
  export function processBatch(body: unknown, ctxBase: { ip: string; userAgent: string; geo: any }, receivedAtMs: number) {
    const parsed = BatchBody.safeParse(body);
    if (!parsed.success) throw new Error('bad batch');
    const { events, sentAt } = parsed.data;
    const ctx = { ...ctxBase, receivedAtMs, sentAtMs: sentAt ? Date.parse(sentAt) : undefined };
    const byDevice = new Map<string, unknown[]>();
    let rejected = 0;
    for (let i = 0; i < events.length; i++) {
      const r = normalizeEvent(events[i], ctx, i);
      if (!r.ok) { rejected++; continue; }
      const deviceId = r.event.deviceId ?? 'derived';
      let list = byDevice.get(deviceId);
      if (!list) byDevice.set(deviceId, (list = []));
      list.push(toDeviceEvent('project-1', deviceId, r.event));
    }
    return { devices: byDevice.size, rejected };
  }
`);

const nowMs = Date.now();
const batch = makeBatch({ count: 2000, devices: 50, nowMs });
const body = JSON.stringify(batch);
const ctxBase = {
  ip: '203.0.113.7',
  userAgent: 'driftline-bench/1.0',
  geo: { country: 'FR', region: 'IDF', city: 'Paris', timezone: 'Europe/Paris', latitude: 48.85, longitude: 2.35 },
};

const check = core.processBatch(JSON.parse(body), ctxBase, nowMs);
if (check.rejected !== 0 || check.devices !== 50) throw new Error(`fixture not accepted as expected: ${JSON.stringify(check)}`);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// Interleave the two measurements so machine noise hits both alike. The path reads its input
// without changing it, so one parsed body serves every iteration (the route parses it once).
const input = JSON.parse(body);
const wall = { floor: [], path: [] };
const cpu = { floor: [], path: [] };
let sink = 0;
// CPU time (user + system of this process) is what a Worker is billed and limited on, and it does
// not grow when a busy machine preempts the benchmark; wall time is shown next to it.
const cpuNow = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
for (let i = 0; i < WARMUP + ITERATIONS; i++) {
  gc();
  let c = cpuNow();
  let t = process.hrtime.bigint();
  const parsed = JSON.parse(body);
  sink += JSON.stringify(parsed).length;
  const floorWall = Number(process.hrtime.bigint() - t) / 1000;
  const floorCpu = cpuNow() - c;

  gc();
  c = cpuNow();
  t = process.hrtime.bigint();
  sink += core.processBatch(input, ctxBase, nowMs).devices;
  const pathWall = Number(process.hrtime.bigint() - t) / 1000;
  const pathCpu = cpuNow() - c;
  if (i >= WARMUP) {
    wall.floor.push(floorWall);
    wall.path.push(pathWall);
    cpu.floor.push(floorCpu);
    cpu.path.push(pathCpu);
  }
}
if (sink === 0) throw new Error('unreachable');

const n = batch.events.length;
const per = (xs) => median(xs) / n;
const ratio = per(cpu.path) / per(cpu.floor);
const wallRatio = per(wall.path) / per(wall.floor);

console.log(`edge-cpu: ${n}-event batch, ${(body.length / 1024).toFixed(0)} KB, ${ITERATIONS} iterations (median, after ${WARMUP} warm-up)`);
console.log(`                               CPU time                      wall time`);
console.log(`  validation + normalisation  ${per(cpu.path).toFixed(2)} µs/event (${(median(cpu.path) / 1000).toFixed(2)} ms/batch)   ${per(wall.path).toFixed(2)} µs/event`);
console.log(`  JSON.parse + JSON.stringify ${per(cpu.floor).toFixed(2)} µs/event (floor)             ${per(wall.floor).toFixed(2)} µs/event`);
console.log(`  ratio                       ${ratio.toFixed(2)}×  (target ≤ ${TARGET_RATIO}×) ${ratio <= TARGET_RATIO ? 'OK' : 'ABOVE TARGET'}          ${wallRatio.toFixed(2)}×`);
result('edge_cpu_ratio', ratio);
floor('edge_cpu_ratio', per(cpu.floor));
if (process.env.BENCH_STRICT === '1' && ratio > TARGET_RATIO) process.exit(1);
