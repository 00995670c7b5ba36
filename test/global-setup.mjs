// Starts a throwaway ClickHouse and Postgres on free ports (or uses CLICKHOUSE_URL / POSTGRES_URL),
// applies the ClickHouse migrations, and hands the addresses to the Workers pool.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrateClickHouse } from '../scripts/lib/clickhouse-migrate.mjs';
import { startFaultProxy } from '../scripts/lib/fault-proxy.mjs';
import { startIdentityProxy } from '../scripts/lib/identity-proxy.mjs';
import { clickhouseAnswers, clickhouseServerInstalled, clickhouseVersion, startClickHouse, startPostgres } from '../scripts/lib/services.mjs';

/** @param {import('vitest/node').TestProject} project */
export default async function setup(project) {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-test-'));
  const stops = [];
  const teardown = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    return await start(project, dir, stops, teardown);
  } catch (err) {
    await teardown();
    throw err;
  }
}

async function start(project, dir, stops, teardown) {

  let clickhouseUrl = process.env.CLICKHOUSE_URL;
  if (clickhouseUrl && !(await clickhouseAnswers(clickhouseUrl))) {
    throw new Error(`CLICKHOUSE_URL=${clickhouseUrl} does not answer /ping`);
  }
  if (!clickhouseUrl) {
    // `server`: Debian's clickhouse-server (18.16); `chdb`: ClickHouse 26 in-process behind the HTTP shim.
    const kind = process.env.DRIFTLINE_TEST_CLICKHOUSE || (clickhouseServerInstalled() ? 'server' : 'chdb');
    if (kind !== 'server' && kind !== 'chdb') throw new Error(`DRIFTLINE_TEST_CLICKHOUSE must be server or chdb, not ${kind}`);
    const ch =
      kind === 'server'
        ? await startClickHouse({ dir: join(dir, 'clickhouse') })
        : await (await import('../scripts/lib/chdb-server.mjs')).startChdbServer({ dir: join(dir, 'chdb') });
    stops.push(() => ch.stop({ force: true }));
    clickhouseUrl = ch.url;
  }
  const version = await clickhouseVersion(clickhouseUrl);
  console.log(`ClickHouse under test: ${version} at ${clickhouseUrl}`);
  if (process.env.DRIFTLINE_TEST_VERSION_FILE) writeFileSync(process.env.DRIFTLINE_TEST_VERSION_FILE, version);
  // A fresh database per run keeps runs against a shared server apart.
  const clickhouseDatabase = `driftline_test_${Date.now()}`;
  const first = await migrateClickHouse({ url: clickhouseUrl, database: clickhouseDatabase });
  const second = await migrateClickHouse({ url: clickhouseUrl, database: clickhouseDatabase });
  if (first.length === 0 || second.length !== 0) {
    throw new Error(`ClickHouse migrations are not idempotent: first run ${first.length}, second run ${second.length}`);
  }

  let postgresUrl = process.env.POSTGRES_URL;
  if (!postgresUrl) {
    const pg = await startPostgres({ dir: join(dir, 'postgres') });
    stops.push(() => pg.stop());
    postgresUrl = pg.url;
  }

  // The Worker reaches ClickHouse through a pass-through that tests can cut.
  const target = new URL(clickhouseUrl);
  const proxy = await startFaultProxy({ targetHost: target.hostname, targetPort: Number(target.port || 8123) });
  stops.push(() => proxy.stop());
  project.provide('clickhouseUrl', proxy.url);
  project.provide('clickhouseFaultControl', proxy.controlUrl);
  // The same server behind a proxy that keeps it from compressing its answers.
  const identity = await startIdentityProxy({ targetHost: target.hostname, targetPort: Number(target.port || 8123) });
  stops.push(() => identity.stop());
  project.provide('clickhouseIdentityUrl', identity.url);
  project.provide('clickhouseDatabase', clickhouseDatabase);
  project.provide('clickhouseGeneration', version);
  project.provide('postgresUrl', postgresUrl);

  return teardown;
}
