// /admin/health shows the ingest backlog (device outboxes that cannot reach the ingest queue) and
// what an operator must act on, and reports ClickHouse truthfully whatever other setting is invalid.
import { createExecutionContext, env, runInDurableObject, SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import worker from '../src/index';
import { deviceStub } from '../src/ingest/accept';
import { QUARANTINE_PREFIX } from '../src/pipeline/dead-letters';
import { STALLED_OUTBOX_ALERT_SEC } from '../src/routes/health';
import { ADMIN_TOKEN, countEvents, createProject, postBatch, trackEvent, waitUntil } from './helpers';

const adminHeaders = { authorization: `Bearer ${ADMIN_TOKEN}` };

interface Health {
  ok: boolean;
  clickhouse: 'ok' | 'down';
  ingest: {
    deadLetters: number | null;
    stalledDevices: number | null;
    pendingRows: number | null;
    oldestStalledAgeSec: number | null;
    stalled: Array<{ projectId: string; deviceId: string; pendingRows: number; since: string; failures: number; lastError: string; updatedAt: string }> | null;
  };
  deadLetters: { parked: number | null; quarantined: number | null };
  misconfigured?: string[];
  errors?: string[];
}

async function health(bindings: typeof env = env): Promise<{ status: number; body: Health }> {
  const res = bindings === env ? await SELF.fetch('http://gw/admin/health', { headers: adminHeaders }) : await worker.fetch(new Request('http://gw/admin/health', { headers: adminHeaders }), bindings, createExecutionContext());
  return { status: res.status, body: (await res.json()) as Health };
}

/**
 * An outbox row the real ingest queue refuses: a session row far over the queue's 128 KB message
 * limit, so every flush that reaches it fails at the queue, as in an outage.
 */
const POISON = 'x'.repeat(200 * 1024);

describe('the ingest backlog in /admin/health', () => {
  it('lists a device whose outbox cannot reach the ingest queue, alerts once it has lasted, and forgets it when a flush succeeds', async () => {
    const p = await createProject('stalled-outbox');
    const deviceId = 'stall-1';
    const stub = deviceStub(env, p.id, deviceId);
    const res = await postBatch(p, { events: [1, 2, 3].map((i) => trackEvent('stall', { __deviceId: deviceId, __eventId: `stall-${i}` })) });
    expect(res.status).toBe(202);
    expect(((await res.json()) as { accepted: number }).accepted).toBe(3);

    // A healthy device is no backlog.
    await stub.maintain(Date.now());
    expect((await health()).body.ingest.stalled?.some((s) => s.deviceId === deviceId)).toBe(false);

    await runInDurableObject(stub, (o: DeviceObject, state) => {
      state.storage.sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('session', 'poison', ?)", POISON);
      // Written behind the object's back: what it holds of its outbox in memory is stale now.
      (o as unknown as { stores: { outbox: { forgetWritten(): void } } }).stores.outbox.forgetWritten();
    });
    expect((await stub.maintain(Date.now())).flushed).toBe(0);
    const stalled = await health();
    const mine = stalled.body.ingest.stalled?.find((s) => s.projectId === p.id && s.deviceId === deviceId);
    expect(mine).toMatchObject({ pendingRows: expect.any(Number), failures: expect.any(Number), lastError: expect.stringMatching(/\S/) });
    expect(mine!.pendingRows).toBeGreaterThanOrEqual(1);
    expect(stalled.body.ingest.stalledDevices).toBeGreaterThanOrEqual(1);
    expect(stalled.body.ingest.pendingRows).toBeGreaterThanOrEqual(mine!.pendingRows);
    expect(stalled.body.ingest.oldestStalledAgeSec).toEqual(expect.any(Number));
    // The existing fields stay as they were.
    expect(stalled.body.ingest.deadLetters).toEqual(expect.any(Number));
    // A fresh stall is shown, but no alarm: the back-off rides out a queue hiccup.
    expect((stalled.body.errors ?? []).some((e) => e.startsWith('ingest:'))).toBe(false);

    // The stall has lasted longer than the alert threshold (as the object recorded its start).
    await runInDurableObject(stub, (o: DeviceObject) => {
      (o as unknown as { setMeta(k: string, v: unknown): void }).setMeta('stalledSinceMs', Date.now() - (STALLED_OUTBOX_ALERT_SEC + 60) * 1000);
    });
    await stub.maintain(Date.now());
    const alerting = await health();
    expect(alerting.status).toBe(503);
    expect(alerting.body.ok).toBe(false);
    expect(alerting.body.ingest.oldestStalledAgeSec).toBeGreaterThanOrEqual(STALLED_OUTBOX_ALERT_SEC);
    expect(alerting.body.errors).toEqual(expect.arrayContaining([expect.stringMatching(/^ingest: \d+ device outbox\(es\) cannot reach the ingest queue/)]));

    // The queue takes the outbox again: the first flush that succeeds takes the stall back.
    await runInDurableObject(stub, (_o, state) => {
      state.storage.sql.exec("DELETE FROM outbox WHERE ref = 'poison'");
    });
    await stub.maintain(Date.now());
    const recovered = await health();
    expect(recovered.body.ingest.stalled?.some((s) => s.projectId === p.id && s.deviceId === deviceId)).toBe(false);
    expect((recovered.body.errors ?? []).some((e) => e.startsWith('ingest:'))).toBe(false);
    await waitUntil(() => countEvents(p.id), (c) => c.ids === 3);
    expect(await countEvents(p.id)).toEqual({ rows: 3, ids: 3 });
  });

  it('makes quarantined dead letters an error an operator must act on', async () => {
    const key = `${QUARANTINE_PREFIX}0000000000001-health-test.json`;
    await env.ARCHIVE.put(key, '{"not":"a message"}', { customMetadata: { reason: 'test', parkedKey: 'x', quarantinedAt: new Date().toISOString() } });
    try {
      const r = await health();
      expect(r.status).toBe(503);
      expect(r.body.ok).toBe(false);
      expect(r.body.deadLetters.quarantined).toBeGreaterThanOrEqual(1);
      expect(r.body.errors).toEqual(expect.arrayContaining([expect.stringMatching(/quarantined message\(s\) wait for an operator/)]));
    } finally {
      await env.ARCHIVE.delete(key);
    }
    expect((await health()).body.errors ?? []).not.toEqual(expect.arrayContaining([expect.stringMatching(/quarantined/)]));
  });
});

describe('ClickHouse in /admin/health while a setting is invalid', () => {
  it('is reported as it is when only other settings are invalid, and down when its own are', async () => {
    const otherBad = await health({ ...env, LEGACY_MAX_HELD: '0', SESSION_GAP_MS: 'soon' });
    expect(otherBad.status).toBe(503);
    expect(otherBad.body.ok).toBe(false);
    expect(otherBad.body.misconfigured).toEqual(['LEGACY_MAX_HELD', 'SESSION_GAP_MS']);
    expect(otherBad.body.clickhouse).toBe('ok');

    const ownBad = await health({ ...env, CLICKHOUSE_URL: 'not a url', LEGACY_MAX_HELD: '0' });
    expect(ownBad.status).toBe(503);
    expect(ownBad.body.misconfigured).toEqual(['CLICKHOUSE_URL', 'LEGACY_MAX_HELD']);
    expect(ownBad.body.clickhouse).toBe('down');
  });
});
