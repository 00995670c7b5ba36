// Bounded reads: cursor pages that serve every event and session marker exactly once (ties on time
// included), windows that never group sessions outside them, profiles folded in ClickHouse, and a
// per-project read budget.
import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { ApiError } from '../src/errors';
import { foldProfile, type ProfileOp } from '../src/profiles/fold';
import { decodeEventsCursor, decodeSessionsCursor, encodeEventsCursor, encodeSessionsCursor } from '../src/read/cursor';
import type { ClickHouse } from '../src/clickhouse/client';
import { compareEventPositions, listEvents } from '../src/read/events';
import { readProfile } from '../src/read/profiles';
import { listSessions } from '../src/read/sessions';
import { ch, createProject, getJson, postBatch, trackEvent, waitUntil, type TestProject } from './helpers';
import { rng, shuffle } from './session-history';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;

type EventItem = { id: string; name: string; deviceId: string; sessionId: string; createdAt: string; properties: Record<string, unknown> };
type EventsBody = { events: EventItem[]; nextCursor: string | null };
type SessionItem = { id: string; deviceId: string; startedAt: string; endedAt: string | null; eventCount: number; durationMs: number };
type SessionsBody = { sessions: SessionItem[]; nextCursor: string | null };
type ErrorBody = { error: { code: string; message: string } };

/** Follows nextCursor from the first page to the last; the query is given on the first page only. */
async function allPages<T>(p: TestProject, path: string, query: string, limit: number, items: (b: never) => T[]): Promise<{ items: T[]; pages: number }> {
  const out: T[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const url: string = cursor ? `${path}?limit=${limit}&cursor=${cursor}` : `${path}?limit=${limit}&${query}`;
    const res = await getJson<{ nextCursor: string | null }>(p, url);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const page = items(res.body as never);
    expect(page.length).toBeLessThanOrEqual(limit);
    if (res.body.nextCursor !== null) expect(page).toHaveLength(limit);
    out.push(...page);
    cursor = res.body.nextCursor;
    pages++;
    if (pages > 1000) throw new Error('pagination does not end');
  } while (cursor !== null);
  return { items: out, pages };
}

/** ClickHouse that refuses any query grouping more than `maxRows` keys. */
function groupingAtMost(maxRows: number): ClickHouse {
  const base = ch();
  const capped = (sql: string) => `${sql}\nSETTINGS max_rows_to_group_by = ${maxRows}, group_by_overflow_mode = 'throw'`;
  return { ...base, query: (sql, params, lists) => base.query(capped(sql), params, lists) };
}

const rankOf = (e: EventItem) => (e.name === 'session_end' ? 2 : e.name === 'session_start' ? 0 : 1);

/** The list's order: createdAt, then session_end / events / session_start, then the tie-break key. */
function expectEventOrder(events: EventItem[]) {
  for (let i = 1; i < events.length; i++) {
    const a = events[i - 1]!;
    const b = events[i]!;
    const ta = Date.parse(a.createdAt);
    const tb = Date.parse(b.createdAt);
    expect(ta).toBeGreaterThanOrEqual(tb);
    if (ta === tb) expect(rankOf(a)).toBeGreaterThanOrEqual(rankOf(b));
  }
}

describe('cursors', () => {
  it('round-trip their window and position, and refuse anything else with 400 invalid_cursor', () => {
    const window = { deviceId: 'vélo-7 ✓', sinceMs: 1_000, untilMs: 2_000 };
    const c = encodeEventsCursor(window, { atMs: 1_500, rank: 2, key: 'abc' });
    expect(c).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodeEventsCursor(c)).toEqual({ window, after: { atMs: 1_500, rank: 2, key: 'abc' } });
    const s = encodeSessionsCursor({ sinceMs: 0, untilMs: 10 }, { startedAtMs: 5, id: 'x' });
    expect(decodeSessionsCursor(s)).toEqual({ window: { sinceMs: 0, untilMs: 10 }, after: { startedAtMs: 5, id: 'x' } });

    const b64 = (v: unknown) => btoa(JSON.stringify(v)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const bad = [
      'not a cursor!',
      'A',
      b64({ v: 1 }),
      b64({ v: 1, l: 'events', w: { s: 0, u: 10 }, t: 5, r: 7, k: 'x' }),
      b64({ v: 1, l: 'events', w: { s: 10, u: 0 }, t: 5, r: 1, k: 'x' }),
      b64({ v: 1, l: 'events', w: { s: 0, u: 10 }, t: 0.5, r: 1, k: 'x' }),
      b64({ v: 1, l: 'events', w: { s: 0, u: 10 }, t: 5, r: 1, k: 'x', extra: true }),
      s, // a sessions cursor is not an events cursor
      c.slice(0, -3),
    ];
    for (const text of bad) {
      let err: unknown;
      try {
        decodeEventsCursor(text);
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(ApiError);
      expect(err).toMatchObject({ status: 400, code: 'invalid_cursor' });
    }
  });

  it('orders events by createdAt, then session_end / event / session_start, then key', () => {
    const positions = shuffle(
      [
        { atMs: 5, rank: 2 as const, key: 'b' },
        { atMs: 5, rank: 2 as const, key: 'a' },
        { atMs: 5, rank: 1 as const, key: 'z' },
        { atMs: 5, rank: 1 as const, key: 'c' },
        { atMs: 5, rank: 0 as const, key: 'y' },
        { atMs: 4, rank: 2 as const, key: 'z' },
      ],
      rng(3),
    );
    expect(positions.sort(compareEventPositions).map((p) => `${p.atMs}${p.rank}${p.key}`)).toEqual(['52b', '52a', '51z', '51c', '50y', '42z']);
  });
});

describe('GET /v1/events pages', () => {
  it('serve every event and session marker exactly once and in order, with many events on the same instant', async () => {
    const p = await createProject('reads-pages');
    // Two devices, three sessions each, at the same instants: 4 instants per session, 5 events per
    // instant. Markers share their instant with events, and the two devices' markers share theirs.
    const base = Math.floor((Date.now() - 2 * DAY) / 1000) * 1000;
    const devices = ['pager-a', 'pager-b'];
    const events = [];
    let seq = 0;
    for (const deviceId of devices) {
      for (let s = 0; s < 3; s++) {
        for (let k = 0; k < 4; k++) {
          for (let n = 0; n < 5; n++) {
            events.push(trackEvent('tick', { __deviceId: deviceId, __timestamp: base + s * 2 * HOUR + k * MIN, __eventId: `${deviceId}-${seq}`, seq }));
            seq++;
          }
        }
      }
    }
    const res = await postBatch(p, { events: shuffle(events, rng(11)) });
    expect(res.status).toBe(202);
    expect(((await res.json()) as { accepted: number }).accepted).toBe(120);

    const window = `since=${base - HOUR}&until=${base + 8 * HOUR}`;
    const full = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?${window}&limit=1000`),
      (r) => r.body.events.length === 120 + 12,
    );
    const reference = full.body.events;
    expect(full.body.nextCursor).toBeNull();
    expectEventOrder(reference);
    expect(new Set(reference.map((e) => e.id)).size).toBe(reference.length);
    const ticks = reference.filter((e) => e.name === 'tick');
    expect(new Set(ticks.map((e) => e.properties.seq)).size).toBe(120);
    const sessionIds = new Set(ticks.map((e) => e.sessionId));
    expect(sessionIds.size).toBe(6);
    for (const id of sessionIds) {
      expect(reference.filter((e) => e.sessionId === id && e.name === 'session_start')).toHaveLength(1);
      expect(reference.filter((e) => e.sessionId === id && e.name === 'session_end')).toHaveLength(1);
    }

    for (const limit of [1, 2, 3, 7, 64]) {
      const { items, pages } = await allPages<EventItem>(p, '/v1/events', window, limit, (b: EventsBody) => b.events);
      expect(items.map((e) => e.id), `limit ${limit}`).toEqual(reference.map((e) => e.id));
      expect(pages).toBe(Math.ceil(reference.length / limit));
    }

    // One device, page after page of five: that device's 60 events and 6 markers, once each.
    const one = await allPages<EventItem>(p, '/v1/events', `${window}&deviceId=pager-a`, 5, (b: EventsBody) => b.events);
    expect(one.items.map((e) => e.id)).toEqual(reference.filter((e) => e.deviceId === 'pager-a').map((e) => e.id));
    expect(one.items).toHaveLength(66);
  });

  it('answers 400 invalid_cursor to a malformed or tampered cursor, or one from another query', async () => {
    const p = await createProject('reads-bad-cursor');
    const now = Date.now();
    const batch = Array.from({ length: 4 }, (_, i) => trackEvent('e', { __deviceId: 'c-1', __timestamp: now - i * MIN, __eventId: `c-${i}` }));
    expect((await postBatch(p, { events: batch })).status).toBe(202);
    const first = await waitUntil(
      () => getJson<EventsBody>(p, '/v1/events?deviceId=c-1&limit=2'),
      (r) => r.body.nextCursor !== null,
    );
    const cursor = first.body.nextCursor!;
    expect((await getJson<EventsBody>(p, `/v1/events?cursor=${cursor}&limit=2&deviceId=c-1`)).status).toBe(200);

    const flipped = cursor.slice(0, 10) + (cursor[10] === 'A' ? 'B' : 'A') + cursor.slice(11);
    for (const query of [
      'cursor=%%%',
      'cursor=bm90IGpzb24',
      `cursor=${flipped}`,
      `cursor=${cursor.slice(0, cursor.length - 5)}`,
      `cursor=${cursor}&deviceId=c-2`,
      `cursor=${cursor}&since=0`,
    ]) {
      const res = await getJson<ErrorBody>(p, `/v1/events?${query}`);
      expect(res.status, query).toBe(400);
      expect(res.body.error.code, query).toBe('invalid_cursor');
    }
    const sessions = await getJson<ErrorBody>(p, `/v1/sessions?cursor=${cursor}`);
    expect(sessions.status).toBe(400);
    expect(sessions.body.error.code).toBe('invalid_cursor');
  });

  it('holds a hand-made cursor to the 92-day bound of a read across all devices', async () => {
    const p = await createProject('reads-forged-cursor');
    const wide = { sinceMs: -8.64e15, untilMs: 8.64e15 };
    const forged = [
      ['/v1/events', encodeEventsCursor(wide, { atMs: 8.64e15, rank: 2, key: '~' })],
      ['/v1/sessions', encodeSessionsCursor(wide, { startedAtMs: 8.64e15, id: '~' })],
    ] as const;
    for (const [path, cursor] of forged) {
      const res = await getJson<ErrorBody>(p, `${path}?cursor=${cursor}`);
      expect(res.status, path).toBe(400);
      expect(res.body.error.code, path).toBe('invalid_cursor');
    }
    // The same window for one device is a window any page of that device may have.
    const one = { deviceId: 'c-1', ...wide };
    expect((await getJson<EventsBody>(p, `/v1/events?cursor=${encodeEventsCursor(one, { atMs: 8.64e15, rank: 2, key: '~' })}`)).status).toBe(200);
    // At the bound itself a cursor is one the API issues.
    const now = Date.now();
    const bound = { sinceMs: now - 92 * 24 * 3_600_000, untilMs: now };
    expect((await getJson<EventsBody>(p, `/v1/events?cursor=${encodeEventsCursor(bound, { atMs: bound.untilMs, rank: 2, key: '~' })}`)).status).toBe(200);
  });
});

describe('GET /v1/sessions pages', () => {
  it('serve every session exactly once, newest start first, ties on startedAt included', async () => {
    const p = await createProject('reads-session-pages');
    const base = Math.floor((Date.now() - DAY) / 1000) * 1000;
    // Three devices, four sessions each, all starting at the same four instants.
    const events = [];
    for (const deviceId of ['s-a', 's-b', 's-c']) {
      for (let s = 0; s < 4; s++) {
        for (let k = 0; k < 3; k++) events.push(trackEvent('ping', { __deviceId: deviceId, __timestamp: base + s * 2 * HOUR + k * MIN, __eventId: `${deviceId}-${s}-${k}` }));
      }
    }
    expect((await postBatch(p, { events })).status).toBe(202);
    const window = `since=${base - HOUR}&until=${base + 10 * HOUR}`;
    const full = await waitUntil(
      () => getJson<SessionsBody>(p, `/v1/sessions?${window}&limit=1000`),
      (r) => r.body.sessions.length === 12 && r.body.sessions.every((s) => s.eventCount === 3),
    );
    const reference = full.body.sessions;
    expect(full.body.nextCursor).toBeNull();
    expect(new Set(reference.map((s) => s.id)).size).toBe(12);
    for (let i = 1; i < reference.length; i++) {
      const [a, b] = [reference[i - 1]!, reference[i]!];
      expect(Date.parse(a.startedAt)).toBeGreaterThanOrEqual(Date.parse(b.startedAt));
      if (a.startedAt === b.startedAt) expect(a.id > b.id).toBe(true);
    }
    for (const limit of [1, 2, 5]) {
      const { items } = await allPages<SessionItem>(p, '/v1/sessions', window, limit, (b: SessionsBody) => b.sessions);
      expect(items.map((s) => s.id), `limit ${limit}`).toEqual(reference.map((s) => s.id));
    }
    const one = await allPages<SessionItem>(p, '/v1/sessions', `${window}&deviceId=s-b`, 3, (b: SessionsBody) => b.sessions);
    expect(one.items.map((s) => s.id)).toEqual(reference.filter((s) => s.deviceId === 's-b').map((s) => s.id));
  });
});

describe('reads bounded to their window', () => {
  it('group only the sessions that can overlap the window, on their current version', async () => {
    const p = await createProject('reads-window');
    const B = Date.UTC(2026, 0, 10, 12);
    const row = (id: string, startMs: number, endMs: number, version: number, extra: { ended?: number; mergedInto?: string; deviceId?: string; count?: number } = {}) => ({
      project_id: p.id,
      device_id: extra.deviceId ?? 'far',
      id,
      started_at_ms: startMs,
      ended_at_ms: endMs,
      event_count: extra.count ?? 1,
      ended: extra.ended ?? 1,
      merged_into: extra.mergedInto ?? '',
      version,
      updated_at_ms: 0,
    });
    const rows = [
      // A year of older sessions, far outside the window.
      ...Array.from({ length: 2000 }, (_, i) => row(`old-${i}`, B - 365 * DAY + i * HOUR, B - 365 * DAY + i * HOUR + 10 * MIN, 1)),
      row('inside', B + 10 * MIN, B + 20 * MIN, 1, { count: 4 }),
      // Its current version grew into the window from ten days before.
      row('moved-in', B - 10 * DAY, B - 10 * DAY + 5 * MIN, 1, { ended: 0, count: 2 }),
      row('moved-in', B - 10 * DAY, B + 5 * MIN, 2, { count: 9 }),
      // An older version overlapped the window; the current one does not.
      row('moved-out', B + 30 * MIN, B + 31 * MIN, 1, { ended: 0 }),
      row('moved-out', B + 3 * HOUR, B + 4 * HOUR, 2),
      // Absorbed into `inside` by late data: gone from the lists.
      row('merged', B + 40 * MIN, B + 45 * MIN, 1),
      row('merged', B + 40 * MIN, B + 45 * MIN, 2, { mergedInto: 'inside' }),
      // Overlaps the window, both ends outside it: a session, but no marker in the window.
      row('spanning', B - HOUR, B + 2 * HOUR, 1),
      row('other-device', B + 15 * MIN, B + 16 * MIN, 1, { deviceId: 'near' }),
    ];
    await ch().insert('sessions', shuffle(rows, rng(5)));

    const window = `deviceId=far&since=${B}&until=${B + HOUR}`;
    const sessions = await getJson<SessionsBody>(p, `/v1/sessions?${window}`);
    expect(sessions.status).toBe(200);
    expect(sessions.body.sessions.map((s) => [s.id, s.eventCount])).toEqual([
      ['inside', 4],
      ['spanning', 1],
      ['moved-in', 9],
    ]);
    expect(sessions.body.sessions[2]).toMatchObject({ startedAt: new Date(B - 10 * DAY).toISOString(), endedAt: new Date(B + 5 * MIN).toISOString() });
    const paged = await allPages<SessionItem>(p, '/v1/sessions', window, 1, (b: SessionsBody) => b.sessions);
    expect(paged.items.map((s) => s.id)).toEqual(['inside', 'spanning', 'moved-in']);

    const events = await getJson<EventsBody>(p, `/v1/events?${window}`);
    expect(events.status).toBe(200);
    expect(events.body.events.map((e) => [e.sessionId, e.name, e.createdAt])).toEqual([
      ['inside', 'session_end', new Date(B + 20 * MIN).toISOString()],
      ['inside', 'session_start', new Date(B + 10 * MIN).toISOString()],
      ['moved-in', 'session_end', new Date(B + 5 * MIN).toISOString()],
    ]);
    const pagedEvents = await allPages<EventItem>(p, '/v1/events', window, 1, (b: EventsBody) => b.events);
    expect(pagedEvents.items.map((e) => e.id)).toEqual(events.body.events.map((e) => e.id));

    // The whole project in the window: the other device's session joins in.
    const all = await getJson<SessionsBody>(p, `/v1/sessions?since=${B}&until=${B + HOUR}`);
    expect(all.body.sessions.map((s) => s.id)).toEqual(['other-device', 'inside', 'spanning', 'moved-in']);

    // Both lists group only the window's candidates: a cap of 50 keys, which grouping the project's
    // 2000 older sessions would break, is never reached.
    const few = groupingAtMost(50);
    await expect(few.query('SELECT id, argMax(started_at_ms, version) AS s FROM sessions WHERE project_id = {p:String} GROUP BY id', { p: p.id })).rejects.toThrow(
      /GROUP BY/i,
    );
    const q = { projectId: p.id, window: { sinceMs: B, untilMs: B + HOUR }, after: null, limit: 100 };
    expect((await listSessions(few, q)).sessions.map((s) => s.id)).toEqual(['other-device', 'inside', 'spanning', 'moved-in']);
    expect((await listEvents(few, q)).events.map((e) => `${e.sessionId} ${e.name}`)).toEqual([
      'inside session_end',
      'other-device session_end',
      'other-device session_start',
      'inside session_start',
      'moved-in session_end',
    ]);
  });
});

describe('profiles folded in ClickHouse', () => {
  it('match the reference fold for shuffled operations with ties, copies and counters reset by identify', async () => {
    const p = await createProject('reads-profiles');
    const rand = rng(77);
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
    const ops: ProfileOp[] = [];
    for (let i = 0; i < 120; i++) {
      const createdAtMs = Date.UTC(2026, 0, 1) + Math.floor(rand() * 20) * 1000; // many ties on time
      const id = crypto.randomUUID();
      const r = rand();
      if (r < 0.3) {
        const properties: Record<string, unknown> = {};
        for (const k of ['plan', 'logins', 'credits', 'email']) if (rand() < 0.5) properties[k] = rand() < 0.6 ? Math.floor(rand() * 50) : `v${i}`;
        ops.push({ id, type: 'identify', createdAtMs, properties });
      } else {
        // As the normaliser writes them: the client's properties first, then property and value.
        const user: Record<string, unknown> = rand() < 0.3 ? { meta: { property: 'decoy', value: 1000 } } : rand() < 0.2 ? { property: 'shadowed', note: 'x' } : {};
        const properties = { ...user, property: pick(['logins', 'credits', 'visits']), value: Math.floor(rand() * 9) - 3 };
        ops.push({ id, type: r < 0.8 ? 'increment' : 'decrement', createdAtMs, properties });
      }
    }
    const copies = ops.filter(() => rand() < 0.2);
    await ch().insert(
      'profile_ops',
      shuffle([...ops, ...copies], rand).map((op) => ({
        project_id: p.id,
        profile_id: 'u-fold',
        id: op.id,
        type: op.type,
        created_at_ms: op.createdAtMs,
        properties: JSON.stringify(op.properties),
      })),
    );
    const expected = foldProfile(ops)!;
    expect(await readProfile(ch(), p.id, 'u-fold')).toEqual(expected);
    const res = await getJson<{ id: string; properties: Record<string, unknown> }>(p, '/v1/profiles/u-fold');
    expect(res.body).toMatchObject({ id: 'u-fold', properties: expected.properties });
    expect(await readProfile(ch(), p.id, 'nobody')).toBeNull();
  });
});

describe('read rate limit', () => {
  it('answers 429 rate_limited with Retry-After once a project spends its read budget; other projects still read', async () => {
    const p = await createProject('reads-limited');
    const q = await createProject('reads-unlimited');
    /** Spends the budget with malformed reads (cheap, and they count too) until one answers 429. */
    const exhaust = async (): Promise<Response> => {
      for (let round = 0; round < 200; round++) {
        const answers = await Promise.all(Array.from({ length: 100 }, () => SELF.fetch('http://gw/v1/events?limit=0', { headers: p.headers })));
        let limited: Response | null = null;
        for (const res of answers) {
          if (res.status === 429 && !limited) limited = res;
          else await res.body?.cancel();
        }
        if (limited) return limited;
        expect(answers.every((r) => r.status === 400)).toBe(true);
      }
      throw new Error('the read budget never ran out');
    };
    const limited = await exhaust();
    expect(limited.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(((await limited.json()) as ErrorBody).error.code).toBe('rate_limited');

    // Every read route of the project shares the budget (tried again should the budget's window
    // have rolled over between the two requests).
    let statuses: number[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      if (attempt > 0) await (await exhaust()).body?.cancel();
      const answers = await Promise.all(['/v1/sessions', '/v1/profiles/u-1'].map((path) => SELF.fetch(`http://gw${path}`, { headers: p.headers })));
      statuses = answers.map((r) => r.status);
      for (const r of answers) await r.body?.cancel();
      if (statuses.every((s) => s === 429)) break;
    }
    expect(statuses).toEqual([429, 429]);
    // Another project's budget is its own.
    expect((await getJson<EventsBody>(q, '/v1/events')).status).toBe(200);
  });
});
