// The `erasure` job (one device or profile of a project) and the `project_deletion` job, as steps
// recorded in the job's cursor. Order is what makes a cut-short run converge: the archive first,
// then device objects, then ClickHouse — rows are found through `events`, which goes last.
import { and, eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { manifestStore, type ManifestRow, type ManifestStore } from '../archive/manifest';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { fleetCursors, heldEvents, legacyDatasets, stalledOutboxes, vehicles } from '../db/schema';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { deviceStub } from '../device/stub';
import { withFleetLeases } from '../fleet/recompute';
import { startJob } from '../jobs/actions';
import { ACTIVE } from '../jobs/states';
import { jobStore } from '../jobs/store';
import type { ChunkInput, ChunkOutcome, JobRunner } from '../jobs/runner';
import { mapPool } from '../lib/pool';
import { eraseDeadLetters, startDeadLetterErasure, type DeadLetterCursor } from '../pipeline/dead-letter-erasure';
import { deleteOrphansHoldingSubject, retireChunk, rewriteChunk, type ArchiveContext, type Retirement, type SubjectRows } from './archive-rewrite';
import { crashHook, ErasureParams, ProjectDeletionParams, subjectOf, type CrashPoint, type Subject } from './params';
import { runProjectDeletionStep, type ProjectDeletionCursor } from './project-deletion';
import { addArchiveCounts, assertNoArchiveWriter, committedResult, emptyResult, parseParams, refuseProjectWriters, runSteps, UNDER_WAY, type ErasureResult, type Progress, type StepEnd } from './steps';
import { raiseTombstone, recordErasure } from './tombstones';
import { addCounts, countSubject, deadLetterLookup, deleteDeviceFleet, deleteSubject, profileOnDevice, remainingPositionSpans, subjectDevices, subjectHasEventsBetween, subjectIdsBetween, subjectMonths } from './subject';

type ErasureStep = 'plan' | 'archive' | 'orphans' | 'devices' | 'deadLetters' | 'count' | 'clickhouse' | 'verify' | 'fleet' | 'done';

interface ErasureCursor {
  step: ErasureStep;
  /** UTC months of the subject's events. */
  months: string[];
  /** Devices of the subject's events. */
  devices: string[];
  /** A profile erasure's devices with a stalled outbox and no event of the profile in ClickHouse: their objects are asked too. */
  stalledDevices?: string[];
  /** The last manifest row examined, in (month, number) order. */
  at: { month: string; number: number } | null;
  /**
   * Per month, the highest chunk number the archive step has examined. A chunk numbered above it
   * was written after (by an archive job that ran while this erasure stood failed, before a retry):
   * it is examined before anything leaves ClickHouse. Absent in cursors written before it was kept.
   */
  examined?: Record<string, number>;
  /**
   * The archive step runs again for chunks written after it (see `examined`): only chunks numbered
   * above `floor` are examined, and from it the job goes straight back to `step`.
   */
  recheck?: { step: 'count' | 'clickhouse' | 'verify'; floor: Record<string, number> } | null;
  /** An old chunk whose replacement is in place, to retire before anything else. */
  retire: Retirement | null;
  deviceAt: number;
  /** Where the erasure of parked messages stands (absent: not started). */
  deadLetters?: DeadLetterCursor;
  progress: Progress;
  result: ErasureResult;
}

/** Archive chunks whose range is checked per step, device objects cleared per step. */
const CHUNKS_PER_STEP = 25;
const DEVICES_PER_STEP = 25;
const DEVICE_CALL_CONCURRENCY = 8;

/**
 * Which rows of an archive chunk are the subject's: a device's by their line, a profile's through
 * `events`. A payload archived before its event reached ClickHouse has no device in its line: in a
 * chunk with such lines, a device's rows are also found through `events`.
 */
function subjectRowsOf(ch: ClickHouse, s: Subject): SubjectRows {
  if (s.kind === 'device') {
    return async (rows, fromMs, toMs) => {
      if (!rows.some((r) => r.deviceId === '')) return (row) => row.deviceId === s.deviceId;
      const ids = await subjectIdsBetween(ch, s, fromMs, toMs);
      return (row) => row.deviceId === s.deviceId || (row.deviceId === '' && ids.has(row.id));
    };
  }
  return async (_rows, fromMs, toMs) => {
    const ids = await subjectIdsBetween(ch, s, fromMs, toMs);
    return (row) => ids.has(row.id);
  };
}

/** The manifest rows after `at` in (month, number) order, of the given months, not written by this job. */
function chunksAfter(rows: readonly ManifestRow[], months: ReadonlySet<string>, at: ErasureCursor['at'], jobId: string): ManifestRow[] {
  return rows.filter(
    (r) => months.has(r.month) && r.jobId !== jobId && (at === null || r.month > at.month || (r.month === at.month && r.number > at.number)),
  );
}

/**
 * Sends the job back through its archive step when a chunk of the subject's months was written
 * after that step examined them (not by this job): while the erasure stood failed, before a retry,
 * an archive job may have moved the subject's payloads from ClickHouse into a new chunk. Checked
 * before each step that touches ClickHouse, since a retry resumes at any of them; `events`, which
 * tells the archive step which chunks to read, is deleted last.
 */
async function recheckNewChunks(store: ManifestStore, jobId: string, projectId: string, c: ErasureCursor, step: 'count' | 'clickhouse' | 'verify'): Promise<boolean> {
  const months = new Set(c.months);
  const floor = c.examined ?? {};
  const added = (await store.list(projectId)).filter((r) => months.has(r.month) && r.jobId !== jobId && r.number > (floor[r.month] ?? -1));
  if (!added.length) return false;
  c.step = 'archive';
  c.at = null;
  c.recheck = { step, floor: { ...floor } };
  c.progress.total += added.length;
  return true;
}

/** The subject's held realtime legacy events (D1), with the datasets' held counts recomputed in the same transaction. */
async function deleteHeldEvents(d1: D1Database, s: Subject): Promise<void> {
  const db = drizzle(d1);
  const ofSubject =
    s.kind === 'device'
      ? and(eq(heldEvents.projectId, s.projectId), eq(heldEvents.deviceId, s.deviceId))
      : and(eq(heldEvents.projectId, s.projectId), sql`json_extract(${heldEvents.event}, '$.row.profile_id') = ${s.profileId}`);
  await db.batch([
    db.delete(heldEvents).where(ofSubject),
    db
      .update(legacyDatasets)
      // Qualified by hand: drizzle names an UPDATE's own columns bare, which the subquery would take as its own.
      .set({ held: sql`(SELECT count(*) FROM held_legacy_events h WHERE h.project_id = legacy_datasets.project_id AND h.dataset = legacy_datasets.dataset)` })
      .where(eq(legacyDatasets.projectId, s.projectId)),
  ]);
}

async function eraseDevices(env: Env, ch: ClickHouse, s: Subject, devices: readonly string[]): Promise<number> {
  const now = Date.now();
  const held = await mapPool(devices, DEVICE_CALL_CONCURRENCY, async (deviceId) => {
    const stub = deviceStub(env, s.projectId, deviceId);
    const r = s.kind === 'device' ? await stub.erase() : await stub.erase(await profileOnDevice(ch, s, deviceId, now));
    return r.held;
  });
  return held.filter(Boolean).length;
}

async function erasureStep(env: Env, job: ChunkInput, s: Subject, crash: (p: CrashPoint) => void, c: ErasureCursor, units: { n: number }): Promise<StepEnd> {
  const ch = clickhouse(getConfig(env).clickhouse);
  const store = manifestStore(env.DB);
  const archive: ArchiveContext = { bucket: env.ARCHIVE, store, projectId: s.projectId, jobId: job.id, crash };
  const subjectRows = subjectRowsOf(ch, s);
  switch (c.step) {
    case 'plan': {
      await assertNoArchiveWriter(env, s.projectId);
      // Before anything is removed: rows of the subject received before the operator asked, still
      // on their way (queue retries, parked messages), are dropped by the writer from now on (and
      // those received before its device objects are cleared, from then on).
      const asked = (await jobStore(env.DB).get(job.id))?.createdAt ?? Date.now();
      await recordErasure(env.DB, job.id, s, asked);
      c.months = await subjectMonths(ch, s);
      c.devices = await subjectDevices(ch, s);
      if (s.kind === 'profile') {
        // A device whose outbox cannot reach the queue may hold events of the profile that
        // ClickHouse never saw: its object is asked too (it drops the profile's unsent events, if
        // any). Only asked: its fleet history is not the profile's unless ClickHouse says so.
        const known = new Set(c.devices);
        const stalled = await drizzle(env.DB).select({ deviceId: stalledOutboxes.deviceId }).from(stalledOutboxes).where(eq(stalledOutboxes.projectId, s.projectId)).all();
        c.stalledDevices = [...new Set(stalled.map((r) => r.deviceId))].filter((d) => !known.has(d)).sort();
      }
      const months = new Set(c.months);
      const chunks = (await store.list(s.projectId)).filter((r) => months.has(r.month)).length;
      c.progress.total = chunks + c.devices.length + (c.stalledDevices?.length ?? 0) + 2;
      c.step = 'archive';
      return 'continue';
    }
    case 'archive': {
      if (c.retire) {
        const r = c.retire;
        await retireChunk(archive, r.month, r.number);
        c.result.r2 = addArchiveCounts(c.result.r2, { chunksRewritten: r.replacement === null ? 0 : 1, objectsDeleted: 1, rows: r.rows });
        c.retire = null;
        return 'continue';
      }
      const floor = c.recheck?.floor;
      const next = chunksAfter(await store.list(s.projectId), new Set(c.months), c.at, job.id)
        .filter((r) => !floor || r.number > (floor[r.month] ?? -1))
        .slice(0, CHUNKS_PER_STEP);
      if (!next.length) {
        c.step = 'orphans';
        return 'continue';
      }
      for (const chunk of next) {
        c.at = { month: chunk.month, number: chunk.number };
        c.examined = { ...c.examined, [chunk.month]: Math.max(c.examined?.[chunk.month] ?? -1, chunk.number) };
        units.n += 1;
        // `events` says cheaply which chunks may hold the subject: only those are read.
        if (!(await subjectHasEventsBetween(ch, s, chunk.firstCreatedAtMs, chunk.lastCreatedAtMs))) continue;
        const outcome = await rewriteChunk(archive, chunk, subjectRows);
        if (outcome === 'missing') {
          console.error(JSON.stringify({ msg: 'archive chunk has no object; nothing of it to erase', job: job.id, key: chunk.key }));
          continue;
        }
        if (outcome === 'clean') continue;
        // The old chunk goes only once this intent is committed: a re-run then retires it even
        // when its object is already gone, instead of rewriting it a second time.
        c.retire = outcome;
        return 'commit';
      }
      return 'continue';
    }
    case 'orphans': {
      // Another erasure of the project running now may have just uploaded a chunk it has not
      // recorded yet: unrecorded objects are left to it (a chunk it records later that holds this
      // subject is caught by the re-check of new chunks before the next steps).
      const [running] = await jobStore(env.DB).others(job.id, 'erasure', { projectId: s.projectId }, ACTIVE);
      if (running) console.log(JSON.stringify({ msg: 'unrecorded archive objects left alone: another erasure of the project is running', job: job.id, other: running.id }));
      else for (const month of c.months) c.result.r2 = addArchiveCounts(c.result.r2, await deleteOrphansHoldingSubject(archive, month, subjectRows));
      c.step = c.recheck?.step ?? 'devices';
      c.recheck = null;
      return 'continue';
    }
    case 'devices': {
      const asked = c.stalledDevices?.length ? [...c.devices, ...c.stalledDevices] : c.devices;
      const batch = asked.slice(c.deviceAt, c.deviceAt + DEVICES_PER_STEP);
      if (batch.length) {
        // What the objects hold until now goes with them: so do their copies still on their way.
        await raiseTombstone(env.DB, job.id, Date.now());
        c.result.deviceObjects += await eraseDevices(env, ch, s, batch);
        crash('devices.afterErase');
        c.deviceAt += batch.length;
        units.n += batch.length;
        return 'commit';
      }
      await deleteHeldEvents(env.DB, s);
      if (s.kind === 'device') {
        // The object that reported a stalled outbox is gone with it.
        await drizzle(env.DB)
          .delete(stalledOutboxes)
          .where(and(eq(stalledOutboxes.projectId, s.projectId), eq(stalledOutboxes.deviceId, s.deviceId)));
      }
      c.step = 'deadLetters';
      return 'continue';
    }
    case 'deadLetters': {
      // After the device objects (nothing of the subject is parked anew from them), before ClickHouse
      // (a lone payload's event is found there): a re-drive would otherwise bring the rows back.
      const r = await eraseDeadLetters(env.ARCHIVE, s, deadLetterLookup(ch, s), c.deadLetters ?? startDeadLetterErasure(s, c.devices));
      // A re-drive holding the lock: the same step again in the next chunk (not a failed attempt).
      if (r.busy) console.log(JSON.stringify({ msg: 'erasure waits for a dead-letter re-drive to end', job: job.id }));
      c.result.r2 = addArchiveCounts(c.result.r2, { chunksRewritten: r.rewritten, objectsDeleted: r.deleted, rows: r.rows });
      if (r.cursor === null) c.step = 'count';
      else c.deadLetters = r.cursor;
      return 'commit';
    }
    case 'count': {
      if (await recheckNewChunks(store, job.id, s.projectId, c, 'count')) return 'commit';
      // Counted and committed before anything is deleted: a re-run of the deletion counts nothing twice.
      c.result.clickhouse = await countSubject(ch, s);
      c.step = 'clickhouse';
      return 'commit';
    }
    case 'clickhouse': {
      if (await recheckNewChunks(store, job.id, s.projectId, c, 'clickhouse')) return 'commit';
      await deleteSubject(ch, s);
      crash('clickhouse.afterDelete');
      units.n += 1;
      c.step = 'verify';
      return 'commit';
    }
    case 'verify': {
      if (await recheckNewChunks(store, job.id, s.projectId, c, 'verify')) return 'commit';
      // Rows a device object had already handed to the ingest queue may land after the deletion.
      const late = await countSubject(ch, s);
      if (late.events + late.payloads + late.sessions + late.profileOps > 0) {
        await deleteSubject(ch, s);
        c.result.clickhouse = addCounts(c.result.clickhouse, late);
        const left = await countSubject(ch, s);
        if (left.events + left.payloads + left.sessions + left.profileOps > 0) {
          throw new Error(`rows of the subject are still arriving in ClickHouse (${JSON.stringify(left)}); stop its devices from sending and retry`);
        }
      }
      units.n += 1;
      c.step = 'fleet';
      return 'commit';
    }
    case 'fleet': {
      // Trips, mileage and live positions are derived from positions: a device's go with it. A
      // profile's positions leave its devices' history changed: it is rebuilt from what remains.
      // Under the devices' fleet leases: a recompute that read positions before the deletion cannot
      // write what it derived from them (to ClickHouse or an object) after it.
      const keys = c.devices.map((deviceId) => ({ projectId: s.projectId, deviceId }));
      const spans = await withFleetLeases(env.DB, keys, async () => {
        await deleteDeviceFleet(ch, s.projectId, c.devices);
        if (s.kind === 'device') {
          const db = drizzle(env.DB);
          await db.batch([
            db.delete(vehicles).where(and(eq(vehicles.projectId, s.projectId), eq(vehicles.deviceId, s.deviceId))),
            db.delete(fleetCursors).where(and(eq(fleetCursors.projectId, s.projectId), eq(fleetCursors.deviceId, s.deviceId))),
          ]);
          // Cleared again: a pass that ran between the first clearing and the deletion of the
          // positions may have handed it the device's live position.
          await deviceStub(env, s.projectId, s.deviceId).erase();
          return [];
        }
        // The profile's fixes may be what a pass since the first clearing left as live: the
        // recompute jobs below write what the remaining fixes give.
        await mapPool(c.devices, DEVICE_CALL_CONCURRENCY, (deviceId) => deviceStub(env, s.projectId, deviceId).clearFleetLive());
        return remainingPositionSpans(ch, s.projectId, c.devices);
      });
      for (const span of spans) {
        await startJob(env, 'fleet_recompute', { projectId: s.projectId, deviceId: span.deviceId, sinceMs: span.fromMs, untilMs: span.toMs + 1, reason: 'erasure' });
      }
      c.step = 'done';
      return 'done';
    }
    case 'done':
      return 'done';
  }
}

export const erasureRunner: JobRunner = {
  pauseMs: () => 0,

  async refuseRetry(env, job) {
    const p = ErasureParams.safeParse(job.params);
    if (!p.success) return;
    const store = jobStore(env.DB);
    const { projectId } = p.data;
    const [deletion] = await store.others(job.id, 'project_deletion', { projectId }, UNDER_WAY);
    if (deletion) throw new ApiError(409, 'project_deletion_active', `this project is being deleted (job ${deletion.id})`, { id: deletion.id, state: deletion.state });
    const s = subjectOf(p.data);
    const subject: Record<string, string> = s.kind === 'device' ? { projectId, deviceId: s.deviceId } : { projectId, profileId: s.profileId };
    const [same] = await store.others(job.id, 'erasure', subject, UNDER_WAY);
    if (same) throw new ApiError(409, 'erasure_conflict', `another erasure of this subject is ${same.state} (job ${same.id})`, { id: same.id, state: same.state });
    await refuseProjectWriters(env, projectId);
  },

  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const p = parseParams(ErasureParams, job.params);
    const s = subjectOf(p);
    const crash = crashHook(p.faults, !job.verifyWrites);
    const initial = (): ErasureCursor => ({ step: 'plan', months: [], devices: [], at: null, retire: null, deviceAt: 0, progress: { done: 0, total: 0 }, result: emptyResult() });
    return runSteps(job, initial, (c, units) => erasureStep(env, job, s, crash, c, units));
  },

  async complete(env: Env, job: ChunkInput): Promise<ErasureResult> {
    return committedResult(env, job.id);
  },
};

export const projectDeletionRunner: JobRunner = {
  pauseMs: () => 0,

  async refuseRetry(env, job) {
    const p = ProjectDeletionParams.safeParse(job.params);
    if (!p.success) return;
    const [other] = await jobStore(env.DB).others(job.id, 'project_deletion', { projectId: p.data.projectId }, UNDER_WAY);
    if (other) throw new ApiError(409, 'project_deletion_active', `this project is being deleted (job ${other.id})`, { id: other.id, state: other.state });
    await refuseProjectWriters(env, p.data.projectId);
  },

  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const p = parseParams(ProjectDeletionParams, job.params);
    const crash = crashHook(p.faults, !job.verifyWrites);
    const initial = (): ProjectDeletionCursor => ({ step: 'revoke', revokedAt: 0, deviceAfter: '', progress: { done: 0, total: 0 }, result: emptyResult() });
    return runSteps(job, initial, (c, units) => runProjectDeletionStep(env, job.id, p.projectId, crash, c, units));
  },

  async complete(env: Env, job: ChunkInput): Promise<ErasureResult> {
    return committedResult(env, job.id);
  },
};
