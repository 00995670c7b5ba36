// What the console's browser tests run against: a whole local gateway with Postgres legacy tables,
// the embedded ClickHouse behind a fault proxy (so real dead letters can happen), and Debian's Chromium.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { chromium } from 'playwright-core';
import { startChdbServer } from '../../scripts/lib/chdb-server.mjs';
import { startFaultProxy } from '../../scripts/lib/fault-proxy.mjs';
import { ROOT, startGateway } from '../../scripts/lib/gateway.mjs';
import { startPostgres } from '../../scripts/lib/services.mjs';
import { destination } from '../geo-fixtures';

export const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

/** A missing browser is a failure that says how to install it, never a skip. */
export function requireChromium() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`the console's browser tests need Chromium at ${CHROMIUM}: install it with \`sudo apt-get install -y chromium\` (.ci/run installs it on a fresh machine)`);
  }
}

/** Debian's Chromium, headless. */
export async function launchChromium() {
  requireChromium();
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * The project's wrangler.toml with the ingest queue's retries cut to one: with its own 8 retries
 * and the writer's backoff (2, 4 … 256 s) a failed message needs 8.5 minutes to reach the
 * dead-letter queue; with one it takes seconds, through the same consumer, queue and parking.
 */
export function writeTestWranglerConfig(dir) {
  const text = readFileSync(join(ROOT, 'wrangler.toml'), 'utf8');
  const blocks = text.split(/^(?=\[)/m);
  let ingestConsumers = 0;
  const changed = blocks.map((block) => {
    if (!/^\[\[queues\.consumers\]\]/.test(block) || !/^queue\s*=\s*"driftline-ingest"\s*$/m.test(block)) return block;
    ingestConsumers += 1;
    return block.replace(/^max_retries\s*=.*$/m, 'max_retries = 1');
  });
  if (ingestConsumers !== 1) throw new Error('wrangler.toml: expected one consumer of the driftline-ingest queue');
  // The copy lives outside the project: paths in it must not depend on where it is.
  const config = changed
    .join('')
    .replace(/^main\s*=\s*"([^"]+)"/m, (_, p) => `main = ${JSON.stringify(join(ROOT, p))}`)
    .replace(/^migrations_dir\s*=\s*"([^"]+)"/m, (_, p) => `migrations_dir = ${JSON.stringify(join(ROOT, p))}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'wrangler.toml');
  writeFileSync(file, config);
  return file;
}

/**
 * Postgres, the embedded ClickHouse behind a fault proxy, and `wrangler dev` with the test config.
 * No crons: a parked dead letter stays parked until the console replays it.
 */
export async function startConsoleStack({ dir, datasets, log = () => {} }) {
  const stops = [];
  const stop = async () => {
    for (const fn of stops.splice(0).reverse()) await fn().catch((err) => log(`cleanup failed: ${err.message}`));
  };
  try {
    const postgres = await startPostgres({ dir: join(dir, 'postgres') });
    stops.push(() => postgres.stop());
    const clickhouse = await startChdbServer({ dir: join(dir, 'chdb') });
    stops.push(() => clickhouse.stop({ force: true }));
    const proxy = await startFaultProxy({ targetPort: clickhouse.port });
    stops.push(() => proxy.stop());
    process.env.CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_LEGACY_DB = postgres.url;
    const gateway = await startGateway({
      port: 0,
      dataDir: join(dir, 'gateway'),
      clickhouseUrl: proxy.url,
      adminToken: `console-test-${Math.random().toString(36).slice(2)}`,
      wranglerConfig: writeTestWranglerConfig(join(dir, 'config')),
      quiet: true,
      crons: false,
      demoProject: false,
      vars: { LEGACY_DATASETS: datasets.join(',') },
      log,
    });
    stops.push(() => gateway.stop());
    return {
      gateway,
      postgres,
      /** Cuts ClickHouse off from the gateway (`down`) or lets it through again (`up`). */
      setClickHouse: async (state) => {
        const res = await fetch(`${proxy.controlUrl}/${state}`);
        await res.arrayBuffer();
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Polls `fn` until it returns something truthy; the error names what was awaited and what was last seen. */
export async function eventually(what, fn, { timeoutMs = 60_000, intervalMs = 500 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs / 1000} s (last seen: ${JSON.stringify(last)?.slice(0, 500)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The gateway's JSON API as an operator and as an SDK use it. */
export function gatewayApi(gateway) {
  const call = async (path, init) => {
    const res = await fetch(`${gateway.url}${path}`, init);
    const text = await res.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: res.status, body };
  };
  const admin = (method, path, body) =>
    call(path, {
      method,
      headers: { authorization: `Bearer ${gateway.adminToken}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const expectStatus = (status, res, what) => {
    if (res.status !== status) throw new Error(`${what} answered ${res.status}: ${JSON.stringify(res.body).slice(0, 500)}`);
    return res.body;
  };
  return {
    admin,
    async createProject(name) {
      return expectStatus(201, await admin('POST', '/admin/projects', { name }), 'POST /admin/projects');
    },
    async trackBatch(project, events) {
      const res = await call('/track/batch', {
        method: 'POST',
        headers: { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret, 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      });
      const body = expectStatus(202, res, 'POST /track/batch');
      if (body.rejected.length) throw new Error(`POST /track/batch rejected rows: ${JSON.stringify(body.rejected).slice(0, 500)}`);
      return body;
    },
    async events(project, deviceId) {
      const res = await call(`/v1/events?deviceId=${encodeURIComponent(deviceId)}&limit=1000`, {
        headers: { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret },
      });
      return expectStatus(200, res, 'GET /v1/events').events;
    },
    async startImport(body) {
      return expectStatus(202, await admin('POST', '/admin/backfills', { type: 'legacy_import', ...body }), 'POST /admin/backfills');
    },
    async job(id) {
      return expectStatus(200, await admin('GET', `/admin/backfills/${id}`), `GET /admin/backfills/${id}`);
    },
    async deadLetters() {
      return expectStatus(200, await admin('GET', '/admin/dead-letters'), 'GET /admin/dead-letters');
    },
  };
}

/**
 * A legacy table of `rows` trips, `stepMs` apart from `fromMs`, spread over a few vehicles:
 * the source of an import (keyset-paginated on `id`).
 */
export async function seedLegacyTable(url, { table, rows, fromMs, stepMs }) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text NOT NULL, created_at timestamptz NOT NULL, distance_m int, fare_cents int)`);
    await client.query(
      `INSERT INTO ${table}
       SELECT g, 'cab-' || (g % 7), to_timestamp(($2::bigint + g * $3::bigint) / 1000.0), 200 + (g * 37) % 5000, 350 + (g * 13) % 2000
       FROM generate_series(1, $1::int) g`,
      [rows, fromMs, stepMs],
    );
  } finally {
    await client.end();
  }
}

/** One tracker fix as a `position` event. */
export function fix(deviceId, { lat, lon }, { atMs, speed = 0, heading = 0, ignition = true, eventId }) {
  return {
    type: 'track',
    payload: {
      name: 'position',
      properties: { __deviceId: deviceId, __timestamp: new Date(atMs).toISOString(), __eventId: eventId, lat, lon, speed, heading, accuracy: 8, ignition },
    },
  };
}

/**
 * A drive as a tracker reports it: from `start`, one fix every `everyS` seconds at `speedKmh` along
 * `legs` ([bearing in degrees, fixes on that bearing]), then `parked` fixes where it stopped,
 * the last `endAgoMs` before now. Every fix is precise and plausible, so the track keeps them all.
 */
export function drive({ deviceId, start, legs, parked, everyS = 30, speedKmh = 40, endAgoMs = 5 * 60_000 }) {
  const stepM = (speedKmh / 3.6) * everyS;
  const route = [{ ...start, heading: legs[0][0] }];
  for (const [bearing, steps] of legs) {
    for (let i = 0; i < steps; i++) route.push({ ...destination(route.at(-1), bearing, stepM), heading: bearing });
  }
  const stop = route.at(-1);
  const points = [...route, ...Array.from({ length: parked }, () => stop)];
  const firstMs = Date.now() - endAgoMs - (points.length - 1) * everyS * 1000;
  return points.map((p, i) =>
    fix(deviceId, p, {
      atMs: firstMs + i * everyS * 1000,
      // The last point of the route is where it stopped: from there on the speed is 0.
      speed: i < route.length - 1 ? speedKmh : 0,
      heading: p.heading,
      eventId: `${deviceId}-fix-${i}`,
    }),
  );
}
