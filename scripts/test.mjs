// `npm test`: the Workers suite once per ClickHouse generation (18.16 clickhouse-server, 26.x chDB),
// then the Node tests of the local tooling; prints which server each run used and one total line.
// DRIFTLINE_TEST_CLICKHOUSE=server|chdb runs one generation; CLICKHOUSE_URL runs against that server
// only. Extra arguments (file filters, -t) go to every vitest run.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
let child = null;
for (const signal of ['SIGINT', 'SIGTERM']) {
  // vitest's global setup stops the servers it started when it is told to stop
  process.on(signal, () => (child ? child.kill(signal) : process.exit(130)));
}
for (const [i, run] of runs.entries()) {
  console.log(`\n=== ${i + 1}/${runs.length}: ${run.label} ===`);
  const report = join(outDir, `run-${i}.json`);
  const versionFile = join(outDir, `run-${i}.version`);
  const started = Date.now();
  const code = await new Promise((resolve) => {
    // A filtered run may match nothing in one project; an unfiltered one that runs no test fails.
    const passWithNoTests = args.length ? ['--passWithNoTests'] : [];
    child = spawn(
      process.execPath,
      [VITEST, 'run', '--project', run.project, '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...passWithNoTests, ...args],
      { cwd: ROOT, stdio: 'inherit', env: { ...process.env, ...run.env, DRIFTLINE_TEST_VERSION_FILE: versionFile } },
    );
    child.on('exit', (c, s) => resolve(c ?? (s ? 1 : 0)));
    child.on('error', () => resolve(1));
  });
  child = null;
  let counts = { passed: 0, failed: 0, skipped: 0 };
  try {
    const json = JSON.parse(readFileSync(report, 'utf8'));
    counts = {
      passed: json.numPassedTests,
      failed: json.numFailedTests + (json.numFailedTestSuites && !json.numFailedTests ? json.numFailedTestSuites : 0),
      skipped: json.numPendingTests + json.numTodoTests,
    };
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
  results.push({ ...run, ...counts, version, code, seconds: (Date.now() - started) / 1000 });
}
rmSync(outDir, { recursive: true, force: true });

console.log('\n=== summary ===');
for (const r of results) {
  console.log(`${r.code === 0 ? 'ok  ' : 'FAIL'} ${r.label}${r.version ? ` [version ${r.version}]` : ''}: ${r.passed} passed, ${r.failed} failed${r.skipped ? `, ${r.skipped} skipped` : ''} in ${r.seconds.toFixed(0)} s`);
}
const total = results.reduce((t, r) => ({ passed: t.passed + r.passed, failed: t.failed + r.failed, skipped: t.skipped + r.skipped }), { passed: 0, failed: 0, skipped: 0 });
console.log(`${total.passed} passed, ${total.failed} failed${total.skipped ? `, ${total.skipped} skipped` : ''}`);
process.exit(results.every((r) => r.code === 0) ? 0 : 1);
