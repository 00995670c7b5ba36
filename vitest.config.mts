import { cloudflareTest, readD1Migrations } from '@cloudflare/vitest-plugin';
import { defineConfig } from 'vitest/config';

export const TEST_ADMIN_TOKEN = 'test-admin-token';

// Two projects: `workers` runs inside workerd against the ClickHouse generation chosen by
// DRIFTLINE_TEST_CLICKHOUSE (see scripts/test.mjs); `node` covers the local tooling (the chDB
// HTTP server, `npm start` supervision) as plain Node tests.
export default defineConfig(async () => {
  const migrations = await readD1Migrations('./migrations/d1');
  return {
    // pg's CommonJS files must load the CommonJS builds of pg-protocol (brianc/node-postgres#3700)
    // and of pg-cloudflare's workerd socket; the module runner would pick their ESM/empty entries.
    resolve: {
      alias: {
        'pg-protocol': new URL('./node_modules/pg-protocol/dist/index.js', import.meta.url).pathname,
        'pg-cloudflare': new URL('./node_modules/pg-cloudflare/dist/index.js', import.meta.url).pathname,
      },
    },
    test: {
      projects: [
        {
          extends: true,
          plugins: [
            cloudflareTest(({ inject }) => ({
              main: './src/index.ts',
              wrangler: { configPath: './wrangler.toml' },
              miniflare: {
                bindings: {
                  CLICKHOUSE_URL: inject<string>('clickhouseUrl'),
                  CLICKHOUSE_DATABASE: inject<string>('clickhouseDatabase'),
                  TEST_CLICKHOUSE_FAULT_CONTROL: inject<string>('clickhouseFaultControl'),
                  TEST_CLICKHOUSE_IDENTITY_URL: inject<string>('clickhouseIdentityUrl'),
                  TEST_CLICKHOUSE_GENERATION: inject<string>('clickhouseGeneration'),
                  ADMIN_TOKEN: TEST_ADMIN_TOKEN,
                  LEGACY_DATASETS: 'citylens,fleetone',
                  // A revoked client stops passing after 1 s (a project deletion waits that, plus 5 s).
                  CLIENT_CACHE_SEC: '1',
                  TEST_MIGRATIONS: migrations,
                  TEST_POSTGRES_URL: inject<string>('postgresUrl'),
                },
                hyperdrives: { LEGACY_DB: inject<string>('postgresUrl') },
                // Budgets small enough that a test reaches the 429 path, above what any other test sends
                // (READ_LIMITER: polling reads a project at most ~300 times a minute).
                ratelimits: {
                  INGEST_LIMITER: { namespace_id: '1001', simple: { limit: 120, period: 60 } },
                  READ_LIMITER: { namespace_id: '1002', simple: { limit: 2000, period: 60 } },
                },
              },
            })),
          ],
          test: {
            name: 'workers',
            globalSetup: ['./test/global-setup.mjs'],
            setupFiles: ['./test/apply-migrations.ts'],
            include: ['test/**/*.test.ts'],
            testTimeout: 120_000,
            hookTimeout: 120_000,
            fileParallelism: false,
          },
        },
        {
          test: {
            name: 'node',
            environment: 'node',
            include: ['test/node/**/*.test.mjs'],
            testTimeout: 180_000,
            hookTimeout: 180_000,
            fileParallelism: false,
          },
        },
      ],
    },
  };
});
