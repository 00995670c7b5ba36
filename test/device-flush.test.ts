// A device object whose outbox cannot be flushed backs off, and new events do not undo the back-off.
import { env, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
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
