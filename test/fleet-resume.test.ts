// An in-order stream of positions continues the analysis from the state stored with the device's
// last stretch: each recompute reads only its own fixes, and the stored rows are those of one
// recompute of every fix. Late fixes and rows from before the stored state fall back to the window.
// A pass whose device object does not take the live position is retried as a whole.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { deviceStub } from '../src/device/stub';
import { deviceObjectsLive, recomputePasses, type LiveWriter, type PassResult } from '../src/fleet/recompute';
import { DEFAULT_FLEET_RULES, resolveFleetRules } from '../src/fleet/rules';
import { parseResume, resumeText, stretchesFrom } from '../src/fleet/store';
import type { Fix } from '../src/fleet/position';
import { analyse } from '../src/fleet/trips';
import { ch, createProject } from './helpers';
import { currentFleetRows, destination, FixLog, HOME, HOUR, MIN, prng, storeFixes, straightDrive, syntheticDay } from './fleet-fixtures';

const DAY_MS = 86_400_000;
const dayStart = (days: number) => Math.floor((Date.now() - days * DAY_MS) / DAY_MS) * DAY_MS;
const RULES = DEFAULT_FLEET_RULES;

/** One device of one project, recomputed pass by pass as a consumer would, with versions after `fromVersion`. */
function device(projectId: string, deviceId: string, fromVersion = 0) {
  let version = fromVersion;
  return {
    async deliver(fixes: readonly Fix[]): Promise<PassResult> {
      await storeFixes(projectId, deviceId, fixes);
      const times = fixes.map((f) => f.atMs);
      const [out] = await recomputePasses(ch(), [{ v: { projectId, deviceId, version: ++version }, span: { fromMs: Math.min(...times), toMs: Math.max(...times) }, rules: RULES }]);
      if (out instanceof Error) throw out;
      return out!;
    },
    async lastStretch() {
      const list = (await stretchesFrom(ch(), [{ projectId, deviceId, fromMs: Number.MAX_SAFE_INTEGER }])).get(`${projectId}\u0000${deviceId}`) ?? [];
      return list[list.length - 1];
    },
  };
}

describe('an in-order stream of positions', () => {
  it('continues from the stored state, reading each batch only, and stores what one recompute of every fix stores', async () => {
    const streamed = await createProject('fleet-resume-stream');
    const whole = await createProject('fleet-resume-whole');
    const D = dayStart(3);
    const day = syntheticDay(8080, D);
    // Event ids are UUIDs, the same in both projects (ties break alike).
    const fixes = day.fixes.map((f) => ({ ...f, id: crypto.randomUUID() })).sort((a, b) => a.atMs - b.atMs);
    const van = device(streamed.id, 'van-1');

    // A live device: batches of 100 fixes in time order, up to the middle of trip B (09:30–09:41).
    const midB = D + 9.5 * HOUR + 5 * MIN;
    const first = fixes.filter((f) => f.atMs < midB);
    let continued = 0;
    let batches = 0;
    for (let i = 0; i < first.length; i += 100) {
      const batch = first.slice(i, i + 100);
      const r = await van.deliver(batch);
      batches++;
      if (r.range?.resume) {
        continued++;
        expect(r.fixesRead).toBe(batch.length);
      }
    }
    expect(continued).toBeGreaterThanOrEqual(batches - 2);

    // A late fix inside the open stretch, two minutes back in trip B: its window is re-read from
    // the stretch's start, once.
    const open = (await van.lastStretch())!;
    expect(open.end).toBe('open');
    const near = first.filter((f) => f.atMs < midB - 2 * MIN).at(-1)!;
    expect(near.atMs).toBeGreaterThan(open.startMs);
    const late: Fix = { id: crypto.randomUUID(), atMs: near.atMs + 1500, ...destination(near, 90, 12), speedKmh: 45, accuracyM: 5 };
    const lateRun = await van.deliver([late]);
    expect(lateRun.range?.resume).toBeUndefined();
    expect(lateRun.range?.fromMs).toBe(open.startMs);
    expect(lateRun.fixesRead).toBe(first.filter((f) => f.atMs >= open.startMs).length + 1);

    // And in order again to the end of the day, continued from the state the re-read stored.
    const rest = fixes.filter((f) => f.atMs >= midB);
    let after = 0;
    for (let i = 0; i < rest.length; i += 100) if ((await van.deliver(rest.slice(i, i + 100))).range?.resume) after++;
    expect(after).toBeGreaterThanOrEqual(Math.ceil(rest.length / 100) - 2);

    // The same fixes stored at once and recomputed in one pass.
    await device(whole.id, 'van-1').deliver([...fixes, late]);
    const [a, b] = await Promise.all([currentFleetRows(streamed.id), currentFleetRows(whole.id)]);
    expect(a).toEqual(b);
    expect(a.trips).toHaveLength(3);
    // Both end in the state a full analysis ends in.
    const ends = await Promise.all([van.lastStretch(), device(whole.id, 'van-1').lastStretch()]);
    expect(ends[0]!.resume).toBe(ends[1]!.resume);
    expect(parseResume(ends[0]!.resume, RULES)!.state).toEqual(JSON.parse(JSON.stringify(analyse([...fixes, late], RULES).resume)));
  });
});

describe('a device stored before its state was', () => {
  it('re-reads its open stretch once, then continues; state of other rules or layouts is not continued', async () => {
    const upgraded = await createProject('fleet-resume-upgraded');
    const reference = await createProject('fleet-resume-reference');
    const D = dayStart(2);
    const log = new FixLog(prng(12), 'u-');
    log.park(HOME, D + 6 * HOUR, D + 7 * HOUR);
    const end = straightDrive(log, HOME, D + 7 * HOUR, 240, 50);
    log.park(end, D + 7 * HOUR + 240 * 5000, D + 8 * HOUR);
    const fixes = log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
    const parts = [fixes.filter((f) => f.atMs < D + 7 * HOUR + 5 * MIN), fixes.filter((f) => f.atMs >= D + 7 * HOUR + 5 * MIN && f.atMs < D + 7 * HOUR + 10 * MIN), fixes.filter((f) => f.atMs >= D + 7 * HOUR + 10 * MIN)];
    await device(upgraded.id, 'van-2').deliver(parts[0]!);

    // The row as an earlier version of the gateway wrote it (no resume column in its insert), as
    // the newest version; the gateway's next passes come after it.
    const open = (await device(upgraded.id, 'van-2').lastStretch())!;
    expect(parseResume(open.resume, RULES)).not.toBeNull();
    await ch().insert('fleet_stretches', [
      { project_id: upgraded.id, device_id: 'van-2', start_ms: open.startMs, end_ms: open.endMs, last_accepted_ms: open.lastAcceptedMs, counted_m: open.countedM, end_reason: open.end, deleted: 0, version: 5 },
    ]);
    const van = device(upgraded.id, 'van-2', 10);
    expect((await van.lastStretch())!.resume).toBe('');

    // The next in-order batch re-reads the open stretch (it has no state to go on from) ...
    const second = await van.deliver(parts[1]!);
    expect(second.range?.resume).toBeUndefined();
    expect(second.fixesRead).toBe(parts[0]!.filter((f) => f.atMs >= open.startMs).length + parts[1]!.length);
    // ... and stores one, which the batch after continues from.
    const third = await van.deliver(parts[2]!);
    expect(third.range?.resume).toBeDefined();
    expect(third.fixesRead).toBe(parts[2]!.length);

    const ref = device(reference.id, 'van-2');
    await ref.deliver(fixes);
    expect(await currentFleetRows(upgraded.id)).toEqual(await currentFleetRows(reference.id));
    expect((await currentFleetRows(upgraded.id)).trips).toHaveLength(1);

    // Stored state is continued only under the rules and the layout it was written with.
    const text = (await van.lastStretch())!.resume;
    expect(parseResume(text, RULES)).not.toBeNull();
    expect(parseResume(text, resolveFleetRules({ stopS: 120 }))).toBeNull();
    const point = parseResume(text, RULES)!;
    expect(resumeText(point, RULES)).toBe(text);
    expect(parseResume(text.replace('"v":1', '"v":2'), RULES)).toBeNull();
    expect(parseResume('{"v":1', RULES)).toBeNull();
    expect(parseResume('', RULES)).toBeNull();
  });
});

describe('a recompute that fails part-way', () => {
  it('leaves nothing a retry of its span would not put right: the daily rows follow the trips', async () => {
    const failing = await createProject('fleet-resume-failing');
    const reference = await createProject('fleet-resume-failing-ref');
    const D = dayStart(2);
    const log = new FixLog(prng(21), 'w-');
    const end = straightDrive(log, HOME, D + 7 * HOUR, 240, 50);
    log.park(end, D + 7 * HOUR + 240 * 5000, D + 7.5 * HOUR);
    const fixes = log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
    const head = fixes.filter((f) => f.atMs < D + 7 * HOUR + 10 * MIN);
    const tail = fixes.filter((f) => f.atMs >= D + 7 * HOUR + 10 * MIN);
    const span = (fs: Fix[]) => ({ fromMs: fs[0]!.atMs, toMs: fs[fs.length - 1]!.atMs });
    const pass = (version: number, fs: Fix[], client = ch()) => recomputePasses(client, [{ v: { projectId: failing.id, deviceId: 'van-3', version }, span: span(fs), rules: RULES }]);

    await storeFixes(failing.id, 'van-3', head);
    expect((await pass(1, head))[0]).not.toBeInstanceOf(Error);
    // ClickHouse takes every insert of the next pass but the daily rows' (a real server, one
    // insert refused): the pass fails, and its span stays pending for a retry.
    await storeFixes(failing.id, 'van-3', tail);
    const real = ch();
    const refusing: typeof real = { ...real, insert: (table, rows) => (table === 'fleet_mileage_days' ? Promise.reject(new Error('ClickHouse refused the insert')) : real.insert(table, rows)) };
    await expect(pass(2, tail, refusing)).rejects.toThrow(/refused/);
    // The retry of the span puts every row right.
    expect((await pass(3, tail))[0]).not.toBeInstanceOf(Error);

    await storeFixes(reference.id, 'van-3', fixes);
    await recomputePasses(ch(), [{ v: { projectId: reference.id, deviceId: 'van-3', version: 1 }, span: span(fixes), rules: RULES }]);
    const [got, want] = await Promise.all([currentFleetRows(failing.id), currentFleetRows(reference.id)]);
    expect(got.trips).toHaveLength(1);
    expect(got).toEqual(want);
  });
});

describe('a device object that does not take its live position', () => {
  it("fails that device's pass only, writes none of its trips, and the retry leaves the object equal to the analysis", async () => {
    const p = await createProject('fleet-live-refused');
    const reference = await createProject('fleet-live-refused-ref');
    const D = dayStart(2);
    const drive = (seed: number) => {
      const log = new FixLog(prng(seed), `r${seed}-`);
      const end = straightDrive(log, HOME, D + 9 * HOUR, 120, 40);
      log.park(end, D + 9 * HOUR + 120 * 5000, D + 9.5 * HOUR);
      return log.fixes.map((f) => ({ ...f, id: crypto.randomUUID() }));
    };
    const fixes = { refuser: drive(5), taker: drive(6) };
    const span = (fs: Fix[]) => ({ fromMs: fs[0]!.atMs, toMs: fs[fs.length - 1]!.atMs });
    const input = (projectId: string, deviceId: 'refuser' | 'taker', version: number) => ({ v: { projectId, deviceId, version }, span: span(fixes[deviceId]), rules: RULES });
    for (const d of ['refuser', 'taker'] as const) {
      await storeFixes(p.id, d, fixes[d]);
      await storeFixes(reference.id, d, fixes[d]);
    }

    // The objects: the refuser's answers an error (overloaded, say), the taker's is the real one.
    const objects = deviceObjectsLive(env);
    const refusing: LiveWriter = async (updates) => {
      const real = await objects(updates.filter((u) => u.deviceId !== 'refuser'));
      let k = 0;
      return updates.map((u) => (u.deviceId === 'refuser' ? new Error('object overloaded') : real[k++]!));
    };
    const [a, b] = await recomputePasses(ch(), [input(p.id, 'refuser', 1), input(p.id, 'taker', 1)], undefined, refusing);
    expect(a).toBeInstanceOf(Error);
    expect((a as Error).message).toMatch(/refuser did not take its live position: object overloaded/);
    expect(b).not.toBeInstanceOf(Error);
    const after = await currentFleetRows(p.id);
    // Nothing at all was written for the refuser (its span stays pending): no day row counts a trip
    // the retry might not find again.
    expect(after.stretches.filter((r) => (r as { device_id: string }).device_id === 'refuser')).toEqual([]);
    expect(after.trips.filter((r) => (r as { device_id: string }).device_id === 'refuser')).toEqual([]);
    expect(after.mileage.filter((r) => (r as { device_id: string }).device_id === 'refuser')).toEqual([]);
    expect(after.live.filter((r) => (r as { device_id: string }).device_id === 'refuser')).toEqual([]);
    expect(after.trips.filter((r) => (r as { device_id: string }).device_id === 'taker')).toHaveLength(1);
    const state = (d: string) => deviceStub(env, p.id, d).state();
    expect((await state('taker'))!.fleetLive).toEqual(analyse(fixes.taker, RULES).live);
    expect(await state('refuser')).toBeNull();

    // The retry (a later pass) gives the refuser's object the analysis, and the rows of one clean pass.
    const [retry] = await recomputePasses(ch(), [input(p.id, 'refuser', 2)], undefined, objects);
    expect(retry).not.toBeInstanceOf(Error);
    expect((await state('refuser'))!.fleetLive).toEqual(analyse(fixes.refuser, RULES).live);
    await recomputePasses(ch(), [input(reference.id, 'refuser', 1), input(reference.id, 'taker', 1)]);
    expect(await currentFleetRows(p.id)).toEqual(await currentFleetRows(reference.id));
  });
});
