// A bench worker holding a device object, bundled from TypeScript source and run in the Miniflare
// that the pinned wrangler runs (the same workerd as `wrangler dev` and the tests).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './batch.mjs';

/**
 * Starts `source` (a worker module exporting the Durable Object class `className`, bound as DEVICE,
 * with an INGEST_QUEUE whose consumer is the worker's own `queue` handler).
 */
export async function startDeviceWorker({ name, source, className, inspectorPort }) {
  const esbuild = await import(pathToFileURL(join(ROOT, 'node_modules', 'esbuild', 'lib', 'main.js')).href);
  const built = await esbuild.build({
    stdin: { contents: source, loader: 'ts', resolveDir: ROOT, sourcefile: `${name}-worker.ts` },
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    target: 'es2022',
    external: ['cloudflare:*', 'node:*'],
    write: false,
    logLevel: 'error',
  });
  const wranglerMiniflare = join(ROOT, 'node_modules', 'wrangler', 'node_modules', 'miniflare', 'dist', 'src', 'index.js');
  const miniflarePath = existsSync(wranglerMiniflare) ? wranglerMiniflare : join(ROOT, 'node_modules', 'miniflare', 'dist', 'src', 'index.js');
  const { Miniflare, convertV4MiniflareOptions } = await import(pathToFileURL(miniflarePath).href);
  const options = {
    ...(inspectorPort ? { inspectorPort } : {}),
    workers: [
      {
        name,
        modules: true,
        script: built.outputFiles[0].text,
        compatibilityDate: '2026-04-20',
        compatibilityFlags: ['nodejs_compat'],
        durableObjects: { DEVICE: { className, useSQLite: true } },
        queueProducers: { INGEST_QUEUE: { queueName: 'bench-ingest' } },
        queueConsumers: { 'bench-ingest': { maxBatchSize: 100, maxBatchTimeout: 1 } },
        bindings: { CLICKHOUSE_URL: 'http://127.0.0.1:9' },
      },
    ],
  };
  // Miniflare 5 takes a new options shape; it converts the long-standing (v4) one.
  return new Miniflare(convertV4MiniflareOptions ? convertV4MiniflareOptions(options) : options);
}
