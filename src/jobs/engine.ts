// The job engine's shell: a queue consumer that runs one chunk per message under a lease (paced by
// the throttle of a job that has one), and the cron watchdog that re-kicks stalled jobs.
import type { Env } from '../env';
import { legacyImportRunner } from '../legacy/import-job';
import { archiveRunner } from '../archive/archive-job';
import { restoreRunner } from '../archive/restore-job';
import { erasureRunner, projectDeletionRunner } from '../erasure/erasure-job';
import { fleetRecomputeRunner } from '../fleet/recompute';
import { advance, chunkRetryDelaySec, MAX_CHUNK_ATTEMPTS } from './states';
import { PermanentChunkError, type ChunkInput, type ChunkPace, type JobRunner } from './runner';
import { jobStore, type JobRow, type JobStore } from './store';
import { IDLE_PROBES, MIN_WINDOW_PROBES, needsBaseline, nextThrottle, observeWindow, restFor, restoreThrottle, splitThrottleState, WINDOW_PROBES, withBaseline, type ThrottleLimits, type ThrottleState } from './throttle';
import { saveThrottleState } from './throttle-store';

import { sendChunk, type ChunkMessage } from './queue';

export { JOBS_QUEUE, sendChunk, type ChunkMessage } from './queue';

/** A chunk's lease, renewed every third of it while the chunk runs: only a dead chunk loses it. */
export const LEASE_MS = 120_000;
/** The longest a chunk may hold its lease, renewals included (a queue consumer's own wall-time limit). */
export const MAX_CHUNK_MS = 15 * 60_000;
/** No lease and no progress for this long: the message for the next chunk was lost. */
export const STALL_MS = 180_000;

const runners: Record<string, JobRunner> = { legacy_import: legacyImportRunner, archive: archiveRunner, restore: restoreRunner, erasure: erasureRunner, project_deletion: projectDeletionRunner, fleet_recompute: fleetRecomputeRunner };

export function runnerFor(type: string): JobRunner {
  const r = runners[type];
  if (!r) throw new Error(`no runner for job type ${type}`);
  return r;
}

/** Refuses a retry that would make the job a second writer beside one started while it stood (see JobRunner.refuseRetry). */
export async function refuseConflictingRetry(env: Env, id: string): Promise<void> {
  const job = await jobStore(env.DB).get(id);
  if (job) await runnerFor(job.type).refuseRetry?.(env, { id: job.id, params: JSON.parse(job.params) as unknown });
}


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function errorText(err: unknown): string {
  return (err instanceof Error ? `${err.name}: ${err.message}` : String(err)).slice(0, 2000);
}

/** What a runner gets of its job: the operator's params (without the throttle's state) and progress. */
export function chunkInput(job: JobRow): ChunkInput {
  const { params } = splitThrottleState(JSON.parse(job.params) as unknown);
  return { id: job.id, params, cursor: job.cursor, maxKey: job.maxKey, rowsTotal: job.rowsTotal, rowsProcessed: job.rowsProcessed, rowsSkipped: job.rowsSkipped, verifyWrites: job.verifyWrites };
}

/**
 * Gap between probe reads while a chunk runs, at least as long as the last probe took: probing
 * stays a light reader's load however slow reads get.
 */
const MIN_PROBE_GAP_MS = 100;
/**
 * Wall time a self-throttling chunk may use: at a slow pace it still commits progress, and honours
 * a pause or cancel, this often.
 */
const THROTTLED_CHUNK_MS = 20_000;

type Probe = () => Promise<void>;

/** The latency of one probe (ms), or null when it did not answer: that says nothing about latency. */
async function timeProbe(probe: Probe): Promise<number | null> {
  const t = performance.now();
  try {
    await probe();
    return performance.now() - t;
  } catch {
    return null;
  }
}

async function idleProbes(probe: Probe): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < IDLE_PROBES; i++) {
    const ms = await timeProbe(probe);
    if (ms !== null) out.push(ms);
  }
  return out;
}

/** A probe's latency, and whether it ran wholly inside one of the job's rests (an idle read, now). */
interface ProbeSample {
  ms: number;
  idle: boolean;
}

/**
 * Probes one after another, as a reader would, until stopped; `take` hands over what answered
 * since. `restingIn` names the rest the job is in (null while it works). A probe still in flight
 * when the chunk ends is left to finish on its own: the chunk does not wait for it.
 */
function probeAlongside(probe: Probe, restingIn: () => number | null): { take(): ProbeSample[]; stop(): ProbeSample[] } {
  let samples: ProbeSample[] = [];
  let running = true;
  let wake = () => {};
  const stopped = new Promise<void>((resolve) => (wake = resolve));
  void (async () => {
    while (running) {
      const rest = restingIn();
      const ms = await timeProbe(probe);
      if (running && ms !== null) samples.push({ ms, idle: rest !== null && restingIn() === rest });
      if (running) await Promise.race([sleep(Math.max(MIN_PROBE_GAP_MS, ms ?? 0)), stopped]);
    }
  })();
  const take = () => {
    const out = samples;
    samples = [];
    return out;
  };
  return {
    take,
    stop() {
      running = false;
      wake();
      return take();
    },
  };
}

/** A self-throttling job's controller state, restored from its row, the bounds, and the probe it times. */
interface Throttle {
  limits: ThrottleLimits;
  state: ThrottleState;
  probe: Probe | null;
}

async function loadThrottle(env: Env, runner: JobRunner, job: JobRow, params: unknown): Promise<Throttle | null> {
  const limits = runner.throttle?.limits(params) ?? null;
  if (!runner.throttle || !limits) return null;
  const state = restoreThrottle(splitThrottleState(JSON.parse(job.params) as unknown).stored, limits);
  // Without a probe (storage unreachable) the chunk runs at the last pace and learns nothing.
  const probe = await runner.throttle.prepareProbe(env, params).catch((err: unknown) => {
    console.error(JSON.stringify({ msg: 'throttle probe unavailable; keeping the last pace', job: job.id, error: errorText(err) }));
    return null;
  });
  return { limits, state, probe };
}

/**
 * The pace of one self-throttling chunk: rests between its steps in proportion to the work since
 * the last one, at a duty cycle the controller re-judges whenever a window of probes has answered.
 * Probes that ran inside a rest refresh the idle baseline as they come, so it follows the load
 * others put on the readers while the job runs.
 */
function pacer(throttle: Throttle, startedAt: number): ChunkPace & { finish(): ThrottleState } {
  let state = throttle.state;
  let window: ProbeSample[] = [];
  let longestRestMs = 0;
  let workedMs = 0;
  let restedMs = 0;
  let since = Date.now();
  let rests = 0;
  let resting: number | null = null;
  const probes = throttle.probe ? probeAlongside(throttle.probe, () => resting) : null;
  const judge = (minProbes: number) => {
    if (probes) window.push(...probes.take());
    if (window.length < minProbes) return;
    state = withBaseline(state, window.filter((p) => p.idle).map((p) => p.ms), Date.now());
    state = nextThrottle(state, { probesMs: window.map((p) => p.ms), longestRestMs, workedMs, restedMs }, throttle.limits);
    window = [];
    longestRestMs = workedMs = restedMs = 0;
  };
  return {
    stepRows: () => state.stepRows,
    async rest() {
      const worked = Date.now() - since;
      workedMs += worked;
      judge(WINDOW_PROBES);
      const ms = restFor(worked, state.duty, throttle.limits.maxPauseMs);
      if (ms > 0) {
        longestRestMs = Math.max(longestRestMs, ms);
        resting = ++rests;
        await sleep(ms);
        resting = null;
        restedMs += ms;
      }
      since = Date.now();
      return Date.now() - startedAt < THROTTLED_CHUNK_MS;
    },
    finish() {
      if (probes) window.push(...probes.stop());
      workedMs += Date.now() - since;
      judge(MIN_WINDOW_PROBES);
      // Too few probes to judge the pace on: still report what the readers saw.
      if (window.length > 0) state = observeWindow(withBaseline(state, window.filter((p) => p.idle).map((p) => p.ms), Date.now()), window.map((p) => p.ms));
      return state;
    },
  };
}

/**
 * Runs one chunk. A self-throttling job's chunk measures the idle latency first when its baseline
 * is missing or stale, then works in steps with rests between them while probe reads are timed
 * alongside; it returns the controller's state after it.
 */
async function runPacedChunk(env: Env, runner: JobRunner, input: ChunkInput, throttle: Throttle | null) {
  if (!throttle) return { outcome: await runner.runChunk(env, input), next: null };
  if (throttle.probe && needsBaseline(throttle.state, Date.now())) {
    throttle = { ...throttle, state: withBaseline(throttle.state, await idleProbes(throttle.probe), Date.now()) };
  }
  const pace = pacer(throttle, Date.now());
  let outcome;
  let next: ThrottleState;
  try {
    outcome = await runner.runChunk(env, { ...input, pace });
  } finally {
    // Stops the probes whatever happened (a failed chunk's judgement is not kept).
    next = pace.finish();
  }
  return { outcome, next };
}

/** Settles a pause or cancel request once no chunk is running. */
async function settleRequest(store: JobStore, job: JobRow, now: number): Promise<boolean> {
  if (job.state === 'pausing') return (await store.settle(job.id, job.leaseVersion, 'paused', now)) !== null;
  if (job.state === 'cancelling') return (await store.settle(job.id, job.leaseVersion, 'cancelled', now)) !== null;
  return false;
}

/**
 * Renews a running chunk's lease every `leaseMs / 3`, so a slow but live chunk is never fenced off
 * and run twice at once; a chunk that dies stops renewing and the watchdog takes over. A chunk that
 * hangs (a live isolate stuck on an await) must not hold its job forever: the lease never reaches
 * past `maxHoldMs` after renewal began, so the watchdog fences such a chunk off then.
 */
export function keepLease(store: JobStore, id: string, version: number, leaseMs = LEASE_MS, maxHoldMs = MAX_CHUNK_MS): { stop(): void } {
  const ceiling = Date.now() + maxHoldMs;
  const timer = setInterval(() => {
    const until = Math.min(Date.now() + leaseMs, ceiling);
    if (until >= ceiling) {
      clearInterval(timer);
      console.error(JSON.stringify({ msg: 'chunk reached its lease ceiling; the watchdog may fence it off', job: id, maxHoldMs }));
    }
    store.renew(id, version, until).then(
      (held) => held || clearInterval(timer),
      (err: unknown) => console.error(JSON.stringify({ msg: 'lease renewal failed', job: id, error: errorText(err) })),
    );
  }, leaseMs / 3);
  return { stop: () => clearInterval(timer) };
}

/** 'missing': no job has this id (yet: its row is written just after its first message is sent). */
export async function runChunkMessage(env: Env, msg: ChunkMessage): Promise<'missing' | void> {
  const store = jobStore(env.DB);
  const job = await store.get(msg.jobId);
  if (!job) return 'missing';
  if (job.leaseVersion !== msg.version) return;
  const started = Date.now();
  if (await settleRequest(store, job, started)) return;
  const claimed = await store.claim(job.id, msg.version, started, started + LEASE_MS);
  if (!claimed) {
    // A pause or cancel that landed between the read above and the claim makes the claim fail;
    // this message is then the job's only one, so it settles the request instead of dropping it.
    const again = await store.get(job.id);
    if (again && again.leaseVersion === msg.version) await settleRequest(store, again, Date.now());
    return;
  }
  const token = claimed.leaseVersion;
  const runner = runnerFor(claimed.type);
  const input = chunkInput(claimed);

  let outcome;
  let throttled: ThrottleState | null;
  const renewal = keepLease(store, job.id, token);
  try {
    ({ outcome, next: throttled } = await runPacedChunk(env, runner, input, await loadThrottle(env, runner, claimed, input.params)));
  } catch (err) {
    await chunkFailed(env, store, claimed, err);
    return;
  } finally {
    renewal.stop();
  }
  // A self-throttling job rested inside its chunk, where its probes saw it.
  const pauseMs = throttled ? 0 : runner.pauseMs(input.params);
  if (throttled) {
    // The state is advice for the next chunk: losing one update only repeats a pace.
    await saveThrottleState(env.DB, job.id, token, throttled).catch((err: unknown) =>
      console.error(JSON.stringify({ msg: 'throttle state not saved', job: job.id, error: errorText(err) })),
    );
  }

  const now = Date.now();
  const progress = advance(
    { rowsProcessed: outcome.rowsBefore, rowsTotal: outcome.rowsTotal, ratePerSec: claimed.ratePerSec, etaSec: claimed.etaSec },
    outcome.rows,
    now - started + (outcome.done ? 0 : pauseMs),
  );
  const committed = await store.commit(
    job.id,
    token,
    { ...progress, rowsSkipped: outcome.skippedBefore + outcome.skipped, cursor: outcome.cursor, maxKey: outcome.maxKey, ...(outcome.verifyWrites ? { verifyWrites: true } : {}) },
    now,
  );
  if (!committed) return; // the watchdog fenced this chunk off; its writes were idempotent

  if (outcome.done) {
    let result: unknown;
    try {
      result = await runner.complete(env, input);
    } catch (err) {
      await chunkFailed(env, store, committed, err);
      return;
    }
    const done = await store.settle(job.id, committed.leaseVersion, 'succeeded', Date.now(), { etaSec: 0, result: result === undefined ? null : JSON.stringify(result) });
    if (done && runner.afterSuccess) {
      await runner.afterSuccess(env, input).catch((err: unknown) => console.error(JSON.stringify({ msg: 'after-success step failed; the watchdog will finish it', job: job.id, error: errorText(err) })));
    }
    return;
  }
  if (await settleRequest(store, committed, now)) return;

  // Yield to readers before the next chunk: short pauses here, long ones as a queue delay.
  if (pauseMs > 0 && pauseMs < 1000) await sleep(pauseMs);
  await sendChunk(env, job.id, committed.leaseVersion, pauseMs >= 1000 ? pauseMs : 0);
}

async function chunkFailed(env: Env, store: JobStore, job: JobRow, err: unknown): Promise<void> {
  const now = Date.now();
  const attempts = job.attempts + 1;
  const error = errorText(err);
  console.error(JSON.stringify({ msg: 'job chunk failed', job: job.id, attempts, error }));
  // An unreachable or wrong source fails fast: retrying blindly would only hide the problem.
  if (err instanceof PermanentChunkError || attempts >= MAX_CHUNK_ATTEMPTS) {
    await store.settle(job.id, job.leaseVersion, 'failed', now, { attempts, error });
    return;
  }
  const next = await store.release(job.id, job.leaseVersion, now, { attempts, error, verifyWrites: true });
  if (!next || (await settleRequest(store, next, now))) return;
  await sendChunk(env, job.id, next.leaseVersion, chunkRetryDelaySec(attempts) * 1000);
}

const MISSING_JOB_ATTEMPTS = 5;

export async function handleJobsBatch(batch: MessageBatch<unknown>, env: Env): Promise<void> {
  for (const m of batch.messages) {
    const body = m.body as Partial<ChunkMessage>;
    if (typeof body?.jobId !== 'string' || typeof body.version !== 'number') {
      console.error(JSON.stringify({ msg: 'malformed job message dropped', body }));
      m.ack();
      continue;
    }
    try {
      const result = await runChunkMessage(env, body as ChunkMessage);
      // A job's first message is sent before its row is written: wait for the row a little, then
      // drop the message (the row was never written: its creation failed and was reported).
      if (result === 'missing' && m.attempts < MISSING_JOB_ATTEMPTS) m.retry({ delaySeconds: 2 });
      else m.ack();
    } catch (err) {
      // Only bookkeeping (D1, the queue) can throw here; the lease keeps a replay safe.
      console.error(JSON.stringify({ msg: 'job message failed; retrying', job: body.jobId, error: errorText(err) }));
      m.retry({ delaySeconds: 5 });
    }
  }
}

/**
 * The watchdog: fences off every stalled job (expired lease, or lost message) with a new lease
 * version and sends it a fresh chunk message. `now` is the cron's scheduled time.
 */
export async function rekickStalledJobs(env: Env, now: number): Promise<string[]> {
  const store = jobStore(env.DB);
  const kicked: string[] = [];
  for (const job of await store.stalled(now, STALL_MS)) {
    // The fenced-off chunk may have written part of its rows: the replay must check.
    const fresh = await store.release(job.id, job.leaseVersion, Date.now(), { verifyWrites: true });
    if (!fresh) continue;
    await sendChunk(env, job.id, fresh.leaseVersion);
    kicked.push(job.id);
  }
  return kicked;
}
