// Legacy rows as they really are: some without a device, a time or a key (skipped and counted, the
// import goes on), and timestamps a microsecond apart (two rows, two ids, never one).
import { describe, expect, it } from 'vitest';
import { parseTabSeparated } from '../src/clickhouse/client';
import { IMPORT_EVENT_COLUMNS, IMPORT_MAP_COLUMNS, IMPORT_PAYLOAD_COLUMNS, ImportEncoder } from '../src/legacy/encode';
import { writeImportedChunk } from '../src/legacy/store';
import { commonPgTimestamp, LegacyTimestamp, legacyPayloadJson, parsePgTimestamp, patternPgTimestamp, translateRow, UnusableLegacyRow } from '../src/legacy/translate';
import { admin, importBody, startImport, suffix, waitJob, withPg } from './backfill-helpers';
import { ch, countEvents, createProject } from './helpers';

/** Legacy rows as the driver may hand them over, with every kind of value and text TabSeparated must escape. */
function awkwardRows(count: number): Array<Record<string, unknown>> {
  const base = Date.UTC(2024, 4, 1);
  const texts = ['plain', 'tab\there', 'line\nfeed\r\nand cr', 'back\\slash \\t not a tab', 'quote " and \' apostrophe', 'nul \u0000 byte', 'ünïcödé ✓ 𝄞', '\\N', '', '{"json":"in text"}'];
  return Array.from({ length: count }, (_, i) => {
    const text = texts[i % texts.length]!;
    const row: Record<string, unknown> = { id: i, device_id: `veh\t${i}\n${text}`, created_at: null, 2: 'integer-like name', note: text, speed: i / 3, empty: null, tags: { a: [1, text], b: null } };
    // An own column named `__proto__`, as a driver's row may have it.
    Object.defineProperty(row, '__proto__', { value: text, enumerable: true, writable: true, configurable: true });
    row.created_at = i % 2 ? new LegacyTimestamp(base + i, new Date(base + i).toISOString().replace('Z', '123Z')) : new Date(base + i);
    row.big = BigInt(2) ** BigInt(60) + BigInt(i);
    row.bytes = new Uint8Array([0, 15, 255, i]);
    row.when = new LegacyTimestamp(base, '2024-05-01T00:00:00.000001Z');
    row.gone = undefined;
    return row;
  });
}

const finished = (j: { state: string }) => ['succeeded', 'failed', 'cancelled'].includes(j.state);

describe('legacy rows', () => {
  it('reads Postgres timestamps with their microseconds and zones', () => {
    expect(parsePgTimestamp('2024-01-01 12:00:00')).toEqual({ ms: Date.UTC(2024, 0, 1, 12), iso: '2024-01-01T12:00:00.000Z' });
    expect(parsePgTimestamp('2024-01-01 12:00:00.1+00')).toMatchObject({ iso: '2024-01-01T12:00:00.100Z' });
    expect(parsePgTimestamp('2024-01-01 12:00:00.123456+05:30')).toMatchObject({ ms: Date.UTC(2024, 0, 1, 6, 30, 0, 123), iso: '2024-01-01T06:30:00.123456Z' });
    expect(parsePgTimestamp('2024-01-01 12:00:00.000001-03')).toMatchObject({ iso: '2024-01-01T15:00:00.000001Z' });
    expect(parsePgTimestamp('infinity')).toBeNull();
    expect(parsePgTimestamp('2024-01-01 12:00:00 BC')).toBeNull();
  });

  it('reads the common UTC form by hand to the same time and text as the pattern, and leaves every other form to it', () => {
    const pad = (n: number, w: number) => String(n).padStart(w, '0');
    let seed = 7;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    for (let i = 0; i < 2000; i++) {
      const y = 1000 + rnd(9000);
      const mo = 1 + rnd(12);
      const d = 1 + rnd(mo === 2 ? (y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0) ? 29 : 28) : [4, 6, 9, 11].includes(mo) ? 30 : 31);
      const frac = rnd(3) === 0 ? '' : `.${pad(rnd(10 ** 6), 6).slice(0, 1 + rnd(6))}`;
      const text = `${pad(y, 4)}-${pad(mo, 2)}-${pad(d, 2)} ${pad(rnd(24), 2)}:${pad(rnd(60), 2)}:${pad(rnd(60), 2)}${frac}${rnd(2) ? '+00' : ''}`;
      const byHand = commonPgTimestamp(text);
      expect(byHand, text).not.toBeNull();
      expect(byHand, text).toEqual(patternPgTimestamp(text));
    }
    // Leap days and month ends, by hand
    for (const text of ['2024-02-29 23:59:59.999999+00', '2000-02-29 00:00:00', '2023-12-31 23:59:59.5', '2023-04-30 12:00:00.05+00']) {
      expect(commonPgTimestamp(text), text).toEqual(patternPgTimestamp(text));
    }
    // Every other form is the pattern's: a day the month lacks, another zone, a 5-digit or 3-digit
    // year, a bare or 7-digit fraction, spaces, a fraction without digits.
    for (const text of [
      '2023-02-29 12:00:00',
      '1900-02-29 12:00:00',
      '2023-04-31 12:00:00',
      '2024-01-01 12:00:00+01',
      '2024-01-01 12:00:00.5-00',
      '2024-01-01 12:00:00+00:00',
      '12024-01-01 12:00:00+00',
      '0999-01-01 12:00:00+00',
      '2024-01-01 12:00:00.+00',
      '2024-01-01 12:00:00.1234567',
      ' 2024-01-01 12:00:00',
      '2024-01-01 12:00:00 ',
      '2024-01-01 24:00:00',
      '2024-13-01 12:00:00',
      '2024-01-01T12:00:00',
    ]) {
      expect(commonPgTimestamp(text), text).toBeNull();
      expect(parsePgTimestamp(text), text).toEqual(patternPgTimestamp(text));
    }
    expect(parsePgTimestamp('2023-02-29 12:00:00')).toEqual({ ms: Date.UTC(2023, 2, 1, 12), iso: '2023-03-01T12:00:00.000Z' });
    expect(parsePgTimestamp(' 2024-01-01 12:00:00 ')).toEqual({ ms: Date.UTC(2024, 0, 1, 12), iso: '2024-01-01T12:00:00.000Z' });
    // Years below 100 are those years (Date.UTC alone would read 0050 as 1950).
    expect(parsePgTimestamp('0050-03-01 10:00:00.25+00')).toEqual({ ms: Date.parse('0050-03-01T10:00:00.250Z'), iso: '0050-03-01T10:00:00.250Z' });
    expect(parsePgTimestamp('0001-01-01 00:00:00')).toEqual({ ms: Date.parse('0001-01-01T00:00:00.000Z'), iso: '0001-01-01T00:00:00.000Z' });
  });

  it('stores every column as the raw payload and all but the time and device as properties, a `__proto__` column included in the payload', () => {
    const row = JSON.parse('{"id":7,"device_id":"veh-1","created_at":"2024-05-01T00:00:00.000Z","__proto__":"p","speed":3.5,"tags":{"a":[1,2]}}') as Record<string, unknown>;
    const source = { table: 't', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_track' };
    const t = translateRow({ projectId: 'p1', dataset: 'ds', source }, row, 5);
    expect(t.payload.payload).toBe('{"id":7,"device_id":"veh-1","created_at":"2024-05-01T00:00:00.000Z","__proto__":"p","speed":3.5,"tags":{"a":[1,2]}}');
    expect(t.payload.payload).toBe(legacyPayloadJson(row));
    expect(JSON.parse(t.event.properties)).toEqual({ id: 7, speed: 3.5, tags: { a: [1, 2] } });
    expect(t.event).toMatchObject({ device_id: 'veh-1', created_at_ms: Date.UTC(2024, 4, 1), name: 'legacy_track' });
  });

  it("encodes each row straight to TabSeparated lines holding exactly translateRow's row, and ClickHouse stores them once", async () => {
    const source = { table: 't', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy\ttrack \\ name' };
    const p = await createProject('encoder');
    const dataset = `enc_${suffix()}`;
    const params = { projectId: p.id, dataset, source };
    const now = Date.now();
    const rows = awkwardRows(250);
    const encoder = new ImportEncoder(params, now);
    for (const [i, row] of rows.entries()) {
      encoder.add(row);
      // A row without a device or time is refused as translateRow refuses it, and adds no line.
      if (i === 99) expect(() => encoder.add({ id: 1, device_id: '', created_at: new Date() })).toThrow(UnusableLegacyRow);
      if (i === 100) expect(() => encoder.add({ id: 1, device_id: 'd', created_at: null })).toThrow(UnusableLegacyRow);
    }
    expect(encoder.length).toBe(rows.length);
    const encoded = encoder.finish();
    expect(encoder.finish()).toEqual({ ids: [], createdAtMs: [], events: '', maps: '', payloads: '' });
    const translated = rows.map((r) => translateRow(params, r, now));
    expect(encoded.ids).toEqual(translated.map((t) => t.event.id));
    expect(encoded.createdAtMs).toEqual(translated.map((t) => t.event.created_at_ms));
    const linesOf = (text: string) => {
      expect(text.endsWith('\n')).toBe(true);
      return text.slice(0, -1).split('\n');
    };
    // Each field unescaped, NULL as TabSeparated writes it (`\N`, which the unescaping alone would read as `N`).
    const fieldsOf = (line: string, columns: readonly string[]) => {
      const [fields] = parseTabSeparated(`${line}\n`, columns.length);
      const raw = line.split('\t');
      return Object.fromEntries(columns.map((c, i) => [c, raw[i] === '\\N' ? null : fields![i]]));
    };
    const text = (v: unknown) => (v === null ? null : String(v));
    for (const [lines, columns, rowOf] of [
      [linesOf(encoded.events), IMPORT_EVENT_COLUMNS, (i: number) => translated[i]!.event],
      [linesOf(encoded.maps), IMPORT_MAP_COLUMNS, (i: number) => translated[i]!.map],
      [linesOf(encoded.payloads), IMPORT_PAYLOAD_COLUMNS, (i: number) => translated[i]!.payload],
    ] as const) {
      expect(lines).toHaveLength(rows.length);
      for (const [i, line] of lines.entries()) {
        const row = rowOf(i) as unknown as Record<string, unknown>;
        // Every column of the table's row, in the encoder's order, and nothing else.
        expect(Object.keys(row).sort()).toEqual([...columns].sort());
        expect(fieldsOf(line, columns)).toEqual(Object.fromEntries(columns.map((c) => [c, text(row[c])])));
      }
    }
    // The payload keeps the `__proto__` column and the properties leave it out, as translateRow does.
    expect(JSON.parse(translated[0]!.payload.payload)).toHaveProperty(['__proto__'], 'plain');
    expect(Object.keys(JSON.parse(translated[0]!.event.properties) as object)).not.toContain('__proto__');

    // A step written before (every third row), and payloads a failed attempt left without their
    // event (every fifth of the rest): the step written again with `verify` adds each row once.
    const written = new ImportEncoder(params, now);
    rows.forEach((r, i) => i % 3 === 0 && written.add(r));
    const before = written.finish();
    expect(await writeImportedChunk(ch(), p.id, before, false)).toBe(before.ids.length);
    const orphans = linesOf(encoded.payloads).filter((_, i) => i % 3 !== 0 && i % 5 === 0);
    await ch().insertTabSeparated('event_payloads', IMPORT_PAYLOAD_COLUMNS, `${orphans.join('\n')}\n`);
    expect(await writeImportedChunk(ch(), p.id, encoded, true)).toBe(rows.length - before.ids.length);
    expect(await writeImportedChunk(ch(), p.id, encoded, true)).toBe(0);
    for (const table of ['events', 'event_payloads']) {
      const [n] = await ch().query<{ rows: string; ids: string }>(`SELECT toString(count()) AS rows, toString(uniqExact(id)) AS ids FROM ${table} WHERE project_id = {p:String}`, { p: p.id });
      expect(n, table).toEqual({ rows: String(rows.length), ids: String(rows.length) });
    }

    const byId = <T extends { id: string }>(xs: T[]) => [...xs].sort((a, b) => (a.id < b.id ? -1 : 1));
    const events = await ch().query<{ id: string } & Record<string, unknown>>(
      `SELECT toString(id) AS id, project_id, device_id, session_id, profile_id, type, name, created_at_ms, received_at_ms, synced_at_ms, properties,
              ref_id, ip, country, region, city, timezone, latitude, longitude
         FROM events WHERE project_id = {p:String}`,
      { p: p.id },
    );
    expect(byId(events.map((r) => ({ ...r, created_at_ms: Number(r.created_at_ms), received_at_ms: Number(r.received_at_ms), synced_at_ms: Number(r.synced_at_ms) })))).toEqual(
      byId(translated.map((t) => ({ ...t.event }))),
    );
    const payloads = await ch().query<{ id: string; payload: string; created_at_ms: string | number; received_at_ms: string | number; project_id: string }>(
      'SELECT toString(id) AS id, project_id, created_at_ms, received_at_ms, payload FROM event_payloads WHERE project_id = {p:String}',
      { p: p.id },
    );
    expect(byId(payloads.map((r) => ({ ...r, created_at_ms: Number(r.created_at_ms), received_at_ms: Number(r.received_at_ms) })))).toEqual(byId(translated.map((t) => ({ ...t.payload }))));
    const maps = await ch().query<{ dataset: string; legacy_id: string; new_id: string; project_id: string; created_at_ms: string | number }>(
      'SELECT dataset, legacy_id, toString(new_id) AS new_id, project_id, created_at_ms FROM legacy_id_map WHERE project_id = {p:String} LIMIT 1 BY legacy_id',
      { p: p.id },
    );
    const byLegacy = <T extends { legacy_id: string }>(xs: T[]) => [...xs].sort((a, b) => (a.legacy_id < b.legacy_id ? -1 : 1));
    expect(byLegacy(maps.map((r) => ({ ...r, created_at_ms: Number(r.created_at_ms) })))).toEqual(byLegacy(translated.map((t) => ({ ...t.map }))));
  });

  it('skips rows without a device, a time or a key, counts them, and imports the rest', async () => {
    const table = `legacy_holes_${suffix()}`;
    await withPg(async (c) => {
      await c.query(`CREATE TABLE ${table} (id bigint, device_id text, created_at timestamptz, note text)`);
      await c.query(
        `INSERT INTO ${table} SELECT g, 'veh-' || (g % 5), timestamptz '2024-02-01 00:00:00+00' + g * interval '1 minute', 'ok' FROM generate_series(1, 300) g`,
      );
      await c.query(`UPDATE ${table} SET device_id = NULL WHERE id IN (10, 150)`);
      await c.query(`UPDATE ${table} SET device_id = '' WHERE id = 20`);
      await c.query(`UPDATE ${table} SET created_at = NULL WHERE id IN (30, 299)`);
      await c.query(`INSERT INTO ${table} VALUES (NULL, 'veh-x', now(), 'no key'), (NULL, 'veh-y', now(), 'no key')`);
    });
    const p = await createProject('holes');
    const id = await startImport(importBody(p.id, 'citylens', table, { chunkSize: 40 }));
    const job = await waitJob(id, finished, 90_000);
    expect(job).toMatchObject({ state: 'succeeded', rowsTotal: 302, rowsProcessed: 302, rowsSkipped: 7, error: null });
    expect(await countEvents(p.id)).toEqual({ rows: 295, ids: 295 });
    // A retry re-plans over its cursor and counts the same rows skipped.
    const retried = await admin('POST', `/admin/backfills/${id}/retry`);
    expect(retried.status).toBe(409); // succeeded jobs are not retried; re-run as a new import instead
    const again = await waitJob(await startImport(importBody(p.id, 'citylens', table, { chunkSize: 1000 })), finished, 90_000);
    expect(again).toMatchObject({ state: 'succeeded', rowsProcessed: 302, rowsSkipped: 7 });
    expect(await countEvents(p.id)).toEqual({ rows: 295, ids: 295 });
  });

  it('keeps counting rows with an unparseable time as skipped across a cancel and retry', async () => {
    const table = `legacy_badtime_${suffix()}`;
    await withPg(async (c) => {
      await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text, created_at text)`);
      await c.query(`INSERT INTO ${table} SELECT g, 'veh-' || (g % 3), '2024-02-01T00:' || lpad((g % 60)::text, 2, '0') || ':00Z' FROM generate_series(1, 200) g`);
      // Not NULL, so no query can count them: only the rows read know.
      await c.query(`UPDATE ${table} SET created_at = 'not a time' WHERE id IN (5, 15, 25)`);
    });
    const p = await createProject('badtime');
    // Chunks of exactly 40, a second apart (a hand-set pace): the first chunk commits, then the cancel lands.
    const id = await startImport(importBody(p.id, 'citylens', table, { chunkSize: 40, pauseMs: 1500, throttle: false }));
    await waitJob(id, (j) => j.rowsProcessed >= 40, 60_000);
    expect((await admin('POST', `/admin/backfills/${id}/cancel`)).status).toBe(200);
    const cancelled = await waitJob(id, finished, 60_000);
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.rowsSkipped).toBe(3);
    expect((await admin('POST', `/admin/backfills/${id}/retry`)).status).toBe(200);
    const done = await waitJob(id, finished, 90_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 200, rowsTotal: 200, rowsSkipped: 3 });
    expect(await countEvents(p.id)).toEqual({ rows: 197, ids: 197 });
  });

  it('keeps rows a microsecond apart apart, keyed and paged by their timestamp', async () => {
    const table = `legacy_micro_${suffix()}`;
    const ROWS = 500;
    await withPg(async (c) => {
      await c.query(`CREATE TABLE ${table} (recorded_at timestamp PRIMARY KEY, device_id text NOT NULL, reading int)`);
      // 500 rows within half a millisecond: every one shares its millisecond with hundreds of others.
      await c.query(`INSERT INTO ${table} SELECT timestamp '2024-03-01 10:00:00' + g * interval '1 microsecond', 'meter-1', g FROM generate_series(0, $1::int - 1) g`, [ROWS]);
    });
    const p = await createProject('micro');
    const body = importBody(p.id, 'fleetone', table, { chunkSize: 64 });
    body.source = { table, key: 'recorded_at', createdAt: 'recorded_at', deviceId: 'device_id', name: 'reading' };
    const job = await waitJob(await startImport(body), finished, 90_000);
    expect(job).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS, rowsTotal: ROWS, rowsSkipped: 0 });
    expect(await countEvents(p.id)).toEqual({ rows: ROWS, ids: ROWS });
    const [mapped] = await ch().query<{ n: string; zero: string; one: string }>(
      `SELECT toString(uniqExact(legacy_id)) AS n, toString(countIf(legacy_id = '2024-03-01T10:00:00.000Z')) AS zero,
              toString(countIf(legacy_id = '2024-03-01T10:00:00.000001Z')) AS one
         FROM legacy_id_map WHERE dataset = 'fleetone' AND project_id = {p:String}`,
      { p: p.id },
    );
    // The key keeps Postgres' precision: milliseconds when that is all it has, else microseconds.
    expect(mapped).toEqual({ n: String(ROWS), zero: '1', one: '1' });
    const [readings] = await ch().query<{ n: string }>(
      `SELECT toString(uniqExact(visitParamExtractRaw(properties, 'reading'))) AS n FROM events WHERE project_id = {p:String}`,
      { p: p.id },
    );
    expect(readings!.n).toBe(String(ROWS));
  });
});

describe('legacy source columns', () => {
  it('fails an import at once, with the database message, when the device or time column does not exist', async () => {
    const table = `legacy_cols_${suffix()}`;
    await withPg(async (c) => {
      await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text, created_at timestamptz)`);
      await c.query(`INSERT INTO ${table} SELECT g, 'veh', now() - interval '1 day' FROM generate_series(1, 20) g`);
    });
    const p = await createProject('cols');
    for (const source of [
      { table, key: 'id', createdAt: 'created_at', deviceId: 'vehicle', name: 'x' },
      { table, key: 'id', createdAt: 'recorded', deviceId: 'device_id', name: 'x' },
    ]) {
      const body = { ...importBody(p.id, 'citylens', table), source };
      const job = await waitJob(await startImport(body), finished, 60_000);
      expect(job).toMatchObject({ state: 'failed', attempts: 1, rowsSkipped: 0 });
      expect(job.error).toMatch(/column "(vehicle|recorded)" does not exist/);
    }
    expect(await countEvents(p.id)).toEqual({ rows: 0, ids: 0 });
  });
});
