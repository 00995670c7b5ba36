// Control plane in D1. drizzle-kit generates migrations/d1 from this file.
import { sql } from 'drizzle-orm';
import { sqliteTable, text, integer, index, primaryKey } from 'drizzle-orm/sqlite-core';

export const projects = sqliteTable('projects', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  sessionGapMs: integer('session_gap_ms').notNull().default(1_800_000),
  /** The project's fleet rule overrides (JSON, validated by FleetRulesOverridesSchema); null: the defaults. */
  fleetRules: text('fleet_rules'),
  createdAt: integer('created_at').notNull(),
});

export const clients = sqliteTable(
  'clients',
  {
    id: text('id').primaryKey(),
    projectId: text('project_id')
      .notNull()
      .references(() => projects.id),
    secretHash: text('secret_hash').notNull(),
    createdAt: integer('created_at').notNull(),
  },
  (t) => [index('clients_project_idx').on(t.projectId)],
);

/** One random salt per UTC day: device ids derived without `__deviceId` rotate daily. */
export const salts = sqliteTable('salts', {
  day: text('day').primaryKey(),
  salt: text('salt').notNull(),
  createdAt: integer('created_at').notNull(),
});

/**
 * Operator jobs (backfills). `leaseVersion` is the fencing token: every chunk message carries the
 * version it expects, and each claim, commit or watchdog re-kick is a compare-and-set on it, so two
 * chunks of one job never run at once and stale or duplicate messages are no-ops.
 */
export const jobs = sqliteTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    type: text('type').notNull(),
    state: text('state').notNull(),
    params: text('params').notNull(),
    cursor: text('cursor'),
    maxKey: text('max_key'),
    rowsProcessed: integer('rows_processed').notNull().default(0),
    rowsTotal: integer('rows_total'),
    rowsSkipped: integer('rows_skipped').notNull().default(0),
    ratePerSec: integer('rate_per_sec'),
    etaSec: integer('eta_sec'),
    attempts: integer('attempts').notNull().default(0),
    error: text('error'),
    leaseVersion: integer('lease_version').notNull().default(0),
    leaseUntil: integer('lease_until').notNull().default(0),
    /** Set once a chunk may be replayed (crash, failure, retry, an earlier run): writes check what is there. */
    verifyWrites: integer('verify_writes', { mode: 'boolean' }).notNull().default(false),
    /** What a finished job did, by type (JSON), e.g. an erasure's counts per store; null until then. */
    result: text('result'),
    createdAt: integer('created_at').notNull(),
    startedAt: integer('started_at'),
    endedAt: integer('ended_at'),
    lastUpdateAt: integer('last_update_at').notNull(),
  },
  (t) => [index('jobs_state_idx').on(t.state)],
);

/**
 * Legacy datasets, one row per (project, dataset): the same name in two projects is two datasets.
 * `initialMigrationCompletedAt` releases the project's realtime events of the dataset; `held`
 * counts those waiting in `held_legacy_events`, written in the same transaction as they are, so
 * the cap and the watchdog read one row instead of counting.
 */
export const legacyDatasets = sqliteTable(
  'legacy_datasets',
  {
    projectId: text('project_id').notNull(),
    dataset: text('dataset').notNull(),
    initialMigrationCompletedAt: integer('initial_migration_completed_at'),
    held: integer('held').notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.dataset] })],
);

/** Realtime events of a legacy dataset held until its initial import completes (accepted = durable). */
export const heldEvents = sqliteTable(
  'held_legacy_events',
  {
    seq: integer('seq').primaryKey({ autoIncrement: true }),
    dataset: text('dataset').notNull(),
    legacyId: text('legacy_id').notNull(),
    projectId: text('project_id').notNull(),
    deviceId: text('device_id').notNull(),
    gapMs: integer('gap_ms').notNull(),
    event: text('event').notNull(),
    heldAt: integer('held_at').notNull(),
  },
  (t) => [index('held_legacy_events_project_dataset_idx').on(t.projectId, t.dataset, t.seq)],
);

/**
 * Ingest requests sent with an `Idempotency-Key`: a retry with the same key and body is answered as
 * the first one was. `status` is null while the first request runs (or after it failed in a way a
 * retry should redo); `receivedAtMs` is reused by such a retry so rows without a client timestamp
 * get the same dedup keys and are recognised as duplicates.
 */
export const idempotencyKeys = sqliteTable(
  'idempotency_keys',
  {
    projectId: text('project_id').notNull(),
    key: text('key').notNull(),
    route: text('route').notNull(),
    bodySha256: text('body_sha256').notNull(),
    receivedAtMs: integer('received_at_ms').notNull(),
    status: integer('status'),
    response: text('response'),
    createdAt: integer('created_at').notNull(),
    /** When the request now holding the key took it; 0 once released. */
    heldAt: integer('held_at').notNull(),
    /**
     * The first request's client address and user agent: a retry from another network (a phone
     * moving from Wi-Fi to cellular) derives the same cookieless device ids. Forgotten with the key.
     */
    clientIp: text('client_ip').notNull().default(''),
    userAgent: text('user_agent').notNull().default(''),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.key] }), index('idempotency_keys_created_idx').on(t.createdAt)],
);

/**
 * The archive manifest: one row per R2 chunk of a (project, month)'s raw payloads. A row is written
 * after its object was uploaded (create-only) and before anything is cleared; `verifiedAt` is set
 * once the object was read back and proved to be this chunk, and only then may its payloads leave
 * ClickHouse (`clearedAt`). `restoredAt` is set when a restore wrote them back (the chunk stays).
 */
export const archiveChunks = sqliteTable(
  'archive_chunks',
  {
    projectId: text('project_id').notNull(),
    month: text('month').notNull(),
    number: integer('number').notNull(),
    key: text('key').notNull(),
    rowCount: integer('row_count').notNull(),
    rawBytes: integer('raw_bytes').notNull(),
    compressedBytes: integer('compressed_bytes').notNull(),
    sha256: text('sha256').notNull(),
    idsChecksum: text('ids_checksum').notNull(),
    firstCreatedAtMs: integer('first_created_at_ms').notNull(),
    lastCreatedAtMs: integer('last_created_at_ms').notNull(),
    /** The job that wrote the chunk (an archive run, or an erasure's rewrite). */
    jobId: text('job_id').notNull(),
    createdAt: integer('created_at').notNull(),
    verifiedAt: integer('verified_at'),
    clearedAt: integer('cleared_at'),
    restoredAt: integer('restored_at'),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.month, t.number] }), index('archive_chunks_key_idx').on(t.key)],
);

/**
 * Device outboxes that cannot reach the ingest queue: one row per device, upserted by its object at
 * each failed flush and deleted by the first flush that succeeds again (never written while flushes
 * succeed). `/admin/health` reads the ingest backlog from here. `pendingRows`: events waiting in the
 * outbox (plus session rows) when it last failed; `since`: the first failure of this stall.
 */
export const stalledOutboxes = sqliteTable(
  'stalled_outboxes',
  {
    projectId: text('project_id').notNull(),
    deviceId: text('device_id').notNull(),
    pendingRows: integer('pending_rows').notNull(),
    since: integer('since').notNull(),
    failures: integer('failures').notNull(),
    lastError: text('last_error').notNull(),
    updatedAt: integer('updated_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.deviceId] }), index('stalled_outboxes_since_idx').on(t.since)],
);

/**
 * The highest chunk number a (project, month) ever used, kept when its manifest row goes (an erasure
 * that emptied a chunk): chunk numbers only grow, so no number is ever given to other content.
 */
export const archiveNumbers = sqliteTable(
  'archive_numbers',
  {
    projectId: text('project_id').notNull(),
    month: text('month').notNull(),
    highWater: integer('high_water').notNull(),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.month] })],
);

/**
 * Rows rejected for good (validation, too old, unsupported) from sources whose clients never see a
 * per-row answer — the tracker apps, told "ok" so they stop resending — counted per (project,
 * source) and shown in `/admin/health`. A row rejected again in a resent request counts again.
 */
export const rejectedRows = sqliteTable(
  'rejected_rows',
  {
    projectId: text('project_id').notNull(),
    /** `overland`, `owntracks` or `traccar`. */
    source: text('source').notNull(),
    count: integer('count').notNull(),
    lastReason: text('last_reason').notNull(),
    lastError: text('last_error').notNull(),
    lastAt: integer('last_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.source] }), index('rejected_rows_last_at_idx').on(t.lastAt)],
);

/** The vehicle registry (PUT /v1/devices/:deviceId): what an operator calls a device. */
export const vehicles = sqliteTable(
  'vehicles',
  {
    projectId: text('project_id').notNull(),
    deviceId: text('device_id').notNull(),
    name: text('name'),
    plate: text('plate'),
    driver: text('driver'),
    group: text('group'),
    /** An IANA zone: the default for the vehicle's daily mileage. */
    timezone: text('timezone'),
    /**
     * The zone-change rebuild (a fleet_recompute job id) after whose end every daily mileage row of
     * the vehicle is keyed by days of `timezone`; null when they all are. Until then rows of other
     * zones may exist and mileage reads widen the vehicle's window by a day each side for them.
     */
    mileageRebuildJob: text('mileage_rebuild_job'),
    updatedAt: integer('updated_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.projectId, t.deviceId] }), index('vehicles_group_idx').on(t.projectId, t.group)],
);

/**
 * One row per device with positions: serializes its fleet recomputes. `pendingFromMs..pendingToMs`
 * is the span of fixes stored but not yet recomputed, `dirty` counts how often it was widened; the
 * lease holder clears it (and the lease) only if `dirty` is what it read, else it runs again.
 * `seq` grows with every lease: the version of what the recompute writes to ClickHouse.
 */
export const fleetCursors = sqliteTable(
  'fleet_cursors',
  {
    projectId: text('project_id').notNull(),
    deviceId: text('device_id').notNull(),
    pendingFromMs: integer('pending_from_ms'),
    pendingToMs: integer('pending_to_ms'),
    dirty: integer('dirty').notNull().default(0),
    leaseToken: text('lease_token'),
    leaseUntil: integer('lease_until').notNull().default(0),
    seq: integer('seq').notNull().default(0),
    updatedAt: integer('updated_at').notNull(),
    /**
     * When a consumer first deferred the pending span's recompute (its queue batch had a backlog
     * behind it); null when nothing deferred is pending. Such spans are taken by the next batch with
     * nothing behind it, or once deferred for FLEET_DEFER_MAX_MS.
     */
    deferredSince: integer('deferred_since'),
  },
  (t) => [
    primaryKey({ columns: [t.projectId, t.deviceId] }),
    index('fleet_cursors_deferred').on(t.deferredSince).where(sql`deferred_since IS NOT NULL`),
  ],
);

/**
 * What an erasure or a project deletion forgot, for rows still on their way: a message in the
 * ingest queue's retries, or parked and re-driven later, would otherwise write the subject's rows
 * back after the job removed them. The ingest writer drops a device's or profile's rows received
 * before `beforeMs` (when the erasure was asked for, raised just before its device objects are
 * cleared), and every row of a deleted project. One row per job; pruned `TOMBSTONE_RETENTION_MS`
 * after it was last written. Neither id column set: the whole project.
 */
export const erasureTombstones = sqliteTable(
  'erasure_tombstones',
  {
    jobId: text('job_id').primaryKey(),
    projectId: text('project_id').notNull(),
    deviceId: text('device_id'),
    profileId: text('profile_id'),
    beforeMs: integer('before_ms').notNull(),
    createdAt: integer('created_at').notNull(),
  },
  (t) => [index('erasure_tombstones_project_idx').on(t.projectId), index('erasure_tombstones_created_idx').on(t.createdAt)],
);
