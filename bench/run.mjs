// `npm run bench`: every bench/*.mjs but this one, in order, each as its own process.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
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

const failed = [];
for (const file of benches) {
  console.log(`\n=== ${file} ===`);
  const started = Date.now();
  const code = await new Promise((resolve) => {
    child = spawn(process.execPath, [join(dir, file)], { stdio: 'inherit' });
    child.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1)));
    child.on('error', () => resolve(1));
  });
  child = null;
  console.log(`=== ${file}: ${code === 0 ? 'done' : `FAILED (exit ${code})`} in ${((Date.now() - started) / 1000).toFixed(1)} s ===`);
  if (code !== 0) failed.push(file);
}
if (failed.length) {
  console.error(`\nfailed: ${failed.join(', ')}`);
  process.exit(1);
}
