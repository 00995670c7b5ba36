// Run after `npm install` changes the lock: records chDB's platform packages for other systems
// (macOS, linux-arm64) that this registry does not serve, so `npm ci` finds every optional
// dependency in package-lock.json and skips them by their os/cpu, as a lock made elsewhere would.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/gateway.mjs';

const PLATFORMS = {
  '@chdb/lib-darwin-arm64': { os: ['darwin'], cpu: ['arm64'] },
  '@chdb/lib-darwin-x64': { os: ['darwin'], cpu: ['x64'] },
  '@chdb/lib-linux-arm64-gnu': { os: ['linux'], cpu: ['arm64'], libc: ['glibc'] },
  '@chdb/lib-linux-x64-gnu': { os: ['linux'], cpu: ['x64'], libc: ['glibc'] },
};

const file = join(ROOT, 'package-lock.json');
const lock = JSON.parse(readFileSync(file, 'utf8'));
const chdb = lock.packages['node_modules/chdb'];
if (!chdb) throw new Error('chdb is not in package-lock.json');
let added = 0;
for (const [name, version] of Object.entries(chdb.optionalDependencies ?? {})) {
  const key = `node_modules/${name}`;
  if (lock.packages[key]) continue;
  const platform = PLATFORMS[name];
  if (!platform) throw new Error(`unknown chDB platform package ${name}`);
  lock.packages[key] = { version, dev: true, optional: true, ...platform, license: 'Apache-2.0' };
  added += 1;
}
lock.packages = Object.fromEntries(Object.entries(lock.packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b, 'en'))));
writeFileSync(file, JSON.stringify(lock, null, 2) + '\n');
console.log(added ? `package-lock.json: recorded ${added} chDB platform package(s) for other systems` : 'package-lock.json: nothing to add');
