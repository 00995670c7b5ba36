import type { D1Migration } from 'cloudflare:test';
import type { Env as WorkerEnv } from '../src/env';

declare global {
  namespace Cloudflare {
    interface Env extends WorkerEnv {
      TEST_MIGRATIONS: D1Migration[];
      TEST_POSTGRES_URL: string;
      TEST_CLICKHOUSE_FAULT_CONTROL: string;
      /** `version()` of the ClickHouse the suite runs against. */
      TEST_CLICKHOUSE_GENERATION: string;
    }
  }
}

declare module 'vitest' {
  export interface ProvidedContext {
    clickhouseUrl: string;
    clickhouseFaultControl: string;
    clickhouseDatabase: string;
    clickhouseGeneration: string;
    postgresUrl: string;
  }
}
