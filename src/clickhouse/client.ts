// The one module that talks to ClickHouse: version detection, typed parameters, JSONEachRow and
// TabSeparated I/O.
import { createClient, type ClickHouseClient } from '@clickhouse/client-web';
import type { Config } from '../config';
import { bindParams, formatParam, type QueryParams } from './params';

/**
 * Value lists sent in the request body as external tables (ClickHouse's "external data"), one
 * `String` column named `value` each: thousands of ids never go into a URL. In SQL: `x IN (SELECT
 * value FROM <name>)`.
 */
export type ValueLists = Record<string, readonly string[]>;

/**
 * ClickHouse gave no answer of its own (refused or lost connection, timeout, a proxy's error page):
 * a read answers 503 `storage_unavailable`, never a 500. An error ClickHouse itself reported (`Code:
 * N`) is not this: that is a fault of the query.
 */
export class ClickHouseUnavailable extends Error {
  override name = 'ClickHouseUnavailable';
  constructor(cause: unknown) {
    super(`ClickHouse is unreachable: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** Whether ClickHouse itself answered with this error (client-web's ClickHouseError, or our `Code: N`). */
function isServerError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  // `Code: N. DB::Exception` (current servers), `Code: N, e.displayText() = DB::Exception` (18.16)
  return (typeof code === 'string' && /^\d+$/.test(code)) || /\bCode: \d+[.,].*DB::Exception/s.test(err.message);
}

/** Runs a read; a dead connection (a stale keep-alive after a restart) is tried once more. */
async function read<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (first) {
    if (isServerError(first) || (first instanceof TypeError && /parameter|list name/.test(first.message))) throw first;
    try {
      return await run();
    } catch (err) {
      throw isServerError(err) ? err : new ClickHouseUnavailable(err);
    }
  }
}

export interface ClickHouse {
  query<T>(sql: string, params?: QueryParams, lists?: ValueLists): Promise<T[]>;
  /**
   * `query` answered as TabSeparated, each row its fields as strings (unescaped): far cheaper to
   * decode than JSON when a column holds long text, such as raw payloads.
   */
  queryFields(sql: string, params: QueryParams | undefined, columns: number): Promise<string[][]>;
  /**
   * `sql` answered as TabSeparatedRaw (each row one line, as it is), compressed by ClickHouse itself
   * (gzip at `level`, 1–9) and handed over still compressed: a large text the Worker need not take
   * in or compress. `gzipped` is false when the server sent the text uncompressed.
   */
  queryGzip(sql: string, params: QueryParams | undefined, level: number): Promise<{ bytes: Uint8Array; gzipped: boolean }>;
  /** `query`, with the rows ClickHouse reports it read for it (FORMAT JSON statistics: both generations). */
  queryStats<T>(sql: string, params?: QueryParams, lists?: ValueLists): Promise<{ rows: T[]; readRows: number }>;
  /** `settings`: ClickHouse settings for this statement only (e.g. `lightweight_deletes_sync`). */
  command(sql: string, params?: QueryParams, settings?: Record<string, string | number>): Promise<void>;
  insert(table: string, rows: readonly object[]): Promise<void>;
  /**
   * `insert` of rows given as TabSeparated text (each field made with `tsvField`, `columns` in
   * order, every line ending in a line feed): far cheaper to build, and for ClickHouse to read,
   * than JSON when a column holds long text.
   */
  insertTabSeparated(table: string, columns: readonly string[], text: string): Promise<void>;
  /**
   * `insert` of rows already encoded as JSONEachRow lines (each ending with a line feed), sent as
   * they are: a caller that has its rows as text already (the queue consumer, cutting them out of
   * a lined message) never parses or encodes them.
   */
  insertJsonLines(table: string, text: string): Promise<void>;
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
  /** `ALTER TABLE … MOVE PARTITION … TO TABLE` (20.1+). */
  movePartition: boolean;
}

export function parseVersion(text: string): ServerVersion {
  const [major = 0, minor = 0] = text.trim().split('.').map((n) => Number(n));
  return {
    major,
    minor,
    nativeParams: major > 19 || (major === 19 && minor >= 15),
    lightweightDelete: major > 22 || (major === 22 && minor >= 8),
    movePartition: major >= 20,
  };
}

const versions = new Map<string, Promise<ServerVersion>>();

const defaultSettings = {
  output_format_json_quote_64bit_integers: 0,
} as const;

/** `settings`: ClickHouse settings for every query of this client (e.g. `force_index_by_date`). */
export function clickhouse(config: Config['clickhouse'], opts: { timeoutMs?: number; settings?: Record<string, string | number> } = {}): ClickHouse {
  const settings = { ...defaultSettings, ...opts.settings };
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
    assertShortParams(params);
    const v = await version();
    return v.nativeParams ? { query: sql, query_params: params } : { query: bindParams(sql, params) };
  };

  const timeoutMs = opts.timeoutMs ?? 30_000;
  // Lists go as external data, a multipart request client-web cannot make; without lists the same
  // request of our own answers a read for less than the client's row-by-row stream decoding.
  const queryRows = async <T>(sql: string, params: QueryParams | undefined, lists: ValueLists): Promise<T[]> =>
    parseJsonEachRow<T>(await request(sql, params, lists, 'JSONEachRow'));
  /**
   * A query as a request of our own, with lists multipart with the query in the URL; else the
   * query is the body. `gzipLevel`: ClickHouse compresses its answer (HTTP compression) and it is
   * handed over still compressed (`encodeResponseBody: 'manual'`).
   */
  const send = async (sql: string, params: QueryParams | undefined, lists: ValueLists, format: string, gzipLevel?: number): Promise<Response> => {
    const v = await version();
    const url = new URL(config.url);
    const names = Object.keys(lists);
    const form = names.length ? new FormData() : null;
    for (const name of names) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new TypeError(`list name ${name} is not an identifier`);
      const values = lists[name]!;
      url.searchParams.set(`${name}_structure`, 'value String');
      url.searchParams.set(`${name}_format`, 'TabSeparated');
      form!.append(name, new Blob([values.map(tsvEscape).join('\n') + (values.length ? '\n' : '')]), name);
    }
    const scalar = params ?? {};
    assertShortParams(scalar);
    let query: string;
    if (v.nativeParams) {
      for (const [k, value] of Object.entries(scalar)) url.searchParams.set(`param_${k}`, formatParam(value));
      query = `${sql}\nFORMAT ${format}`;
    } else {
      query = `${Object.keys(scalar).length ? bindParams(sql, scalar) : sql}\nFORMAT ${format}`;
    }
    if (names.length) url.searchParams.set('query', query);
    url.searchParams.set('database', config.database);
    for (const [k, value] of Object.entries(settings)) url.searchParams.set(k, String(value));
    const headers: Record<string, string> = { authorization: `Basic ${btoa(`${config.username}:${config.password}`)}` };
    if (gzipLevel !== undefined) {
      url.searchParams.set('enable_http_compression', '1');
      url.searchParams.set('http_zlib_compression_level', String(gzipLevel));
      // The whole answer is made before any of it is sent: ClickHouse finishes its work even
      // while the Worker is busy and not reading (a full socket would stop it).
      url.searchParams.set('wait_end_of_query', '1');
      headers['accept-encoding'] = 'gzip';
    }
    return fetch(url, {
      method: 'POST',
      body: form ?? query,
      headers,
      signal: AbortSignal.timeout(timeoutMs),
      ...(gzipLevel !== undefined ? { encodeResponseBody: 'manual' as const } : {}),
    });
  };
  /** `send`, its answer as one text decoded at once (the client decodes a stream piece by piece). */
  const request = async (sql: string, params: QueryParams | undefined, lists: ValueLists, format: 'JSONEachRow' | 'JSON' | 'TabSeparated'): Promise<string> => {
    const res = await send(sql, params, lists, format);
    const text = await res.text();
    if (!res.ok) throw new Error(`ClickHouse answered ${res.status}: ${text.slice(0, 1000)}`);
    return text;
  };
  const statsOf = <T>(out: { data: T[]; statistics?: { rows_read?: number | string } }) => ({ rows: out.data, readRows: Number(out.statistics?.rows_read ?? 0) });

  return {
    version,
    async query<T>(sql: string, params?: QueryParams, lists?: ValueLists) {
      return read(() => queryRows<T>(sql, params, lists ?? {}));
    },
    async queryFields(sql: string, params: QueryParams | undefined, columns: number) {
      return read(async () => parseTabSeparated(await request(sql, params, {}, 'TabSeparated'), columns));
    },
    async queryGzip(sql: string, params: QueryParams | undefined, level: number) {
      if (!Number.isInteger(level) || level < 1 || level > 9) throw new TypeError(`gzip level ${level} is not 1–9`);
      return read(async () => {
        const res = await send(sql, params, {}, 'TabSeparatedRaw', level);
        const encoding = (res.headers.get('content-encoding') ?? '').trim().toLowerCase();
        const gzipped = encoding === 'gzip';
        // Something on the way compressed the answer some other way: an error the caller retries.
        if (res.ok && !gzipped && encoding !== '' && encoding !== 'identity') throw new Error(`ClickHouse's answer came with Content-Encoding ${encoding}, not gzip`);
        const bytes = new Uint8Array(await res.arrayBuffer());
        if (!res.ok) {
          const body = gzipped ? new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'))) : new Response(bytes);
          throw new Error(`ClickHouse answered ${res.status}: ${(await body.text().catch(() => '(an unreadable answer)')).slice(0, 1000)}`);
        }
        return { bytes, gzipped };
      });
    },
    async queryStats<T>(sql: string, params?: QueryParams, lists?: ValueLists) {
      return read(async () => statsOf(parseJsonAnswer<{ data: T[]; statistics?: { rows_read?: number | string } }>(await request(sql, params, lists ?? {}, 'JSON'))));
    },
    async command(sql: string, params?: QueryParams, settings?: Record<string, string | number>) {
      await client.command({ ...(await prepare(sql, params)), ...(settings ? { clickhouse_settings: settings } : {}) });
    },
    async insert(table: string, rows: readonly object[]) {
      if (rows.length === 0) return;
      await client.insert({ table, values: rows as object[], format: 'JSONEachRow' });
    },
    insertTabSeparated: (table: string, columns: readonly string[], text: string) => insertText(table, columns, 'TabSeparated', text),
    insertJsonLines: (table: string, text: string) => insertText(table, null, 'JSONEachRow', text),
    async ping() {
      const r = await client.ping();
      return r.success;
    },
  };

  /** Rows already written in `format` (each line ending with a line feed), sent as they are. */
  async function insertText(table: string, columns: readonly string[] | null, format: 'TabSeparated' | 'JSONEachRow', text: string) {
    if (!text) return;
    for (const name of [table, ...(columns ?? [])]) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new TypeError(`${name} is not an identifier`);
    if (!text.endsWith('\n')) throw new TypeError(`${format} rows end with a line feed`);
    const url = new URL(config.url);
    url.searchParams.set('query', `INSERT INTO ${table}${columns ? ` (${columns.join(', ')})` : ''} FORMAT ${format}`);
    url.searchParams.set('database', config.database);
    for (const [k, value] of Object.entries(settings)) url.searchParams.set(k, String(value));
    const res = await fetch(url, {
      method: 'POST',
      body: text,
      headers: { authorization: `Basic ${btoa(`${config.username}:${config.password}`)}` },
      signal: AbortSignal.timeout(timeoutMs),
    });
    const answer = await res.text();
    // A parse error quotes the rows (payloads): only its code and name go into the message.
    if (!res.ok) {
      const code = /Code: \d+/.exec(answer)?.[0] ?? 'no error code';
      const name = /\([A-Z][A-Z_]+\)/.exec(answer)?.[0];
      throw new Error(`ClickHouse refused the insert into ${table} (${res.status}): ${code}${name ? ` ${name}` : ''}`);
    }
  }
}

/**
 * What ClickHouse says of an error it met after it began to answer (it ends the text with it): its
 * code and name alone, from the last such line, never the rows before it nor the values its message
 * may quote (payloads may end up in a job's error), as for a refused insert.
 */
function answerError(text: string): Error {
  const said = [...text.matchAll(/Code: (\d+)([.,])[^\n]*?DB::Exception[^\n]*/g)].at(-1);
  if (!said) return new Error("ClickHouse's answer is not whole JSON (cut short)");
  const name = /\(([A-Z][A-Z0-9_]+)\)/.exec(said[0])?.[1];
  return new Error(`ClickHouse ended its answer with an error: Code: ${said[1]}${said[2]} DB::Exception${name ? ` (${name})` : ''}`);
}

/**
 * A server that writes an error into the answer's own format (`http_write_exception_in_output_format`)
 * ends JSONEachRow with a row holding only `exception`, and FORMAT JSON with an `exception` key:
 * neither is taken for rows.
 */
function exceptionIn(value: unknown, only: boolean): Error | null {
  if (value === null || typeof value !== 'object' || !Object.hasOwn(value, 'exception')) return null;
  if (only && Object.keys(value).length !== 1) return null;
  return answerError(String((value as { exception: unknown }).exception));
}

/**
 * Rows of a JSONEachRow answer. An error ClickHouse met after it began to answer ends the text
 * instead of a row: it fails the whole answer with ClickHouse's own words (a server error, not
 * retried), never a row short.
 */
export function parseJsonEachRow<T>(text: string): T[] {
  const rows: T[] = [];
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    if (end > start) {
      let row: T;
      try {
        row = JSON.parse(text.slice(start, end)) as T;
      } catch {
        throw answerError(text.slice(start));
      }
      // Such a row is the answer's last: checking that one keeps the check off every other row.
      if (end >= text.length - 1) {
        const err = exceptionIn(row, true);
        if (err) throw err;
      }
      rows.push(row);
    }
    start = end + 1;
  }
  return rows;
}

/** A FORMAT JSON answer, with the same care for an error met after it began. */
export function parseJsonAnswer<T>(text: string): T {
  let answer: T;
  try {
    answer = JSON.parse(text) as T;
  } catch {
    throw answerError(text);
  }
  const err = exceptionIn(answer, false);
  if (err) throw err;
  return answer;
}

/** Query parameters travel in the URL: a list longer than a handful belongs in a ValueLists body. */
export const MAX_URL_LIST = 100;
function assertShortParams(params: QueryParams) {
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v) && v.length > MAX_URL_LIST) throw new TypeError(`parameter ${k} has ${v.length} values: pass long lists as ValueLists, never in the URL`);
  }
}

/**
 * Rows of a TabSeparated answer of `columns` columns, each a list of its fields unescaped.
 * ClickHouse escapes `\\`, the single quote, tab, line feed, carriage return, NUL, backspace and
 * form feed (both generations); every other byte comes as it is. An error ClickHouse met after it
 * began to answer ends the text as a line of its own: any line of another width fails the whole
 * answer, so such an error is never taken for rows.
 */
export function parseTabSeparated(text: string, columns: number): string[][] {
  // TabSeparated data never holds a raw carriage return (it is escaped): current servers open the
  // error block they end a failed answer with (`\r\n__exception__\r\n…`) with one.
  const cr = text.indexOf('\r');
  if (cr >= 0) throw new Error(`ClickHouse ended its answer with an error: ${text.slice(cr, cr + 1000).replace(/__exception__/g, ' ').replace(/\s+/g, ' ').trim()}`);
  // Row text (payloads) never goes into the message: it may end up in a job's error.
  if (text && !text.endsWith('\n')) throw new Error("ClickHouse's answer ends in the middle of a line (cut short)");
  const rows: string[][] = [];
  let start = 0;
  while (start < text.length) {
    const end = text.indexOf('\n', start);
    const line = text.slice(start, end);
    const fields = line.split('\t');
    // 18.16 appends the exception as a line of text: of another width, or (one column) a first
    // field no query of ours answers with.
    const exception = /^Code: \d+[.,].*DB::Exception/.test(fields[0]!);
    if (exception || fields.length !== columns) {
      throw new Error(`ClickHouse answered a line of ${fields.length} fields, not ${columns}${exception ? `: ${line.slice(0, 1000)}` : ''}`);
    }
    for (let i = 0; i < fields.length; i++) {
      const f = fields[i]!;
      if (f.includes('\\')) fields[i] = f.replace(TSV_ESCAPED, (_, c: string) => TSV_UNESCAPES[c] ?? c);
    }
    rows.push(fields);
    start = end + 1;
  }
  return rows;
}
const TSV_ESCAPED = /\\([\s\S])/g;
const TSV_UNESCAPES: Record<string, string> = { '\\': '\\', "'": "'", t: '\t', n: '\n', r: '\r', '0': '\0', b: '\b', f: '\f' };

const TSV_SPECIAL = /[\\\t\n\r\0]/;

/** A value as one TabSeparated field: a number as its digits, text escaped where it must be. */
export function tsvField(value: string | number): string {
  return typeof value === 'number' ? String(value) : TSV_SPECIAL.test(value) ? tsvEscape(value) : value;
}

/** A value as one TabSeparated field. */
function tsvEscape(value: string): string {
  return value.replace(/[\\\t\n\r\0]/g, (c) => TSV_ESCAPES[c]!);
}
const TSV_ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r', '\0': '\\0' };
