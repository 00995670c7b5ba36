// Pure cores: typed query parameters, skew correction, deterministic ids, property checks, the dedup index.
import { describe, expect, it } from 'vitest';
import { ch, collidingKeys } from './helpers';
import { parseVersion } from '../src/clickhouse/client';
import { bindParams } from '../src/clickhouse/params';
import { correctClockSkew, normalizeEvent, NO_GEO, ownPropertiesInRow, piecesText } from '../src/ingest/normalize';
import { WireEvent } from '../src/ingest/wire';
import { checkPropertiesShape } from '../src/ingest/wire';
import { hash128, hash128Joined, uuidv7At, uuidv7OfParts, uuidv7Time } from '../src/lib/ids';
import { commonIsoTime, parseIsoTime } from '../src/lib/iso-time';
import { z } from 'zod';
import { decodeFingerprints, encodeFingerprints, fingerprint, SeenIndex } from '../src/device/seen-index';

describe('typed query parameters', () => {
  it('renders checked literals and refuses values of the wrong type', () => {
    expect(bindParams('SELECT {a:String}, {n:Int64}, {xs:Array(String)}', { a: "it's\\", n: -5, xs: ['a', "b'"] })).toBe(
      "SELECT 'it\\'s\\\\', -5, ['a','b\\'']",
    );
    expect(() => bindParams('SELECT {n:Int64}', { n: '1; DROP TABLE events' })).toThrow(/integer/);
    expect(() => bindParams('SELECT {n:UInt32}', { n: -1 })).toThrow(/unsigned/);
    expect(() => bindParams('SELECT {u:UUID}', { u: "x') OR 1=1 --" })).toThrow(/UUID/);
    expect(() => bindParams('SELECT {missing:String}', {})).toThrow(/missing/);
  });

  it('round-trips hostile strings through the real server unchanged', async () => {
    const hostile = "'; DROP TABLE events; --\\' \n\t\0 \u00e9\u{1F600}";
    const [row] = await ch().query<{ v: string }>('SELECT {v:String} AS v', { v: hostile });
    expect(row!.v).toBe(hostile);
  });

  it('knows which servers take native parameters', () => {
    expect(parseVersion('18.16.1').nativeParams).toBe(false);
    expect(parseVersion('24.8.4.13').nativeParams).toBe(true);
    expect(parseVersion('24.8.4.13').lightweightDelete).toBe(true);
  });
});

describe('event time', () => {
  const ctx = { receivedAtMs: 1_700_000_000_000, ip: '203.0.113.1', userAgent: 'ua', geo: NO_GEO };

  it('shifts client time by the batch clock skew', () => {
    expect(correctClockSkew(undefined, ctx)).toBe(ctx.receivedAtMs);
    expect(correctClockSkew(1000, { receivedAtMs: 5000 })).toBe(1000);
    expect(correctClockSkew(10_000, { receivedAtMs: 20_000, sentAtMs: 15_000 })).toBe(15_000);
  });

  it('clamps more than a minute in the future and rejects older than five days', () => {
    const future = normalizeEvent({ type: 'track', payload: { name: 'f', properties: { __timestamp: ctx.receivedAtMs + 61_000 } } }, ctx);
    expect(future.ok && future.event.createdAtMs).toBe(ctx.receivedAtMs);
    const nearFuture = normalizeEvent({ type: 'track', payload: { name: 'f', properties: { __timestamp: ctx.receivedAtMs + 59_000 } } }, ctx);
    expect(nearFuture.ok && nearFuture.event.createdAtMs).toBe(ctx.receivedAtMs + 59_000);
    const old = normalizeEvent({ type: 'track', payload: { name: 'o', properties: { __timestamp: ctx.receivedAtMs - 5 * 86_400_000 - 1 } } }, ctx);
    expect(old.ok).toBe(false);
    expect(!old.ok && old.rejection.reason).toBe('too_old');
  });

  it('keeps reserved properties out of the stored properties and dedups replays by content', () => {
    const raw = { type: 'track', payload: { name: 'n', properties: { __timestamp: ctx.receivedAtMs - 1000, __deviceId: 'd', a: 1 } } };
    const a = normalizeEvent(raw, ctx, 0);
    const b = normalizeEvent(raw, { ...ctx, receivedAtMs: ctx.receivedAtMs + 5000 }, 3);
    expect(a.ok && JSON.parse(a.event.propertiesJson)).toEqual({ a: 1 });
    expect(a.ok && b.ok && a.event.dedupKey === b.event.dedupKey).toBe(true);
    const untimed = { type: 'track', payload: { name: 'n', properties: { a: 1 } } };
    const u1 = normalizeEvent(untimed, ctx, 0);
    const u2 = normalizeEvent(untimed, ctx, 1);
    expect(u1.ok && u2.ok && u1.event.dedupKey !== u2.event.dedupKey).toBe(true);
  });

  it('builds from a track row as it came the same event as from the row the schemas make of it', () => {
    const t = ctx.receivedAtMs - 1000;
    const rows = [
      { type: 'track', payload: { name: 'n', profileId: 42, properties: { __timestamp: t, a: 1 } } },
      { type: 'track', payload: { name: 'n', profileId: 'p-1', groups: ['g'], extra: { x: 1 }, properties: { __timestamp: new Date(t).toISOString(), __eventId: 'e1' } } },
      { type: 'track', payload: { name: 'n', sdk: 'web', properties: { __timestamp: '2023-11-14T22:13:19+00:00', b: [1, 'x'] } } },
      { type: 'track', payload: { name: 'n', profileId: 7.5, properties: { __deviceId: 'd' } } },
    ];
    for (const [i, row] of rows.entries()) {
      const parsed = WireEvent.parse(row);
      const fromRow = normalizeEvent(row, ctx, i);
      expect(fromRow.ok, JSON.stringify(row)).toBe(true);
      // The parsed row stores the same payload (the row as it came): only the parsing differs.
      expect(fromRow).toEqual(normalizeEvent(parsed, ctx, i, row));
      expect(fromRow.ok && typeof fromRow.event.profileId).toBe('string');
    }
  });
});

describe('properties cut out of the row', () => {
  const ctx = { receivedAtMs: Date.UTC(2026, 5, 1, 12), ip: '203.0.113.9', userAgent: 'ua', geo: NO_GEO };
  const reserved = ['__timestamp', '__deviceId', '__eventId'];
  const own = (props: Record<string, unknown>) => Object.fromEntries(Object.entries(props).filter(([k]) => !reserved.includes(k) && k !== '__ip'));

  // A seeded generator: properties of every kind in every order, the reserved keys among them.
  function* rows(count: number) {
    let seed = 7;
    const rnd = () => ((seed = (Math.imul(seed ^ (seed >>> 15), 2246822507) + 0x6d2b79f5) >>> 0) / 2 ** 32);
    const texts = ['', 'x', 'a"b', 'back\\slash', 'tab\t', '\u0001', 'é', '😀', '"', '\\', '\\"', '}', ',', '{"a":1}'];
    const values = () => {
      const k = Math.floor(rnd() * 9);
      if (k === 0) return texts[Math.floor(rnd() * texts.length)];
      if (k === 1) return Math.floor(rnd() * 1e6) / 100;
      if (k === 2) return -0;
      if (k === 3) return 1e21;
      if (k === 4) return rnd() < 0.5;
      if (k === 5) return null;
      if (k === 6) return { n: [1, 'two', { three: 3 }] };
      if (k === 7) return [];
      return 'v' + Math.floor(rnd() * 100);
    };
    const ownKeys = ['a', 'lat', 'lon', 'é', 'k"q', '1', '22', 'properties', '__dataset', 'x'];
    for (let n = 0; n < count; n++) {
      const keys = ownKeys.filter(() => rnd() < 0.4);
      const present = reserved.filter(() => rnd() < 0.6);
      // Mostly leading or trailing reserved keys, sometimes one in the middle.
      for (const r of present) {
        const where = rnd();
        if (where < 0.45) keys.unshift(r);
        else if (where < 0.9) keys.push(r);
        else keys.splice(Math.floor(rnd() * (keys.length + 1)), 0, r);
      }
      const props: Record<string, unknown> = {};
      for (const k of keys) {
        props[k] = k === '__timestamp' ? (rnd() < 0.5 ? ctx.receivedAtMs - 1000 - n : new Date(ctx.receivedAtMs - 1000 - n).toISOString()) : k === '__deviceId' ? `d${n % 5 ? n : texts[n % texts.length]}` : k === '__eventId' ? `e${n}${n % 7 ? '' : texts[n % texts.length]}` : values();
      }
      const payload: Record<string, unknown> = rnd() < 0.3 ? { name: `n${texts[n % texts.length]}`, profileId: 'p"1', properties: props } : { name: 'n', properties: props };
      // Sent as text and parsed, as the route receives it.
      yield JSON.parse(JSON.stringify({ type: 'track', payload })) as { type: string; payload: { properties: Record<string, unknown> } };
    }
  }

  it('gives exactly the text JSON.stringify writes of the own properties, or declines', () => {
    let cut = 0;
    let declined = 0;
    for (const row of rows(3000)) {
      const json = JSON.stringify(row);
      const pieces = ownPropertiesInRow(json, row, row.payload.properties);
      if (pieces === null) {
        declined++;
        // Declined in these rows only for a reserved key amid the others, or a reserved text that
        // JSON escapes (left to JSON.stringify).
        const props = row.payload.properties;
        const keys = Object.keys(props);
        const at = keys.map((k) => reserved.includes(k));
        const amid = at.some((r, i) => r && at.slice(0, i).some((x) => !x) && at.slice(i + 1).some((x) => !x));
        const escaped = reserved.some((k) => typeof props[k] === 'string' && JSON.stringify(props[k]) !== `"${props[k]}"`);
        expect(amid || escaped, JSON.stringify(row)).toBe(true);
        continue;
      }
      cut++;
      expect(piecesText(json, pieces), json).toBe(JSON.stringify(own(row.payload.properties)));
      expect(hash128Joined(['t', { text: json, pieces }])).toBe(hash128Joined(['t', piecesText(json, pieces)]));
    }
    expect(cut).toBeGreaterThan(1200);
    expect(declined).toBeGreaterThan(50);
  });

  it('stores the same event whether its properties were cut out or copied', () => {
    let i = 0;
    for (const row of rows(600)) {
      // Passing the row as the message it was mapped from makes normalizeEvent copy and stringify.
      const copied = normalizeEvent(structuredClone(row), ctx, i, row);
      expect(normalizeEvent(row, ctx, i)).toEqual(copied);
      i++;
    }
  });

  it('declines rows of any other shape', () => {
    const props = { __deviceId: 'd', a: 1 };
    const decline = (row: Record<string, unknown>) => ownPropertiesInRow(JSON.stringify(row), row, props);
    expect(decline({ type: 'track', payload: { name: 'n', properties: props } })).not.toBeNull();
    expect(decline({ payload: { name: 'n', properties: props }, type: 'track' })).toBeNull();
    expect(decline({ type: 'track', payload: { name: 'n', properties: props }, extra: 1 })).toBeNull();
    expect(decline({ type: 'track', payload: { properties: props, name: 'n' } })).toBeNull();
    expect(decline({ type: 'track', payload: { name: 'n', meta: { properties: { a: 2 } }, properties: props } })).toBeNull();
    expect(decline({ type: 'track', payload: { name: 'n', properties: { ...props } } })).toBeNull();
    // A leading number whose text only begins like the stored one.
    // A reserved key without a value (a row made in code, not parsed) is left to the copy, leading or trailing.
    for (const props of [{ a: 1, __deviceId: undefined }, { __ip: undefined, a: 1 }]) {
      const made = { type: 'track', payload: { name: 'n', properties: props } };
      expect(ownPropertiesInRow(JSON.stringify(made), made, props)).toBeNull();
    }
    const timed = { __timestamp: 1, a: 1 };
    const row = { type: 'track', payload: { name: 'n', properties: timed } };
    const json = JSON.stringify(row);
    expect(ownPropertiesInRow(json, row, timed)).not.toBeNull();
    expect(ownPropertiesInRow(json.replace('"__timestamp":1', '"__timestamp":15'), row, timed)).toBeNull();
  });
});

describe('ids and property shape', () => {
  it('makes the same UUIDv7 from the same time and seed, carrying that time', () => {
    const t = Date.UTC(2019, 4, 1, 12, 0, 0, 123);
    const id = uuidv7At(t, hash128('citylens:42'));
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(uuidv7At(t, hash128('citylens:42'))).toBe(id);
    expect(uuidv7At(t, hash128('citylens:43'))).not.toBe(id);
    expect(uuidv7Time(id)).toBe(t);
  });

  it('keeps the hash and the UUIDv7 of stored ids exactly as they were (the values are part of stored ids)', () => {
    expect(hash128('')).toBe('1aee8d83488bdcb8583afc3ba650c329');
    expect(hash128('citylens:42')).toBe('3daea090260cbbb64f88ef78df9079a3');
    expect(hash128('e:evt-1')).toBe('ac5e7809b8572f3f815a58edee7d2518');
    expect(hash128('h:track\u0000page_view\u00001764000000000\u0000\u0000{"a":1,"é":"😀"}')).toBe('1cb26eaae831911308f23c5e771db4e6');
    expect(hash128('x'.repeat(1000))).toBe('aee5273b819a79420a49135554ec196d');
    expect(uuidv7At(1764000000123, hash128('citylens:42'))).toBe('019ab697-e87b-73da-aea0-90260cbbb64f');
    expect(uuidv7At(0, 'f'.repeat(32))).toBe('00000000-0000-7fff-bfff-ffffffffffff');
    expect(uuidv7At(2 ** 48 + 5, '0123456789abcdef0123456789abcdef')).toBe('ffffffff-ffff-7012-b345-6789abcdef01');
    expect(uuidv7At(1764000000123.7, 'abc')).toBe('019ab697-e87b-7abc-8000-000000000000');
    expect(uuidv7At(-5, '0123456789ABCDEF0123456789abcdef')).toBe('00000000-0000-7012-b345-6789ABCDEF01');
    // An event's id written straight from the hash: the same text as through the hash's hex.
    expect(uuidv7OfParts(1764000000123, ['citylens:42'])).toBe('019ab697-e87b-73da-aea0-90260cbbb64f');
    const times = [0, -5, 1.5, 1764000000123.7, 2 ** 48 - 1, 2 ** 48 + 5, 65535, 65536];
    for (let n = 0; n < 3000; n++) {
      const parts = [`project-${n % 7}`, `device-${n}`, n % 2 ? `e:${n}` : `h:${hash128(String(n))}`];
      const t = times[n % times.length]! + (n > 100 ? n * 7919 : 0);
      expect(uuidv7OfParts(t, parts)).toBe(uuidv7At(t, hash128Joined(parts)));
    }
  });

  it('reads ISO 8601 times exactly as Date.parse does, the common form and every other', () => {
    const texts = [
      '2026-11-29T10:11:12.123Z', '2024-02-29T12:00:00.000Z', '2026-02-28T23:59:59.999Z', '2026-03-31T00:00:00.000Z', '1000-01-01T00:00:00.000Z',
      '0999-11-29T10:11:12.123Z', '0001-01-01T00:00:00.000Z', '9999-12-31T23:59:59.999Z', '2026-11-29T10:11:12Z', '2026-11-29T10:11:12.123+01:00',
      '2026-11-29T10:11:12.1234Z', '2026-13-01T00:00:00.000Z', '2026-11-29T10:60:00.000Z', '2026-11-29T24:00:00.000Z', '2026x11-29T10:11:12.123Z',
      '2026-11-29 10:11:12.123Z', '2026-11-29T10:11:12,123Z', '2026-11-29T10:11:12.12aZ', '', 'not a time',
    ];
    for (let i = 0; i < 5000; i++) texts.push(new Date(-62e9 + i * 1_299_817_019_101 + (i % 997)).toISOString());
    for (const t of texts) expect([t, parseIsoTime(t)]).toEqual([t, Date.parse(t)]);
  });

  it('takes a time by hand only where the datetime schema would take it too', () => {
    const schema = z.iso.datetime({ offset: true });
    const texts = ['2026-11-29T10:11:12.123Z', '2026-02-28T23:59:59.999Z', '2026-02-29T00:00:00.000Z', '2026-04-31T00:00:00.000Z', '2026-11-29T23:59:60.000Z',
      '2026-00-10T00:00:00.000Z', '2026-11-00T00:00:00.000Z', '2026-11-29T10:11:12.123z', '2026-11-29t10:11:12.123Z', '+02026-11-29T10:11:12.12Z',
      '2026-11-29T10:11:12.1-3Z', '２０２６-11-29T10:11:12.123Z', '0000-01-01T00:00:00.000Z'];
    for (let i = 0; i < 2000; i++) texts.push(new Date(-62e9 + i * 99_817_019_101 + (i % 997)).toISOString());
    let taken = 0;
    for (const t of texts) {
      const ms = commonIsoTime(t);
      if (ms === null) continue;
      taken++;
      expect([t, schema.safeParse(t).success, ms]).toEqual([t, true, Date.parse(t)]);
    }
    expect(taken).toBeGreaterThan(1000);
    // Month ends and leap days by hand (the end of every month must not fall back to the regex),
    // days a month lacks to the schema, which refuses them.
    for (const t of ['2024-02-29T12:00:00.000Z', '2000-02-29T00:00:00.000Z', '2026-03-31T23:59:59.999Z', '2026-04-30T00:00:00.000Z', '2026-12-31T10:00:00.000Z']) {
      expect([t, commonIsoTime(t)]).toEqual([t, Date.parse(t)]);
    }
    for (const t of ['2026-02-29T00:00:00.000Z', '1900-02-29T00:00:00.000Z', '2026-04-31T00:00:00.000Z', '2026-06-31T00:00:00.000Z', '2026-12-32T00:00:00.000Z']) {
      expect([t, commonIsoTime(t), schema.safeParse(t).success]).toEqual([t, null, false]);
    }
    // Through the route's check: a time the hand path refuses still meets the schema, or is refused.
    const ctx = { receivedAtMs: Date.parse('2026-11-30T00:00:00.000Z'), ip: '203.0.113.1', userAgent: 'ua', geo: NO_GEO };
    const at = (t: string) => normalizeEvent({ type: 'track', payload: { name: 'x', properties: { __timestamp: t } } }, ctx, 0);
    expect(at('2026-11-29T10:11:12.123Z')).toMatchObject({ ok: true, event: { createdAtMs: Date.parse('2026-11-29T10:11:12.123Z') } });
    expect(at('2026-11-29T10:11:12+01:00')).toMatchObject({ ok: true, event: { createdAtMs: Date.parse('2026-11-29T09:11:12Z') } });
    for (const bad of ['2026-11-29T23:59:60.000Z', '2026-02-30T00:00:00.000Z', '2026-11-29 10:11:12.123Z', '2026-11-29T10:11:12.12aZ']) expect(at(bad)).toMatchObject({ ok: false });
  });

  it('hashes parts as their U+0000-joined text, without joining them', () => {
    const samples = [[''], ['', ''], ['a', 'b'], ['track', 'page_view', '1764000000000', '', '{"a":1,"é":"😀"}'], ['p', 'd\u0000x', 'e:1'], ['x'.repeat(300), '', 'y']];
    for (const parts of samples) expect(hash128Joined(parts)).toBe(hash128(parts.join('\u0000')));
    for (let n = 0; n < 200; n++) {
      const parts = Array.from({ length: 1 + (n % 5) }, (_, i) => String.fromCharCode(...Array.from({ length: (n * 7 + i * 13) % 40 }, (_, j) => (n * 31 + i * 17 + j * 101) % 0xffff)));
      expect(hash128Joined(parts)).toBe(hash128(parts.join('\u0000')));
    }
  });

  it('refuses prototype keys and deep nesting at any depth', () => {
    expect(checkPropertiesShape(JSON.parse('{"a":{"b":[{"__proto__":1}]}}'))).toMatch(/__proto__/);
    expect(checkPropertiesShape({ constructor: 1 })).toMatch(/constructor/);
    let deep: unknown = 1;
    for (let i = 0; i < 12; i++) deep = [deep];
    expect(checkPropertiesShape({ deep })).toMatch(/nested/);
    expect(checkPropertiesShape({ a: { b: { c: 1 } }, list: [1, 2, { x: 'y' }] })).toBeNull();
  });
});

describe('dedup index', () => {
  it('fingerprints are small non-negative integers, stable across calls', () => {
    for (const k of ['', 'e:a', 'h:0123456789abcdef', 'e:\u{1F600}\u00e9']) {
      const fp = fingerprint(k);
      expect(fp).toBe(fingerprint(k));
      expect(Number.isInteger(fp) && fp >= 0 && fp <= 0x7fffffff).toBe(true);
    }
    expect(fingerprint('e:a')).not.toBe(fingerprint('e:b'));
    expect(Array.from(decodeFingerprints(encodeFingerprints([0, 1, 0x7fffffff])))).toEqual([0, 1, 0x7fffffff]);
  });

  it('keeps every chunk a colliding fingerprint names, and forgets only the chunk removed', () => {
    const [a, b] = collidingKeys('k');
    expect(a).not.toBe(b);
    const fp = fingerprint(a);
    expect(fingerprint(b)).toBe(fp);
    const index = new SeenIndex();
    expect(index.candidates(fp)).toEqual([]);
    index.addChunk(1, [fp, fingerprint('other')]);
    index.addChunk(2, [fp]);
    index.add(fp, 2); // the same chunk twice is one candidate
    expect(index.candidates(fp)).toEqual([1, 2]);
    index.removeChunk(1, [fp, fingerprint('other')]);
    expect(index.candidates(fp)).toEqual([2]);
    expect(index.candidates(fingerprint('other'))).toEqual([]);
    index.removeChunk(2, [fp]);
    expect(index.candidates(fp)).toEqual([]);
    expect(index.fingerprints).toBe(0);
  });
});
