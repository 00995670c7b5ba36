// ClickHouse 26 in-process (chDB) behind the part of the ClickHouse HTTP interface that
// @clickhouse/client-web and our scripts use: the embedded default of `npm start` and the tests.
import { createServer } from 'node:http';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { gzip } from 'node:zlib';

const require = createRequire(import.meta.url);
const gzipAsync = promisify(gzip);
const { Session } = require('chdb');
// chDB's own bind path escapes every string as if it were a raw JS value, but HTTP `param_*`
// values already are ClickHouse escaped text (`a\'b`, `['x','y']`): they go to the addon as they came.
const native = createRequire(require.resolve('chdb'))('./dist/loader.js').loadNative();
for (const fn of ['QueryAsyncConnection', 'InsertRawAsyncConnection']) {
  if (typeof native[fn] !== 'function') throw new Error(`chdb ${fn} is missing: chdb-server.mjs was written against chdb 3.4`);
}

const MAX_BODY_BYTES = 256 * 1024 * 1024;
// URL parameters that ClickHouse's HTTPHandler does not treat as settings.
const NOT_SETTINGS = new Set(
  ('query database default_format compress decompress user password quota_key query_id stacktrace role buffer_size ' +
    'wait_end_of_query session_id session_timeout session_check client_protocol_version close_session').split(' '),
);
// ClickHouse's exceptionCodeToHTTPStatus, keyed by the error name chDB puts in its messages.
const STATUS = new Map(
  Object.entries({
    400:
      'BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE CANNOT_PARSE_QUOTED_STRING ' +
      'CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 ' +
      'CANNOT_PARSE_IPV6 CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN ' +
      'UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST UNEXPECTED_AST_STRUCTURE ' +
      'SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE',
    401: 'REQUIRED_PASSWORD',
    403: 'UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED',
    404:
      'UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE UNKNOWN_DATABASE UNKNOWN_SETTING ' +
      'UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE',
    408: 'TIMEOUT_EXCEEDED',
    413: 'QUERY_IS_TOO_LARGE',
    501: 'NOT_IMPLEMENTED',
    503: 'SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK',
  }).flatMap(([status, names]) => names.split(' ').map((name) => [name, Number(status)])),
);

const chError = (code, name, message) => new Error(`Code: ${code}. DB::Exception: ${message}. (${name})`);
const ident = (name) => '`' + name.replace(/[\\`]/g, '\\$&') + '`';
const literal = (value) => "'" + value.replace(/[\\']/g, '\\$&') + "'";

/**
 * Starts the server; data kept under `dir`. Returns { url, port, version, stop }; `stop({ force })`
 * answers the requests already received (force: drops their connections) and closes the engine.
 * `timezone` (default UTC, null for the machine's) is what every request runs in.
 */
export async function startChdbServer({ dir, port = 0, host = '127.0.0.1', log = () => {}, timezone = 'UTC' }) {
  const path = resolve(dir);
  mkdirSync(path, { recursive: true });
  // Held for the server's lifetime so the engine stays bound to `path` between requests.
  const anchor = new Session(path);
  let version, serverTimezone;
  try {
    [version, serverTimezone] = (await run(anchor, 'SELECT version(), timezone()')).body.toString().trim().split('\t');
  } catch (err) {
    anchor.close();
    throw err;
  }
  // Pinned per request (session_timezone) only where the machine's zone differs.
  const pinTimezone = Boolean(timezone) && timezone.replace(/^Etc\//, '') !== serverTimezone.replace(/^Etc\//, '');
  const displayName = hostname();

  // One request at a time: chDB's parameter binding is not isolated between concurrent queries.
  let tail = Promise.resolve();
  const serial = (job) => {
    const done = tail.then(job);
    tail = done.catch(() => {});
    return done;
  };
  let stopping = false;
  let closed = false; // no more queries: the engine may be going away

  async function execute({ method, params, body, multipart, tables }) {
    const database = params.get('database');
    const bound = {};
    const settings = [];
    // `<table>_structure|_types|_format` describe the external tables sent, not settings; a real
    // setting that merely ends that way (date_time_input_format) still applies.
    const tableFields = new Set(tables.flatMap(({ name }) => ['structure', 'types', 'format'].map((f) => `${name}_${f}`)));
    for (const [key, value] of params) {
      if (key.startsWith('param_')) bound[key.slice(6)] = value;
      else if (NOT_SETTINGS.has(key) || tableFields.has(key)) continue;
      else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) settings.push(`${key} = ${literal(value)}`);
      else throw chError(115, 'UNKNOWN_SETTING', `Unknown setting '${key}'`);
    }
    if (pinTimezone && !params.has('session_timezone')) settings.push(`session_timezone = ${literal(timezone)}`);
    // As ClickHouse does: only POST may write.
    if (method !== 'POST') settings.push('readonly = 2');
    const urlQuery = params.get('query') ?? '';
    // The client sends `INSERT ... FORMAT X` in the URL and the rows as the body: hand the bytes
    // to chDB's raw insert instead of decoding megabytes into a query string.
    const rawInsert =
      !multipart && body.length > 0 && !Object.keys(bound).length && /^\s*INSERT\b[\s\S]*\bFORMAT\s+\w+\s*$/i.test(urlQuery);
    // ClickHouse reads the URL's query, a newline, then the body (unless the body is a form).
    const sql = rawInsert || multipart || !body.length ? urlQuery : urlQuery ? `${urlQuery}\n${body}` : body.toString();
    if (!/\S/.test(sql)) throw chError(62, 'SYNTAX_ERROR', 'Empty query');

    return serial(async () => {
      if (closed) throw chError(210, 'NETWORK_ERROR', 'The chDB server is stopping');
      // A fresh connection per request gives each one its own settings, current database and
      // temporary tables, as ClickHouse's HTTP interface does; it costs well under a millisecond.
      const session = new Session(path);
      const created = [];
      try {
        if (database && database !== 'default') await run(session, `USE ${ident(database)}`);
        if (settings.length) await run(session, `SET ${settings.join(', ')}`);
        for (const { name, data } of tables) {
          const structure = externalStructure(name, params);
          await run(session, `CREATE TEMPORARY TABLE ${ident(name)} (${structure})`);
          created.push(name);
          const format = params.get(`${name}_format`) ?? 'TabSeparated';
          if (!/^\w+$/.test(format)) throw chError(73, 'UNKNOWN_FORMAT', `Unknown format ${format}`);
          // Not chDB's raw insert: it ends the data at a blank line, which in TabSeparated is a
          // row holding an empty string. format() reads the whole part as one bound value.
          if (data.length) {
            await run(session, `INSERT INTO ${ident(name)} SELECT * FROM format(${format}, {structure:String}, {data:String})`, {
              structure: escapeParam(structure),
              data: escapeParam(data.toString('utf8')),
            });
          }
        }
        if (rawInsert) {
          const r = await native.InsertRawAsyncConnection(session.connection, urlQuery, body, false);
          return { sql, body: Buffer.alloc(0), read: [r.rowsWritten, r.bytesWritten], written: [r.rowsWritten, r.bytesWritten], elapsed: r.elapsed };
        }
        return await run(session, sql, bound, params.get('default_format') ?? 'TabSeparated');
      } finally {
        for (const name of created) await run(session, `DROP TEMPORARY TABLE IF EXISTS ${ident(name)}`).catch(() => {});
        session.close();
      }
    });
  }

  async function handle(req) {
    const url = new URL(req.url, 'http://localhost');
    const body = await readBody(req);
    if (url.pathname === '/ping' || (url.pathname === '/' && req.method === 'GET' && !url.search && !body.length)) {
      return { status: 200, headers: { 'Content-Type': 'text/html; charset=UTF-8' }, body: Buffer.from('Ok.\n') };
    }
    const params = new Map(url.searchParams);
    for (const [header, param] of [['x-clickhouse-database', 'database'], ['x-clickhouse-format', 'default_format']]) {
      if (req.headers[header] && !params.has(param)) params.set(param, req.headers[header]);
    }
    const contentType = req.headers['content-type'] ?? '';
    const multipart = /^multipart\/form-data/i.test(contentType);
    const tables = [];
    if (multipart) {
      // Parts with a file name are external tables; plain fields are parameters like the URL's
      // (the client's `use_multipart_params` puts `query` and `param_*` there).
      const form = await new Response(body, { headers: { 'content-type': contentType } }).formData();
      for (const [name, value] of form) {
        if (typeof value !== 'string') tables.push({ name, data: Buffer.from(await value.arrayBuffer()) });
        else if (!params.has(name)) params.set(name, value);
      }
    }
    const queryId = params.get('query_id') || randomUUID();
    if (!/^[\x20-\x7e]*$/.test(queryId)) throw chError(36, 'BAD_ARGUMENTS', 'query_id must be printable ASCII');
    const headers = { 'X-ClickHouse-Query-Id': queryId, 'X-ClickHouse-Timezone': params.get('session_timezone') || timezone || serverTimezone };
    try {
      const r = await execute({ method: req.method, params, body, multipart, tables });
      const format = outputFormat(r.sql, params.get('default_format') ?? 'TabSeparated');
      const [readRows, readBytes] = r.read;
      const summary = {
        read_rows: readRows,
        read_bytes: readBytes,
        written_rows: r.written[0],
        written_bytes: r.written[1],
        total_rows_to_read: readRows,
        result_rows: countRows(r.body, format),
        result_bytes: r.body.length,
        elapsed_ns: Math.round(r.elapsed * 1e9),
      };
      Object.assign(headers, {
        'Content-Type': contentTypeOf(format),
        'X-ClickHouse-Format': format,
        'X-ClickHouse-Summary': JSON.stringify(Object.fromEntries(Object.entries(summary).map(([k, v]) => [k, String(v)]))),
      });
      // HTTP compression, as ClickHouse does it: asked for by the setting and the client's Accept-Encoding.
      if (params.get('enable_http_compression') === '1' && /\bgzip\b/i.test(req.headers['accept-encoding'] ?? '')) {
        const level = Math.min(9, Math.max(1, Number(params.get('http_zlib_compression_level') ?? 3) || 3));
        headers['Content-Encoding'] = 'gzip';
        return { status: 200, headers, body: await gzipAsync(r.body, { level }) };
      }
      return { status: 200, headers, body: r.body };
    } catch (err) {
      const failure = toFailure(err, version);
      log(`chdb-server: ${failure.status} ${failure.text.trim().slice(0, 500)}`);
      return { ...failure, headers: { ...headers, ...failure.headers } };
    }
  }

  const inflight = new Set();
  const server = createServer((req, res) => {
    res.on('error', () => {}); // a client that went away is not the server's problem
    const answered = handle(req)
      .catch((err) => toFailure(err, version))
      .then(({ status, headers, body }) => {
        if (res.destroyed) return;
        try {
          res.writeHead(status, {
            'X-ClickHouse-Server-Display-Name': displayName,
            'X-ClickHouse-Timezone': timezone || serverTimezone,
            ...headers,
            'Content-Length': body.length,
            ...(stopping || status === 413 ? { Connection: 'close' } : {}),
          });
          res.end(body);
        } catch (err) {
          log(`chdb-server: cannot answer: ${err.message}`);
          res.destroy();
        }
      });
    inflight.add(answered);
    answered.finally(() => inflight.delete(answered));
  });
  try {
    await new Promise((ok, fail) => server.once('error', fail).listen(port, host, ok));
  } catch (err) {
    anchor.close();
    throw err;
  }
  const actualPort = server.address().port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
  log(`chdb-server: ClickHouse ${version} (chDB) with data in ${path} at ${url}`);

  let stopped;
  const stop = ({ force = false } = {}) =>
    (stopped ??= (async () => {
      stopping = true;
      if (force) server.closeAllConnections();
      // Requests already received are answered first (with `Connection: close`); closing idle
      // keep-alive sockets right away would drop requests a client has just written to them.
      while (inflight.size) await Promise.allSettled([...inflight]);
      closed = true;
      const listening = new Promise((ok) => server.close(ok));
      server.closeAllConnections();
      await listening;
      anchor.close();
      log(`chdb-server: stopped (${path})`);
    })());

  /** Requests received and not yet answered (tests wait on it instead of sleeping). */
  const pending = () => inflight.size;
  return { url, port: actualPort, version, stop, pending };
}

/** A value in the escaped text form a `param_*` URL parameter arrives in. */
function escapeParam(text) {
  return text.replace(/[\\\t\n\r']/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r', "'": "\\'" })[c]);
}

async function run(session, sql, params, format = 'TabSeparated') {
  const r = await native.QueryAsyncConnection(session.connection, sql, format, params && Object.keys(params).length ? params : undefined);
  const body = Buffer.from(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
  return { sql, body, read: [r.rowsRead, r.bytesRead], written: [0, 0], elapsed: r.elapsed };
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw chError(229, 'QUERY_IS_TOO_LARGE', `Request body is over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** Columns of an external table from `<name>_structure` (`id String, n UInt64`) or `<name>_types` (`String, UInt64`). */
function externalStructure(name, params) {
  const structure = params.get(`${name}_structure`);
  if (structure) return structure;
  const types = params.get(`${name}_types`);
  if (!types) {
    throw chError(36, 'BAD_ARGUMENTS', `Neither structure nor types have been provided for external table ${name}. Use fields ${name}_structure or ${name}_types to do so`);
  }
  // Top-level commas only: `Array(Tuple(String, UInt8))` is one type.
  const list = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= types.length; i++) {
    const c = types[i];
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if ((c === ',' && depth === 0) || i === types.length) {
      list.push(`_${list.length + 1} ${types.slice(start, i).trim()}`);
      start = i + 1;
    }
  }
  return list.join(', ');
}

/** The format ClickHouse answers in: the query's own FORMAT clause, else the default. */
function outputFormat(sql, fallback) {
  if (/^\s*INSERT\b/i.test(sql)) return fallback;
  return [...sql.matchAll(/\bFORMAT\s+(\w+)/gi)].at(-1)?.[1] ?? fallback;
}

function countRows(body, format) {
  if (!/EachRow$|^(TabSeparated|TSV|CSV)(Raw)?$/.test(format)) return 0;
  let rows = 0;
  for (let i = body.indexOf(10); i !== -1; i = body.indexOf(10, i + 1)) rows++;
  return rows;
}

function contentTypeOf(format) {
  if (/^JSON/.test(format)) return 'application/json; charset=UTF-8';
  if (/^(TSV|TabSeparated)/.test(format)) return 'text/tab-separated-values; charset=UTF-8';
  if (/^CSV/.test(format)) return 'text/csv; charset=UTF-8';
  return 'text/plain; charset=UTF-8';
}

/** ClickHouse's error answer: `Code: N. DB::Exception: ... (NAME) (version X)`, its status and code header. */
function toFailure(err, version) {
  let text = String(err?.message ?? err).trim();
  const at = text.search(/Code: \d+\. /); // chDB sometimes prefixes "Query failed: "
  text = at >= 0 ? text.slice(at) : `Code: 1001. DB::Exception: ${text}. (STD_EXCEPTION)`;
  if (!/\(version [^)]*\)$/.test(text)) text += ` (version ${version})`;
  const code = /^Code: (\d+)/.exec(text)[1];
  const name = [...text.matchAll(/\(([A-Z][A-Z0-9_]{2,})\)/g)].at(-1)?.[1];
  return {
    status: STATUS.get(name) ?? 500,
    headers: { 'Content-Type': 'text/plain; charset=UTF-8', 'X-ClickHouse-Exception-Code': code },
    body: Buffer.from(`${text}\n`),
    text,
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: '.data/chdb' },
      port: { type: 'string', default: '8123' },
      host: { type: 'string', default: '127.0.0.1' },
    },
  });
  const server = await startChdbServer({ dir: values.dir, port: Number(values.port), host: values.host, log: (m) => console.error(m) });
  console.log(server.url);
  for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => server.stop().then(() => process.exit(0)));
}
