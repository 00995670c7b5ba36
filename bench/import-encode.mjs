// The legacy import's row encoding alone, in Node's V8 (no gateway): 300k rows of the import
// bench's seven columns in 2 500-row steps, one step in flight while the next is encoded (as the
// import pipelines them), yielding every 100 rows. ImportEncoder's TabSeparated lines against the
// JSONEachRow lines of the same rows (translateRow's objects, stringified as the import sent them
// before), measured in the same run: CPU time, garbage-collection time and characters per row.
// Prints figures, asserts nothing.
import { PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { importBundled } from './lib/batch.mjs';
import { floor, result } from './lib/results.mjs';

const ROWS = Number(process.env.BENCH_ENCODE_ROWS ?? 300_000);
const STEP = 2500;
const YIELD_ROWS = 100;
const ROUNDS = Number(process.env.BENCH_ENCODE_ROUNDS ?? 5);

const { ImportEncoder, translateRow, LegacyTimestamp } = await importBundled(`
  export { ImportEncoder } from './src/legacy/encode';
  export { translateRow, LegacyTimestamp } from './src/legacy/translate';
`);

const params = { projectId: 'p-0123456789', dataset: 'bench', source: { table: 't', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_track' } };
const base = Date.UTC(2022, 0, 1);
/** A row as the Postgres driver hands it over (the import bench's table). */
function legacyRow(g) {
  const ms = base + g * 13_000;
  return {
    id: String(g),
    device_id: `veh-${g % 5000}`,
    created_at: new LegacyTimestamp(ms, new Date(ms).toISOString()),
    lat: 48.8 + (g % 1000) / 10000,
    lon: 2.3 + (g % 777) / 10000,
    speed: (g % 130) / 3,
    label: `trip ${Math.floor(g / 500)}`,
  };
}

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

let gcMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcMs += e.duration;
}).observe({ entryTypes: ['gc'] });
const tick = () => new Promise((r) => setImmediate(r));

/** A step's encoder of each kind: rows in with `add`, the step's three table texts out with `finish`. */
const encoders = {
  tabSeparated: (now) => {
    const encoder = new ImportEncoder(params, now);
    return { add: (row) => encoder.add(row), finish: () => encoder.finish() };
  },
  jsonEachRow: (now) => {
    const rows = [];
    const add = (row) => {
      const t = translateRow(params, row, now);
      rows.push({ id: t.event.id, created_at_ms: t.event.created_at_ms, event: JSON.stringify(t.event), map: JSON.stringify(t.map), payload: JSON.stringify(t.payload) });
    };
    const lines = (f) => `${rows.map(f).join('\n')}\n`;
    return { add, finish: () => ({ events: lines((r) => r.event), maps: lines((r) => r.map), payloads: lines((r) => r.payload) }) };
  },
};

async function run(kind) {
  let inFlight = null;
  let chars = 0;
  // Each run starts from a collected heap: no garbage of the run before is collected in this one's time.
  gc();
  await new Promise((r) => setTimeout(r, 50));
  const gcBefore = gcMs;
  const cpuBefore = process.cpuUsage();
  for (let from = 1; from <= ROWS; from += STEP) {
    const page = Array.from({ length: Math.min(STEP, ROWS - from + 1) }, (_, i) => legacyRow(from + i));
    const step = encoders[kind](Date.now());
    for (let i = 0; i < page.length; i++) {
      if (i > 0 && i % YIELD_ROWS === 0) await tick();
      step.add(page[i]);
    }
    // The step before is written now: its texts are read once, then let go.
    if (inFlight) chars += inFlight.events.length + inFlight.maps.length + inFlight.payloads.length;
    inFlight = step.finish();
  }
  chars += inFlight.events.length + inFlight.maps.length + inFlight.payloads.length;
  const cpu = process.cpuUsage(cpuBefore);
  // Collections are reported a moment later; those during the run are in its CPU time as well.
  await tick();
  const collected = gcMs - gcBefore;
  // The rows themselves are made the same way for both: their cost is in both figures.
  return { usPerRow: (cpu.user + cpu.system) / ROWS, gcMs: collected, charsPerRow: chars / ROWS };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
const runs = { tabSeparated: [], jsonEachRow: [] };
// Alternating rounds: drift of the machine falls on both alike.
for (let round = 0; round <= ROUNDS; round++) {
  for (const kind of Object.keys(runs)) {
    const r = await run(kind);
    if (round > 0) runs[kind].push(r); // the first round warms up
  }
}
const figures = Object.fromEntries(
  Object.entries(runs).map(([kind, rs]) => [kind, { usPerRow: median(rs.map((r) => r.usPerRow)), gcMs: median(rs.map((r) => r.gcMs)), charsPerRow: rs[0].charsPerRow }]),
);
const t = figures.tabSeparated;
const j = figures.jsonEachRow;
console.log(`legacy import row encoding, ${ROWS.toLocaleString('en-US')} rows in ${STEP}-row steps, median of ${ROUNDS} rounds each (Node ${process.versions.node})`);
console.log(`  TabSeparated (ImportEncoder)       ${t.usPerRow.toFixed(2)} µs CPU per row, ${t.gcMs.toFixed(0)} ms collecting garbage, ${t.charsPerRow.toFixed(0)} characters per row`);
console.log(`  JSONEachRow of translateRow (floor) ${j.usPerRow.toFixed(2)} µs CPU per row, ${j.gcMs.toFixed(0)} ms collecting garbage, ${j.charsPerRow.toFixed(0)} characters per row`);
console.log(`  ratios: CPU ${(t.usPerRow / j.usPerRow).toFixed(2)}×, garbage collection ${(t.gcMs / j.gcMs).toFixed(2)}×, characters ${(t.charsPerRow / j.charsPerRow).toFixed(2)}×`);
result('import_encode_us_per_row', t.usPerRow);
floor('import_encode_us_per_row', j.usPerRow);
result('import_encode_gc_ms', t.gcMs);
floor('import_encode_gc_ms', j.gcMs);
result('import_encode_chars_per_row', t.charsPerRow);
floor('import_encode_chars_per_row', j.charsPerRow);
