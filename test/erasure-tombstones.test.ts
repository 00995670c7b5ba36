// Rows of an erased subject that were still on their way when the erasure ran (in the ingest
// queue's retries, or parked and re-driven later) are dropped by the writer: they never come back.
// Rows received after the erasure began are new data and are stored; nobody else's rows are touched.
import { createExecutionContext, createMessageBatch, env, getQueueResult } from 'cloudflare:test';
import { afterEach, describe, expect, it } from 'vitest';
import worker from '../src/index';
import { splitChunk } from '../src/device/outbox-store';
import { Forgotten, pruneTombstones, raiseTombstone, recordErasure, tombstonesOf, TOMBSTONE_RETENTION_MS, type Tombstone } from '../src/erasure/tombstones';
import { runWatchdog } from '../src/jobs/watchdog';
import { hash128, uuidv7At } from '../src/lib/ids';
import { DEAD_LETTER_PREFIX, redriveDeadLetters } from '../src/pipeline/dead-letters';
import { CALL_BASE_FIELDS, type EventRow, type IngestBody, type IngestMessage, type OutboxEvent, type PayloadRow, type SessionRow } from '../src/pipeline/messages';
import { admin } from './backfill-helpers';
import { clearDeadLetters, countTable, ingest, liveEvent, startErasure, waitFinished } from './erasure-fixtures';
import { createProject, waitUntil } from './helpers';

function entry(projectId: string, deviceId: string, name: string, receivedAtMs: number, profileId = '', type = 'track'): OutboxEvent {
  const atMs = receivedAtMs - 1000;
  return {
    s: `sess-${deviceId}`,
    r: {
      id: uuidv7At(atMs, hash128(`${projectId}:${deviceId}:${name}:${receivedAtMs}`)), project_id: projectId, device_id: deviceId, profile_id: profileId,
      type, name, created_at_ms: atMs, received_at_ms: receivedAtMs, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '', timezone: '',
      latitude: null, longitude: null,
    },
    p: `{"name":"${name}","device":"${deviceId}"}`,
  };
}

const session = (projectId: string, deviceId: string, updatedAtMs: number): SessionRow => ({
  project_id: projectId, device_id: deviceId, id: `sess-${deviceId}`, started_at_ms: updatedAtMs - 60_000, ended_at_ms: updatedAtMs, event_count: 1, ended: 0, merged_into: '', version: updatedAtMs, updated_at_ms: updatedAtMs,
});

const message = (entries: OutboxEvent[], sessions: SessionRow[] = []) => JSON.stringify({ events: [], payloads: [], sessions, entries });

/** A message as device objects send it now: the fields all its entries share once, as its base, not in each entry. */
const baseMessage = (entries: OutboxEvent[]) => {
  const base = Object.fromEntries(CALL_BASE_FIELDS.filter((k) => entries.every((e) => e.r[k] === entries[0]!.r[k])).map((k) => [k, entries[0]!.r[k]]));
  const slim = entries.map((e) => ({ ...e, r: Object.fromEntries(Object.entries(e.r).filter(([k]) => !(k in base))) }));
  return JSON.stringify({ events: [], payloads: [], sessions: [], base, entries: slim });
};

/** A payload sent apart from its event (the first half of an oversized event), naming its owner as device objects do. */
const lonePayload = (e: OutboxEvent, owner = true) =>
  JSON.stringify({
    events: [], sessions: [],
    payloads: [{ id: e.r.id, project_id: e.r.project_id, created_at_ms: e.r.created_at_ms, received_at_ms: e.r.received_at_ms, payload: e.p }],
    ...(owner ? { owner: { device_id: e.r.device_id, profile_id: e.r.profile_id } } : {}),
  });

/**
 * Hands messages to the ingest consumer, as the queue's retries would (attempts > 1) or as a first
 * delivery, and waits for its acks; `failing` names messages expected back for a retry.
 */
async function deliver(bodies: Record<string, string>, { attempts = 4, failing = [] as string[] } = {}): Promise<void> {
  const batch = createMessageBatch<IngestBody>('driftline-ingest', Object.entries(bodies).map(([id, body]) => ({ id, timestamp: new Date(), attempts, body })));
  const ctx = createExecutionContext();
  await worker.queue(batch, env, ctx);
  const result = await getQueueResult(batch, ctx);
  expect(result.retryMessages.map((r) => r.msgId).sort()).toEqual([...failing].sort());
  const acked = Object.keys(bodies).filter((id) => !failing.includes(id)).sort();
  expect(result.ackAll ? acked.length === Object.keys(bodies).length : [...result.explicitAcks].sort().join() === acked.join()).toBe(true);
}

/** A job row in a given state, for a tombstone to belong to. */
const jobRow = (id: string, type: string, state: string, params: Record<string, unknown>) =>
  env.DB.prepare('INSERT INTO jobs (id, type, state, params, created_at, last_update_at) VALUES (?, ?, ?, ?, ?, ?)')
    .bind(id, type, state, JSON.stringify(params), Date.now(), Date.now())
    .run();

const has = (table: string, projectId: string, id: string) => countTable(table, projectId, 'toString(id) = {id:String}', { id });

describe('erasure tombstones', () => {
  afterEach(clearDeadLetters);

  it("drops a device's rows received before its erasure when they arrive afterwards, and keeps newer ones and everyone else's", async () => {
    const p = await createProject('tombstone-device');
    const other = await createProject('tombstone-device-other');
    const t = Date.now() - 20 * 60_000;
    await ingest(p, [liveEvent('veh-a', 'live-a', t)]);
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    // Received before the erasure was asked for, still on their way.
    const oldA = entry(p.id, 'veh-a', 'a-old', t + 1);
    const bigA = entry(p.id, 'veh-a', 'a-big', t + 2);
    const oldB = entry(p.id, 'veh-b', 'b-old', t + 3);
    const otherA = entry(other.id, 'veh-a', 'x-old', t + 4);
    // The same in messages whose entries leave their device and project to the message's base.
    const baseA = entry(p.id, 'veh-a', 'a-base', t + 7);
    const baseB = entry(p.id, 'veh-b', 'b-base', t + 8);

    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: 'veh-a' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null });
    expect(await countTable('events', p.id, "device_id = 'veh-a'")).toBe(0);
    // Received after the erasure began: the device's new data.
    const newA = entry(p.id, 'veh-a', 'a-new', Date.now());

    await deliver({
      mixed: message([oldA, oldB], [session(p.id, 'veh-a', t + 1), session(p.id, 'veh-b', t + 3)]),
      'lone-payload': lonePayload(bigA),
      'big-event': JSON.stringify({ events: [{ ...bigA.r, session_id: '', synced_at_ms: 0 }], payloads: [], sessions: [] }),
      'new-a': message([newA], [{ ...session(p.id, 'veh-a', Date.now()), id: 'sess-new' }]),
      'other-project': message([otherA]),
      'base-a': baseMessage([baseA]),
      'base-b': baseMessage([baseB]),
      // A message the consumer cannot expand goes back alone; the others are written.
      broken: JSON.stringify({ events: [], payloads: [], sessions: [], chunk: '[{"r":' }),
    }, { failing: ['broken'] });
    expect(await countTable('events', p.id, "device_id = 'veh-b'")).toBe(2);
    expect(await has('events', p.id, baseB.r.id)).toBe(1);
    expect(await has('event_payloads', p.id, baseB.r.id)).toBe(1);
    expect(await has('event_payloads', p.id, oldB.r.id)).toBe(1);
    expect(await countTable('sessions', p.id, "device_id = 'veh-b'")).toBe(1);
    expect(await has('events', other.id, otherA.r.id)).toBe(1);
    // Only the row received after the erasure began is back for veh-a.
    expect(await countTable('events', p.id, "device_id = 'veh-a'")).toBe(1);
    expect(await has('events', p.id, newA.r.id)).toBe(1);
    expect(await has('event_payloads', p.id, newA.r.id)).toBe(1);
    for (const e of [oldA, bigA, baseA]) {
      expect(await has('events', p.id, e.r.id)).toBe(0);
      expect(await has('event_payloads', p.id, e.r.id)).toBe(0);
    }
    expect(await countTable('sessions', p.id, "device_id = 'veh-a'")).toBe(1);
    expect(await countTable('sessions', p.id, "id = 'sess-new'")).toBe(1);
    // Alone in its delivery, a message names its device only through its base: still dropped.
    const aloneA = entry(p.id, 'veh-a', 'a-alone', t + 11);
    await deliver({ 'base-a-alone': baseMessage([aloneA]) });
    expect(await has('events', p.id, aloneA.r.id)).toBe(0);
    expect(await has('event_payloads', p.id, aloneA.r.id)).toBe(0);

    // Parked only after the erasure (its retries ran out) and re-driven: the same.
    const parkedA = entry(p.id, 'veh-a', 'a-parked', t + 5);
    const parkedB = entry(p.id, 'veh-b', 'b-parked', t + 6);
    // One device's message, its device only in its base: the row received before the erasure goes,
    // the one received after it (which shows the message was written) stays.
    const parkedBaseA = entry(p.id, 'veh-a', 'a-parked-base', t + 9);
    const laterBaseA = entry(p.id, 'veh-a', 'a-later-base', Date.now());
    await env.ARCHIVE.put(`${DEAD_LETTER_PREFIX}${Date.now()}-late.json`, message([parkedA, parkedB]));
    await env.ARCHIVE.put(`${DEAD_LETTER_PREFIX}${Date.now()}-late-base.json`, baseMessage([parkedBaseA, laterBaseA]));
    expect(JSON.parse(baseMessage([parkedBaseA, laterBaseA])).base).toMatchObject({ project_id: p.id, device_id: 'veh-a' });
    expect(await redriveDeadLetters(env, Date.now(), { requireClickHouse: false })).toMatchObject({ redriven: 2, failed: 0 });
    await waitUntil(() => has('events', p.id, parkedB.r.id), (n) => n === 1);
    await waitUntil(() => has('events', p.id, laterBaseA.r.id), (n) => n === 1);
    expect(await has('event_payloads', p.id, laterBaseA.r.id)).toBe(1);
    for (const e of [parkedA, parkedBaseA]) {
      expect(await has('events', p.id, e.r.id)).toBe(0);
      expect(await has('event_payloads', p.id, e.r.id)).toBe(0);
    }
    // newA and laterBaseA, both received after the erasure began.
    expect(await countTable('events', p.id, "device_id = 'veh-a'")).toBe(2);
  });

  it("drops a profile's rows received before its erasure, on the same device as others' rows that stay", async () => {
    const p = await createProject('tombstone-profile');
    const t = Date.now() - 20 * 60_000;
    await ingest(p, [liveEvent('phone-1', 'id-1', t, 'user-1', 'identify')]);
    await waitUntil(() => countTable('profile_ops', p.id), (n) => n === 1);
    const ident = entry(p.id, 'phone-1', 'identify', t + 1, 'user-1', 'identify');
    const mine = entry(p.id, 'phone-1', 'mine', t + 2, 'user-1');
    const big = entry(p.id, 'phone-1', 'big', t + 3, 'user-1');
    const theirs = entry(p.id, 'phone-1', 'theirs', t + 4, 'user-2');
    const anonymous = entry(p.id, 'phone-1', 'anonymous', t + 5);

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'user-1' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null });
    // Alone in a session its device object made after the erasure asked it (the object had been
    // cleared when the call arrived): the session row carries only the profile's change.
    const alone = { ...entry(p.id, 'phone-1', 'alone', t + 6, 'user-1'), s: 'sess-alone' };
    const aloneSession = { ...session(p.id, 'phone-1', Date.now()), id: 'sess-alone' };
    // As a first delivery this time (no redelivery check): the same.
    await deliver(
      { mixed: message([ident, mine, theirs, anonymous], [session(p.id, 'phone-1', Date.now())]), 'lone-payload': lonePayload(big), alone: message([alone], [aloneSession]) },
      { attempts: 1 },
    );
    expect(await countTable('sessions', p.id, "id = 'sess-alone'")).toBe(0);
    // A session row that also carries someone else's events stays.
    expect(await countTable('sessions', p.id, "id = 'sess-phone-1'")).toBe(1);

    expect(await countTable('events', p.id, "profile_id = 'user-1'")).toBe(0);
    expect(await countTable('profile_ops', p.id, "profile_id = 'user-1'")).toBe(0);
    for (const e of [ident, mine, big]) expect(await has('event_payloads', p.id, e.r.id)).toBe(0);
    for (const e of [theirs, anonymous]) {
      expect(await has('events', p.id, e.r.id)).toBe(1);
      expect(await has('event_payloads', p.id, e.r.id)).toBe(1);
    }
  });

  it('drops every row of a deleted project, whenever received, and forgets the names its erasures kept', async () => {
    const doomed = await createProject('tombstone-doomed');
    const kept = await createProject('tombstone-kept');
    const t = Date.now() - 20 * 60_000;
    await ingest(doomed, [liveEvent('veh-1', 'e-1', t)]);
    await waitUntil(() => countTable('events', doomed.id), (n) => n === 1);
    expect(await waitFinished(await startErasure({ projectId: doomed.id, deviceId: 'veh-9' }))).toMatchObject({ state: 'succeeded' });
    const names = () => env.DB.prepare('SELECT device_id AS d, profile_id AS p FROM erasure_tombstones WHERE project_id = ?').bind(doomed.id).all<{ d: string | null; p: string | null }>();
    expect((await names()).results).toEqual([{ d: 'veh-9', p: null }]);

    const started = await admin('DELETE', `/admin/projects/${doomed.id}`);
    expect(started.status).toBe(202);
    expect(await waitFinished(started.body.id as string)).toMatchObject({ state: 'succeeded', error: null });
    expect((await names()).results).toEqual([{ d: null, p: null }]);

    const late = entry(doomed.id, 'veh-1', 'late', t + 1);
    const later = entry(doomed.id, 'veh-2', 'received-after', Date.now());
    const keep = entry(kept.id, 'veh-1', 'kept', t + 2);
    await deliver({ late: message([late], [session(doomed.id, 'veh-1', t + 1)]), later: message([later]), lone: lonePayload(late, false), kept: message([keep]) });
    expect(await has('events', kept.id, keep.r.id)).toBe(1);
    for (const table of ['events', 'event_payloads', 'sessions', 'profile_ops']) expect(await countTable(table, doomed.id)).toBe(0);
  });

  it("does not apply a cancelled erasure's tombstone, and applies a failed one's and a cancelled project deletion's", async () => {
    const p = await createProject('tombstone-cancelled');
    const revoked = await createProject('tombstone-cancelled-deletion');
    const deletion = crypto.randomUUID();
    await jobRow(deletion, 'project_deletion', 'cancelled', { projectId: revoked.id });
    await env.DB.prepare('INSERT INTO erasure_tombstones (job_id, project_id, before_ms, created_at) VALUES (?, ?, ?, ?)').bind(deletion, revoked.id, Date.now(), Date.now()).run();
    const t = Date.now() - 20 * 60_000;
    const cancelled = crypto.randomUUID();
    const failed = crypto.randomUUID();
    await jobRow(cancelled, 'erasure', 'cancelled', { projectId: p.id, deviceId: 'veh-c' });
    await jobRow(failed, 'erasure', 'failed', { projectId: p.id, deviceId: 'veh-f' });
    await recordErasure(env.DB, cancelled, { kind: 'device', projectId: p.id, deviceId: 'veh-c' }, Date.now());
    await recordErasure(env.DB, failed, { kind: 'device', projectId: p.id, deviceId: 'veh-f' }, Date.now());
    const c = entry(p.id, 'veh-c', 'c', t);
    const f = entry(p.id, 'veh-f', 'f', t);
    const r = entry(revoked.id, 'veh-r', 'r', t);
    await deliver({ c: message([c]), f: message([f]), r: message([r]) });
    expect(await has('events', p.id, c.r.id)).toBe(1);
    expect(await has('events', p.id, f.r.id)).toBe(0);
    expect(await countTable('events', revoked.id)).toBe(0);
  });

  it('reads only the tombstones of the subjects at hand, and only ever raises the line', async () => {
    const projectId = `tombstone-read-${crypto.randomUUID()}`;
    const job = crypto.randomUUID();
    await recordErasure(env.DB, job, { kind: 'device', projectId, deviceId: 'veh-1' }, 1000);
    await recordErasure(env.DB, crypto.randomUUID(), { kind: 'profile', projectId, profileId: 'user-1' }, 1000);
    await recordErasure(env.DB, crypto.randomUUID(), { kind: 'device', projectId: `${projectId}-other`, deviceId: 'veh-1' }, 1000);
    const read = (devices: string[], profiles: string[]) => tombstonesOf(env.DB, { projects: new Set([projectId]), devices: new Set(devices), profiles: new Set(profiles) });
    expect(await read(['veh-2'], [])).toEqual([]);
    expect(await read(['veh-1'], [])).toEqual([{ kind: 'device', projectId, deviceId: 'veh-1', beforeMs: 1000 }]);
    expect(await read([], ['user-1'])).toEqual([{ kind: 'profile', projectId, profileId: 'user-1', beforeMs: 1000 }]);
    await raiseTombstone(env.DB, job, 500);
    expect(await read(['veh-1'], [])).toMatchObject([{ beforeMs: 1000 }]);
    await raiseTombstone(env.DB, job, 5000);
    expect(await read(['veh-1'], [])).toMatchObject([{ beforeMs: 5000 }]);
    // A re-run of the plan step keeps the tombstone as it is.
    await recordErasure(env.DB, job, { kind: 'device', projectId, deviceId: 'veh-1' }, 9000);
    expect(await read(['veh-1'], [])).toMatchObject([{ beforeMs: 5000 }]);
  });

  it('forgets tombstones after the retention, through the watchdog', async () => {
    const projectId = `tombstone-prune-${crypto.randomUUID()}`;
    const now = Date.now();
    const asked = now - TOMBSTONE_RETENTION_MS - 86_400_000;
    await recordErasure(env.DB, `old-${projectId}`, { kind: 'device', projectId, deviceId: 'veh-old' }, asked, now - TOMBSTONE_RETENTION_MS - 1);
    // Asked for as long ago, but written (or last raised) within the retention.
    await recordErasure(env.DB, `new-${projectId}`, { kind: 'device', projectId, deviceId: 'veh-new' }, asked, now - TOMBSTONE_RETENTION_MS + 60_000);
    const left = async () =>
      (await env.DB.prepare('SELECT device_id AS d FROM erasure_tombstones WHERE project_id = ? ORDER BY d').bind(projectId).all<{ d: string }>()).results.map((r) => r.d);
    expect(await left()).toEqual(['veh-new', 'veh-old']);
    await runWatchdog(env, now).catch(() => {}); // other duties of the watchdog are not under test here
    expect(await left()).toEqual(['veh-new']);
    expect(await pruneTombstones(env.DB, now)).toBe(0);
  });
});

describe('Forgotten (the writer’s filter)', () => {
  const row = (device: string, profile: string, receivedAtMs: number, id = `${device}-${profile}-${receivedAtMs}`): EventRow => ({
    id, project_id: 'p', device_id: device, session_id: '', profile_id: profile, type: 'track', name: 'x', created_at_ms: receivedAtMs, received_at_ms: receivedAtMs,
    synced_at_ms: 0, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '', timezone: '', latitude: null, longitude: null,
  });
  const payload = (id: string, receivedAtMs: number): PayloadRow => ({ id, project_id: 'p', created_at_ms: receivedAtMs, received_at_ms: receivedAtMs, payload: '{}' });
  const m = (extra: Partial<IngestMessage> = {}): IngestMessage => ({ events: [], payloads: [], sessions: [], ...extra });

  it('drops rows received strictly before the latest erasure of the device or profile', () => {
    const stones: Tombstone[] = [
      { kind: 'device', projectId: 'p', deviceId: 'd1', beforeMs: 100 },
      { kind: 'device', projectId: 'p', deviceId: 'd1', beforeMs: 200 },
      { kind: 'profile', projectId: 'p', profileId: 'u1', beforeMs: 150 },
    ];
    const f = new Forgotten(stones);
    expect(f.forgets('p', 'd1', '', 199)).toBe(true);
    expect(f.forgets('p', 'd1', '', 200)).toBe(false);
    expect(f.forgets('q', 'd1', '', 0)).toBe(false);
    expect(f.forgets('p', 'd2', 'u1', 149)).toBe(true);
    expect(f.forgets('p', 'd2', 'u1', 150)).toBe(false);
    expect(f.forgets('p', 'd2', '', 0)).toBe(false);
    expect(new Forgotten([{ kind: 'project', projectId: 'p' }]).forgets('p', 'any', '', Number.MAX_SAFE_INTEGER)).toBe(true);
  });

  it('judges a payload by its event in the message, else by the owner its message names', () => {
    const f = new Forgotten([{ kind: 'device', projectId: 'p', deviceId: 'd1', beforeMs: 100 }]);
    const events = [row('d1', '', 50, 'gone'), row('d2', '', 50, 'kept')];
    const kept = f.keep(m(), { events, payloads: [payload('gone', 50), payload('kept', 50), payload('apart', 50)], sessions: [] });
    expect(kept.events.map((e) => e.id)).toEqual(['kept']);
    // A payload apart from its event with no owner named (an older message) is kept.
    expect(kept.payloads.map((p) => p.id)).toEqual(['kept', 'apart']);
    expect(kept.dropped).toBe(2);
    const owned = f.keep(m({ owner: { device_id: 'd1', profile_id: '' } }), { events: [], payloads: [payload('apart', 50), payload('late', 100)], sessions: [] });
    expect(owned.payloads.map((p) => p.id)).toEqual(['late']);
  });

  it('is told the owner of a payload a device object sends apart from its event', () => {
    const e = { s: 'sess-1', r: { ...row('d1', 'u1', 50, 'big') }, p: '{"big":true}' };
    const [payloadMessage, eventMessage] = splitChunk(JSON.stringify([e]), {}, false).map((x) => x.body as IngestMessage);
    expect(payloadMessage).toMatchObject({ events: [], payloads: [{ id: 'big' }], owner: { device_id: 'd1', profile_id: 'u1' } });
    expect(eventMessage).toMatchObject({ events: [{ id: 'big' }], payloads: [] });
    const f = new Forgotten([{ kind: 'profile', projectId: 'p', profileId: 'u1', beforeMs: 100 }]);
    expect(f.keep(payloadMessage!, { events: [], payloads: payloadMessage!.payloads, sessions: [] }).payloads).toEqual([]);

    // An entry that leaves its call's shared fields to the chunk's base gets them back in both messages.
    const { project_id, device_id, received_at_ms, ip, country, region, city, timezone, latitude, longitude, ...own } = e.r;
    const base = { project_id, device_id, received_at_ms, ip, country, region, city, timezone, latitude, longitude };
    const [payloadOnly, eventOnly] = splitChunk(JSON.stringify([{ ...e, r: own }]), {}, false, JSON.stringify(base)).map((x) => x.body as IngestMessage);
    expect(payloadOnly).toMatchObject({ payloads: [{ id: 'big', project_id: 'p', received_at_ms }], owner: { device_id: 'd1', profile_id: 'u1' } });
    expect(eventOnly!.events).toEqual([{ ...e.r, session_id: 'sess-1', synced_at_ms: 0 }]);
  });

  const s = (device: string, updatedAtMs: number, id = `${device}-${updatedAtMs}`): SessionRow => ({ project_id: 'p', device_id: device, id, started_at_ms: 0, ended_at_ms: 0, event_count: 1, ended: 0, merged_into: '', version: 1, updated_at_ms: updatedAtMs });

  it("drops a device's session rows last changed before its erasure", () => {
    const f = new Forgotten([{ kind: 'device', projectId: 'p', deviceId: 'd1', beforeMs: 100 }]);
    const kept = f.keep(m(), { events: [], payloads: [], sessions: [s('d1', 99), s('d1', 100), s('d2', 1)] });
    expect(kept.sessions.map((r) => r.id)).toEqual(['d1-100', 'd2-1']);
  });

  it('drops a session row whose events in the message were all dropped, and keeps one that also carries a kept event', () => {
    const f = new Forgotten([
      { kind: 'device', projectId: 'p', deviceId: 'd1', beforeMs: 100 },
      { kind: 'profile', projectId: 'p', profileId: 'u1', beforeMs: 100 },
    ]);
    const inSession = (e: EventRow, sessionId: string): EventRow => ({ ...e, session_id: sessionId });
    const events = [
      // Received before the line, changed in the object after it (it had just been cleared).
      inSession(row('d1', '', 50, 'late-call'), 'sa'),
      // A profile's event alone in its session, and one beside someone else's.
      inSession(row('d2', 'u1', 50, 'mine'), 'sb'),
      inSession(row('d2', 'u1', 51, 'mine-2'), 'sc'),
      inSession(row('d2', 'u2', 52, 'theirs'), 'sc'),
    ];
    const kept = f.keep(m(), { events, payloads: [], sessions: [s('d1', 150, 'sa'), s('d2', 150, 'sb'), s('d2', 150, 'sc'), s('d2', 150, 'sd')] });
    expect(kept.events.map((e) => e.id)).toEqual(['theirs']);
    expect(kept.sessions.map((r) => r.id)).toEqual(['sc', 'sd']);
  });
});
