// The one module that talks to ClickHouse: version detection, typed parameters, JSONEachRow I/O.
import { createClient, type ClickHouseClient } from '@clickhouse/client-web';
import type { Config } from '../config';
import { bindParams, type QueryParams } from './params';

export interface ClickHouse {
  query<T>(sql: string, params?: QueryParams): Promise<T[]>;
  command(sql: string, params?: QueryParams): Promise<void>;
  insert(table: string, rows: readonly object[]): Promise<void>;
  ping(): Promise<boolean>;
  version(): Promise<ServerVersion>;
}

export interface ServerVersion {
  major: number;
  minor: number;
  /** Native `{name:Type}` query parameters over HTTP. */
  nativeParams: boolean;
  /** `DELETE FROM` (lightweight delete) and `mutations_sync`. */
  lightweightDelete: boolean;
}

export function parseVersion(text: string): ServerVersion {
  const [major = 0, minor = 0] = text.trim().split('.').map((n) => Number(n));
  return {
    major,
    minor,
    nativeParams: major > 19 || (major === 19 && minor >= 15),
    lightweightDelete: major > 22 || (major === 22 && minor >= 8),
  };
}

const versions = new Map<string, Promise<ServerVersion>>();

const settings = {
  output_format_json_quote_64bit_integers: 0,
} as const;

export function clickhouse(config: Config['clickhouse'], opts: { timeoutMs?: number } = {}): ClickHouse {
  const client: ClickHouseClient = createClient({
    url: config.url,
    username: config.username,
    password: config.password,
    database: config.database,
    request_timeout: opts.timeoutMs ?? 30_000,
    clickhouse_settings: settings,
  });
  const key = `${config.url}|${config.username}`;

  const version = (): Promise<ServerVersion> => {
    let v = versions.get(key);
    if (!v) {
      v = client
        .query({ query: 'SELECT version() AS v', format: 'JSONEachRow' })
        .then((rs) => rs.json<{ v: string }>())
        .then((rows) => parseVersion(rows[0]?.v ?? '0.0'));
      v.catch(() => versions.delete(key));
      versions.set(key, v);
    }
    return v;
  };

  const prepare = async (sql: string, params?: QueryParams) => {
    if (!params || Object.keys(params).length === 0) return { query: sql };
    const v = await version();
    return v.nativeParams ? { query: sql, query_params: params } : { query: bindParams(sql, params) };
  };

  return {
    version,
    async query<T>(sql: string, params?: QueryParams) {
      const rs = await client.query({ ...(await prepare(sql, params)), format: 'JSONEachRow' });
      return rs.json<T>();
    },
    async command(sql: string, params?: QueryParams) {
      await client.command(await prepare(sql, params));
    },
    async insert(table: string, rows: readonly object[]) {
      if (rows.length === 0) return;
      await client.insert({ table, values: rows as object[], format: 'JSONEachRow' });
    },
    async ping() {
      const r = await client.ping();
      return r.success;
    },
  };
}
