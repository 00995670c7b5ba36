// Legacy datasets are per (project, dataset): one name in two projects is two datasets (id map,
// completion, held events, the admin view); the held backlog is capped; held events released after
// their device object forgot the sessions around them still join the session they belong to.
import { createExecutionContext, createScheduledController, env, waitOnExecutionContext } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { deviceStub } from '../src/ingest/accept';
import { markInitialMigrationCompleted } from '../src/legacy/datasets';
import { releaseHeldEvents } from '../src/legacy/realtime';
import { legacyEventId } from '../src/legacy/translate';
import { ADMIN_TOKEN, ch, createProject, trackEvent, waitUntil, type TestProject } from './helpers';
import { importBody, suffix, waitJob, withPg } from './backfill-helpers';

const MIN = 60_000;
const DAY = 24 * 60 * MIN;

type EventsBody = { events: Array<{ id: string; name: string; deviceId: string; sessionId: string; refId?: string; createdAt: string; properties: Record<string, unknown> }> };
type SessionsBody = { sessions: Array<{ id: string; deviceId: string; startedAt: string; endedAt: string | null; eventCount: number }> };

/**
 * The gateway with a dataset of this file's own enabled (and any other setting), so no other test's
 * use of a dataset name can make the name ambiguous here.
 */
function gateway(settings: Record<string, string> = {}) {
  const dataset = `twin_${suffix()}`;
  const bindings = { ...env, LEGACY_DATASETS: `citylens,fleetone,${dataset}`, ...settings };
  const call = async (path: string, init: RequestInit = {}) => {
    const ctx = createExecutionContext();
    const res = await worker.fetch(new Request(`http://gw${path}`, init), bindings, ctx);
    await waitOnExecutionContext(ctx);
    return { status: res.status, body: (await res.json()) as any };
  };
  return {
    dataset,
    admin: (method: string, path: string, body?: unknown) =>
      call(path, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) }),
    batch: (p: TestProject, events: unknown[]) => call('/track/batch', { method: 'POST', headers: p.headers, body: JSON.stringify({ events }) }),
    read: <T>(p: TestProject, path: string) => call(path, { headers: p.headers }) as Promise<{ status: number; body: T }>,
  };
}

/** A legacy table of `rows` rows, keys 1..rows, one every 37 s from `base`. */
async function legacyTable(table: string, rows: number, base: string) {
  await withPg(async (c) => {
    await c.query(`DROP TABLE IF EXISTS ${table}`);
    await c.query(`CREATE TABLE ${table} (id bigint PRIMARY KEY, device_id text NOT NULL, created_at timestamptz NOT NULL, speed double precision, label text)`);
    await c.query(
      `INSERT INTO ${table} SELECT g, 'veh-' || (g % 7), timestamptz '${base}' + g * interval '37 seconds', g, 'row ' || g FROM generate_series(1, $1::int) g`,
      [rows],
    );
  });
  return (k: number) => Date.parse(base) + k * 37_000;
}

async function runWatchdog() {
  await worker.scheduled!(createScheduledController({ scheduledTime: Date.now(), cron: '* * * * *' }), env, createExecutionContext());
}

const legacyEvent = (dataset: string, legacyId: string, deviceId: string, eventId: string, extra: Record<string, unknown> = {}) =>
  trackEvent('trip_update', { __dataset: dataset, __legacyId: legacyId, __deviceId: deviceId, __eventId: eventId, ...extra });

describe('one dataset name in two projects', () => {
  it("keeps id maps, completion and held events apart: B's realtime ids never resolve to A's rows, A's completion leaves B's events held", async () => {
    const gw = gateway();
    const { dataset } = gw;
    const a = await createProject('twin-a');
    const b = await createProject('twin-b');
    const aTable = `twin_a_${suffix()}`;
    const aMs = await legacyTable(aTable, 300, '2023-03-01 00:00:00+00');

    // No project uses the name yet; then B alone does.
    expect((await gw.admin('GET', `/admin/datasets/${dataset}`)).body).toEqual({ dataset, projectId: null, initialMigrationCompletedAt: null, mapped: 0, held: 0 });
    const bHeld = [legacyEvent(dataset, '3', 'veh-b', 'b-3'), legacyEvent(dataset, '42', 'veh-b', 'b-42')];
    expect((await gw.batch(b, bHeld)).body).toEqual({ accepted: 2, duplicates: 0, rejected: [] });
    expect((await gw.admin('GET', `/admin/datasets/${dataset}`)).body).toEqual({ dataset, projectId: b.id, initialMigrationCompletedAt: null, mapped: 0, held: 2 });

    // A uses it too: the name alone no longer says which dataset is meant.
    expect((await gw.batch(a, [legacyEvent(dataset, '7', 'veh-a', 'a-7')])).body).toEqual({ accepted: 1, duplicates: 0, rejected: [] });
    const ambiguous = await gw.admin('GET', `/admin/datasets/${dataset}`);
    expect(ambiguous.status).toBe(400);
    expect(ambiguous.body.error).toMatchObject({ code: 'ambiguous_dataset', details: { dataset, projectIds: [a.id, b.id].sort() } });
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${a.id}`)).body).toEqual({ dataset, projectId: a.id, initialMigrationCompletedAt: null, mapped: 0, held: 1 });
    const unknown = await gw.admin('GET', `/admin/datasets/${dataset}?projectId=no-such-project`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('unknown_project');

    // A's import completes: A's held event flows translated; B's stay held, even past the watchdog.
    const aJob = await gw.admin('POST', '/admin/backfills', importBody(a.id, dataset, aTable, { chunkSize: 100 }));
    expect(aJob.status).toBe(202);
    expect(await waitJob(aJob.body.id, (j) => j.state === 'succeeded' || j.state === 'failed')).toMatchObject({ state: 'succeeded', rowsProcessed: 300 });
    const aView = await waitUntil(
      () => gw.admin('GET', `/admin/datasets/${dataset}?projectId=${a.id}`),
      (r) => r.body.held === 0,
    );
    expect(aView.body).toEqual({ dataset, projectId: a.id, initialMigrationCompletedAt: expect.any(String), mapped: 300, held: 0 });
    const aEvents = await waitUntil(
      () => gw.read<EventsBody>(a, '/v1/events?deviceId=veh-a'),
      (r) => r.body.events.some((e) => e.name === 'trip_update'),
    );
    expect(aEvents.body.events.find((e) => e.name === 'trip_update')!.refId).toBe(legacyEventId(dataset, '7', aMs(7)));
    await runWatchdog();
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${b.id}`)).body).toEqual({ dataset, projectId: b.id, initialMigrationCompletedAt: null, mapped: 0, held: 2 });
    expect((await gw.read<EventsBody>(b, '/v1/events?deviceId=veh-b')).body.events).toEqual([]);

    // While B's import has not completed, B's new realtime events are held too, not translated
    // through A's map.
    expect((await gw.batch(b, [legacyEvent(dataset, '5', 'veh-b', 'b-5')])).body).toEqual({ accepted: 1, duplicates: 0, rejected: [] });
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${b.id}`)).body.held).toBe(3);

    // B imports its own rows of the name: keys 1..20 at other times, so no key 42 at all.
    const bTable = `twin_b_${suffix()}`;
    const bMs = await legacyTable(bTable, 20, '2024-06-01 00:00:00+00');
    const bJob = await gw.admin('POST', '/admin/backfills', importBody(b.id, dataset, bTable, { chunkSize: 100 }));
    expect(await waitJob(bJob.body.id, (j) => j.state === 'succeeded' || j.state === 'failed')).toMatchObject({ state: 'succeeded', rowsProcessed: 20 });
    expect((await gw.batch(b, [legacyEvent(dataset, '42', 'veh-b', 'b-42-live'), legacyEvent(dataset, '7', 'veh-b', 'b-7-live')])).body).toEqual({
      accepted: 2,
      duplicates: 0,
      rejected: [],
    });
    const bEvents = await waitUntil(
      () => gw.read<EventsBody>(b, '/v1/events?deviceId=veh-b'),
      (r) => r.body.events.filter((e) => e.name === 'trip_update').length === 5,
    );
    const byLegacyId = new Map<string, Array<string | undefined>>();
    for (const e of bEvents.body.events.filter((x) => x.name === 'trip_update')) {
      const k = String(e.properties.__legacyId);
      byLegacyId.set(k, [...(byLegacyId.get(k) ?? []), e.refId]);
    }
    // Held and released, or translated on the way in: always through B's own map.
    expect(byLegacyId.get('3')).toEqual([legacyEventId(dataset, '3', bMs(3))]);
    expect(byLegacyId.get('5')).toEqual([legacyEventId(dataset, '5', bMs(5))]);
    expect(byLegacyId.get('7')).toEqual([legacyEventId(dataset, '7', bMs(7))]);
    expect(byLegacyId.get('42')).toEqual([undefined, undefined]);
    expect(legacyEventId(dataset, '3', bMs(3))).not.toBe(legacyEventId(dataset, '3', aMs(3)));

    // Both maps survive ClickHouse merging its parts: the same (dataset, key) in two projects is two rows.
    await ch().command('OPTIMIZE TABLE legacy_id_map FINAL');
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${a.id}`)).body).toMatchObject({ mapped: 300, held: 0 });
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${b.id}`)).body).toMatchObject({ mapped: 20, held: 0, initialMigrationCompletedAt: expect.any(String) });
  });
});

describe('the held backlog', () => {
  it('is capped per (project, dataset): rows past the cap are refused as retryable, and go through once the import completes', async () => {
    const gw = gateway({ LEGACY_MAX_HELD: '5' });
    const { dataset } = gw;
    const p = await createProject('held-cap');
    const other = await createProject('held-cap-other');
    const held = (i: number) => legacyEvent(dataset, String(i), 'veh-cap', `cap-${i}`);

    expect((await gw.batch(p, [0, 1, 2, 3].map(held))).body).toEqual({ accepted: 4, duplicates: 0, rejected: [] });
    // One more fits; the two after it do not. A row of no dataset is not held and not capped.
    const full = await gw.batch(p, [held(4), held(5), trackEvent('plain', { __deviceId: 'veh-cap' }), held(6)]);
    expect(full.status).toBe(202);
    expect(full.body).toMatchObject({ accepted: 2, duplicates: 0 });
    expect(full.body.rejected).toEqual([1, 3].map((index) => ({ index, reason: 'internal', retryable: true, error: expect.stringMatching(new RegExp(`held backlog of dataset ${dataset} is full`)) })));
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${p.id}`)).body).toMatchObject({ held: 5 });
    // The same name in another project has a backlog of its own.
    expect((await gw.batch(other, [held(5)])).body).toEqual({ accepted: 1, duplicates: 0, rejected: [] });

    // The import completes and releases the backlog; the client's retry of the refused rows now goes through.
    const key = { projectId: p.id, dataset };
    await markInitialMigrationCompleted(env.DB, key, Date.now());
    expect(await releaseHeldEvents(env, key)).toBe(5);
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${p.id}`)).body).toMatchObject({ held: 0 });
    expect((await gw.batch(p, [held(5), held(6)])).body).toEqual({ accepted: 2, duplicates: 0, rejected: [] });
    const stored = await waitUntil(
      () => gw.read<EventsBody>(p, '/v1/events?deviceId=veh-cap'),
      (r) => r.body.events.filter((e) => e.name === 'trip_update').length === 7,
    );
    expect(stored.body.events.filter((e) => e.name === 'trip_update').map((e) => e.properties.__legacyId).sort()).toEqual(['0', '1', '2', '3', '4', '5', '6']);
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${other.id}`)).body).toMatchObject({ held: 1, initialMigrationCompletedAt: null });

    // A cap that is not a positive number is the operator's to fix, and named as such.
    const health = await gateway({ LEGACY_MAX_HELD: '0' }).admin('GET', '/admin/health');
    expect(health.status).toBe(503);
    expect(health.body.misconfigured).toEqual(['LEGACY_MAX_HELD']);
  });

  it('released after its device object forgot the sessions around it (past the dedup window), a held event joins its session instead of splitting it', async () => {
    const gw = gateway();
    const { dataset } = gw;
    const p = await createProject('held-old');
    const deviceId = 'veh-old';
    const t0 = Date.now() - 4 * DAY;
    const at = (m: number) => new Date(t0 + m * MIN).toISOString();
    // A drive of three events, and in its middle one realtime legacy event that is held.
    const drive = [0, 10, 30].map((m) => trackEvent('drive', { __deviceId: deviceId, __timestamp: t0 + m * MIN, __eventId: `drive-${m}` }));
    const accepted = await gw.batch(p, [...drive, legacyEvent(dataset, '9', deviceId, 'old-9', { __timestamp: t0 + 20 * MIN })]);
    expect(accepted.body).toEqual({ accepted: 4, duplicates: 0, rejected: [] });
    const stub = deviceStub(env, p.id, deviceId);
    await stub.maintain(Date.now());
    const sessionsNow = () => gw.read<SessionsBody>(p, `/v1/sessions?deviceId=${deviceId}&since=${t0 - DAY}`);
    const [session] = (await waitUntil(sessionsNow, (r) => r.body.sessions.length === 1 && r.body.sessions[0]!.eventCount === 3)).body.sessions;
    expect(session).toMatchObject({ startedAt: at(0), endedAt: at(30) });

    // Nine days on, as the object sees it: past the dedup window, it has pruned the session.
    await stub.maintain(t0 + 9 * DAY);
    expect(await stub.sessions()).toEqual([]);

    // The dataset completes and the watchdog releases the held event.
    await markInitialMigrationCompleted(env.DB, { projectId: p.id, dataset }, Date.now());
    await runWatchdog();
    expect((await gw.admin('GET', `/admin/datasets/${dataset}?projectId=${p.id}`)).body.held).toBe(0);
    await stub.maintain(Date.now());

    // One session, the same one, now of four events: no second session and no second session_start.
    const after = await waitUntil(sessionsNow, (r) => r.body.sessions.some((s) => s.eventCount === 4) || r.body.sessions.length > 1);
    expect(after.body.sessions).toEqual([expect.objectContaining({ id: session!.id, startedAt: at(0), endedAt: at(30), eventCount: 4 })]);
    const events = await waitUntil(
      () => gw.read<EventsBody>(p, `/v1/events?deviceId=${deviceId}&since=${t0 - DAY}`),
      (r) => r.body.events.some((e) => e.name === 'trip_update'),
    );
    expect(events.body.events.filter((e) => e.name === 'session_start').map((e) => [e.sessionId, e.createdAt])).toEqual([[session!.id, at(0)]]);
    expect(events.body.events.find((e) => e.name === 'trip_update')!.sessionId).toBe(session!.id);
  });
});
