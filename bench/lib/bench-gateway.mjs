// What a bench needs around its local gateway: a scratch folder and a ClickHouse database of its
// own, the gateway started with the benches' defaults, and one clean-up (at the end, or on SIGINT
// or SIGTERM) that drops the database, stops the gateway and anything registered, and removes the folder.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway } from '../../scripts/lib/gateway.mjs';

/** `name`: the bench's name, in its folder's and database's names. */
export function benchGateway(name) {
  const dataDir = mkdtempSync(join(tmpdir(), `driftline-${name}-bench-`));
  const database = `bench_${name}_${randomBytes(4).toString('hex')}`;
  const others = [];
  let cleaning = null;
  const bench = {
    dataDir,
    database,
    gateway: null,
    /** Set once a signal asked the bench to stop: loops end early. */
    stopping: false,
    /**
     * The gateway on a free port with wrangler's local trace collector off and, by default, a
     * ClickHouse server process of its own, so its CPU is measured apart (LOCAL_CLICKHOUSE=chdb for
     * 26.x); `options` add to or override these.
     */
    async start(options = {}) {
      bench.gateway = await startGateway({
        localClickHouse: process.env.LOCAL_CLICKHOUSE || 'server',
        port: 0,
        localObservability: false,
        dataDir,
        quiet: true,
        clickhouseDatabase: database,
        adminToken: randomBytes(16).toString('hex'),
        log: (line) => console.log(`  ${line}`),
        ...options,
      });
      return bench.gateway;
    },
    /** `stop` runs at clean-up, after the gateway (e.g. a Postgres the bench started). */
    onCleanup(stop) {
      others.push(stop);
    },
    cleanup() {
      cleaning ??= (async () => {
        const { gateway } = bench;
        if (gateway) {
          await fetch(`${gateway.clickhouse.url}/?query=${encodeURIComponent(`DROP DATABASE IF EXISTS ${database}`)}`, { method: 'POST' }).catch(() => {});
          await gateway.stop();
        }
        for (const stop of others) await stop();
        rmSync(dataDir, { recursive: true, force: true });
      })();
      return cleaning;
    },
  };
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      bench.stopping = true;
      void bench.cleanup().then(() => process.exit(130));
    });
  }
  return bench;
}
