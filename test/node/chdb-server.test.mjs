// The chDB HTTP server against the real @clickhouse/client-web and raw HTTP, on a real chDB.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { createClient } from '@clickhouse/client-web';
import { startChdbServer } from '../../scripts/lib/chdb-server.mjs';
import { migrateClickHouse, readClickHouseMigrations } from '../../scripts/lib/clickhouse-migrate.mjs';

const SERVER_SCRIPT = fileURLToPath(new URL('../../scripts/lib/chdb-server.mjs', import.meta.url));

const TRICKY = [
  `it's "quoted"`,
  'back\\slash, \\n is not a newline, \\\\ two',
  'line 1\nline 2\r\nline 3',
  'tab\there\t',
  '中文 テキスト 한국어 🚀',
  "'; DROP TABLE t; --",
  '\\',
  "'",
  '',
  'trailing backslash\\',
  "['not','an','array']",
  '{x:String} %41 + & = ?',
  'nul\0inside',
];

const tsvEscape = (s) => s.replace(/[\\\t\n\r\0]/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r', '\0': '\\0' })[c]);

describe('chdb-server', () => {
  let dir;
  let server;
  let client;

  const rows = async (query, opts = {}) => (await client.query({ query, format: 'JSONEachRow', ...opts })).json();
  const raw = async (params, init = {}) => {
    const url = new URL(server.url);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    const res = await fetch(url, init);
    return { status: res.status, headers: res.headers, text: await res.text() };
  };
  /** External data as ClickHouse takes it: a multipart body, one file part per table. */
  const external = async (query, tables, params = {}) => {
    const form = new FormData();
    const p = { query, ...params };
    for (const t of tables) {
      if (t.structure) p[`${t.name}_structure`] = t.structure;
      if (t.types) p[`${t.name}_types`] = t.types;
      if (t.format) p[`${t.name}_format`] = t.format;
      form.append(t.name, new Blob([t.data]), t.name);
    }
    return raw(p, { method: 'POST', body: form });
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'chdb-server-test-'));
    server = await startChdbServer({ dir: join(dir, 'data') });
    client = createClient({ url: server.url });
  });

  afterAll(async () => {
    await client?.close();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers /ping and / and reports ClickHouse 26', async () => {
    for (const path of ['/ping', '/']) {
      const res = await fetch(new URL(path, server.url));
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('Ok.\n');
    }
    expect(await client.ping()).toEqual({ success: true });
    expect(server.version).toMatch(/^26\.\d+\.\d+/);
    expect(await rows('SELECT version() AS v')).toEqual([{ v: server.version }]);
    const res = await raw({ query: 'SELECT version()' });
    expect(res.text).toBe(`${server.version}\n`);
    expect(res.headers.get('x-clickhouse-timezone')).toBe('UTC');
    expect(res.headers.get('x-clickhouse-format')).toBe('TabSeparated');
    expect(res.headers.get('x-clickhouse-server-display-name')).toBeTruthy();
    expect(res.headers.get('x-clickhouse-query-id')).toMatch(/^[0-9a-f-]{36}$/);
    const summary = JSON.parse(res.headers.get('x-clickhouse-summary'));
    for (const k of ['read_rows', 'read_bytes', 'written_rows', 'written_bytes', 'total_rows_to_read', 'result_rows', 'result_bytes', 'elapsed_ns']) {
      expect(typeof summary[k], k).toBe('string');
    }
    expect(summary).toMatchObject({ read_rows: '1', result_rows: '1', result_bytes: String(server.version.length + 1) });
  });

  it('creates databases and tables, and round-trips JSONEachRow rows byte for byte', async () => {
    await client.command({ query: 'CREATE DATABASE IF NOT EXISTS rt' });
    await client.command({ query: 'CREATE TABLE rt.t (n UInt64, s String, tags Array(String)) ENGINE = MergeTree ORDER BY n' });
    const values = TRICKY.map((s, n) => ({ n, s, tags: [s, `${s}${s}`] }));
    const res = await client.insert({ table: 'rt.t', values, format: 'JSONEachRow' });
    expect(JSON.parse(res.response_headers['x-clickhouse-summary'])).toMatchObject({ written_rows: String(values.length) });
    expect(await rows('SELECT n, s, tags FROM rt.t ORDER BY n')).toEqual(values.map((v) => ({ ...v, n: Number(v.n) })));

    // A body-only INSERT with inline data, and VALUES, as the migration runner sends them.
    const inline = await raw({}, { method: 'POST', body: `INSERT INTO rt.t FORMAT JSONEachRow\n${JSON.stringify({ n: 100, s: 'inline "x"\n', tags: [] })}\n` });
    expect(inline.status).toBe(200);
    expect(inline.text).toBe('');
    expect((await raw({}, { method: 'POST', body: "INSERT INTO rt.t (n, s) VALUES (101, 'it\\'s')" })).status).toBe(200);
    expect(await rows('SELECT n, s FROM rt.t WHERE n >= 100 ORDER BY n')).toEqual([
      { n: 100, s: 'inline "x"\n' },
      { n: 101, s: "it's" },
    ]);
  });

  it('inserts 20 000 rows of several MB through the client', async () => {
    await client.command({ query: 'CREATE TABLE rt.bulk (id String, n UInt64, payload String) ENGINE = MergeTree ORDER BY id' });
    const values = Array.from({ length: 20_000 }, (_, n) => ({
      id: `id-${String(n).padStart(6, '0')}`,
      n,
      payload: `${TRICKY[n % TRICKY.length]} `.repeat(20).slice(0, 300),
    }));
    await client.insert({ table: 'rt.bulk', values, format: 'JSONEachRow' });
    expect(await rows('SELECT count() AS c, sum(n) AS s, max(id) AS m FROM rt.bulk', { clickhouse_settings: { output_format_json_quote_64bit_integers: 0 } })).toEqual([
      { c: 20_000, s: (19_999 * 20_000) / 2, m: 'id-019999' },
    ]);
    const back = await rows('SELECT id, n, payload FROM rt.bulk WHERE n IN (0, 7, 12, 19999) ORDER BY n');
    expect(back).toEqual([0, 7, 12, 19_999].map((n) => values[n]));
  });

  it('accepts a 64 MB body', async () => {
    await client.command({ query: 'CREATE TABLE rt.big (n UInt32, payload String) ENGINE = MergeTree ORDER BY n' });
    const line = (n) => `{"n":${n},"payload":"${'x'.repeat(480)}"}\n`;
    const count = Math.ceil((64 * 1024 * 1024) / line(0).length) + 10;
    const body = Buffer.from(Array.from({ length: count }, (_, n) => line(n)).join(''));
    expect(body.length).toBeGreaterThan(64 * 1024 * 1024);
    const res = await raw({ query: 'INSERT INTO rt.big FORMAT JSONEachRow' }, { method: 'POST', body });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.headers.get('x-clickhouse-summary')).written_rows).toBe(String(count));
    expect(await rows('SELECT count() AS c FROM rt.big')).toEqual([{ c: count }]);
  });

  it('binds {name:Type} parameters from param_* in the URL and in a multipart body', async () => {
    for (const use_multipart_params of [false, true]) {
      for (const s of TRICKY) {
        expect(await rows('SELECT {s:String} AS s, length({s:String}) AS l', { query_params: { s }, use_multipart_params })).toEqual([
          { s, l: Buffer.byteLength(s) },
        ]);
      }
      expect(await rows('SELECT {a:Array(String)} AS a', { query_params: { a: TRICKY }, use_multipart_params })).toEqual([{ a: TRICKY }]);
      const typed = await rows(
        'SELECT {u:UInt64} AS u, {i:Int32} AS i, {f:Float64} AS f, {id:UUID} AS id, {ns:Nullable(String)} AS ns, {nn:Nullable(String)} AS nn, {n:Array(UInt64)} AS n',
        {
          query_params: { u: '18446744073709551615', i: -42, f: 1.5, id: '01890a5d-ac96-774b-bcce-b302099a8057', ns: null, nn: 'x', n: [1, 2n ** 63n] },
          use_multipart_params,
          clickhouse_settings: { output_format_json_quote_64bit_integers: 1 },
        },
      );
      expect(typed).toEqual([
        { u: '18446744073709551615', i: -42, f: 1.5, id: '01890a5d-ac96-774b-bcce-b302099a8057', ns: null, nn: 'x', n: ['1', '9223372036854775808'] },
      ]);
    }
    // Stored rows match a parameter exactly, quotes, backslashes and all.
    for (const s of TRICKY) expect(await rows('SELECT n FROM rt.t WHERE s = {s:String}', { query_params: { s } })).toHaveLength(1);
    // A list too long for any URL travels in the body through the client's own multipart switch.
    const ids = Array.from({ length: 20_000 }, (_, n) => `id-${String(n * 2).padStart(6, '0')}`);
    expect(await rows('SELECT count() AS c FROM rt.bulk WHERE id IN {ids:Array(String)}', { query_params: { ids }, use_multipart_params: true })).toEqual([
      { c: 10_000 },
    ]);
  });

  it('selects the current database per request', async () => {
    await client.command({ query: 'CREATE DATABASE IF NOT EXISTS db_a' });
    await client.command({ query: 'CREATE DATABASE IF NOT EXISTS db_b' });
    for (const db of ['db_a', 'db_b']) {
      await client.command({ query: `CREATE TABLE ${db}.same (v String) ENGINE = Memory` });
      await client.command({ query: `INSERT INTO ${db}.same VALUES ('${db}')` });
    }
    const a = createClient({ url: server.url, database: 'db_a' });
    const b = createClient({ url: server.url, database: 'db_b' });
    try {
      // Interleaved, so a database left over from the previous request would show.
      for (let i = 0; i < 3; i++) {
        expect(await (await a.query({ query: 'SELECT currentDatabase() AS d, v FROM same', format: 'JSONEachRow' })).json()).toEqual([{ d: 'db_a', v: 'db_a' }]);
        expect(await rows('SELECT currentDatabase() AS d')).toEqual([{ d: 'default' }]);
        expect(await (await b.query({ query: 'SELECT currentDatabase() AS d, v FROM same', format: 'JSONEachRow' })).json()).toEqual([{ d: 'db_b', v: 'db_b' }]);
      }
      await a.insert({ table: 'same', values: [{ v: 'via client' }], format: 'JSONEachRow' });
      expect(await rows('SELECT v FROM db_a.same ORDER BY v')).toEqual([{ v: 'db_a' }, { v: 'via client' }]);
      // `USE` inside a request does not carry over to the next one.
      await client.command({ query: 'USE db_b' });
      expect(await rows('SELECT currentDatabase() AS d')).toEqual([{ d: 'default' }]);
    } finally {
      await a.close();
      await b.close();
    }
    const missing = createClient({ url: server.url, database: 'no_such_db' });
    await expect(missing.query({ query: 'SELECT 1' })).rejects.toMatchObject({ code: '81', type: 'UNKNOWN_DATABASE' });
    await missing.close();
  });

  it('answers errors as ClickHouse does and keeps serving', async () => {
    const syntax = await client.query({ query: 'SELEC 1' }).catch((e) => e);
    expect(syntax).toMatchObject({ code: '62', type: 'SYNTAX_ERROR' });
    expect(syntax.message).toContain('Syntax error');
    const unknown = await client.query({ query: 'SELECT * FROM no_such_table' }).catch((e) => e);
    expect(unknown).toMatchObject({ code: '60', type: 'UNKNOWN_TABLE' });
    await expect(client.command({ query: 'DROP TABLE no_such_table' })).rejects.toMatchObject({ code: '60' });
    await expect(client.insert({ table: 'no_such_table', values: [{ a: 1 }], format: 'JSONEachRow' })).rejects.toMatchObject({ code: '60' });
    await expect(client.insert({ table: 'rt.t', values: [{ n: 'not a number' }], format: 'JSONEachRow' })).rejects.toMatchObject({ type: expect.stringMatching(/^CANNOT_PARSE/) });

    const res = await raw({ query: 'SELEC 1' });
    expect(res.status).toBe(400);
    expect(res.headers.get('x-clickhouse-exception-code')).toBe('62');
    expect(res.text).toMatch(/^Code: 62\. DB::Exception: .*\(SYNTAX_ERROR\) \(version 26\.[\d.]+\)\n$/s);
    const notFound = await raw({ query: 'SELECT * FROM no_such_table' });
    expect(notFound.status).toBe(404);
    expect(notFound.headers.get('x-clickhouse-exception-code')).toBe('60');
    expect((await raw({ query: 'SELECT throwIf(1)' })).status).toBe(500);
    expect((await raw({}, { method: 'POST', body: '' })).text).toMatch(/^Code: 62\..*Empty query/);
    // GET is read-only, as on a real server.
    const get = await raw({ query: 'CREATE TABLE rt.nope (a String) ENGINE = Memory' });
    expect(get.headers.get('x-clickhouse-exception-code')).toBe('164');
    expect(await rows('SELECT 1 AS ok')).toEqual([{ ok: 1 }]);
  });

  it('applies settings to one request only', async () => {
    const q = 'SELECT toUInt64(5) AS n';
    expect(await rows(q)).toEqual([{ n: 5 }]);
    expect(await rows(q, { clickhouse_settings: { output_format_json_quote_64bit_integers: 1 } })).toEqual([{ n: '5' }]);
    expect(await rows(q)).toEqual([{ n: 5 }]);
    // Whatever the client may add: HTTP-only parameters are not an error.
    expect(
      await rows(q, {
        clickhouse_settings: { wait_end_of_query: 1, send_progress_in_http_headers: 1, enable_http_compression: 1, http_headers_progress_interval_ms: '110000', max_threads: 1 },
        query_id: 'my-query-id',
        session_id: 'some-session',
      }),
    ).toEqual([{ n: 5 }]);
    const res = await raw({ query: 'SELECT 1', query_id: 'given-id', enable_http_compression: '1' }, { headers: { 'accept-encoding': 'gzip' } });
    expect(res.headers.get('x-clickhouse-query-id')).toBe('given-id');
    // Compressed as asked (fetch inflates it again).
    expect(res.headers.get('content-encoding')).toBe('gzip');
    expect(res.text).toBe('1\n');
    // A SET statement is as short-lived as a URL setting.
    await client.command({ query: 'SET max_threads = 1' });
    expect(await rows("SELECT getSetting('max_threads') != 1 AS reset")).toEqual([{ reset: 1 }]);
    await expect(rows(q, { clickhouse_settings: { no_such_setting: 1 } })).rejects.toMatchObject({ code: '115' });
  });

  it('answers in the requested output formats', async () => {
    const json = await (await client.query({ query: 'SELECT 1 AS a, [\'x\'] AS b' })).json();
    expect(json).toMatchObject({ meta: [{ name: 'a', type: 'UInt8' }, { name: 'b', type: 'Array(String)' }], data: [{ a: 1, b: ['x'] }], rows: 1 });
    const tsv = await client.query({ query: "SELECT 'a\tb' AS s, 2 AS n", format: 'TabSeparatedWithNames' });
    expect(await tsv.text()).toBe('s\tn\na\\tb\t2\n');
    expect(tsv.response_headers['x-clickhouse-format']).toBe('TabSeparatedWithNames');
    const csv = await client.exec({ query: 'SELECT 1 AS a, \'x,y\' AS b FORMAT CSV' });
    expect(await new Response(csv.stream).text()).toBe('1,"x,y"\n');
    expect(csv.response_headers['x-clickhouse-format']).toBe('CSV');
    expect((await raw({ query: 'SELECT 7', default_format: 'JSONCompactEachRow' })).text).toBe('[7]\n');
    expect((await client.command({ query: 'CREATE TABLE IF NOT EXISTS rt.fmt (a String) ENGINE = Memory' })).http_status_code).toBe(200);
  });

  it('compresses an answer when the setting and Accept-Encoding ask for it, as ClickHouse does', async () => {
    // node:http hands the body over as sent (fetch would inflate it).
    const get = (params, headers) =>
      new Promise((resolve, reject) => {
        const url = new URL(server.url);
        for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
        request(url, { headers }, (res) => {
          const parts = [];
          res.on('data', (d) => parts.push(d));
          res.on('end', () => resolve({ encoding: res.headers['content-encoding'], body: Buffer.concat(parts) }));
        }).on('error', reject).end();
      });
    const query = "SELECT concat('line ', toString(number)) FROM numbers(2000) FORMAT TabSeparatedRaw";
    const text = Array.from({ length: 2000 }, (_, i) => `line ${i}\n`).join('');
    const zipped = await get({ query, enable_http_compression: '1', http_zlib_compression_level: '7' }, { 'accept-encoding': 'gzip' });
    expect(zipped.encoding).toBe('gzip');
    expect(zipped.body.length).toBeLessThan(text.length / 3);
    expect(gunzipSync(zipped.body).toString()).toBe(text);
    // Either half alone is not enough.
    for (const [params, headers] of [[{ query, enable_http_compression: '1' }, {}], [{ query }, { 'accept-encoding': 'gzip' }]]) {
      const plain = await get(params, headers);
      expect(plain.encoding).toBeUndefined();
      expect(plain.body.toString()).toBe(text);
    }
  });

  it('takes external data: 20 000 ids in a multipart body, dropped after the request', async () => {
    const ids = Array.from({ length: 20_000 }, (_, n) => `id-${String(n).padStart(6, '0')}`);
    ids[5] = 'with\ttab and\nnewline \\ and 中文';
    ids[6] = ''; // a blank line in TabSeparated: a row, not the end of the data
    const res = await external(
      'SELECT count() AS c, countIf(id IN (SELECT id FROM ids)) AS matched, (SELECT count() FROM ids) AS listed FROM rt.bulk FORMAT JSONEachRow',
      [{ name: 'ids', structure: 'id String', data: ids.map(tsvEscape).join('\n') + '\n' }],
      { database: 'default', output_format_json_quote_64bit_integers: '0' },
    );
    expect(res.status, res.text).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ c: 20_000, matched: 19_998, listed: 20_000 });
    const tricky = await external('SELECT id FROM ids WHERE id LIKE \'%中文\' FORMAT JSONEachRow', [{ name: 'ids', structure: 'id String', data: ids.map(tsvEscape).join('\n') }]);
    expect(JSON.parse(tricky.text)).toEqual({ id: ids[5] });

    // Two tables, JSONEachRow and `_types`, plus query parameters.
    const pairs = [
      { id: 'a', project_id: 'p1' },
      { id: 'b"\n', project_id: 'p2' },
    ];
    const two = await external(
      'SELECT p.id AS id, p.project_id AS project_id, n._1 AS n FROM pairs AS p CROSS JOIN nums AS n WHERE n._1 > {min:UInt32} ORDER BY id, n FORMAT JSONEachRow',
      [
        { name: 'pairs', structure: 'id String, project_id String', format: 'JSONEachRow', data: pairs.map((p) => JSON.stringify(p)).join('\n') },
        { name: 'nums', types: 'UInt32, Array(Tuple(String, UInt8))', data: "1\t[]\n2\t[('x',1)]\n3\t[]\n" },
      ],
      { param_min: '1' },
    );
    expect(two.status, two.text).toBe(200);
    expect(two.text.trim().split('\n').map((l) => JSON.parse(l))).toEqual([
      { id: 'a', project_id: 'p1', n: 2 },
      { id: 'a', project_id: 'p1', n: 3 },
      { id: 'b"\n', project_id: 'p2', n: 2 },
      { id: 'b"\n', project_id: 'p2', n: 3 },
    ]);

    // The tables are gone afterwards, also when the query failed.
    const failed = await external('SELECT * FROM ids WHERE nope = 1', [{ name: 'ids', structure: 'id String', data: 'x\n' }]);
    expect(failed.status).toBe(404);
    const left = await raw({ query: 'SELECT * FROM ids' });
    expect(left.headers.get('x-clickhouse-exception-code')).toBe('60');
    expect(await rows('SELECT count() AS c FROM system.tables WHERE is_temporary')).toEqual([{ c: 0 }]);
    const noStructure = await external('SELECT * FROM ids', [{ name: 'ids', data: 'x\n' }]);
    expect(noStructure.headers.get('x-clickhouse-exception-code')).toBe('36');
  });

  it('serves 20 parallel clients correctly', async () => {
    const clients = [client, createClient({ url: server.url, database: 'db_a' })];
    const jobs = Array.from({ length: 20 }, async (_, i) => {
      const c = clients[i % 2];
      const quote = i % 3 === 0;
      const [row] = await (
        await c.query({
          query: 'SELECT {i:UInt32} * 2 AS twice, toUInt64({i:UInt32}) AS big, {s:String} AS s, currentDatabase() AS d',
          query_params: { i, s: `${TRICKY[i % TRICKY.length]}#${i}` },
          clickhouse_settings: quote ? { output_format_json_quote_64bit_integers: 1 } : {},
          format: 'JSONEachRow',
        })
      ).json();
      expect(row).toEqual({ twice: quote ? String(i * 2) : i * 2, big: quote ? String(i) : i, s: `${TRICKY[i % TRICKY.length]}#${i}`, d: i % 2 ? 'db_a' : 'default' });
    });
    // A failing query in the middle does not disturb the others.
    const failing = client.query({ query: 'SELECT * FROM no_such_table' }).then(
      () => 'resolved',
      (e) => e.code,
    );
    await Promise.all(jobs);
    expect(await failing).toBe('60');
    await clients[1].close();
  });

  it('survives clients that go away mid-request', async () => {
    const { port } = server;
    // A body that never arrives in full.
    await new Promise((resolve) => {
      const req = request({ port, method: 'POST', path: '/?query=' + encodeURIComponent('INSERT INTO rt.t FORMAT JSONEachRow'), headers: { 'content-length': 100_000 } });
      req.on('error', resolve);
      req.write('{"n": 1, "s": "par');
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 50);
    });
    // A query whose client gives up while it runs.
    const ac = new AbortController();
    const slow = fetch(new URL('/?query=' + encodeURIComponent('SELECT sum(number) FROM numbers(300000000)'), server.url), { signal: ac.signal }).catch((e) => e.name);
    setTimeout(() => ac.abort(), 30);
    expect(await slow).toBe('AbortError');
    // Too long a URL is refused by Node's 16 KB header limit; the server carries on.
    const long = await fetch(new URL('/?query=' + encodeURIComponent(`SELECT '${'x'.repeat(20_000)}'`), server.url)).then((r) => r.status);
    expect(long).toBe(431);
    expect(await rows('SELECT count() AS c FROM rt.t WHERE n = 1')).toEqual([{ c: 1 }]);
  });

  it('applies the migrations, and re-runs an ADD COLUMN whose record was lost without failing', async () => {
    const database = 'migrate_test';
    const names = readClickHouseMigrations().map((m) => m.name);
    expect(await migrateClickHouse({ url: server.url, database })).toEqual(names);
    expect(await migrateClickHouse({ url: server.url, database })).toEqual([]);
    const alter = names.find((n) => /ADD COLUMN/i.test(readClickHouseMigrations().find((m) => m.name === n).sql));
    expect(alter).toBeDefined();
    // a run that stopped after the ALTER and before its schema_migrations row
    await raw({ query: `ALTER TABLE ${database}.schema_migrations DELETE WHERE name = '${alter}'`, mutations_sync: '1' }, { method: 'POST' });
    expect(await migrateClickHouse({ url: server.url, database })).toEqual([alter]);
    // any other failure still stops the run
    await expect(
      migrateClickHouse({ url: 'http://127.0.0.1:1', database }),
    ).rejects.toThrow();
  });

  it('keeps data across stop and start, finishing queued requests first', async () => {
    await client.command({ query: 'CREATE TABLE rt.kept (n UInt32, s String) ENGINE = MergeTree ORDER BY n' });
    await client.insert({ table: 'rt.kept', values: TRICKY.map((s, n) => ({ n, s })), format: 'JSONEachRow' });
    // A slow query holds the queue while five more wait behind it.
    const slow = rows('SELECT sleep(0.3) AS s');
    const queued = Array.from({ length: 5 }, (_, i) => rows('SELECT {i:UInt8} AS i', { query_params: { i } }));
    while (server.pending() < 6) await new Promise((r) => setTimeout(r, 10)); // all six reached the server
    await server.stop();
    expect(await slow).toEqual([{ s: 0 }]);
    expect(await Promise.all(queued)).toEqual([0, 1, 2, 3, 4].map((i) => [{ i }]));
    await server.stop(); // idempotent
    await expect(fetch(new URL('/ping', server.url))).rejects.toThrow();

    server = await startChdbServer({ dir: join(dir, 'data') });
    client = createClient({ url: server.url });
    expect(await rows('SELECT n, s FROM rt.kept ORDER BY n')).toEqual(TRICKY.map((s, n) => ({ n, s })));
    expect(await rows('SELECT count() AS c FROM rt.bulk')).toEqual([{ c: 20_000 }]);
  });

  it('runs as a CLI and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [SERVER_SCRIPT, '--dir', join(dir, 'cli'), '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const listening = new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        const m = /^(http:\/\/\S+)$/m.exec(out);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    try {
      const url = await listening;
      const cli = createClient({ url });
      expect(await (await cli.query({ query: 'SELECT 40 + 2 AS x', format: 'JSONEachRow' })).json()).toEqual([{ x: 42 }]);
      await cli.close();
      const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
      child.kill('SIGTERM');
      expect(await exited).toEqual({ code: 0, signal: null });
      expect(stderr).toContain('stopped');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
