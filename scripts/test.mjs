// `npm test`: the Workers suite once per ClickHouse generation (18.16 clickhouse-server, 26.x chDB),
// the two side by side, then the Node tests of the local tooling; prints which server each run used
// and one total line.
// DRIFTLINE_TEST_CLICKHOUSE=server|chdb runs one generation; CLICKHOUSE_URL runs against that server
// only. Extra arguments (file filters, -t) go to every vitest run. A whole run splits each
// generation's files over DRIFTLINE_TEST_SHARDS (default 2) vitest processes, each with its own
// servers: the suite mostly waits (on timers, job pauses, mutations), so they overlap well.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { clickhouseServerInstalled, CLICKHOUSE_INSTALL_HINT } from './lib/services.mjs';
import { ROOT } from './lib/gateway.mjs';

const args = process.argv.slice(2);
const VITEST = join(ROOT, 'node_modules', 'vitest', 'vitest.mjs');
// File filters among the arguments (an option's value, as in `-t name`, is not one).
const fileFilters = [];
for (let i = 0; i < args.length; i++) {
  if (args[i].startsWith('-')) {
    if (!args[i].includes('=') && /^(-t|--testNamePattern|--project|--reporter|--outputFile|--shard|--bail|--retry)$/.test(args[i])) i++;
    continue;
  }
  fileFilters.push(args[i]);
}
const onlyNode = fileFilters.length > 0 && fileFilters.every((f) => f.includes('test/node'));
// A filtered run is small, a run against CLICKHOUSE_URL shares that one server, and a run given its
// own --shard is one part already: one process per generation for those.
const ownShard = args.some((a) => a === '--shard' || a.startsWith('--shard='));
const SHARDS = fileFilters.length || ownShard || process.env.CLICKHOUSE_URL ? 1 : Math.max(1, Math.min(8, Number(process.env.DRIFTLINE_TEST_SHARDS ?? 2) || 1));

const runs = [];
if (onlyNode) {
  /* the Workers suite is not asked for */
} else if (process.env.CLICKHOUSE_URL) {
  runs.push({ label: `ClickHouse at CLICKHOUSE_URL`, project: 'workers', env: {} });
} else {
  const wanted = (process.env.DRIFTLINE_TEST_CLICKHOUSE || 'server,chdb').split(',').map((s) => s.trim()).filter(Boolean);
  for (const kind of wanted) {
    if (kind !== 'server' && kind !== 'chdb') {
      console.error(`DRIFTLINE_TEST_CLICKHOUSE: unknown generation ${kind} (server or chdb)`);
      process.exit(2);
    }
    if (kind === 'server' && !clickhouseServerInstalled()) {
      console.error(`The 18.16 generation needs clickhouse-server. ${CLICKHOUSE_INSTALL_HINT}\nOr run one generation: DRIFTLINE_TEST_CLICKHOUSE=chdb npm test`);
      process.exit(2);
    }
    const label = kind === 'server' ? 'clickhouse-server (Debian, 18.16)' : 'chDB (ClickHouse 26.x in-process)';
    runs.push({ label, project: 'workers', env: { DRIFTLINE_TEST_CLICKHOUSE: kind } });
  }
}
// The Node tests of the local tooling need no ClickHouse generation of their own.
if (!fileFilters.length || fileFilters.some((a) => a.includes('test/node'))) runs.push({ label: 'Node tooling tests', project: 'node', env: {} });

const outDir = mkdtempSync(join(tmpdir(), 'driftline-vitest-'));
const results = [];
const children = new Set();
for (const signal of ['SIGINT', 'SIGTERM']) {
  // vitest's global setup stops the servers it started when it is told to stop
  process.on(signal, () => (children.size ? children.forEach((c) => c.kill(signal)) : process.exit(130)));
}

/** One vitest run; with `prefix`, its output is piped line by line behind that prefix. */
async function runVitest(run, i, prefix, shard = null) {
  const report = join(outDir, `run-${i}.json`);
  const versionFile = join(outDir, `run-${i}.version`);
  const shardArgs = shard ? [`--shard=${shard}`] : [];
  const started = Date.now();
  const code = await new Promise((resolve) => {
    // A filtered run may match nothing in one project; an unfiltered one that runs no test fails.
    const passWithNoTests = args.length ? ['--passWithNoTests'] : [];
    const child = spawn(
      process.execPath,
      [VITEST, 'run', '--project', run.project, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...shardArgs, ...passWithNoTests, ...args],
      { cwd: ROOT, stdio: prefix ? ['ignore', 'pipe', 'pipe'] : 'inherit', env: { ...process.env, ...run.env, DRIFTLINE_TEST_VERSION_FILE: versionFile } },
    );
    children.add(child);
    if (prefix) {
      for (const [stream, out] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
        createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => out.write(`${prefix} ${line}\n`));
      }
    }
    child.on('close', (c, s) => {
      children.delete(child);
      resolve(c ?? (s ? 1 : 0));
    });
    child.on('error', () => resolve(1));
  });
  let counts = { passed: 0, failed: 0, skipped: 0 };
  let failures = [];
  try {
    const json = JSON.parse(readFileSync(report, 'utf8'));
    counts = {
      passed: json.numPassedTests,
      failed: json.numFailedTests + (json.numFailedTestSuites && !json.numFailedTests ? json.numFailedTestSuites : 0),
      skipped: json.numPendingTests + json.numTodoTests,
    };
    failures = failuresOf(json);
  } catch {
    counts.failed = Math.max(1, counts.failed); // no report: the run itself failed
  }
  if (code !== 0 && counts.failed === 0) counts.failed = 1;
  let version = '';
  try {
    version = readFileSync(versionFile, 'utf8').trim();
  } catch {
    /* the node project starts no ClickHouse */
  }
  return { ...run, ...counts, failures, version, code, seconds: (Date.now() - started) / 1000 };
}

/** Each failed test (or file that failed outside its tests) with the first line of its error. */
function failuresOf(json) {
  const firstLine = (message) => String(message ?? '').replace(/\x1b\[[0-9;]*m/g, '').split('\n').find((l) => l.trim())?.trim().slice(0, 300) ?? '';
  const out = [];
  for (const file of json.testResults ?? []) {
    const path = String(file.name ?? '').replace(`${ROOT}/`, '');
    const failed = (file.assertionResults ?? []).filter((a) => a.status === 'failed');
    for (const a of failed) out.push({ test: `${path} > ${a.fullName ?? a.title}`, error: firstLine(a.failureMessages?.[0]) });
    if (!failed.length && file.status === 'failed') out.push({ test: path, error: firstLine(file.message) });
  }
  return out;
}

// The two generations use separate servers and storage, and a run mostly waits on them: side by
// side they take little longer than the slower one alone. DRIFTLINE_TEST_SERIAL=1 runs them in turn.
// The Node tooling tests start gateways of their own and run after, on a quiet machine.
const workerRuns = runs.filter((r) => r.project === 'workers');
const otherRuns = runs.filter((r) => r.project !== 'workers');
const parallel = (workerRuns.length > 1 || SHARDS > 1) && process.env.DRIFTLINE_TEST_SERIAL !== '1';

/** One generation's files over SHARDS processes side by side, counted as one run. */
async function runSharded(run, i, tag) {
  if (SHARDS === 1) return runVitest(run, i, `[${tag}]`);
  const started = Date.now();
  const parts = await Promise.all(Array.from({ length: SHARDS }, (_, k) => runVitest(run, i * SHARDS + k, `[${tag} ${k + 1}/${SHARDS}]`, `${k + 1}/${SHARDS}`)));
  return {
    ...run,
    passed: parts.reduce((n, p) => n + p.passed, 0),
    failed: parts.reduce((n, p) => n + p.failed, 0),
    failures: parts.flatMap((p) => p.failures),
    skipped: parts.reduce((n, p) => n + p.skipped, 0),
    version: [...new Set(parts.map((p) => p.version).filter(Boolean))].join(', '),
    code: parts.every((p) => p.code === 0) ? 0 : 1,
    seconds: (Date.now() - started) / 1000,
  };
}

if (parallel) {
  console.log(`\n=== ${workerRuns.map((r) => r.label).join(' and ')}, side by side${SHARDS > 1 ? `, each in ${SHARDS} processes` : ''} ===`);
  const tags = workerRuns.map((r) => (r.env.DRIFTLINE_TEST_CLICKHOUSE === 'server' ? '18.16' : r.env.DRIFTLINE_TEST_CLICKHOUSE === 'chdb' ? '26.x' : 'ch'));
  results.push(...(await Promise.all(workerRuns.map((r, i) => runSharded(r, i, tags[i])))));
} else {
  for (const [i, run] of workerRuns.entries()) {
    console.log(`\n=== ${i + 1}/${runs.length}: ${run.label} ===`);
    results.push(await runVitest(run, i));
  }
}
for (const [j, run] of otherRuns.entries()) {
  const i = workerRuns.length * SHARDS + j;
  console.log(`\n=== ${workerRuns.length + j + 1}/${runs.length}: ${run.label} ===`);
  results.push(await runVitest(run, i));
}
rmSync(outDir, { recursive: true, force: true });

console.log('\n=== summary ===');
for (const r of results) {
  console.log(`${r.code === 0 ? 'ok  ' : 'FAIL'} ${r.label}${r.version ? ` [version ${r.version}]` : ''}: ${r.passed} passed, ${r.failed} failed${r.skipped ? `, ${r.skipped} skipped` : ''} in ${r.seconds.toFixed(0)} s`);
  for (const f of r.failures) console.log(`     failed: ${f.test}${f.error ? `\n       ${f.error}` : ''}`);
}
const total = results.reduce((t, r) => ({ passed: t.passed + r.passed, failed: t.failed + r.failed, skipped: t.skipped + r.skipped }), { passed: 0, failed: 0, skipped: 0 });
console.log(`${total.passed} passed, ${total.failed} failed${total.skipped ? `, ${total.skipped} skipped` : ''}`);
process.exit(results.every((r) => r.code === 0) ? 0 : 1);
