// `npm run bench`: every bench/*.mjs but this one, in order, each as its own process; their
// `RESULT <field> <number>` lines are collected into bench/results.json.
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
const self = basename(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const benches = readdirSync(dir)
  .filter((f) => f.endsWith('.mjs') && f !== self)
  .filter((f) => only.length === 0 || only.some((o) => f === o || f === `${o}.mjs`))
  .sort();

let child = null;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    // the bench cleans up what it started when it gets the signal; then we leave
    if (child) child.kill(signal);
    else process.exit(130);
  });
}

const RESULT_LINE = /^RESULT ([a-z][a-z0-9_]*) (-?[0-9.eE+-]+)\s*$/;
const fields = {};
const floors = {};
/** Takes a bench's RESULT lines; a later value of the same field (a rerun) wins. */
function collect(line) {
  const m = RESULT_LINE.exec(line);
  if (!m) return;
  const value = Number(m[2]);
  if (!Number.isFinite(value)) return;
  if (m[1].endsWith('_floor')) floors[m[1].slice(0, -'_floor'.length)] = value;
  else fields[m[1]] = value;
}

/** Echoes a child's stream as it comes and hands each complete line to `collect`. */
function pipeLines(stream, out) {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (text) => {
    out.write(text);
    const lines = (rest + text).split('\n');
    rest = lines.pop();
    lines.forEach(collect);
  });
  stream.on('end', () => rest && collect(rest));
}

function git(args) {
  try {
    return execFileSync('git', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

const loadBefore = os.loadavg();
const startedAt = new Date();
const failed = [];
for (const file of benches) {
  console.log(`\n=== ${file} ===`);
  const started = Date.now();
  const code = await new Promise((resolve) => {
    child = spawn(process.execPath, [join(dir, file)], { stdio: ['inherit', 'pipe', 'inherit'] });
    pipeLines(child.stdout, process.stdout);
    child.on('close', (c, s) => resolve(c ?? (s ? 128 : 1)));
    child.on('error', () => resolve(1));
  });
  child = null;
  console.log(`=== ${file}: ${code === 0 ? 'done' : `FAILED (exit ${code})`} in ${((Date.now() - started) / 1000).toFixed(1)} s ===`);
  if (code !== 0) failed.push(file);
}

// One object per run, so two commits' files compare field by field.
const status = git(['status', '--porcelain', '--untracked-files=no']);
const results = {
  commit: git(['rev-parse', 'HEAD']),
  dirty: status === null ? null : status.length > 0,
  date: startedAt.toISOString(),
  benches: benches.map((f) => f.replace(/\.mjs$/, '')),
  failed: failed.map((f) => f.replace(/\.mjs$/, '')),
  machine: { cpus: os.cpus().length, load: { before: loadBefore.map((l) => +l.toFixed(2)), after: os.loadavg().map((l) => +l.toFixed(2)) } },
  ...fields,
  floors,
};
const file = join(dir, 'results.json');
writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
console.log(`\nresults: ${Object.keys(fields).length} figure(s) written to bench/results.json`);
if (failed.length) {
  console.error(`\nfailed: ${failed.join(', ')}`);
  process.exit(1);
}
