// Pure cores of raw-payload archival: months, chunk planning and encoding, checked decoding, lazy reads.
import { describe, expect, it } from 'vitest';
import {
  adoptEncodedChunk,
  ArchiveChunkError,
  chunkKey,
  chunkKeyPrefix,
  decodeChunk,
  DEFAULT_ARCHIVE_CHUNK_ROWS,
  encodeChunk,
  idsChecksum,
  inflateChunk,
  parseChunkKey,
  parseChunkLine,
  planChunks,
  sha256Hex,
  type ArchiveChunkErrorCode,
  type ArchiveRow,
} from '../src/archive/chunk';
import { windowMismatch, type WindowFacts } from '../src/archive/archive-job';
import { ARCHIVE_CACHE_ORIGIN, chunkCacheUrl, chunksHoldingTime, findEventInChunkText, findEventInRows } from '../src/archive/lazy-read';
import {
  addMonths,
  DEFAULT_ARCHIVE_LAG_MONTHS,
  InvalidMonthError,
  isArchivableByHand,
  isDueForSweep,
  isValidMonth,
  manualArchiveRefusal,
  monthBoundsMs,
  monthOfMs,
  monthOfYyyymm,
  monthsDueForSweep,
  sweepCutoffMonth,
  sweepCutoffMs,
} from '../src/archive/month';

const at = (iso: string) => Date.parse(iso);
/** Lowercase UUIDs whose order is the order of `i`. */
const eventId = (i: number) => `01900000-0000-7000-8000-${i.toString(16).padStart(12, '0')}`;
const row = (i: number, createdAtMs: number, payload = JSON.stringify({ i })): ArchiveRow => ({
  id: eventId(i),
  deviceId: `dev-${i % 7}`,
  createdAtMs,
  receivedAtMs: createdAtMs + 1500,
  payload,
});

async function chunkError(promise: Promise<unknown>, label = ''): Promise<ArchiveChunkErrorCode> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `${label}: expected an ArchiveChunkError, got ${String(err)}`).toBeInstanceOf(ArchiveChunkError);
  return (err as ArchiveChunkError).code;
}

function syncChunkError(fn: () => unknown): ArchiveChunkErrorCode {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ArchiveChunkError);
    return (e as ArchiveChunkError).code;
  }
  throw new Error('expected an ArchiveChunkError');
}

async function gzip(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

describe('archive months', () => {
  it('puts the last millisecond of a month and the first of the next in their own UTC months', () => {
    expect(monthOfMs(at('2026-01-31T23:59:59.999Z'))).toBe('2026-01');
    expect(monthOfMs(at('2026-02-01T00:00:00.000Z'))).toBe('2026-02');
    expect(monthOfMs(at('2025-12-31T23:59:59.999Z'))).toBe('2025-12');
    expect(monthOfMs(at('2026-01-01T00:00:00.000Z'))).toBe('2026-01');
    // An offset in the client's clock string does not move the event out of its UTC month.
    expect(monthOfMs(at('2026-02-01T00:30:00.000+01:00'))).toBe('2026-01');
  });

  it('bounds each month as [start, end) in ms, leap years and December→January included', () => {
    expect(monthBoundsMs('2026-01')).toEqual({ startMs: at('2026-01-01T00:00:00.000Z'), endMs: at('2026-02-01T00:00:00.000Z') });
    expect(monthBoundsMs('2025-12')).toEqual({ startMs: at('2025-12-01T00:00:00.000Z'), endMs: at('2026-01-01T00:00:00.000Z') });
    const days = (m: string) => {
      const { startMs, endMs } = monthBoundsMs(m);
      return (endMs - startMs) / 86_400_000;
    };
    expect([days('2024-02'), days('2025-02'), days('2000-02'), days('2100-02')]).toEqual([29, 28, 29, 28]);
    expect(monthOfMs(at('2024-02-29T23:59:59.999Z'))).toBe('2024-02');
    expect(monthOfMs(at('2024-03-01T00:00:00.000Z'))).toBe('2024-03');
    // Years 0–99 are not taken for 1900–1999.
    expect(new Date(monthBoundsMs('0050-03').startMs).toISOString()).toBe('0050-03-01T00:00:00.000Z');
    for (let m = '2023-11'; m <= '2026-02'; m = addMonths(m, 1)) {
      const { startMs, endMs } = monthBoundsMs(m);
      expect([monthOfMs(startMs), monthOfMs(endMs - 1), monthOfMs(endMs)]).toEqual([m, m, addMonths(m, 1)]);
    }
  });

  it('steps across years both ways and reads ClickHouse YYYYMM values', () => {
    expect(addMonths('2025-12', 1)).toBe('2026-01');
    expect(addMonths('2026-01', -1)).toBe('2025-12');
    expect(addMonths('2026-03', -15)).toBe('2024-12');
    expect(addMonths('2026-03', 0)).toBe('2026-03');
    expect(monthOfYyyymm(202601)).toBe('2026-01');
    expect(monthOfYyyymm(202512)).toBe('2025-12');
    for (const bad of [202600, 202613, 2026, 202601.5, -202601]) expect(() => monthOfYyyymm(bad), String(bad)).toThrow(InvalidMonthError);
  });

  it('accepts only YYYY-MM', () => {
    for (const good of ['2026-01', '2025-12', '0001-01', '9999-12']) expect(isValidMonth(good), good).toBe(true);
    for (const bad of ['2026-1', '2026-13', '2026-00', '26-01', '2026-01 ', ' 2026-01', '2026/01', '2026-01-01', '', 202601, null, undefined]) {
      expect(isValidMonth(bad), String(bad)).toBe(false);
    }
    expect(() => monthBoundsMs('2026-13')).toThrow(InvalidMonthError);
    expect(() => addMonths('2026-1', 1)).toThrow(InvalidMonthError);
  });

  it('lets an operator archive only months before the current UTC month', () => {
    const feb1 = at('2026-02-01T00:00:00.000Z');
    expect(manualArchiveRefusal('2026-01', feb1)).toBeNull();
    expect(manualArchiveRefusal('2026-02', feb1)).toBe('current_month');
    expect(manualArchiveRefusal('2026-03', feb1)).toBe('future_month');
    expect(manualArchiveRefusal('2026-2', feb1)).toBe('invalid_month');
    expect(manualArchiveRefusal(undefined, feb1)).toBe('invalid_month');
    // One millisecond earlier January is still open.
    const jan31 = at('2026-01-31T23:59:59.999Z');
    expect(manualArchiveRefusal('2026-01', jan31)).toBe('current_month');
    expect(isArchivableByHand('2025-12', jan31)).toBe(true);
    const midDecember = at('2025-12-15T12:00:00.000Z');
    expect(['2025-11', '2025-12', '2026-01'].map((m) => isArchivableByHand(m, midDecember))).toEqual([true, false, false]);
  });

  it('sweeps only months at least ARCHIVE_LAG_MONTHS whole months old', () => {
    expect(DEFAULT_ARCHIVE_LAG_MONTHS).toBe(2);
    const midMarch = at('2026-03-15T08:00:00.000Z');
    expect(sweepCutoffMonth(midMarch, 2)).toBe('2026-01');
    expect(sweepCutoffMs(midMarch, 2)).toBe(at('2026-01-01T00:00:00.000Z'));
    expect(isDueForSweep('2025-12', midMarch, 2)).toBe(true);
    expect(isDueForSweep('2026-01', midMarch, 2)).toBe(false);
    expect(monthsDueForSweep(['2026-03', '2025-12', '2025-11', '2025-12', '2026-01', '2026-02'], midMarch, 2)).toEqual(['2025-11', '2025-12']);
    // Across the year: in January with a lag of 2, October is due and November is not.
    const january = at('2026-01-01T00:00:00.000Z');
    expect(sweepCutoffMonth(january, 2)).toBe('2025-11');
    expect(monthsDueForSweep(['2025-10', '2025-11', '2025-12'], january, 2)).toEqual(['2025-10']);
    // A lag of 0 is the rule for archiving by hand.
    expect(monthsDueForSweep(['2026-02', '2026-03'], midMarch, 0)).toEqual(['2026-02']);
    expect(() => sweepCutoffMonth(midMarch, -1)).toThrow(RangeError);
    expect(() => sweepCutoffMonth(midMarch, 1.5)).toThrow(RangeError);
    expect(() => monthsDueForSweep(['2026-1'], midMarch, 2)).toThrow(InvalidMonthError);
  });
});

describe('chunk keys', () => {
  it('formats append-only keys with 6-digit numbers and refuses what cannot be one', () => {
    expect(chunkKey('p1', '2026-01', 1)).toBe('archives/p1/2026-01/000001.jsonl.gz');
    expect(chunkKey('0f6c3b8e-5d7a-4a8e-9a51-2b0d3c4e5f60', '2025-12', 999_999)).toBe('archives/0f6c3b8e-5d7a-4a8e-9a51-2b0d3c4e5f60/2025-12/999999.jsonl.gz');
    expect(syncChunkError(() => chunkKey('p1', '2026-01', 1_000_000))).toBe('invalid_key');
    for (const n of [0, -1, 1.5, Number.NaN]) expect(syncChunkError(() => chunkKey('p1', '2026-01', n)), String(n)).toBe('invalid_key');
    for (const p of ['', 'a/b', '../x', 'p 1', 'p1\n']) expect(syncChunkError(() => chunkKey(p, '2026-01', 1)), JSON.stringify(p)).toBe('invalid_key');
    expect(syncChunkError(() => chunkKey('p1', '2026-13', 1))).toBe('invalid_key');
    expect(chunkKeyPrefix('p1')).toBe('archives/p1/');
    expect(chunkKeyPrefix('p1', '2026-01')).toBe('archives/p1/2026-01/');
  });

  it('reads a key back, and nothing else as one', () => {
    expect(parseChunkKey('archives/p1/2026-01/000042.jsonl.gz')).toEqual({ projectId: 'p1', month: '2026-01', number: 42 });
    for (const k of ['archives/p1/2026-13/000001.jsonl.gz', 'archives/p1/2026-01/000000.jsonl.gz', 'archives/p1/2026-01/1.jsonl.gz', 'archives/p1/2026-01/000001.jsonl', 'x/p1/2026-01/000001.jsonl.gz']) {
      expect(parseChunkKey(k), k).toBeNull();
    }
  });
});

describe('chunk plan', () => {
  it('never lets a chunk span two months and numbers each month upward from its next number', () => {
    const times = [
      '2026-01-31T23:59:59.997Z',
      '2026-01-31T23:59:59.998Z',
      '2026-01-31T23:59:59.999Z',
      '2026-01-31T23:59:59.999Z',
      '2026-02-01T00:00:00.000Z',
      '2026-02-01T00:00:00.000Z',
      '2026-02-01T00:00:00.001Z',
      '2026-02-28T23:59:59.999Z',
      '2026-03-01T00:00:00.000Z',
    ];
    const rows = times.map((t, i) => row(i, at(t)));
    const chunks = [...planChunks(rows, { nextNumber: { '2026-01': 7, '2026-02': 3 }, maxRows: 3 })];
    expect(chunks.map((c) => [c.month, c.number, c.rows.length])).toEqual([
      ['2026-01', 7, 3],
      ['2026-01', 8, 1],
      ['2026-02', 3, 3],
      ['2026-02', 4, 1],
      ['2026-03', 1, 1],
    ]);
    for (const c of chunks) for (const r of c.rows) expect(monthOfMs(r.createdAtMs)).toBe(c.month);
    expect(chunks.flatMap((c) => c.rows)).toEqual(rows);
  });

  it('numbers from a single next number, with the default of 50 000 rows a chunk', () => {
    const start = at('2026-01-05T00:00:00.000Z');
    const rows = Array.from({ length: 100_001 }, (_, i) => row(i, start + i));
    const chunks = [...planChunks(rows, { nextNumber: 5 })];
    expect(DEFAULT_ARCHIVE_CHUNK_ROWS).toBe(50_000);
    expect(chunks.map((c) => [c.number, c.rows.length])).toEqual([
      [5, 50_000],
      [6, 50_000],
      [7, 1],
    ]);
  });

  it('plans a stream lazily', () => {
    function* endless() {
      for (let i = 0; ; i++) yield row(i, at('2026-01-01T00:00:00.000Z') + i);
    }
    const plan = planChunks(endless(), { nextNumber: 1, maxRows: 10 });
    expect([plan.next().value?.number, plan.next().value?.number]).toEqual([1, 2]);
  });

  it('refuses rows out of order, an id twice, and a number past 999999', () => {
    const t = at('2026-01-10T00:00:00.000Z');
    expect(syncChunkError(() => [...planChunks([row(1, t + 1), row(2, t)], { nextNumber: 1 })])).toBe('rows_out_of_order');
    expect(syncChunkError(() => [...planChunks([row(1, t), row(1, t)], { nextNumber: 1 })])).toBe('rows_out_of_order');
    expect(syncChunkError(() => [...planChunks([row(2, t), row(1, t)], { nextNumber: 1 })])).toBe('rows_out_of_order');
    // A month going back (the stream was not ordered) cannot slip by either.
    expect(syncChunkError(() => [...planChunks([row(1, at('2026-02-01T00:00:00.000Z')), row(2, at('2026-01-31T23:59:59.999Z'))], { nextNumber: 1 })])).toBe(
      'rows_out_of_order',
    );
    const plan = planChunks([row(1, t), row(2, t + 1)], { nextNumber: 999_999, maxRows: 1 });
    expect(plan.next().value?.number).toBe(999_999);
    expect(syncChunkError(() => plan.next())).toBe('invalid_key');
    expect(() => [...planChunks([], { nextNumber: 1, maxRows: 0 })]).toThrow(RangeError);
  });
});

describe('hashes', () => {
  it('computes SHA-256 as in the standard vectors', async () => {
    expect(await sha256Hex('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(await sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(await sha256Hex(new TextEncoder().encode('abc'))).toBe(await sha256Hex('abc'));
  });

  it('checksums the set of ids: order and repeats do not matter, membership does', async () => {
    const ids = Array.from({ length: 1000 }, () => crypto.randomUUID());
    const shuffled = [...ids].sort(() => Math.random() - 0.5);
    const sum = await idsChecksum(ids);
    expect(await idsChecksum(shuffled)).toBe(sum);
    expect(await idsChecksum([...shuffled, ...ids.slice(0, 10)])).toBe(sum);
    expect(await idsChecksum(ids.slice(1))).not.toBe(sum);
    expect(await idsChecksum([...ids.slice(1), crypto.randomUUID()])).not.toBe(sum);
    // The definition the manifest records: SHA-256 of the sorted distinct ids joined with "\n".
    expect(sum).toBe(await sha256Hex([...ids].sort().join('\n')));
  });
});

describe('chunk encoding', () => {
  const t0 = at('2026-01-31T23:59:00.000Z');
  const payloads = [
    JSON.stringify({ quote: 'she said "hi" \\ back', nested: { q: '"' } }),
    JSON.stringify({ text: 'line one\nline two\r\n\ttabbed' }),
    JSON.stringify({ 城市: '東京', 메시지: '안녕하세요', emoji: '🚚📍👩🏽‍💻' }),
    `{"sep":"a\u2028b\u2029c","escaped":"\\u2028"}`,
    JSON.stringify({ deep: JSON.parse('['.repeat(2000) + '1' + ']'.repeat(2000)) }),
    JSON.stringify(Array.from({ length: 64 }).reduce<unknown>((inner) => ({ k: inner }), 'bottom')),
    // Valid JSON that JSON.stringify would rewrite: kept byte for byte all the same.
    '{ "b" : 1.0, "1": 2e3, "e": "\\u00e9" }\t',
    '"just a string"',
    'null',
    '-0',
    JSON.stringify({ trap: '\n{"id":"01900000-0000-7000-8000-000000000000","payload":1}', also: ',"payload":' }),
  ];
  const rows: ArchiveRow[] = payloads.map((payload, i) => ({ ...row(i, t0 + i * 1000, payload), deviceId: i === 3 ? 'dev "x",\n"payload":\u2028' : `dev-${i}` }));

  it('round-trips every payload byte for byte and stores it as JSON, not as a string', async () => {
    const { manifest, body } = await encodeChunk({ projectId: 'p1', month: '2026-01', number: 3, rows });
    expect(manifest).toMatchObject({
      projectId: 'p1',
      month: '2026-01',
      number: 3,
      key: 'archives/p1/2026-01/000003.jsonl.gz',
      rowCount: rows.length,
      compressedBytes: body.byteLength,
      firstCreatedAtMs: rows[0]!.createdAtMs,
      lastCreatedAtMs: rows.at(-1)!.createdAtMs,
    });
    expect(manifest.sha256Hex).toBe(await sha256Hex(body));
    expect(manifest.idsChecksumHex).toBe(await idsChecksum(rows.map((r) => r.id)));

    const decoded = await decodeChunk(body, manifest);
    expect(decoded).toEqual(rows);
    for (const [i, r] of decoded.entries()) expect(r.payload === payloads[i], `payload ${i}`).toBe(true);

    // Any JSON Lines reader sees one object per event, its payload as JSON.
    const text = await inflateChunk(body, manifest);
    expect(new TextEncoder().encode(text).byteLength).toBe(manifest.rawBytes);
    const lines = text.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines).toHaveLength(rows.length);
    for (const line of lines) {
      const parsed = JSON.parse(line);
      const i = rows.findIndex((r) => r.id === parsed.id);
      expect(Object.keys(parsed)).toEqual(['id', 'deviceId', 'createdAt', 'receivedAt', 'payload']);
      expect(parsed.payload).toEqual(JSON.parse(payloads[i]!));
      expect(parsed.createdAt).toBe(new Date(rows[i]!.createdAtMs).toISOString());
      expect(parsed.deviceId).toBe(rows[i]!.deviceId);
    }
    expect(typeof JSON.parse(lines.find((l) => l.startsWith(`{"id":"${rows[0]!.id}"`))!).payload).toBe('object');
  });

  it("writes a device's lines together, each in time order, and records the chunk's time range", async () => {
    const t = at('2026-01-05T00:00:00.000Z');
    // Three devices reporting in turn, as rows come out of ClickHouse.
    const mixed = Array.from({ length: 30 }, (_, i) => ({ ...row(i, t + i * 1000), deviceId: ['truck-b', 'truck-a', 'van-c'][i % 3]! }));
    const { manifest, body } = await encodeChunk({ projectId: 'p1', month: '2026-01', number: 1, rows: mixed });
    expect([manifest.firstCreatedAtMs, manifest.lastCreatedAtMs]).toEqual([t, t + 29_000]);
    const inFile = (await inflateChunk(body, manifest)).split('\n').slice(0, -1).map((line) => parseChunkLine(line)!);
    expect(inFile.map((r) => r.deviceId)).toEqual([...Array(10).fill('truck-a'), ...Array(10).fill('truck-b'), ...Array(10).fill('van-c')]);
    for (const device of ['truck-a', 'truck-b', 'van-c']) {
      const times = inFile.filter((r) => r.deviceId === device).map((r) => r.createdAtMs);
      expect(times).toEqual([...times].sort((a, b) => a - b));
    }
    // Decoding gives the rows back in the order they were planned.
    expect(await decodeChunk(body, manifest)).toEqual(mixed);
  });

  it('encodes the chunks of a plan under the month of their rows', async () => {
    const boundary = [row(1, at('2026-01-31T23:59:59.999Z')), row(2, at('2026-02-01T00:00:00.000Z'))];
    const encoded = await Promise.all([...planChunks(boundary, { nextNumber: 1 })].map((c) => encodeChunk({ projectId: 'p1', ...c })));
    expect(encoded.map((e) => [e.manifest.key, e.manifest.rowCount])).toEqual([
      ['archives/p1/2026-01/000001.jsonl.gz', 1],
      ['archives/p1/2026-02/000001.jsonl.gz', 1],
    ]);
  });

  it('refuses a chunk that would be mislabelled, out of order, empty, or unable to keep a payload exactly', async () => {
    const jan = at('2026-01-31T23:59:59.999Z');
    const feb = at('2026-02-01T00:00:00.000Z');
    const encode = (rs: ArchiveRow[], month = '2026-01') => encodeChunk({ projectId: 'p1', month, number: 1, rows: rs });
    expect(await chunkError(encode([row(1, jan), row(2, feb)]))).toBe('month_mismatch');
    expect(await chunkError(encode([row(1, feb)]))).toBe('month_mismatch');
    expect(await chunkError(encode([row(2, jan), row(1, jan)]))).toBe('rows_out_of_order');
    expect(await chunkError(encode([row(1, jan), row(1, jan)]))).toBe('rows_out_of_order');
    expect(await chunkError(encode([]))).toBe('empty_chunk');
    expect(await chunkError(encode([{ ...row(0xabc, jan), id: eventId(0xabc).toUpperCase() }]), 'uppercase id')).toBe('invalid_row');
    expect(await chunkError(encode([{ ...row(1, jan), createdAtMs: jan + 0.5 }]), 'fractional ms')).toBe('invalid_row');
    for (const payload of ['not json', '{"a":1', '{\n"a": 1\n}', '"\ud800"', '']) {
      expect(await chunkError(encode([row(1, jan, payload)]), JSON.stringify(payload))).toBe('invalid_payload');
    }
    expect(await chunkError(encodeChunk({ projectId: 'p1', month: '2026-01', number: 1_000_000, rows: [row(1, jan)] }))).toBe('invalid_key');
  });
});

describe('chunks compressed by ClickHouse', () => {
  // The archive job's chunks: ClickHouse writes the lines (a device's together) and gzips them; the
  // Worker checks every line of the object it reads back from R2, before the chunk is recorded.
  const t0 = at('2026-01-10T00:00:00.000Z');
  const rows = Array.from({ length: 40 }, (_, i) => row(i, t0 + i * 1000, JSON.stringify({ lat: 48.85 + i / 1e4, n: i })));
  const adopt = async (text: string, month = '2026-01') => adoptEncodedChunk({ projectId: 'p1', month, number: 3, body: await gzip(text) });
  /** The text `encodeChunk` writes for `rs`, inflated from its object. */
  const textOf = async (rs: ArchiveRow[]) => {
    const { manifest, body } = await encodeChunk({ projectId: 'p1', month: '2026-01', number: 3, rows: rs });
    return inflateChunk(body, manifest);
  };

  it('takes the lines as they come, gives the rows back in time order, and records what encodeChunk would', async () => {
    const text = await textOf(rows);
    const lines = text.split('\n').filter(Boolean);
    const shuffled = [...lines].reverse().join('\n') + '\n';
    const adopted = await adopt(shuffled);
    expect(adopted!.rows).toEqual(rows);
    const expected = (await encodeChunk({ projectId: 'p1', month: '2026-01', number: 3, rows })).manifest;
    expect(adopted!.manifest).toMatchObject({
      key: expected.key,
      rowCount: 40,
      rawBytes: expected.rawBytes,
      idsChecksumHex: expected.idsChecksumHex,
      firstCreatedAtMs: rows[0]!.createdAtMs,
      lastCreatedAtMs: rows.at(-1)!.createdAtMs,
      compressedBytes: adopted!.body.byteLength,
      sha256Hex: await sha256Hex(adopted!.body),
    });
    expect(await decodeChunk(adopted!.body, adopted!.manifest)).toEqual(rows);
  });

  it('is nothing for an empty window', async () => {
    expect(await adopt('')).toBeNull();
  });

  it('refuses what it cannot keep: broken gzip, a bad line, a payload that is not JSON, another month, an id twice', async () => {
    const good = await textOf(rows.slice(0, 3));
    const body = await gzip(good);
    expect(await chunkError(adoptEncodedChunk({ projectId: 'p1', month: '2026-01', number: 3, body: body.subarray(0, body.byteLength - 9) }))).toBe('not_gzip');
    expect(await chunkError(adopt(good.replace('"receivedAt":"2026', '"receivedAt":"not a representable time')), 'unformatted time')).toBe('malformed_line');
    expect(await chunkError(adopt(good.replace('{"lat":', '{\n"lat":')), 'raw newline')).toBe('malformed_line');
    expect(await chunkError(adopt(good.replace('{"lat":', '{lat:')), 'not JSON')).toBe('invalid_payload');
    expect(await chunkError(adopt(good, '2026-02'))).toBe('month_mismatch');
    const first = good.split('\n')[0]!;
    expect(await chunkError(adopt(`${good}${first}\n`), 'an id twice')).toBe('rows_out_of_order');
    expect(await chunkError(adopt(good.replace('"id":"01900000', '"id":"0190000A')), 'uppercase id')).toBe('invalid_row');
  });
});

describe('chunk decoding', () => {
  const t0 = at('2026-01-10T00:00:00.000Z');
  const rows = Array.from({ length: 500 }, (_, i) => row(i, t0 + i * 60_000, JSON.stringify({ lat: 48.85 + i / 1e4, lon: 2.35, note: `point ${i}` })));
  const encoded = encodeChunk({ projectId: 'p1', month: '2026-01', number: 1, rows });

  it('refuses a flipped byte or a truncated object with a typed error, never part of the rows', async () => {
    const { manifest, body } = await encoded;
    for (const offset of [0, 12, body.byteLength >> 1, body.byteLength - 1]) {
      const flipped = body.slice();
      flipped[offset]! ^= 0x01;
      expect(await chunkError(decodeChunk(flipped, manifest)), `byte ${offset}`).toBe('sha256_mismatch');
    }
    for (const length of [0, 10, body.byteLength >> 1, body.byteLength - 4, body.byteLength - 1]) {
      expect(await chunkError(decodeChunk(body.slice(0, length), manifest)), `${length} bytes`).toBe('sha256_mismatch');
    }
  });

  it('refuses broken gzip even when the checksum was taken of the broken bytes', async () => {
    const { manifest, body } = await encoded;
    const truncated = body.slice(0, body.byteLength >> 1);
    expect(await chunkError(decodeChunk(truncated, { ...manifest, sha256Hex: await sha256Hex(truncated) }))).toBe('not_gzip');
    const noTrailer = body.slice(0, body.byteLength - 8);
    expect(await chunkError(decodeChunk(noTrailer, { ...manifest, sha256Hex: await sha256Hex(noTrailer) }))).toBe('not_gzip');
    const flipped = body.slice();
    flipped[body.byteLength >> 1]! ^= 0x40;
    expect(await chunkError(decodeChunk(flipped, { ...manifest, sha256Hex: await sha256Hex(flipped) }))).toBe('not_gzip');
    const plain = new TextEncoder().encode('{"id":"x"}\n');
    expect(await chunkError(decodeChunk(plain, { ...manifest, sha256Hex: await sha256Hex(plain) }))).toBe('not_gzip');
  });

  it('refuses an object that is not the chunk its manifest row describes', async () => {
    const { manifest, body } = await encoded;
    expect(await chunkError(decodeChunk(body, { ...manifest, idsChecksumHex: await idsChecksum(rows.slice(1).map((r) => r.id)) }))).toBe('ids_checksum_mismatch');
    expect(await chunkError(decodeChunk(body, { ...manifest, rowCount: rows.length + 1 }))).toBe('row_count_mismatch');
    expect(await chunkError(decodeChunk(body, { ...manifest, month: '2026-02' }))).toBe('month_mismatch');
    for (const text of ['not a chunk\n', `{"id":"${eventId(1)}","deviceId":"d","createdAt":"2026-01-10T00:00:00.000Z","receivedAt":"2026-01-10T00:00:00.000Z","payload":{}}`]) {
      const other = await gzip(text);
      expect(await chunkError(decodeChunk(other, { ...manifest, sha256Hex: await sha256Hex(other) })), text).toBe('malformed_line');
    }
    // The ids read from ClickHouse, in any order, verify the chunk.
    expect(await decodeChunk(body, { ...manifest, idsChecksumHex: await idsChecksum(rows.map((r) => r.id).reverse()) })).toHaveLength(rows.length);
  });

  it('encodes and decodes a full chunk of 50 000 rows', async () => {
    const start = at('2026-01-01T00:00:00.000Z');
    const big = Array.from({ length: DEFAULT_ARCHIVE_CHUNK_ROWS }, (_, i) =>
      row(
        i,
        start + i * 50_000,
        JSON.stringify({ type: 'track', payload: { name: 'position', properties: { lat: 52.52 + (i % 1000) / 1e5, lon: 13.405, speedKmh: i % 90, battery: 100 - (i % 100), fix: '3d' } } }),
      ),
    );
    const [planned] = [...planChunks(big, { nextNumber: 1 })];
    expect(planned!.rows).toHaveLength(DEFAULT_ARCHIVE_CHUNK_ROWS);
    const { manifest, body } = await encodeChunk({ projectId: 'p1', ...planned! });
    expect(manifest.rowCount).toBe(DEFAULT_ARCHIVE_CHUNK_ROWS);
    expect(manifest.compressedBytes).toBeLessThan(manifest.rawBytes / 5);
    const decoded = await decodeChunk(body, { ...manifest, idsChecksumHex: await idsChecksum(big.map((r) => r.id)) });
    expect(decoded).toHaveLength(DEFAULT_ARCHIVE_CHUNK_ROWS);
    expect(decoded[31_337]).toEqual(big[31_337]);
    expect(decoded).toEqual(big);
    const text = await inflateChunk(body, manifest);
    expect(findEventInChunkText(text, big[49_999]!.id)?.payload).toBe(big[49_999]!.payload);
  });
});

describe('chunks written in time order', () => {
  // Chunks written before lines were grouped by device hold the same lines in (createdAt, id) order.
  const t0 = at('2026-01-12T00:00:00.000Z');
  const rows = Array.from({ length: 40 }, (_, i) => ({ ...row(i, t0 + i * 500, JSON.stringify({ i, at: 'depot' })), deviceId: `dev-${i % 4}` }));
  const timeOrderedObject = async () => {
    const line = (r: ArchiveRow) =>
      `{"id":"${r.id}","deviceId":${JSON.stringify(r.deviceId)},"createdAt":"${new Date(r.createdAtMs).toISOString()}","receivedAt":"${new Date(r.receivedAtMs).toISOString()}","payload":${r.payload}}\n`;
    const body = await gzip(rows.map(line).join(''));
    return { body, manifest: { sha256Hex: await sha256Hex(body), idsChecksumHex: await idsChecksum(rows.map((r) => r.id)), rowCount: rows.length, month: '2026-01' } };
  };

  it('decodes, finds and re-encodes them like any other', async () => {
    const { body, manifest } = await timeOrderedObject();
    expect(await decodeChunk(body, manifest)).toEqual(rows);
    const text = await inflateChunk(body, manifest);
    expect(findEventInChunkText(text, rows[17]!.id)).toEqual(rows[17]);
    // An erasure rewrites one from its decoded rows: the new chunk holds the same rows.
    const again = await encodeChunk({ projectId: 'p1', month: '2026-01', number: 2, rows: await decodeChunk(body, manifest) });
    expect(await decodeChunk(again.body, again.manifest)).toEqual(rows);
    expect(again.manifest.idsChecksumHex).toBe(manifest.idsChecksumHex);
  });
});

describe("a window's chunk against what ClickHouse said of the window", () => {
  const t0 = at('2026-01-15T00:00:00.000Z');
  const rows = Array.from({ length: 50 }, (_, i) => row(i, t0 + i * 1000, JSON.stringify({ i })));
  const factsOf = async (rs: readonly ArchiveRow[]): Promise<WindowFacts> => ({
    rows: rs.length,
    last: { afterMs: rs.at(-1)!.createdAtMs, afterId: rs.at(-1)!.id },
    idsChecksum: await idsChecksum(rs.map((r) => r.id)),
  });

  it('passes the very rows ClickHouse described', async () => {
    expect(windowMismatch(rows, await idsChecksum(rows.map((r) => r.id)), await factsOf(rows), 50)).toBeNull();
  });

  it('names a count, a last row or ids that differ, and a window over the chunk size', async () => {
    const sum = await idsChecksum(rows.map((r) => r.id));
    const facts = await factsOf(rows);
    // A row written after ClickHouse counted the window.
    expect(windowMismatch(rows, sum, { ...facts, rows: 49 }, 50)).toMatch(/holds 50 events .* ClickHouse counted 49/);
    expect(windowMismatch(rows, sum, { ...facts, last: { ...facts.last, afterId: rows[48]!.id } }, 50)).toMatch(/ending at/);
    expect(windowMismatch(rows, sum, { ...facts, last: { ...facts.last, afterMs: facts.last.afterMs + 1 } }, 50)).toMatch(/ending at/);
    expect(windowMismatch(rows, sum, facts, 49)).toMatch(/holds 50 events/);
    // Same count, same last row, one id in the middle that ClickHouse did not select.
    const other = rows.map((r, i) => (i === 20 ? { ...r, id: eventId(1000) } : r));
    expect(windowMismatch(rows, sum, await factsOf(other), 50)).toMatch(/ids checksum .* ClickHouse computed/);
    expect(windowMismatch([], await idsChecksum([]), facts, 50)).toMatch(/holds 0 events ending at none/);
  });
});

describe('lazy reads', () => {
  const t0 = at('2026-01-20T00:00:00.000Z');
  // Ties on createdAtMs, and a payload holding text shaped like another event's line.
  const rows = Array.from({ length: 300 }, (_, i) => row(i, t0 + Math.floor(i / 3) * 1000, JSON.stringify({ i, mimic: `\n{"id":"${eventId(i + 1)}",` })));
  const encoded = encodeChunk({ projectId: 'p1', month: '2026-01', number: 2, rows });

  it('finds one event in a chunk text by its line, first, middle and last, and nothing else', async () => {
    const { manifest, body } = await encoded;
    const text = await inflateChunk(body, manifest);
    for (const i of [0, 1, 150, 299]) expect(findEventInChunkText(text, eventId(i)), `row ${i}`).toEqual(rows[i]);
    expect(eventId(250).toUpperCase()).not.toBe(eventId(250));
    expect(findEventInChunkText(text, eventId(250).toUpperCase())).toEqual(rows[250]);
    expect(findEventInChunkText(text, eventId(300))).toBeNull();
    expect(findEventInChunkText(text, 'x')).toBeNull();
  });

  it('finds one event among decoded rows, by binary search when its time is known', () => {
    for (const i of [0, 1, 2, 3, 151, 299]) {
      expect(findEventInRows(rows, eventId(i), rows[i]!.createdAtMs), `row ${i}`).toBe(rows[i]);
      expect(findEventInRows(rows, eventId(i))).toBe(rows[i]);
    }
    expect(findEventInRows(rows, eventId(4), rows[3]!.createdAtMs - 1000)).toBeNull();
    expect(findEventInRows(rows, eventId(300), t0)).toBeNull();
    expect(findEventInRows([], eventId(1), t0)).toBeNull();
  });

  it('picks only the chunks whose time range holds the event', () => {
    const chunks = [
      { number: 1, firstCreatedAtMs: 0, lastCreatedAtMs: 100 },
      { number: 3, firstCreatedAtMs: 50, lastCreatedAtMs: 60 },
      { number: 2, firstCreatedAtMs: 100, lastCreatedAtMs: 200 },
    ];
    expect(chunksHoldingTime(chunks, 55).map((c) => c.number)).toEqual([1, 3]);
    expect(chunksHoldingTime(chunks, 100).map((c) => c.number)).toEqual([1, 2]);
    expect(chunksHoldingTime(chunks, 150).map((c) => c.number)).toEqual([2]);
    expect(chunksHoldingTime(chunks, 250)).toEqual([]);
  });

  it('keys the cache by the chunk and its SHA-256, the same from the manifest at write and at read', async () => {
    const { manifest, body } = await encoded;
    const url = chunkCacheUrl(manifest);
    expect(url).toBe(`${ARCHIVE_CACHE_ORIGIN}/archives/p1/2026-01/000002.jsonl.gz/${manifest.sha256Hex}`);
    // The manifest row as D1 hands it back (extra columns, plain JSON) gives the same key.
    const fromD1 = JSON.parse(JSON.stringify({ ...manifest, verifiedAt: 123, restoredAt: null }));
    expect(chunkCacheUrl(fromD1)).toBe(url);
    const rewritten = await sha256Hex(body.subarray(1));
    expect(chunkCacheUrl({ ...manifest, sha256Hex: rewritten })).not.toBe(url);
    expect(chunkCacheUrl({ ...manifest, number: 3 })).not.toBe(url);
    expect(chunkCacheUrl({ ...manifest, month: '2025-12' })).not.toBe(url);
    expect(chunkCacheUrl({ ...manifest, projectId: 'p2' })).not.toBe(url);
    expect(chunkCacheUrl(manifest, 'https://gateway.example.com/some/path')).toBe(`https://gateway.example.com/archives/p1/2026-01/000002.jsonl.gz/${manifest.sha256Hex}`);
    expect(() => chunkCacheUrl({ ...manifest, sha256Hex: manifest.sha256Hex.toUpperCase() })).toThrow(RangeError);
    expect(() => chunkCacheUrl(manifest, 'ftp://x')).toThrow(RangeError);

    // workerd's Cache API accepts the key: what is put under it is found under the key computed again.
    const cache = await caches.open('archive-core-test');
    await cache.put(url, new Response('chunk text', { headers: { 'cache-control': 'max-age=60' } }));
    expect(await (await cache.match(chunkCacheUrl(fromD1)))?.text()).toBe('chunk text');
    expect(await cache.match(chunkCacheUrl({ ...manifest, sha256Hex: rewritten }))).toBeUndefined();
    await cache.delete(url);
  });
});
