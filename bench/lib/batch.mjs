// Shared fixtures for the benchmarks: a realistic fleet-telemetry batch and the TypeScript core
// loaded by bundling it with esbuild into a temporary ESM file.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** One batch of `count` track events spread over `devices` devices, `__timestamp`s in the last hour. */
export function makeBatch({ count = 2000, devices = 50, devicePrefix = 'dev', nowMs = Date.now(), seed = 1, eventIds = true } = {}) {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s ^ (s >>> 15), 2246822507) + 0x6d2b79f5) >>> 0) / 2 ** 32);
  const events = [];
  for (let i = 0; i < count; i++) {
    const device = `${devicePrefix}-${i % devices}`;
    const properties = {
      __deviceId: device,
      __timestamp: new Date(nowMs - 3_600_000 + Math.floor((i / count) * 3_500_000)).toISOString(),
      lat: +(48.85 + rnd() / 10).toFixed(5),
      lon: +(2.35 + rnd() / 10).toFixed(5),
      speedKmh: Math.round(rnd() * 1300) / 10,
      battery: Math.round(rnd() * 100),
    };
    // half the rows carry the client's idempotency key, half are keyed by content
    if (eventIds && i % 2 === 0) properties.__eventId = `e${seed}-${i}`;
    events.push({ type: 'track', payload: { name: i % 10 === 0 ? 'trip_point_ext' : 'trip_point', properties } });
  }
  return { events, sentAt: new Date(nowMs).toISOString() };
}

/** Bundles `entrySource` (TypeScript importing from src/) with esbuild and imports it. */
export async function importBundled(entrySource) {
  const esbuild = await import(pathToFileURL(join(ROOT, 'node_modules', 'esbuild', 'lib', 'main.js')).href);
  const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-'));
  try {
    const outfile = join(dir, 'core.mjs');
    await esbuild.build({
      stdin: { contents: entrySource, loader: 'ts', resolveDir: ROOT, sourcefile: 'bench-entry.ts' },
      bundle: true,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      outfile,
      logLevel: 'error',
    });
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
    return await import(pathToFileURL(outfile).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
