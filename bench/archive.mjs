// Raw-payload archival through a local gateway: archive throughput (ClickHouse → verified R2 chunks,
// target ≥ 50k rows/s), restore throughput (target ≥ 100k rows/s), the compression ratio of
// realistic tracker and analytics payloads (target ≥ 10:1: tracker apps' rows as the gateway stores
// them, in drives, archived in a second project; also printed for a worst-case mix), and the R2 bytes a lazy read costs
// (at most one chunk; 0 when cached). Each rate is printed beside a floor measured in the same run:
// reading the same rows out of ClickHouse and gzipping them in this process. Prints, asserts nothing.
import { benchGateway } from './lib/bench-gateway.mjs';
import { floor, result } from './lib/results.mjs';
// The gateway's own parameter layer, for servers without native query parameters (18.16).
import { bindParams } from '../src/clickhouse/params.ts';

const ROWS = Number(process.env.BENCH_ARCHIVE_ROWS ?? 300_000);
const CHUNK_ROWS = Number(process.env.BENCH_ARCHIVE_CHUNK_ROWS ?? 50_000);
const LAZY_READS = Number(process.env.BENCH_ARCHIVE_LAZY_READS ?? 20);
const JOB_TIMEOUT_MS = Number(process.env.BENCH_ARCHIVE_TIMEOUT_MS ?? 600_000);
const MONTH = '2025-06';
const MONTH_START_MS = Date.UTC(2025, 5, 1);
const TARGET_ARCHIVE = 50_000;
const TARGET_RESTORE = 100_000;
const TARGET_RATIO = 10;

const bench = benchGateway('archive');
const { database } = bench;
let gateway = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (n) => Math.round(n).toLocaleString('en-US');
const met = (ok) => (ok ? 'met' : 'NOT met');

let nativeParams = null;

async function sql(query, params = {}) {
  const url = new URL(gateway.clickhouse.url);
  url.searchParams.set('database', database);
  if (nativeParams === null) {
    const version = await fetch(url, { method: 'POST', body: 'SELECT version()' }).then((r) => r.text());
    const [major, minor] = version.trim().split('.').map(Number);
    nativeParams = major > 19 || (major === 19 && minor >= 15);
  }
  let body = query;
  if (nativeParams) for (const [k, v] of Object.entries(params)) url.searchParams.set(`param_${k}`, String(v));
  else if (Object.keys(params).length) body = bindParams(query, params);
  const res = await fetch(url, { method: 'POST', body });
  const text = await res.text();
  if (!res.ok) throw new Error(`ClickHouse ${res.status}: ${text.slice(0, 500)}`);
  return text;
}

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

async function runJob(label, path, body) {
  const started = Date.now();
  const { id } = await admin('POST', path, body);
  let job;
  let lastPrint = 0;
  for (;;) {
    job = await admin('GET', `/admin/backfills/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) break;
    if (Date.now() - lastPrint > 5000) {
      lastPrint = Date.now();
      console.log(`  ${label}: ${job.state} ${fmt(job.rowsProcessed)}/${fmt(job.rowsTotal ?? 0)} rows, ${fmt(job.ratePerSec ?? 0)} rows/s, ETA ${job.etaSec ?? '?'} s`);
    }
    if (Date.now() - started > JOB_TIMEOUT_MS) throw new Error(`${label}: not done after ${JOB_TIMEOUT_MS / 1000} s: ${JSON.stringify(job)}`);
    await sleep(100);
  }
  if (job.state !== 'succeeded') throw new Error(`${label}: job ${job.state}: ${job.error}`);
  const runMs = Date.parse(job.endedAt) - Date.parse(job.startedAt);
  return { job, runMs, wallMs: Date.now() - started };
}

// Ids as the gateway makes them: UUIDv7 carrying the event time, the rest from a hash.
// hex() drops leading zero bytes: pad to 16 digits.
const pad16 = (x) => `substring(concat('0000000000000000', ${x}), length(${x}) + 1, 16)`;
function uuidv7Sql(t, salt) {
  const h = pad16(`lower(hex(cityHash64(number, ${salt})))`);
  const ms = pad16(`lower(hex(toUInt64(${t})))`);
  return `toUUID(concat(substring(${ms}, 5, 8), '-', substring(${ms}, 13, 4), '-7', substring(${h}, 1, 3), '-8', substring(${h}, 4, 3), '-', substring(${h}, 7, 10), substring(${pad16(`lower(hex(cityHash64(number, ${salt}, 1)))`)}, 1, 2)))`;
}

/**
 * The default data: a third each of OwnTracks locations, Overland GeoJSON features and OpenPanel
 * analytics events, over 2000 devices through one month, as clients would send them through
 * `/track/batch`, each field cycling on its own (a device's rows hours apart, sharing little).
 */
function mixedPayloads() {
  const t = `toInt64(${MONTH_START_MS} + number * 8000 + (number % 997))`;
  const dev = "concat('veh-', toString(number % 2000))";
  const lat = 'toString(round(48.80 + (number % 10000) / 100000.0, 6))';
  const lon = 'toString(round(2.30 + (number % 7777) / 100000.0, 6))';
  const payload = `multiIf(
    number % 3 = 0,
    concat('{"type":"track","payload":{"name":"location","properties":{"_type":"location","tid":"', substring(${dev}, 5, 2), '","lat":', ${lat}, ',"lon":', ${lon},
           ',"acc":', toString(number % 40 + 3), ',"alt":', toString(30 + number % 90), ',"batt":', toString(100 - number % 100), ',"vel":', toString(number % 110),
           ',"conn":"m","tst":', toString(intDiv(${t}, 1000)), ',"__deviceId":"', ${dev}, '"}}}'),
    number % 3 = 1,
    concat('{"type":"track","payload":{"name":"overland_location","properties":{"type":"Feature","geometry":{"type":"Point","coordinates":[', ${lon}, ',', ${lat},
           ']},"properties":{"timestamp":"', toString(toDateTime(intDiv(${t}, 1000), 'UTC')), 'Z","altitude":', toString(30 + number % 90), ',"speed":', toString(number % 30),
           ',"horizontal_accuracy":', toString(number % 40 + 5), ',"motion":["driving"],"battery_state":"unplugged","battery_level":0.', toString(10 + number % 89),
           ',"wifi":"","device_id":"', ${dev}, '"},"__deviceId":"', ${dev}, '"}}}'),
    concat('{"type":"track","payload":{"name":"screen_view","profileId":"user-', toString(number % 5000), '","properties":{"path":"/fleet/', toString(number % 50),
           '/vehicles","title":"Fleet overview","referrer":"https://app.example.com/","os":"Android","osVersion":"14","model":"Pixel 8","appVersion":"3.', toString(number % 12),
           '.0","__deviceId":"', ${dev}, '","__timestamp":', toString(${t}), '}}}'))`;
  return { t, dev, payload };
}

/**
 * Rows as the gateway itself stores them from tracker apps, in traces: each of 2000 devices makes
 * three trips of 50 fixes 5 s apart, 8 days between trips. A third are OwnTracks location messages
 * and a third Overland location features, each stored as the app sent it (the raw payload of a
 * tracker row is the app's own row), a third an app's analytics events as /track/batch receives them.
 */
function tracePayloads() {
  const d = 'number % 2000';
  const i = 'intDiv(number, 2000)';
  const step = `(${i} % 50)`;
  const t = `toInt64(${MONTH_START_MS} + intDiv(${i}, 50) * 691200000 + (${d}) * 20000 + ${step} * 5000)`;
  const dev = `concat('veh-', toString(${d}))`;
  const lat = `toString(round(48.80 + (${d} % 97) / 1000.0 + intDiv(${i}, 50) / 100.0 + ${step} * 0.00043 + (number % 7) / 100000.0, 6))`;
  const lon = `toString(round(2.30 + (${d} % 89) / 1000.0 + ${step} * 0.00031, 6))`;
  const speedMs = `(11 + number % 4 + 0.25)`;
  const heading = `toString((${d} * 7 + intDiv(${i}, 50) * 13) % 360)`;
  const payload = `multiIf(
    ${d} % 3 = 0,
    concat('{"_type":"location","acc":', toString(5 + number % 3), ',"alt":', toString(35 + ${step} % 4), ',"batt":', toString(95 - ${step}), ',"bs":1,"cog":', ${heading},
           ',"conn":"m","created_at":', toString(intDiv(${t}, 1000) + 1), ',"lat":', ${lat}, ',"lon":', ${lon}, ',"m":1,"t":"u","tid":"', substring(${dev}, 5, 2),
           '","tst":', toString(intDiv(${t}, 1000)), ',"vac":3,"vel":', toString(toUInt32(${speedMs} * 3.6)), '}'),
    ${d} % 3 = 1,
    concat('{"type":"Feature","geometry":{"type":"Point","coordinates":[', ${lon}, ',', ${lat}, ']},"properties":{"timestamp":"',
           replaceOne(toString(toDateTime(intDiv(${t}, 1000), 'UTC')), ' ', 'T'), 'Z","altitude":', toString(35 + ${step} % 4), ',"speed":', toString(${speedMs}),
           ',"course":', ${heading}, ',"horizontal_accuracy":', toString(5 + number % 3), ',"vertical_accuracy":3,"speed_accuracy":1,"course_accuracy":10',
           ',"motion":["driving","automotive_navigation"],"pauses":false,"activity":"automotive_navigation","desired_accuracy":100,"deferred":0,"significant_change":"disabled"',
           ',"locations_in_payload":50,"battery_state":"unplugged","battery_level":0.', toString(95 - ${step}), ',"device_id":"', ${dev}, '","wifi":""}}'),
    concat('{"type":"track","payload":{"name":"screen_view","profileId":"user-', toString(${d} * 7 % 5000), '","properties":{"path":"/fleet/', toString(${step} % 5),
           '/vehicles","title":"Fleet overview","referrer":"https://app.example.com/","os":"Android","osVersion":"14","model":"Pixel 8","appVersion":"3.', toString(${d} % 12),
           '.0","__deviceId":"', ${dev}, '","__timestamp":', toString(${t}), '}}}'))`;
  return { t, dev, payload };
}

/** Writes `rows` payloads of one kind for the project, and each event's row naming its device. */
async function seed(projectId, { t, dev, payload }, rows, salt) {
  const uuidv7 = uuidv7Sql(t, salt);
  await sql(
    `INSERT INTO event_payloads (id, project_id, created_at_ms, received_at_ms, payload)
     SELECT ${uuidv7}, {p:String}, ${t}, ${t} + 1500, ${payload} FROM numbers(${rows})`,
    { p: projectId },
  );
  await sql(
    `INSERT INTO events (id, project_id, device_id, session_id, profile_id, type, name, created_at_ms, received_at_ms, synced_at_ms, properties, ref_id, ip, country, region, city, timezone, latitude, longitude)
     SELECT ${uuidv7}, {p:String}, ${dev}, '', '', 'track', 'bench', ${t}, ${t} + 1500, ${t} + 1500, '{}', '', '', '', '', '', '', NULL, NULL FROM numbers(${rows})`,
    { p: projectId },
  );
}

/** The floor: the same rows read out of ClickHouse as JSON Lines and gzipped here, in this process. */
async function measureFloor() {
  const started = performance.now();
  const url = new URL(gateway.clickhouse.url);
  url.searchParams.set('database', database);
  // The bench's database holds this one project's rows only.
  const res = await fetch(url, {
    method: 'POST',
    body: 'SELECT toString(id) AS id, created_at_ms, received_at_ms, payload FROM event_payloads ORDER BY created_at_ms, id FORMAT JSONEachRow',
  });
  if (!res.ok) throw new Error(`floor read: ${res.status} ${await res.text()}`);
  const gz = res.body.pipeThrough(new CompressionStream('gzip'));
  let compressed = 0;
  for await (const part of gz) compressed += part.byteLength;
  return { ms: performance.now() - started, compressed };
}

try {
  gateway = await bench.start({ quiet: !process.env.BENCH_VERBOSE, vars: { ARCHIVE_CHUNK_ROWS: String(CHUNK_ROWS) } });
  const project = gateway.project;
  const headers = { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret };
  console.log(`seeding ${fmt(ROWS)} payloads of ${MONTH} (OwnTracks, Overland, analytics) on ${gateway.clickhouse.kind}`);
  await seed(project.id, mixedPayloads(), ROWS, 0);
  const [rawBytes] = (await sql('SELECT sum(length(payload)) FROM event_payloads WHERE project_id = {p:String}', { p: project.id })).trim().split('\n').map(Number);
  const sample = (await sql('SELECT toString(id) FROM event_payloads WHERE project_id = {p:String} ORDER BY cityHash64(toString(id)) LIMIT {n:UInt32}', { p: project.id, n: LAZY_READS }))
    .trim()
    .split('\n');

  const base = await measureFloor();
  const floorRate = (ROWS * 1000) / base.ms;

  console.log(`\narchive ${MONTH} (${fmt(ROWS)} rows, chunks of ${fmt(CHUNK_ROWS)})`);
  const archive = await runJob('archive', '/admin/archives', { projectId: project.id, month: MONTH });
  const listing = await admin('GET', `/admin/archives?projectId=${project.id}&month=${MONTH}`);
  const entry = listing.archives.find((a) => a.month === MONTH);
  const left = Number((await sql('SELECT count() FROM event_payloads WHERE project_id = {p:String}', { p: project.id })).trim());

  const lazy = [];
  for (const id of sample) {
    for (const pass of ['first', 'second']) {
      const res = await fetch(`${gateway.url}/v1/events/${id}/payload`, { headers });
      const body = await res.json();
      if (!res.ok || body.source !== 'archive') throw new Error(`lazy read of ${id}: ${res.status} ${JSON.stringify(body).slice(0, 300)}`);
      lazy.push({
        pass,
        bytes: Number(res.headers.get('x-driftline-archive-bytes-read') ?? NaN),
        chunks: Number(res.headers.get('x-driftline-archive-chunks') ?? NaN),
        cache: res.headers.get('x-driftline-archive-cache'),
      });
    }
  }

  console.log(`\nrestore ${MONTH}`);
  const restore = await runJob('restore', '/admin/archives/restore', { projectId: project.id, month: MONTH });
  const back = Number((await sql('SELECT count() FROM event_payloads WHERE project_id = {p:String}', { p: project.id })).trim());

  // The same month again in a second project, as tracker apps' rows are stored: its compression.
  const traces = await admin('POST', '/admin/projects', { name: 'archive bench: tracker traces' });
  console.log(`\nseeding ${fmt(ROWS)} payloads of ${MONTH} as the gateway stores them from tracker apps (traces, the apps' own rows) and archiving them`);
  await seed(traces.id, tracePayloads(), ROWS, 1);
  const tracesJob = await runJob('archive (traces)', '/admin/archives', { projectId: traces.id, month: MONTH });
  const tracesEntry = (await admin('GET', `/admin/archives?projectId=${traces.id}&month=${MONTH}`)).archives.find((a) => a.month === MONTH);
  if (tracesEntry?.state !== 'archived') throw new Error(`traces archive: ${JSON.stringify(tracesEntry)} after job ${tracesJob.job.state}`);

  const archiveRate = (archive.job.rowsProcessed * 1000) / archive.runMs;
  const restoreRate = (restore.job.rowsProcessed * 1000) / restore.runMs;
  const ratio = entry.bytes / entry.compressedBytes;
  const avgChunk = entry.compressedBytes / entry.chunks;
  const firstReads = lazy.filter((l) => l.pass === 'first');
  const secondReads = lazy.filter((l) => l.pass === 'second');
  const avg = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

  console.log('\n--- raw-payload archival ---');
  console.log(`rows                                 ${fmt(ROWS)} (${fmt(rawBytes / 1e6)} MB of payload text); ${fmt(left)} left in ClickHouse after archiving, ${fmt(back)} after restoring`);
  console.log(`floor: read from ClickHouse + gzip   ${fmt(floorRate)} rows/s (${(base.ms / 1000).toFixed(1)} s)`);
  console.log(`archive (→ verified R2 chunks)       ${fmt(archiveRate)} rows/s (job ${(archive.runMs / 1000).toFixed(1)} s, ${entry.chunks} chunks) = ${(archiveRate / floorRate).toFixed(2)}× the floor; target ≥ ${fmt(TARGET_ARCHIVE)}: ${met(archiveRate >= TARGET_ARCHIVE)}`);
  console.log(`restore (R2 → ClickHouse)            ${fmt(restoreRate)} rows/s (job ${(restore.runMs / 1000).toFixed(1)} s) = ${(restoreRate / floorRate).toFixed(2)}× the floor; target ≥ ${fmt(TARGET_RESTORE)}: ${met(restoreRate >= TARGET_RESTORE)}`);
  console.log(`compression, mixed (worst case)      ${fmt(entry.bytes / 1e6)} MB → ${(entry.compressedBytes / 1e6).toFixed(2)} MB = ${ratio.toFixed(1)}:1 (payload text alone: ${(rawBytes / entry.compressedBytes).toFixed(1)}:1; gzip of the plain JSON Lines here: ${(rawBytes / base.compressed).toFixed(1)}:1; each field cycles on its own and a device's rows are hours apart)`);
  const tracesRatio = tracesEntry.bytes / tracesEntry.compressedBytes;
  console.log(`compression, realistic traces       ${fmt(tracesEntry.bytes / 1e6)} MB → ${(tracesEntry.compressedBytes / 1e6).toFixed(2)} MB = ${tracesRatio.toFixed(1)}:1 (rows as the apps sent them, each line with its event id); target ≥ ${TARGET_RATIO}:1: ${met(tracesRatio >= TARGET_RATIO)}`);
  console.log(`lazy read, first of a chunk          ${fmt(avg(firstReads.map((l) => l.bytes)))} R2 bytes per request on average (${firstReads.filter((l) => l.cache === 'miss').length}/${firstReads.length} misses; a chunk averages ${fmt(avgChunk)} bytes)`);
  console.log(`lazy read, again                     ${fmt(avg(secondReads.map((l) => l.bytes)))} R2 bytes per request (${secondReads.filter((l) => l.cache === 'hit').length}/${secondReads.length} cache hits)`);
  const maxFirst = Math.max(...firstReads.map((l) => l.bytes));
  const maxChunks = Math.max(...lazy.map((l) => l.chunks));
  console.log(`lazy read, worst request             ${fmt(maxFirst)} R2 bytes, ${maxChunks} chunk(s) searched = ${(maxFirst / avgChunk).toFixed(2)}× an average chunk; target: at most one chunk, 0 when cached: ${met(maxChunks <= 1 && secondReads.every((l) => l.bytes === 0))}`);
  result('archive_rows_per_s', archiveRate);
  floor('archive_rows_per_s', floorRate);
  result('restore_rows_per_s', restoreRate);
  floor('restore_rows_per_s', floorRate);
  result('archive_compression_ratio', ratio);
  result('archive_compression_ratio_traces', tracesRatio);
  result('archive_floor_rows_per_s', floorRate);
  result('archive_lazy_read_bytes_first', avg(firstReads.map((l) => l.bytes)));
  result('archive_lazy_read_bytes_max', maxFirst);
  result('archive_lazy_read_bytes_cached', avg(secondReads.map((l) => l.bytes)));
  result('archive_lazy_read_chunk_bytes_avg', avgChunk);
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await bench.cleanup();
}
