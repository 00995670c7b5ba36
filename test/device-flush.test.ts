// A device object whose outbox cannot be flushed backs off, and new events do not undo the back-off.
import { env, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import { OutboxStore } from '../src/device/outbox-store';
import type { MetaStore } from '../src/device/schema';
import { deviceStub } from '../src/ingest/accept';
import { countEvents, createProject, postBatch, trackEvent, waitUntil } from './helpers';

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
    // Six failed flushes back off to about a minute, so no alarm fires on its own during the test.
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
