// The legacy Postgres behind the LEGACY_DB Hyperdrive binding: a bounded plan and keyset pages.
import pg from 'pg';
import { PermanentChunkError } from '../jobs/runner';
import type { LegacyImportParams } from './params';
import { parsePgTimestamp } from './translate';

export type LegacyRow = Record<string, unknown>;

/** The legacy database could not be reached: the job fails at once instead of retrying. */
export class LegacySourceUnavailable extends PermanentChunkError {
  constructor(cause: unknown) {
    super(`legacy database unreachable: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'LegacySourceUnavailable';
  }
}

/**
 * The source table or a column does not exist, or may not be read (SQLSTATE class 42: syntax error
 * or access rule violation): no retry can mend that, so the job fails at once with the database's
 * own message.
 */
export class LegacySourceInvalid extends PermanentChunkError {
  constructor(cause: Error) {
    super(cause.message);
    this.name = 'LegacySourceInvalid';
  }
}

async function sourceQuery<R extends pg.QueryResultRow>(c: pg.Client, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
  try {
    return await c.query<R>(text, values);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (err instanceof Error && typeof code === 'string' && code.startsWith('42')) throw new LegacySourceInvalid(err);
    throw err;
  }
}

export interface ImportPlan {
  /** Largest key when the job started: rows inserted later cannot keep the loop going. */
  maxKey: string | null;
  rowsTotal: number;
  /** Rows at or below the cursor (non-zero when a retried job continues), and rows without a key. */
  rowsDone: number;
  /** Rows counted in rowsDone that cannot become events: no key, or at or below the cursor without a device or a time. */
  rowsSkipped: number;
}

const CONNECT_TIMEOUT_MS = 5000;
const QUERY_TIMEOUT_MS = 30_000;

const TIMESTAMP_OIDS = new Set([1114, 1184]); // timestamp, timestamptz

/** Timestamps as LegacyTimestamp: a JS Date would drop their microseconds. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    TIMESTAMP_OIDS.has(oid) && format !== 'binary' ? (text: string) => parsePgTimestamp(text) ?? text : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

export async function withLegacyDb<T>(connectionString: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, query_timeout: QUERY_TIMEOUT_MS, types });
  // A dropped connection emits 'error' on the client; the failing query reports it instead.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    throw new LegacySourceUnavailable(err);
  }
  try {
    return await fn(client);
  } finally {
    await endQuietly(client);
  }
}

/**
 * Closing a workerd socket cancels its reader; pg re-emits that as an 'error' on the client,
 * which must have a listener or it surfaces as an unhandled rejection.
 */
export async function endQuietly(client: pg.Client): Promise<void> {
  client.on('error', () => {});
  await client.end().catch(() => {});
}

const ident = (name: string) => pg.escapeIdentifier(name);

export async function planImport(c: pg.Client, s: LegacyImportParams['source'], cursor: string | null): Promise<ImportPlan> {
  const key = ident(s.key);
  const unusable = `(${ident(s.deviceId)} IS NULL OR ${ident(s.deviceId)}::text = '' OR ${ident(s.createdAt)} IS NULL)`;
  // One statement, one snapshot: the total, the max key and the rows already done agree. Rows
  // without a key are never reached by keyset pages: they count as done and skipped from the start.
  const done = cursor === null ? '0' : `count(*) FILTER (WHERE ${key} <= $1)`;
  const skippedDone = cursor === null ? '0' : `count(*) FILTER (WHERE ${key} <= $1 AND ${unusable})`;
  const { rows } = await sourceQuery<{ max_key: string | null; total: string; done: string; no_key: string; skipped_done: string }>(
    c,
    `SELECT max(${key})::text AS max_key, count(*) AS total, ${done} AS done, count(*) - count(${key}) AS no_key,
            ${skippedDone} AS skipped_done
       FROM ${ident(s.table)}`,
    cursor === null ? [] : [cursor],
  );
  const r = rows[0]!;
  // Name every column the import reads, so one that does not exist fails the job with Postgres'
  // message instead of turning every row into a skipped one.
  await sourceQuery(c, `SELECT ${key}, ${ident(s.deviceId)}, ${ident(s.createdAt)} FROM ${ident(s.table)} LIMIT 0`, []);
  const noKey = Number(r.no_key);
  return { maxKey: r.max_key, rowsTotal: Number(r.total), rowsDone: Number(r.done) + noKey, rowsSkipped: noKey + Number(r.skipped_done) };
}

/** The next page after `cursor`, never past `maxKey`, in key order. */
export async function readPage(c: pg.Client, s: LegacyImportParams['source'], cursor: string | null, maxKey: string, limit: number): Promise<LegacyRow[]> {
  const key = ident(s.key);
  const { rows } = await sourceQuery<LegacyRow>(
    c,
    cursor === null
      ? `SELECT * FROM ${ident(s.table)} WHERE ${key} <= $1 ORDER BY ${key} LIMIT $2`
      : `SELECT * FROM ${ident(s.table)} WHERE ${key} <= $1 AND ${key} > $3 ORDER BY ${key} LIMIT $2`,
    cursor === null ? [maxKey, limit] : [maxKey, limit, cursor],
  );
  return rows;
}
