// Erasure reaches rows that are not in ClickHouse yet: rows of the subject parked in R2 for a
// re-drive are taken out (or their object deleted), so a later re-drive or replay cannot bring them
// back, and everyone else's parked rows still arrive once; a stalled outbox gives up a profile's
// unsent events.
import { createExecutionContext, createMessageBatch, env, getQueueResult, runInDurableObject } from 'cloudflare:test';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceObject } from '../durable-objects/device-object';
import worker from '../src/index';
import { hash128, uuidv7At } from '../src/lib/ids';
import { DEAD_LETTER_PREFIX, QUARANTINE_PREFIX, REDRIVE_LOCK_KEY, redriveDeadLetters } from '../src/pipeline/dead-letters';
import { decodeMessage, entryRow, expandMessage, type IngestBody, type OutboxEvent, type SessionRow } from '../src/pipeline/messages';
import { admin, getJob } from './backfill-helpers';
import { clearDeadLetters, countTable, ingest, liveEvent, startErasure, waitFinished } from './erasure-fixtures';
import type { OutboxStore } from '../src/device/outbox-store';
import { deviceStub } from '../src/device/stub';
import { ch, createProject, postBatch, trackEvent, waitUntil } from './helpers';

function entry(projectId: string, deviceId: string, name: string, atMs: number, opts: { profileId?: string; session?: string } = {}): OutboxEvent {
  return {
    s: opts.session ?? '',
    r: {
      id: uuidv7At(atMs, hash128(`${projectId}:${deviceId}:${name}:${atMs}`)), project_id: projectId, device_id: deviceId, profile_id: opts.profileId ?? '',
      type: 'track', name, created_at_ms: atMs, received_at_ms: atMs, properties: '{}', ref_id: '', ip: '', country: '', region: '', city: '', timezone: '',
      latitude: null, longitude: null,
    },
    p: `{"name":"${name}","device":"${deviceId}"}`,
  };
}

function session(projectId: string, deviceId: string, id: string, atMs: number, events: number): SessionRow {
  return { project_id: projectId, device_id: deviceId, id, started_at_ms: atMs, ended_at_ms: atMs + 1000, event_count: events, ended: 0, merged_into: '', version: 1, updated_at_ms: atMs };
}

/** A message as a device object sends it (its outbox entries spliced in), or any rows the consumer takes. */
const message = (entries: OutboxEvent[], sessions: SessionRow[] = [], extra: Record<string, unknown> = {}) => JSON.stringify({ events: [], payloads: [], sessions, entries, ...extra });

/** Parks messages the way the platform does: through the dead-letter queue's consumer. */
async function park(bodies: Record<string, string>): Promise<void> {
  const batch = createMessageBatch<IngestBody>(
    'driftline-ingest-dlq',
    Object.entries(bodies).map(([id, body]) => ({ id, timestamp: new Date(), attempts: 101, body })),
  );
  const ctx = createExecutionContext();
  await worker.queue(batch, env, ctx);
  expect((await getQueueResult(batch, ctx)).explicitAcks.sort()).toEqual(Object.keys(bodies).sort());
}

/** Every parked or quarantined object, as text, by message id. */
async function parkedTexts(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const prefix of [DEAD_LETTER_PREFIX, QUARANTINE_PREFIX]) {
    const listing = await env.ARCHIVE.list({ prefix });
    for (const o of listing.objects) out.set(o.key.replace(/^.*\/\d{13}-/, '').replace(/\.json$/, ''), await (await env.ARCHIVE.get(o.key))!.text());
  }
  return out;
}

const eventIds = (projectId: string, where: string, params: Record<string, string> = {}) =>
  ch()
    .query<{ id: string }>(`SELECT DISTINCT toString(id) AS id FROM events WHERE project_id = {p:String} AND ${where} ORDER BY id`, { p: projectId, ...params })
    .then((rows) => rows.map((r) => r.id));

describe('erasure and parked messages', () => {
  // Each test counts the parked objects it made: none is left to the next.
  afterEach(clearDeadLetters);

  it("takes a device's rows out of parked messages: a re-drive afterwards stores only the others'", async () => {
    const p = await createProject('erase-dead-letters');
    const other = await createProject('erase-dead-letters-other');
    const t = Date.now() - 30 * 60_000;
    // One live event of veh-a reaches ClickHouse, so the erasure has the device in every store.
    await ingest(p, [liveEvent('veh-a', 'live-1', t)]);
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    const [liveA] = await eventIds(p.id, "device_id = 'veh-a'");

    const aOnly = [entry(p.id, 'veh-a', 'a1', t + 1), entry(p.id, 'veh-a', 'a2', t + 2)];
    const mixedA = entry(p.id, 'veh-a', 'a3', t + 3);
    const mixedB = entry(p.id, 'veh-b', 'b1', t + 4);
    const bOnly = entry(p.id, 'veh-b', 'b2', t + 5);
    // The same device name in another project is another device.
    const otherA = entry(other.id, 'veh-a', 'x1', t + 6);
    const split = entry(p.id, 'veh-a', 'big', t + 7);
    const bodies: Record<string, string> = {
      'a-only': message(aOnly, [session(p.id, 'veh-a', 'sess-a', t, 2)]),
      mixed: message([mixedA, mixedB], [session(p.id, 'veh-a', 'sess-a2', t, 1), session(p.id, 'veh-b', 'sess-b', t, 1)], { parkedAtMs: t, redrives: 1 }),
      'b-only': message([bOnly]),
      'other-project': message([otherA]),
      // The raw payload of veh-a's live event, sent apart from its event (an oversized chunk's split).
      'lone-payload': JSON.stringify({ events: [], sessions: [], payloads: [{ id: liveA, project_id: p.id, created_at_ms: t, received_at_ms: t, payload: '{"lone":true}' }] }),
      // An oversized event of veh-a split in two, both parked: the payload first, its event last of all
      // (first-parked times order the keys), more than a page of objects apart.
      'split-payload': JSON.stringify({ events: [], sessions: [], payloads: [{ id: split.r.id, project_id: p.id, created_at_ms: split.r.created_at_ms, received_at_ms: split.r.created_at_ms, payload: '{"big":true}' }], parkedAtMs: t - 60_000 }),
      'split-event': JSON.stringify({ events: [{ ...split.r, session_id: '', synced_at_ms: 0 }], payloads: [], sessions: [], parkedAtMs: Date.now() + 3_600_000 }),
    };
    // More objects than one erasure page (100), of another project.
    for (let i = 0; i < 105; i++) bodies[`filler-${i}`] = message([entry(other.id, 'veh-f', `f${i}`, t + 100 + i)]);
    await park(bodies);
    // A parked object that does not decode, naming the device, is quarantined for an operator.
    await env.ARCHIVE.put(`${QUARANTINE_PREFIX}0000000000001-broken.json`, `{"events":[{"project_id":${JSON.stringify(p.id)},"device_id":"veh-a"`);
    const before = await parkedTexts();
    const named = (keys: Iterable<string>) => [...keys].filter((k) => !k.startsWith('filler-')).sort();
    expect(named(before.keys())).toEqual(['a-only', 'b-only', 'broken', 'lone-payload', 'mixed', 'other-project', 'split-event', 'split-payload']);
    expect(before.size).toBe(8 + 105);

    const job = await waitFinished(await startErasure({ projectId: p.id, deviceId: 'veh-a' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null });
    // No archive here: every R2 figure is the parked messages' (a-only, lone-payload, broken and
    // both split halves deleted; mixed rewritten). Rows: a1, a2, a3, the lone payload, and the split
    // event once in each half.
    expect(job.result).toMatchObject({ r2: { chunksRewritten: 1, objectsDeleted: 5, rows: 2 + 1 + 1 + 2 } });

    const after = await parkedTexts();
    expect(named(after.keys())).toEqual(['b-only', 'mixed', 'other-project']);
    expect(after.size).toBe(3 + 105);
    // Untouched byte for byte: objects holding nothing of the subject.
    expect(after.get('b-only')).toBe(before.get('b-only'));
    expect(after.get('other-project')).toBe(before.get('other-project'));
    // Rewritten in its own form (outbox entries stay entries), as the consumer reads it.
    expect(JSON.parse(after.get('mixed')!)).toMatchObject({ events: [], payloads: [], entries: [mixedB] });
    const mixed = expandMessage(decodeMessage(after.get('mixed')!), 0);
    expect(mixed.events.map((e) => [e.id, e.device_id])).toEqual([[mixedB.r.id, 'veh-b']]);
    expect(mixed.payloads.map((r) => r.id)).toEqual([mixedB.r.id]);
    expect(mixed.sessions.map((r) => r.id)).toEqual(['sess-b']);
    // What the re-drive needs to keep counting its attempts and age.
    expect(JSON.parse(after.get('mixed')!)).toMatchObject({ parkedAtMs: t, redrives: 1 });
    for (const text of after.values()) {
      for (const id of [...aOnly, mixedA, split].map((e) => e.r.id)) expect(text).not.toContain(id);
      expect(text).not.toContain('"sess-a"');
    }

    // The re-drive sends what is left: veh-b's two events and the other project's one, nothing of veh-a.
    const redrive = await redriveDeadLetters(env, Date.now(), { requireClickHouse: false });
    expect(redrive).toMatchObject({ redriven: 3 + 105, quarantined: 0, failed: 0 });
    await waitUntil(() => countTable('events', p.id), (n) => n === 2);
    await waitUntil(() => countTable('events', other.id), (n) => n === 1 + 105);
    expect(await eventIds(p.id, '1')).toEqual([mixedB.r.id, bOnly.r.id].sort());
    expect(await countTable('events', p.id, "device_id = 'veh-a'")).toBe(0);
    expect(await countTable('sessions', p.id, "device_id = 'veh-a'")).toBe(0);
    for (const id of [liveA!, split.r.id]) expect(await countTable('event_payloads', p.id, 'toString(id) = {id:String}', { id })).toBe(0);
    expect(await countTable('sessions', p.id, "id = 'sess-b'")).toBe(1);
  });

  it("takes a profile's events out of a parked message, and the sessions only it made", async () => {
    const p = await createProject('erase-dead-letters-profile');
    const t = Date.now() - 20 * 60_000;
    const mine = [entry(p.id, 'veh-c', 'p1', t, { profileId: 'prof-p', session: 'only-p' }), entry(p.id, 'veh-c', 'p2', t + 1, { profileId: 'prof-p', session: 'shared' })];
    const anon = entry(p.id, 'veh-c', 'anon', t + 2, { session: 'shared' });
    const sessions = [session(p.id, 'veh-c', 'only-p', t, 1), session(p.id, 'veh-c', 'shared', t, 2)];
    const ended = (id: string, events: number) => ({ ...session(p.id, 'veh-c', id, t, events), ended: 1, version: 2 });
    await park({
      c: message([...mine, anon], sessions),
      // Session rows parked on their own (a session's end): one only the profile made, one it shares.
      'c-end-mine': message([], [ended('only-p', 1)]),
      'c-end-shared': message([], [ended('shared', 2)]),
    });
    const before = await parkedTexts();

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'prof-p' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { r2: { chunksRewritten: 1, objectsDeleted: 1, rows: 2 } } });
    const after = await parkedTexts();
    expect([...after.keys()].sort()).toEqual(['c', 'c-end-shared']);
    expect(after.get('c-end-shared')).toBe(before.get('c-end-shared'));
    const left = expandMessage(decodeMessage(after.get('c')!), 0);
    expect(left.events.map((e) => e.id)).toEqual([anon.r.id]);
    expect(left.payloads.map((r) => r.id)).toEqual([anon.r.id]);
    expect(left.sessions.map((r) => r.id)).toEqual(['shared']);

    await redriveDeadLetters(env, Date.now(), { requireClickHouse: false });
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    expect(await countTable('events', p.id, "profile_id = 'prof-p'")).toBe(0);
    expect(await eventIds(p.id, '1')).toEqual([anon.r.id]);
    expect(await countTable('sessions', p.id, "id = 'only-p'")).toBe(0);
    await waitUntil(() => countTable('sessions', p.id, "id = 'shared'"), (n) => n >= 1);
  });

  it("leaves nothing of a profile's request in a parked message once its last entry goes, and keeps the base the others share", async () => {
    const p = await createProject('erase-dead-letters-base');
    const t = Date.now() - 20 * 60_000;
    const request = { ip: '198.51.100.9', country: 'FR', region: 'ARA', city: 'Lyon', timezone: 'Europe/Paris', latitude: 45.76, longitude: 4.83 };
    const slim = (e: OutboxEvent) => {
      const { project_id: _p, device_id: _d, received_at_ms: _r, ip: _i, country: _c, region: _g, city: _y, timezone: _z, latitude: _a, longitude: _o, ...own } = e.r;
      return { ...e, r: own } as OutboxEvent;
    };
    const base = { project_id: p.id, device_id: 'veh-e', received_at_ms: t, ...request };
    // The profile's call alone, and a session row of the device's that rides with it and stays.
    const mine = entry(p.id, 'veh-e', 'p1', t, { profileId: 'prof-p' });
    // A call of the profile's and another's events from one request: the base is both events' own.
    const shared = [entry(p.id, 'veh-e', 'p2', t + 1, { profileId: 'prof-p' }), entry(p.id, 'veh-e', 'q2', t + 2, { profileId: 'prof-q' })];
    await park({
      alone: message([slim(mine)], [session(p.id, 'veh-e', 'sess-other', t, 3)], { base }),
      both: message(shared.map(slim), [], { base }),
    });

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'prof-p' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { r2: { chunksRewritten: 2, rows: 2 } } });
    const after = await parkedTexts();
    // No entry left: the base went with the last one, the session row stays.
    const alone = after.get('alone')!;
    expect(JSON.parse(alone)).not.toHaveProperty('base');
    for (const v of ['198.51.100.9', 'Lyon', 'Europe/Paris', '45.76']) expect(alone).not.toContain(v);
    expect(expandMessage(decodeMessage(alone), 0)).toMatchObject({ events: [], sessions: [{ id: 'sess-other' }] });
    // An entry left: it stays as it was (the base gives it back whole).
    const raw = JSON.parse(after.get('both')!) as { base?: Record<string, unknown>; entries: OutboxEvent[] };
    expect(raw.base).toEqual(base);
    expect(raw.entries).toEqual([slim(shared[1]!)]);
    const both = expandMessage(decodeMessage(after.get('both')!), 0);
    expect(both.events).toHaveLength(1);
    expect(both.events[0]).toMatchObject({ id: shared[1]!.r.id, project_id: p.id, device_id: 'veh-e', profile_id: 'prof-q', received_at_ms: t, ...request });
  });

  it("keeps a session row a profile shares with someone else's parked events, though ClickHouse knows only the profile in it", async () => {
    const p = await createProject('erase-dead-letters-shared');
    const t = Date.now() - 15 * 60_000;
    await ingest(p, [liveEvent('veh-d', 'd-p', t, 'prof-p')]);
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    const [{ s: sessionId } = { s: '' }] = await ch().query<{ s: string }>('SELECT session_id AS s FROM events WHERE project_id = {p:String}', { p: p.id });
    expect(sessionId).not.toBe('');
    // Another profile's events in that session, parked; the session's end row parked on its own.
    await park({
      q: message([entry(p.id, 'veh-d', 'q1', t + 60_000, { profileId: 'prof-q', session: sessionId })]),
      end: message([], [{ ...session(p.id, 'veh-d', sessionId, t, 2), ended: 1, version: 3 }]),
    });
    const before = await parkedTexts();
    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'prof-p' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { r2: { chunksRewritten: 0, objectsDeleted: 0, rows: 0 } } });
    expect(await parkedTexts()).toEqual(before);
  });

  it('waits for a re-drive under way to end before it touches a parked message', async () => {
    const p = await createProject('erase-dead-letters-lock');
    const t = Date.now() - 10 * 60_000;
    await park({ locked: message([entry(p.id, 'veh-l', 'l1', t)]) });
    // A re-drive holds the lock (taken just now, so not stale).
    await env.ARCHIVE.put(REDRIVE_LOCK_KEY, 'other-run', { customMetadata: { takenAt: String(Date.now()) } });
    const id = await startErasure({ projectId: p.id, deviceId: 'veh-l' });
    // It waits at the dead-letter step, a chunk after another, without spending an attempt and
    // without examining anything (its first pass has not started).
    const waiting = await waitUntil(() => getJob(id), (j) => (j.cursor ?? '').includes('"step":"deadLetters"'), { timeoutMs: 30_000 });
    expect(waiting).toMatchObject({ state: expect.stringMatching(/^(running|enqueued)$/), attempts: 0, error: null });
    expect(JSON.parse(waiting.cursor!).deadLetters).toMatchObject({ phase: 'scan', after: '' });
    expect((await parkedTexts()).has('locked')).toBe(true);
    await env.ARCHIVE.delete(REDRIVE_LOCK_KEY);
    expect(await waitFinished(id)).toMatchObject({ state: 'succeeded', attempts: 0, error: null, result: { r2: { objectsDeleted: 1, rows: 1 } } });
    expect((await parkedTexts()).has('locked')).toBe(false);
  });

  it("deletes a project's parked messages with it and leaves another project's", async () => {
    const doomed = await createProject('dead-letters-doomed');
    const kept = await createProject('dead-letters-kept');
    const t = Date.now() - 10 * 60_000;
    await park({ d1: message([entry(doomed.id, 'veh-1', 'd', t)]), d2: message([entry(doomed.id, 'veh-2', 'd', t)]), k1: message([entry(kept.id, 'veh-1', 'k', t)]) });
    const keptBefore = (await parkedTexts()).get('k1');

    const started = await admin('DELETE', `/admin/projects/${doomed.id}`);
    expect(started.status).toBe(202);
    const job = await waitFinished(started.body.id as string);
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { r2: { objectsDeleted: 2, rows: 2 } } });
    const after = await parkedTexts();
    expect([...after.keys()]).toEqual(['k1']);
    expect(after.get('k1')).toBe(keptBefore);

    // A message of the deleted project parked only now (it was still in the queue's retries): the
    // re-drive drops it instead of writing rows of a project that no longer exists.
    await park({ late: message([entry(doomed.id, 'veh-1', 'late', t + 1)]) });
    expect(await redriveDeadLetters(env, Date.now(), { requireClickHouse: false })).toMatchObject({ redriven: 1, quarantined: 0, failed: 0 });
    expect([...(await parkedTexts()).keys()]).toEqual([]);
    await waitUntil(() => countTable('events', kept.id), (n) => n === 1);
    expect(await countTable('events', doomed.id)).toBe(0);

    // A deletion asked for but not begun (paused before it revoked anything) drops nothing; one that
    // revoked the clients and was then cancelled leaves a project that takes no row again: dropped.
    const waiting = await createProject('dead-letters-deletion-paused');
    const revoked = await createProject('dead-letters-deletion-revoked');
    const deletionJob = (projectId: string, state: string, cursor: string | null) =>
      env.DB.prepare('INSERT INTO jobs (id, type, state, params, cursor, created_at, last_update_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .bind(crypto.randomUUID(), 'project_deletion', state, JSON.stringify({ projectId }), cursor, Date.now(), Date.now())
        .run();
    await deletionJob(waiting.id, 'paused', null);
    // Other jobs' cursors are not all JSON (an import's is its last key): the check must not trip on them.
    await env.DB.prepare('INSERT INTO jobs (id, type, state, params, cursor, created_at, last_update_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .bind(crypto.randomUUID(), 'legacy_import', 'paused', JSON.stringify({ projectId: waiting.id }), '2024-01-01T00:00:00.000Z', Date.now(), Date.now())
      .run();
    await deletionJob(revoked.id, 'cancelled', JSON.stringify({ step: 'settle', revokedAt: Date.now() - 1000 }));
    await park({ w: message([entry(waiting.id, 'veh-1', 'w', t + 2)]), r: message([entry(revoked.id, 'veh-1', 'r', t + 3)]) });
    expect(await redriveDeadLetters(env, Date.now(), { requireClickHouse: false })).toMatchObject({ redriven: 1, quarantined: 0, failed: 0 });
    expect([...(await parkedTexts()).keys()]).toEqual([]);
    await waitUntil(() => countTable('events', waiting.id), (n) => n === 1);
    expect(await countTable('events', revoked.id)).toBe(0);
  });

  it("clears a profile's unsent events from a device whose outbox is stalled, though ClickHouse never saw them", async () => {
    const p = await createProject('erase-stalled-profile');
    const deviceId = 'stall-p';
    const stub = deviceStub(env, p.id, deviceId);
    const send = (events: unknown[]) => postBatch(p, { events }).then(async (r) => expect(await r.json()).toMatchObject({ accepted: events.length }));
    await send([trackEvent('anon', { __deviceId: deviceId, __eventId: 'anon-1' })]);
    await stub.maintain(Date.now());
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    // A row the queue refuses (too large) stalls the outbox from here on.
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      state.storage.sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('session', 'poison', ?)", 'x'.repeat(200 * 1024));
      // Written behind the object's back: what it holds of its outbox in memory is stale now.
      (o as unknown as { stores: { outbox: { forgetWritten(): void } } }).stores.outbox.forgetWritten();
    });
    expect((await stub.maintain(Date.now())).flushed).toBe(0);
    // Two of the profile's events: one beside an anonymous event (a shared session), one two hours
    // back (a session of its own, which must not reach ClickHouse either).
    const mine = (id: string, atMs?: number) => ({ type: 'track', payload: { name: 'mine', profileId: 'prof-s', properties: { __deviceId: deviceId, __eventId: id, ...(atMs ? { __timestamp: atMs } : {}) } } });
    await send([mine('mine-1'), trackEvent('anon', { __deviceId: deviceId, __eventId: 'anon-2' }), mine('mine-2', Date.now() - 2 * 3_600_000)]);
    expect((await stub.sessions()).length).toBe(2);
    expect((await stub.maintain(Date.now())).flushed).toBe(0);
    const stalled = await env.DB.prepare('SELECT device_id FROM stalled_outboxes WHERE project_id = ?').bind(p.id).all<{ device_id: string }>();
    expect(stalled.results.map((r) => r.device_id)).toEqual([deviceId]);
    expect(await countTable('events', p.id, "profile_id = 'prof-s'")).toBe(0);

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'prof-s' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null, result: { deviceObjects: 1 } });
    // What stays unsent is the others' entries, each whole under its chunk's base.
    const held = await runInDurableObject(stub, (_o, state) =>
      state.storage.sql.exec<{ body: string; base: string | null }>("SELECT body, base FROM outbox WHERE kind = 'events'").toArray(),
    );
    expect(held.flatMap((r) => JSON.parse(r.body) as OutboxEvent[]).map((e) => e.r.name)).toEqual(['anon']);
    for (const r of held) {
      // One request's events: the base kept all ten shared fields, and the entry stays without them.
      expect(r.base).not.toBeNull();
      for (const e of JSON.parse(r.body) as OutboxEvent[]) {
        expect(e.r).not.toHaveProperty('project_id');
        expect(entryRow(e, JSON.parse(r.base!))).toMatchObject({ project_id: p.id, device_id: deviceId, profile_id: '' });
      }
    }

    // The queue takes the outbox again: the anonymous event arrives, the profile's never does.
    await runInDurableObject(stub, (_o, state) => {
      state.storage.sql.exec("DELETE FROM outbox WHERE ref = 'poison'");
    });
    await stub.maintain(Date.now());
    await waitUntil(() => countTable('events', p.id), (n) => n === 2);
    expect(await countTable('events', p.id, "profile_id = 'prof-s'")).toBe(0);
    expect(await countTable('events', p.id, "name = 'mine'")).toBe(0);
    // The object forgot the profile's own session; ClickHouse holds only the anonymous events' one.
    expect((await stub.sessions()).length).toBe(1);
    const sessions = await ch().query<{ id: string }>("SELECT DISTINCT id FROM sessions WHERE project_id = {p:String} AND device_id = {d:String}", { p: p.id, d: deviceId });
    const anonSessions = await ch().query<{ id: string }>("SELECT DISTINCT session_id AS id FROM events WHERE project_id = {p:String} AND device_id = {d:String}", { p: p.id, d: deviceId });
    expect(sessions.map((r) => r.id)).toEqual(anonSessions.map((r) => r.id));
    expect(sessions).toHaveLength(1);
  });

  it("keeps a session in a stalled device object while someone else's unsent event is in it, though ClickHouse knows only the profile there", async () => {
    const p = await createProject('erase-stalled-shared');
    const deviceId = 'stall-s';
    const stub = deviceStub(env, p.id, deviceId);
    const t = Date.now() - 10 * 60_000;
    await ingest(p, [liveEvent(deviceId, 'p-1', t, 'prof-p')]);
    await stub.maintain(Date.now());
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    await runInDurableObject(stub, (o: DeviceObject, state) => {
      state.storage.sql.exec("INSERT INTO outbox (kind, ref, body) VALUES ('session', 'poison', ?)", 'x'.repeat(200 * 1024));
      // Written behind the object's back: what it holds of its outbox in memory is stale now.
      (o as unknown as { stores: { outbox: { forgetWritten(): void } } }).stores.outbox.forgetWritten();
    });
    expect((await stub.maintain(Date.now())).flushed).toBe(0);
    // An anonymous event a minute later joins the profile's session; it stays unsent.
    await ingest(p, [liveEvent(deviceId, 'anon-1', t + 60_000)]);
    expect((await stub.sessions()).map((x) => x.eventCount)).toEqual([2]);

    const job = await waitFinished(await startErasure({ projectId: p.id, profileId: 'prof-p' }));
    expect(job).toMatchObject({ state: 'succeeded', error: null });
    // ClickHouse held only the profile's event in that session, but the object keeps it for the
    // anonymous event, which arrives with its session once the outbox flows again.
    expect((await stub.sessions()).length).toBe(1);
    await runInDurableObject(stub, (_o, state) => {
      state.storage.sql.exec("DELETE FROM outbox WHERE ref = 'poison'");
    });
    await stub.maintain(Date.now());
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    const [anon] = await ch().query<{ s: string }>('SELECT session_id AS s FROM events WHERE project_id = {p:String}', { p: p.id });
    await waitUntil(() => countTable('sessions', p.id, 'id = {s:String}', { s: anon!.s }), (n) => n >= 1);
    expect(await countTable('events', p.id, "profile_id = 'prof-p'")).toBe(0);
  });
});

describe('an outbox chunk a profile erasure empties', () => {
  it('keeps its riding session rows and drops its base, the erased events\' request', async () => {
    const p = await createProject('erase-outbox-base');
    const stub = deviceStub(env, p.id, 'base-e');
    expect((await postBatch(p, { events: [trackEvent('seed', { __deviceId: 'base-e' })] })).status).toBe(202);
    await waitUntil(() => countTable('events', p.id), (n) => n === 1);
    const rows = await runInDurableObject(stub, (o, state) => {
      const outbox = (o as unknown as { stores: { outbox: OutboxStore } }).stores.outbox;
      const mine = entry(p.id, 'base-e', 'p1', Date.now() - 1000, { profileId: 'prof-p' });
      const { project_id, device_id, received_at_ms, ip: _ip, country, region, city: _city, timezone, latitude, longitude, ...own } = mine.r;
      const base = { project_id, device_id, received_at_ms, ip: '198.51.100.9', country, region, city: 'Lyon', timezone, latitude, longitude };
      const rp = `"r":${JSON.stringify(own)},"p":${JSON.stringify(mine.p)}`;
      state.storage.transactionSync(() => outbox.appendEvents([{ rp }], [''], [session(p.id, 'base-e', 'sess-other', Date.now(), 2)], JSON.stringify(base)));
      const removed = state.storage.transactionSync(() => outbox.eraseProfileEvents('prof-p', new Set(), new Set()));
      return { removed, left: state.storage.sql.exec<{ body: string; payload: string | null; base: string | null }>("SELECT body, payload, base FROM outbox WHERE kind = 'events'").toArray() };
    });
    expect(rows.removed).toBe(1);
    expect(rows.left).toHaveLength(1);
    expect(rows.left[0]).toMatchObject({ body: '[]', base: null });
    expect(JSON.parse(rows.left[0]!.payload!)).toMatchObject([{ id: 'sess-other' }]);
  });
});
