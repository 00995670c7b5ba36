import type { D1Migration } from 'cloudflare:test';
import type { Env as WorkerEnv } from '../src/env';

declare global {
  namespace Cloudflare {
    interface Env extends WorkerEnv {
      TEST_MIGRATIONS: D1Migration[];
      TEST_POSTGRES_URL: string;
      TEST_CLICKHOUSE_FAULT_CONTROL: string;
      /** The ClickHouse under test behind a proxy that keeps it from compressing its answers. */
      TEST_CLICKHOUSE_IDENTITY_URL: string;
      /** `version()` of the ClickHouse the suite runs against. */
      TEST_CLICKHOUSE_GENERATION: string;
    }
  }
}

declare module 'vitest' {
  export interface ProvidedContext {
    clickhouseUrl: string;
    clickhouseFaultControl: string;
    clickhouseIdentityUrl: string;
    clickhouseDatabase: string;
    clickhouseGeneration: string;
    postgresUrl: string;
  }
}
