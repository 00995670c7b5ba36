// A device object whose outbox cannot be flushed backs off, and new events do not undo the back-off.
import { env, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { FLUSH_SAFETY_MS, type DeviceObject } from '../durable-objects/device-object';
import { OutboxStore } from '../src/device/outbox-store';
import { REKEY_MAX_BYTES, type MetaStore } from '../src/device/schema';
import { deviceStub } from '../src/ingest/accept';
import { ch, countEvents, createProject, postBatch, trackEvent, waitUntil } from './helpers';

describe('device outbox flush', () => {
  it('keeps its back-off while the queue refuses, through new events, and flushes once it accepts', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'backoff-1');
    const send = (n: number) => postBatch(p, { events: Array.from({ length: n }, (_, i) => trackEvent('b', { __deviceId: 'backoff-1', __timestamp: Date.now() - 1000 + i })) });
    // The real queue binding, made to refuse sends (a queue outage), for this object only.
    const realQueue = await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      const queue = self.env.INGEST_QUEUE;
      self.env = { ...self.env, INGEST_QUEUE: { send: () => Promise.reject(new Error('queue down')), sendBatch: () => Promise.reject(new Error('queue down')) } as unknown as typeof queue };
      return queue;
    });
    expect(((await send(3)).status)).toBe(202);
    // The call's own flush and six alarms fail: a back-off of about two minutes, so no alarm fires on
    // its own during the test.
    for (let i = 0; i < 6; i++) await runDurableObjectAlarm(stub);
    const backoff = await runInDurableObject(stub, (_o, state) => state.storage.getAlarm());
    expect(backoff).not.toBeNull();
    // More events while it backs off: the alarm stays where the back-off put it.
    expect(((await send(2)).status)).toBe(202);
    expect(await runInDurableObject(stub, (_o, state) => state.storage.getAlarm())).toBe(backoff);
    // The queue accepts again: the next alarm flushes everything, once.
    await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      self.env = { ...self.env, INGEST_QUEUE: realQueue };
    });
    await runDurableObjectAlarm(stub);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 5);
    expect(await countEvents(p.id)).toEqual({ rows: 5, ids: 5 });
  });
});

describe('device outbox flush from the call', () => {
  type Queue = typeof env.INGEST_QUEUE;
  const useQueue = (stub: DurableObjectStub<DeviceObject>, queue: Queue) =>
    runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      const real = self.env.INGEST_QUEUE;
      self.env = { ...self.env, INGEST_QUEUE: queue };
      return real;
    });
  const alarmOf = (stub: DurableObjectStub<DeviceObject>) => runInDurableObject(stub, (_o, state) => state.storage.getAlarm());

  it("sends a call's rows itself, with no alarm run, and leaves only an alarm a minute out", async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'direct-1');
    const before = Date.now();
    const r = await postBatch(p, { events: Array.from({ length: 3 }, (_, i) => trackEvent('d', { __deviceId: 'direct-1', __timestamp: before - 1000 + i })) });
    expect(r.status).toBe(202);
    // Stored while the object's only alarm is tens of seconds away: no alarm carried them.
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
    const alarm = await alarmOf(stub);
    expect(alarm).not.toBeNull();
    expect(alarm! - before).toBeGreaterThan(FLUSH_SAFETY_MS / 2);
    expect(alarm! - Date.now()).toBeLessThanOrEqual(FLUSH_SAFETY_MS);
    expect((await stub.state())?.pendingRows).toBe(0);
  });

  it('keeps the alarm at the end of a session that goes idle sooner than the safety minute', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'direct-idle');
    const gapMs = 30 * 60 * 1000;
    // An event whose session goes idle 15 s from now.
    const r = await postBatch(p, { events: [trackEvent('idle', { __deviceId: 'direct-idle', __timestamp: Date.now() - gapMs + 15_000 })] });
    expect(r.status).toBe(202);
    // Read as the call left it (the call plans the alarm before it answers).
    const alarm = await alarmOf(stub);
    expect(alarm).not.toBeNull();
    expect(alarm! - Date.now()).toBeLessThanOrEqual(15_000);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
  });

  const gapMs = 30 * 60 * 1000;
  /**
   * A device whose first call, an hours-old event (its session ends at once), left only the safety
   * minute's alarm, planned; `post(atMs)` sends it one more event.
   */
  async function plannedDevice(id: string) {
    const p = await createProject();
    const stub = deviceStub(env, p.id, id);
    const post = (atMs: number) => postBatch(p, { events: [trackEvent('planned', { __deviceId: id, __timestamp: atMs })] });
    expect((await post(Date.now() - 3 * 3_600_000)).status).toBe(202);
    const planned = await alarmOf(stub);
    expect(planned).not.toBeNull();
    expect(planned! - Date.now()).toBeGreaterThan(FLUSH_SAFETY_MS / 2);
    return { p, stub, post, planned: planned! };
  }

  it('plans the alarm once, leaves it for calls that need nothing sooner, and pulls it for a session that goes idle first', async () => {
    const { p, stub, post, planned } = await plannedDevice('planned-1');
    expect((await post(Date.now() - 2 * 3_600_000)).status).toBe(202);
    expect(await alarmOf(stub)).toBe(planned);
    // A session that goes idle in 15 s: the planned alarm would be too late for its end.
    expect((await post(Date.now() - gapMs + 15_000)).status).toBe(202);
    const pulled = await alarmOf(stub);
    expect(pulled).toBeLessThan(planned);
    expect(pulled! - Date.now()).toBeLessThanOrEqual(15_000);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
  });

  it('plans a new alarm after an erasure deleted the one it had planned', async () => {
    const p = await createProject();
    const id = 'planned-erased';
    const stub = deviceStub(env, p.id, id);
    const post = () => postBatch(p, { events: [trackEvent('planned', { __deviceId: id, __timestamp: Date.now() - 1000 })] });
    expect((await post()).status).toBe(202);
    expect(await alarmOf(stub)).not.toBeNull();
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    expect((await stub.erase()).whole).toBe(true);
    expect(await alarmOf(stub)).toBeNull();
    // The object's memory still knew the alarm it planned: the erasure must have made it forget.
    expect((await post()).status).toBe(202);
    const alarm = await alarmOf(stub);
    expect(alarm).not.toBeNull();
    expect(alarm! - Date.now()).toBeLessThanOrEqual(FLUSH_SAFETY_MS);
  });

  it('a planning that failed leaves nothing planned: the next call plans again and pulls the alarm for a session going idle first', async () => {
    const { stub, post, planned } = await plannedDevice('planned-failed');
    // The next planning fails once (its getAlarm), for a call whose session goes idle in 15 s.
    await runInDurableObject(stub, (_o, state) => {
      const storage = state.storage as unknown as { getAlarm: () => Promise<number | null> };
      const real = storage.getAlarm.bind(storage);
      storage.getAlarm = () => {
        storage.getAlarm = real;
        return Promise.reject(new Error('getAlarm failed'));
      };
    });
    expect((await post(Date.now() - gapMs + 15_000)).status).toBe(202);
    expect(await alarmOf(stub)).toBe(planned);
    // A call that needs nothing sooner itself: it must not trust the plan made before that session.
    expect((await post(Date.now() - 2 * 3_600_000)).status).toBe(202);
    const pulled = await alarmOf(stub);
    expect(pulled! - Date.now()).toBeLessThanOrEqual(15_000);
  });

  it('a planning that an erasure overtook notes nothing', async () => {
    const p = await createProject();
    const id = 'planned-overtaken';
    const stub = deviceStub(env, p.id, id);
    expect((await postBatch(p, { events: [trackEvent('seed', { __deviceId: id, __timestamp: Date.now() - 3 * 3_600_000 })] })).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    const planned = await runInDurableObject(stub, async (o: DeviceObject, state) => {
      const self = o as unknown as { scheduleAlarm: (nowMs: number, afterCall: boolean) => Promise<void>; plannedAlarm: unknown };
      // A planning that waits on its getAlarm while the object's whole erasure runs.
      const storage = state.storage as unknown as { getAlarm: () => Promise<number | null> };
      const real = storage.getAlarm.bind(storage);
      let release = () => {};
      storage.getAlarm = () => {
        storage.getAlarm = real;
        return new Promise((resolve) => (release = () => void real().then(resolve)));
      };
      const planning = self.scheduleAlarm(Date.now(), true);
      expect((await o.erase()).whole).toBe(true);
      release();
      await planning;
      return { noted: self.plannedAlarm, alarm: await state.storage.getAlarm() };
    });
    // Setting its alarm would leave one on the erased object; noting it would let later calls trust
    // an alarm the erasure may have deleted.
    expect(planned).toEqual({ noted: null, alarm: null });
  });

  it("takes a warm call's rows from memory without reading the outbox, and never sends a rolled-back call's", async () => {
    const p = await createProject();
    const id = 'outbox-known';
    const stub = deviceStub(env, p.id, id);
    const at = Date.now() - 60_000;
    const post = (name: string, i: number) => postBatch(p, { events: [trackEvent(name, { __deviceId: id, __timestamp: at + i })] });
    expect((await post('one', 0)).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);

    // Outbox reads from here on, and one failure on demand in the call's last step, after its outbox row.
    type Counting = SqlStorage & { outboxReads?: number; failCall?: boolean };
    await runInDurableObject(stub, (o, state) => {
      const sql = state.storage.sql as Counting;
      const exec = sql.exec.bind(sql);
      sql.outboxReads = 0;
      sql.exec = ((query: string, ...args: SqlStorageValue[]) => {
        if (/^SELECT seq\b.* FROM outbox ORDER BY seq/.test(query)) sql.outboxReads!++;
        return exec(query, ...args);
      }) as typeof sql.exec;
      const live = (o as unknown as { stores: { live: { record(...args: unknown[]): void } } }).stores.live;
      const record = live.record.bind(live);
      live.record = (...args: unknown[]) => {
        if (sql.failCall) {
          sql.failCall = false;
          throw new Error('storage failed mid-call');
        }
        record(...args);
      };
    });
    const reads = () => runInDurableObject(stub, (_o, state) => (state.storage.sql as Counting).outboxReads!);

    expect((await post('two', 1)).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 2);
    expect(await reads()).toBe(0);

    // A call whose transaction rolls back after writing its outbox row: refused, and nothing of it sent.
    await runInDurableObject(stub, (_o, state) => void ((state.storage.sql as Counting).failCall = true));
    const failed = await post('rolled-back', 2);
    expect(await failed.json()).toMatchObject({ accepted: 0, rejected: [{ index: 0, reason: 'internal', retryable: true }] });
    expect((await post('three', 3)).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
    // Its rows were forgotten with the rollback: the flushes after it read the table.
    expect(await reads()).toBeGreaterThan(0);
    await runDurableObjectAlarm(stub);
    const names = await ch().query<{ name: string }>('SELECT name FROM events WHERE project_id = {p:String} ORDER BY created_at_ms', { p: p.id });
    expect(names.map((n) => n.name)).toEqual(['one', 'two', 'three']);
    expect((await stub.state())?.pendingRows).toBe(0);
  });

  it("sends an unsent chunk as a profile erasure left it, not as the call wrote it", async () => {
    const p = await createProject();
    const id = 'erased-unsent';
    const stub = deviceStub(env, p.id, id);
    const real = await useQueue(stub, { send: () => Promise.reject(new Error('queue down')), sendBatch: () => Promise.reject(new Error('queue down')) } as unknown as Queue);
    const at = Date.now() - 1000;
    const r = await postBatch(p, {
      events: [
        { type: 'track', payload: { name: 'mine', profileId: 'prof-gone', properties: { __deviceId: id, __timestamp: at } } },
        trackEvent('theirs', { __deviceId: id, __timestamp: at + 1 }),
      ],
    });
    expect(r.status).toBe(202);
    // The call's own flush failed: both events wait in one outbox chunk written this life.
    await waitUntil(async () => (await stub.state())?.pendingRows ?? 0, (n) => n === 1);
    const erased = await stub.erase({ profileId: 'prof-gone', eventIds: [], eventTimesMs: [], sessionIds: [] });
    expect(erased.outboxEvents).toBe(1);
    await useQueue(stub, real);
    await runDurableObjectAlarm(stub);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    const names = await ch().query<{ name: string }>('SELECT name FROM events WHERE project_id = {p:String}', { p: p.id });
    expect(names.map((n) => n.name)).toEqual(['theirs']);
  });

  it('a flush lost mid-send (the object restarted) is sent by the alarm that stood within a minute', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'direct-lost');
    let sends = 0;
    // A send that never answers: the object's life ends with it under way.
    const real = await useQueue(stub, { send: () => new Promise(() => {}), sendBatch: () => ((sends += 1), new Promise(() => {})) } as unknown as Queue);
    const before = Date.now();
    expect((await postBatch(p, { events: [trackEvent('lost', { __deviceId: 'direct-lost', __timestamp: before - 1000 })] })).status).toBe(202);
    await waitUntil(async () => sends, (n) => n === 1);
    const alarm = await alarmOf(stub);
    expect(alarm).not.toBeNull();
    expect(alarm! - before).toBeLessThanOrEqual(FLUSH_SAFETY_MS + 1000);
    // Stands for the restart: a new life's outbox store and object memory (no flush under way) and a working queue.
    await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { sql: SqlStorage; meta: MetaStore; stores: { outbox: OutboxStore }; flushRun: unknown };
      self.stores.outbox = new OutboxStore(self.sql, self.meta);
      self.flushRun = null;
    });
    await useQueue(stub, real);
    expect((await stub.state())?.pendingRows).toBe(1);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 1);
    expect((await stub.state())?.pendingRows).toBe(0);
  });

  it('while its flushes fail, a call sends nothing itself: only the back-off alarm retries', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'direct-down');
    let sends = 0;
    const real = await useQueue(stub, { send: () => Promise.reject(new Error('queue down')), sendBatch: () => ((sends += 1), Promise.reject(new Error('queue down'))) } as unknown as Queue);
    const send = () => postBatch(p, { events: [trackEvent('down', { __deviceId: 'direct-down', __timestamp: Date.now() - 1000 })] });
    expect((await send()).status).toBe(202);
    await waitUntil(async () => sends, (n) => n === 1);
    // Five more failed alarms: the back-off is a minute or more, so no alarm fires by itself below.
    for (let i = 0; i < 5; i++) await runDurableObjectAlarm(stub);
    expect(sends).toBe(6);
    const backoff = await alarmOf(stub);
    expect(backoff! - Date.now()).toBeGreaterThan(30_000);
    for (let i = 0; i < 3; i++) expect((await send()).status).toBe(202);
    await new Promise((r) => setTimeout(r, 300));
    expect(sends).toBe(6);
    expect(await alarmOf(stub)).toBe(backoff);
    expect((await stub.state())?.pendingRows).toBe(4);
    await useQueue(stub, real);
    await runDurableObjectAlarm(stub);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 4);
  });

  it('calls and the alarm that arrive while a send hangs add no sends once it fails: the back-off alarm retries them', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'direct-hang');
    let sends = 0;
    const sentAt: number[] = [];
    let failSend: (err: Error) => void = () => {};
    // The first send hangs until the test fails it; any later one fails at once.
    const real = await useQueue(stub, {
      send: () => Promise.reject(new Error('unused')),
      sendBatch: () => {
        sends += 1;
        sentAt.push(Date.now());
        return sends === 1 ? new Promise((_, reject) => (failSend = reject)) : Promise.reject(new Error('queue down'));
      },
    } as unknown as Queue);
    const send = (i: number) => postBatch(p, { events: [trackEvent('hang', { __deviceId: 'direct-hang', __timestamp: Date.now() - 1000 + i })] });
    expect((await send(0)).status).toBe(202);
    await waitUntil(async () => sends, (n) => n === 1);
    // Three calls while the first send hangs: each commits and answers, none sends yet.
    for (let i = 1; i <= 3; i++) expect((await send(i)).status).toBe(202);
    expect(sends).toBe(1);
    const failures = () => runInDurableObject(stub, (o: DeviceObject) => (o as unknown as { stores: { outbox: OutboxStore } }).stores.outbox.failures());
    // Failed from within the object (its I/O belongs to it), as a real send's answer would come.
    // The alarm comes too while the send hangs: it waits for that flush, and sends nothing after its failure.
    const alarmRan = runDurableObjectAlarm(stub);
    await new Promise((r) => setTimeout(r, 100));
    const failedAt = Date.now();
    await runInDurableObject(stub, () => failSend(new Error('queue down')));
    expect(await alarmRan).toBe(true);
    await waitUntil(failures, (n) => n >= 1, { intervalMs: 20 });
    await new Promise((r) => setTimeout(r, 300));
    // The waiting calls did not each send into the outage: nothing went out before the back-off
    // alarm (2 s after the failure; it may fire by itself on a slow machine, and that send is its).
    expect(sentAt.filter((t) => t >= failedAt && t < failedAt + 1900)).toEqual([]);
    expect((await stub.state())?.pendingRows).toBe(4);
    await useQueue(stub, real);
    await runDurableObjectAlarm(stub);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 4);
  });
});

describe('device outbox resends', () => {
  it('flags a message that may have reached the queue before: after a failed send, and after the object lost its memory', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'resend-1');
    // What the object hands the queue (raw message bodies); `fail` makes a send throw once it got there.
    const sent: string[] = [];
    let fail = false;
    const capture = (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      const queue = {
        send: () => Promise.reject(new Error('unused')),
        sendBatch: async (messages: Array<{ body: unknown }>) => {
          for (const m of messages) sent.push(m.body as string);
          if (fail) throw new Error('the send reached the queue, its answer was lost');
        },
      };
      self.env = { ...self.env, INGEST_QUEUE: queue as unknown as typeof env.INGEST_QUEUE };
    };
    const send = (name: string) => postBatch(p, { events: [trackEvent(name, { __deviceId: 'resend-1', __timestamp: Date.now() - 1000 })] });
    // Whether each message that carried the event named `name` was flagged, in the order sent.
    const flagOf = (name: string) => sent.filter((b) => b.includes(`"name":"${name}"`)).map((b) => (JSON.parse(b) as { redelivery?: boolean }).redelivery ?? false);

    await runInDurableObject(stub, capture);
    expect((await send('first')).status).toBe(202);
    await waitUntil(async () => sent.length, (n) => n === 1);
    // A first send is not flagged (the consumer skips its id check).
    expect(flagOf('first')).toEqual([false]);

    // The send reaches the queue but throws: its rows stay, and their next send is flagged.
    fail = true;
    expect((await send('second')).status).toBe(202);
    await waitUntil(async () => sent.length, (n) => n === 2);
    fail = false;
    await runDurableObjectAlarm(stub);
    expect(flagOf('second')).toEqual([false, true]);

    // Again, then the object loses its memory before the retry; its next life writes a row first.
    fail = true;
    expect((await send('third')).status).toBe(202);
    await waitUntil(async () => sent.length, (n) => n === 4);
    fail = false;
    // Stands for a restart: the outbox store as a new life of the object has it (nothing in memory).
    const restart = (o: DeviceObject) => {
      const self = o as unknown as { sql: SqlStorage; meta: MetaStore; stores: { outbox: OutboxStore } };
      self.stores.outbox = new OutboxStore(self.sql, self.meta);
    };
    await runInDurableObject(stub, restart);
    expect((await send('fourth')).status).toBe(202);
    // The back-off alarm set before the restart sends both.
    await waitUntil(async () => flagOf('fourth').length, (n) => n === 1);
    expect(flagOf('third')).toEqual([false, true]);
    expect(flagOf('fourth')).toEqual([false]);

    // Once more, and this time the next life flushes before it writes anything: what it sends is flagged.
    fail = true;
    expect((await send('fifth')).status).toBe(202);
    await waitUntil(async () => flagOf('fifth').length, (n) => n === 1);
    fail = false;
    await runInDurableObject(stub, restart);
    await runDurableObjectAlarm(stub);
    expect(flagOf('fifth')).toEqual([false, true]);
  });
});

describe('device storage keys', () => {
  type Internals = { schemaReady: boolean; stores: { dedup: { reset(): void }; outbox: { forgetWritten(): void } } };
  const keyDdl = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) =>
      state.storage.sql.exec<{ sql: string }>("SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ('outbox', 'seen_chunks') ORDER BY name").toArray().map((r) => r.sql),
    );
  const sequenceRows = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) => {
      const sql = state.storage.sql;
      if (!sql.exec("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").toArray().length) return 0;
      return sql.exec<{ n: number }>("SELECT count(*) AS n FROM sqlite_sequence WHERE name IN ('outbox', 'seen_chunks')").one().n;
    });

  it("rebuilds an older object's AUTOINCREMENT keys with every row kept, and a new object has none", async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'old-keys');
    const t = Date.now() - 60_000;
    const ev = (name: string, id: string) => trackEvent(name, { __deviceId: 'old-keys', __timestamp: t, __eventId: id });
    expect((await postBatch(p, { events: [ev('one', 'id-1')] })).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 1);
    for (const ddl of await keyDdl(stub)) expect(ddl).not.toMatch(/AUTOINCREMENT/i);
    expect(await sequenceRows(stub)).toBe(0);

    // The older layout: both keys AUTOINCREMENT, and an unsent session row in the outbox.
    const sessionRow = { project_id: p.id, device_id: 'old-keys', id: 'sess-old', started_at_ms: t, ended_at_ms: t, event_count: 1, ended: 0, merged_into: '', version: 1, updated_at_ms: t };
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      const sql = state.storage.sql;
      for (const [table, key] of [['seen_chunks', 'id'], ['outbox', 'seq']] as const) {
        const ddl = sql.exec<{ sql: string }>("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", table).one().sql;
        sql.exec(`ALTER TABLE ${table} RENAME TO ${table}_was`);
        // An outbox that old had no base column either.
        sql.exec(ddl.replace(`${key} INTEGER PRIMARY KEY`, `${key} INTEGER PRIMARY KEY AUTOINCREMENT`).replace(', base TEXT', ''));
        const columns = sql.exec(`SELECT * FROM ${table} LIMIT 0`).columnNames.join(', ');
        sql.exec(`INSERT INTO ${table} (${columns}) SELECT ${columns} FROM ${table}_was`);
        sql.exec(`DROP TABLE ${table}_was`);
      }
      sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('session', 'sess-old', ?)", JSON.stringify(sessionRow));
      // A new life of the object: nothing it knew in memory.
      const self = o as unknown as Internals;
      self.schemaReady = false;
      self.stores.dedup.reset();
      self.stores.outbox.forgetWritten();
    });
    expect((await keyDdl(stub)).every((ddl) => /AUTOINCREMENT/i.test(ddl))).toBe(true);
    expect((await keyDdl(stub)).find((ddl) => ddl.includes('outbox'))).not.toMatch(/\bbase\b/);
    expect(await sequenceRows(stub)).toBeGreaterThan(0);

    // Its next call rebuilds both tables: the dedup chunk still knows id-1, the outbox row is sent.
    const again = await postBatch(p, { events: [ev('one', 'id-1'), ev('two', 'id-2')] });
    expect(await again.json()).toMatchObject({ accepted: 1, duplicates: 1, rejected: [] });
    for (const ddl of await keyDdl(stub)) expect(ddl).not.toMatch(/AUTOINCREMENT/i);
    expect((await keyDdl(stub)).find((ddl) => ddl.includes('outbox'))).toMatch(/\bbase\b/);
    expect(await sequenceRows(stub)).toBe(0);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 2);
    await waitUntil(
      async () => Number((await ch().query<{ n: number }>("SELECT count() AS n FROM sessions WHERE project_id = {p:String} AND id = 'sess-old'", { p: p.id }))[0]!.n),
      (n) => n === 1,
    );
  });

  // Rows the session upsert writes from here on (the object keeps its `sql` for its life).
  type Counted = SqlStorage & { counted?: { rows: number; statements: number } };
  const countSessionWrites = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) => {
      const sql = state.storage.sql as Counted;
      const exec = sql.exec.bind(sql);
      const counted = (sql.counted = { rows: 0, statements: 0 });
      sql.exec = ((query: string, ...args: SqlStorageValue[]) => {
        const cursor = exec(query, ...args);
        if (query.startsWith('INSERT INTO sessions')) {
          counted.statements++;
          counted.rows += cursor.rowsWritten;
        }
        return cursor;
      }) as typeof sql.exec;
    });
  const sessionWrites = (stub: DurableObjectStub<DeviceObject>) => runInDurableObject(stub, (_o, state) => (state.storage.sql as Counted).counted);
  const endIndexes = (stub: DurableObjectStub<DeviceObject>) =>
    runInDurableObject(stub, (_o, state) =>
      state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions' AND sql IS NOT NULL").toArray().map((r) => r.name),
    );

  it("writes a session row once per call that extends it, and drops an older object's end_ms index", async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'session-rows');
    const t = Date.now() - 600_000;
    const ev = (name: string, at: number) => trackEvent(name, { __deviceId: 'session-rows', __timestamp: at });
    expect((await postBatch(p, { events: [ev('one', t)] })).status).toBe(202);
    expect(await endIndexes(stub)).toEqual([]);

    // The older layout indexed end_ms; the object's next life drops the index.
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      state.storage.sql.exec('CREATE INDEX sessions_end_idx ON sessions (end_ms)');
      const self = o as unknown as Internals & { stores: { sessions: { forget(): void } } };
      self.schemaReady = false;
      self.stores.sessions.forget();
    });
    expect(await endIndexes(stub)).toEqual(['sessions_end_idx']);
    await countSessionWrites(stub);
    expect((await postBatch(p, { events: [ev('two', t + 60_000)] })).status).toBe(202);
    expect(await endIndexes(stub)).toEqual([]);
    expect((await postBatch(p, { events: [ev('three', t + 120_000)] })).status).toBe(202);
    // Two calls, each extending the one session: one row each (an index entry was a second).
    expect(await sessionWrites(stub)).toEqual({ rows: 2, statements: 2 });
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 3);
  });

  it('keeps the end_ms index for a gap short enough to pile up sessions', async () => {
    const p = await createProject('short-gap', { sessionGapMs: 60_000 });
    const stub = deviceStub(env, p.id, 'short-gap');
    const t = Date.now() - 600_000;
    const ev = (name: string, at: number) => trackEvent(name, { __deviceId: 'short-gap', __timestamp: at });
    expect((await postBatch(p, { events: [ev('one', t)] })).status).toBe(202);
    expect(await endIndexes(stub)).toEqual(['sessions_end_idx']);
    await countSessionWrites(stub);
    expect((await postBatch(p, { events: [ev('two', t + 30_000)] })).status).toBe(202);
    // The extension moves the index entry too.
    expect(await sessionWrites(stub)).toEqual({ rows: 2, statements: 1 });
    // An event 4.5 minutes after the last opens a second session.
    expect((await postBatch(p, { events: [ev('three', t + 300_000)] })).status).toBe(202);
    expect((await stub.sessions()).length).toBe(2);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 3);
  });

  it("sends the fields a call's events share once per message, and brings an older outbox's held chunks out whole", async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'old-outbox');
    const t = Date.now() - 60_000;
    const ev = (name: string) => trackEvent(name, { __deviceId: 'old-outbox', __timestamp: t });
    expect((await postBatch(p, { events: [ev('first')] })).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 1);

    // The older layout: an outbox without the base column, holding a chunk whose entry has every field.
    const held = {
      id: crypto.randomUUID(), project_id: p.id, device_id: 'old-outbox', profile_id: '', type: 'track', name: 'held', created_at_ms: t + 1,
      received_at_ms: t + 2, properties: '{}', ref_id: '', ip: '198.51.100.7', country: 'FR', region: '', city: 'Lyon', timezone: '', latitude: 45.76, longitude: 4.83,
    };
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      const sql = state.storage.sql;
      const ddl = sql.exec<{ sql: string }>("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").one().sql;
      sql.exec('DROP TABLE outbox');
      sql.exec(ddl.replace(', base TEXT', ''));
      sql.exec("INSERT INTO outbox (seq, kind, ref, body) VALUES (1, 'events', '', ?)", JSON.stringify([{ s: '', r: held, p: '{"held":true}' }]));
      const self = o as unknown as Internals;
      self.schemaReady = false;
      self.stores.dedup.reset();
      self.stores.outbox.forgetWritten();
    });
    expect((await keyDdl(stub)).find((ddl) => ddl.includes('outbox'))).not.toMatch(/\bbase\b/);

    // The next call adds the column and sends both chunks; its own rows leave the shared fields to the base.
    const sent: string[] = [];
    const real = await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      const queue = self.env.INGEST_QUEUE;
      self.env = {
        ...self.env,
        INGEST_QUEUE: {
          send: (body: unknown, opts?: QueueSendOptions) => queue.send(body as never, opts),
          sendBatch: (messages: Iterable<MessageSendRequest>, opts?: QueueSendBatchOptions) => {
            for (const m of messages) sent.push(String(m.body));
            return queue.sendBatch(messages as never, opts);
          },
        } as unknown as typeof queue,
      };
      return queue;
    });
    expect((await postBatch(p, { events: [ev('second'), ev('third')] })).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 4);
    await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      self.env = { ...self.env, INGEST_QUEUE: real };
    });
    expect((await keyDdl(stub)).find((ddl) => ddl.includes('outbox'))).toMatch(/\bbase\b/);

    const messages = sent.map((b) => JSON.parse(b) as { base?: Record<string, unknown>; entries?: Array<{ r: Record<string, unknown> }> });
    const older = messages.find((m) => m.entries?.some((e) => e.r.name === 'held'));
    expect(older).toBeDefined();
    expect(older!.base).toBeUndefined();
    const newer = messages.find((m) => m.entries?.some((e) => e.r.name === 'second'));
    expect(newer?.base).toMatchObject({ project_id: p.id, device_id: 'old-outbox' });
    for (const e of newer!.entries!) for (const k of ['project_id', 'device_id', 'received_at_ms', 'ip', 'country', 'latitude']) expect(e.r).not.toHaveProperty(k);

    // Every row stored whole: the held one as it was written, the new ones with their call's fields.
    const rows = await ch().query<{ name: string; device_id: string; received_at_ms: number; ip: string; city: string; latitude: number | null }>(
      'SELECT name, device_id, received_at_ms, ip, city, latitude FROM events WHERE project_id = {p:String} ORDER BY name',
      { p: p.id },
    );
    expect(rows.map((r) => r.name)).toEqual(['first', 'held', 'second', 'third']);
    expect(rows.every((r) => r.device_id === 'old-outbox')).toBe(true);
    expect(rows.find((r) => r.name === 'held')).toMatchObject({ received_at_ms: t + 2, ip: '198.51.100.7', city: 'Lyon', latitude: 45.76 });
    const second = rows.find((r) => r.name === 'second')!;
    expect(second.received_at_ms).toBe(newer!.base!.received_at_ms);
    expect(Number(second.received_at_ms)).toBeGreaterThan(t);
  });

  it('leaves an older object larger than the rebuild copies for a later life', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'old-keys-large');
    const ev = (name: string) => trackEvent(name, { __deviceId: 'old-keys-large', __timestamp: Date.now() - 1000 });
    expect((await postBatch(p, { events: [ev('one')] })).status).toBe(202);
    const olderLayout = (extraBytes: number) =>
      runInDurableObject(stub, (o: DeviceObject, state) => {
        const sql = state.storage.sql;
        const ddl = sql.exec<{ sql: string }>("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'seen_chunks'").one().sql;
        sql.exec('ALTER TABLE seen_chunks RENAME TO seen_chunks_was');
        sql.exec(ddl.replace('id INTEGER PRIMARY KEY', 'id INTEGER PRIMARY KEY AUTOINCREMENT'));
        sql.exec('INSERT INTO seen_chunks SELECT * FROM seen_chunks_was');
        sql.exec('DROP TABLE seen_chunks_was');
        // Chunks of an old window, 512 KB each (no fingerprints: no lookup reads them).
        const filler = `[${'0'.repeat(512 * 1024 - 2)}]`;
        for (let i = 0; i * filler.length < extraBytes; i++) sql.exec("INSERT INTO seen_chunks (seen_at_ms, n, fps, entries) VALUES (?, 0, x'', ?)", Date.now(), filler);
        const self = o as unknown as Internals;
        self.schemaReady = false;
        self.stores.dedup.reset();
      });
    await olderLayout(REKEY_MAX_BYTES + 1024 * 1024);
    expect((await postBatch(p, { events: [ev('two')] })).status).toBe(202);
    expect((await keyDdl(stub)).find((ddl) => ddl.includes('seen_chunks'))).toMatch(/AUTOINCREMENT/);
    // Fewer rows in a later life: rebuilt then.
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      state.storage.sql.exec('DELETE FROM seen_chunks WHERE n = 0');
      (o as unknown as Internals).schemaReady = false;
    });
    expect((await postBatch(p, { events: [ev('three')] })).status).toBe(202);
    for (const ddl of await keyDdl(stub)) expect(ddl).not.toMatch(/AUTOINCREMENT/i);
  });

  it('keeps a row replaced while a flush sends the one it replaces, though the sent one was the top row', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'replaced-mid-flush');
    expect((await postBatch(p, { events: [trackEvent('seed', { __deviceId: 'replaced-mid-flush', __timestamp: Date.now() - 1000 })] })).status).toBe(202);
    await waitUntil(() => countEvents(p.id), (n) => n.ids === 1);
    const versions = await runInDurableObject(stub, async (o: DeviceObject, state) => {
      const outbox = (o as unknown as { stores: { outbox: OutboxStore } }).stores.outbox;
      const session = (version: number) => ({ project_id: p.id, device_id: 'replaced-mid-flush', id: 'sess-x', started_at_ms: 1, ended_at_ms: 2, event_count: version, ended: 1, merged_into: '', version, updated_at_ms: 3 });
      outbox.enqueueSessions([session(1)]);
      let release = () => {};
      const gate = new Promise<void>((resolve) => (release = resolve));
      const queue = { send: () => Promise.reject(new Error('unused')), sendBatch: () => gate };
      // The flush reads its rows and waits on the send; meanwhile the session's newer state replaces its row.
      const flushing = outbox.flush(queue as unknown as typeof env.INGEST_QUEUE, () => ({}));
      outbox.enqueueSessions([session(2)]);
      release();
      await flushing;
      return state.storage.sql.exec<{ body: string }>('SELECT body FROM outbox').toArray().map((r) => (JSON.parse(r.body) as { version: number }).version);
    });
    expect(versions).toEqual([2]);
  });

  it('does not flag rows written after a flush emptied the outbox', async () => {
    const p = await createProject();
    const stub = deviceStub(env, p.id, 'reused-seqs');
    const sent: string[] = [];
    await runInDurableObject(stub, (o: DeviceObject) => {
      const self = o as unknown as { env: typeof env };
      const queue = { send: () => Promise.reject(new Error('unused')), sendBatch: async (messages: Array<{ body: unknown }>) => void sent.push(...messages.map((m) => m.body as string)) };
      self.env = { ...self.env, INGEST_QUEUE: queue as unknown as typeof env.INGEST_QUEUE };
    });
    for (let i = 1; i <= 3; i++) {
      expect((await postBatch(p, { events: [trackEvent(`e${i}`, { __deviceId: 'reused-seqs', __timestamp: Date.now() - 1000 })] })).status).toBe(202);
      await waitUntil(async () => sent.length, (n) => n === i);
    }
    expect(sent.map((b) => (JSON.parse(b) as { redelivery?: boolean }).redelivery ?? false)).toEqual([false, false, false]);
  });
});
