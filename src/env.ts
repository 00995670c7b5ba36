// The Worker's bindings, typed once.
import type { DeviceObject } from '../durable-objects/device-object';
import type { IngestBody } from './pipeline/messages';

export interface Env {
  DEVICE: DurableObjectNamespace<DeviceObject>;
  DB: D1Database;
  ARCHIVE: R2Bucket;
  INGEST_QUEUE: Queue<IngestBody>;
  /** The ingest queue's dead-letter queue: its consumer re-queues a message R2 refused to park. */
  INGEST_DLQ: Queue<unknown>;
  JOBS_QUEUE: Queue<unknown>;
  LEGACY_DB: Hyperdrive;
  INGEST_LIMITER: RateLimit;
  /** Per-project budget of the read routes. */
  READ_LIMITER: RateLimit;
  CLICKHOUSE_URL: string;
  CLICKHOUSE_DATABASE?: string;
  CLICKHOUSE_USER?: string;
  CLICKHOUSE_PASSWORD?: string;
  ADMIN_TOKEN?: string;
  LEGACY_DATASETS?: string;
  /** Realtime events held per (project, legacy dataset) until its initial import completes (default 100000). */
  LEGACY_MAX_HELD?: string;
  SESSION_GAP_MS?: string;
  /** Seconds an isolate trusts a client it checked (default 30): how late a revoked client stops passing. */
  CLIENT_CACHE_SEC?: string;
  /** Seconds without a fix after which a vehicle is `offline` (default 3600). */
  FLEET_OFFLINE_AFTER_S?: string;
  /** `true`: the Cron sweep archives closed months of raw payloads to R2 (default false). */
  ARCHIVE_RAW_PAYLOADS?: string;
  /** Whole months behind the current one before the sweep archives a month (default 2). */
  ARCHIVE_LAG_MONTHS?: string;
  /** Rows per archive chunk (default 50000). */
  ARCHIVE_CHUNK_ROWS?: string;
}
