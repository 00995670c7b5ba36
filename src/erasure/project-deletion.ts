// The `project_deletion` job's steps: credentials revoked first, then every store emptied of the
// project (device objects, R2, ClickHouse, D1), checked, and the project row removed last.
import { and, eq, inArray, isNotNull, or } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { chunkKeyPrefix } from '../archive/chunk';
import { chunkCacheUrl } from '../archive/lazy-read';
import { manifestStore, toChunkManifest } from '../archive/manifest';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { clients, erasureTombstones, fleetCursors, heldEvents, idempotencyKeys, legacyDatasets, projects, rejectedRows, stalledOutboxes, vehicles } from '../db/schema';
import type { Env } from '../env';
import { deviceStub } from '../device/stub';
import { fleetCursorPage } from '../fleet/live';
import { withFleetLeases } from '../fleet/recompute';
import { mapPool } from '../lib/pool';
import { eraseDeadLetters, startDeadLetterErasure, type DeadLetterCursor } from '../pipeline/dead-letter-erasure';
import type { CrashPoint } from './params';
import { addArchiveCounts, assertNoArchiveWriter, type ErasureResult, type Progress, type StepEnd } from './steps';
import { projectTombstone } from './tombstones';
import { addCounts, countProject, deleteProjectRows, projectDevicesAfter, type ClickHouseCounts } from './subject';

export interface ProjectDeletionCursor {
  step: 'revoke' | 'settle' | 'count' | 'devices' | 'deadLetters' | 'archive' | 'fleet' | 'clickhouse' | 'd1' | 'verify' | 'project' | 'done';
  /** When the project's clients were deleted. */
  revokedAt: number;
  /** Device objects are cleared in device id order: the last one done. */
  deviceAfter: string;
  /** The devices whose outbox reported a stall (they may have nothing in ClickHouse yet) are done. */
  stalledDone?: boolean;
  /** Where the erasure of parked messages stands (absent: not started). */
  deadLetters?: DeadLetterCursor;
  progress: Progress;
  result: ErasureResult;
}

/**
 * A revoked client can still be served from a gateway isolate's credential cache for
 * CLIENT_CACHE_SEC (30 s by default); past that and this margin (for requests already past
 * authentication), nothing new of the project is accepted, so nothing arrives behind the deletion.
 */
export const REVOKE_SETTLE_MARGIN_MS = 5_000;
export const revokeSettleMs = (env: Env) => getConfig(env).clientCacheMs + REVOKE_SETTLE_MARGIN_MS;
const DEVICES_PER_STEP = 100;
/** Fleet cursors deleted per step: one D1 statement names them all (at most 100 bound parameters). */
const FLEET_CURSORS_PER_STEP = 90;
const DEVICE_CALL_CONCURRENCY = 8;
const R2_PAGE = 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const anyRows = (c: ClickHouseCounts) => c.events + c.payloads + c.sessions + c.profileOps > 0;

async function eraseDeviceObjects(env: Env, projectId: string, devices: readonly string[]): Promise<number> {
  const held = await mapPool(devices, DEVICE_CALL_CONCURRENCY, async (deviceId) => (await deviceStub(env, projectId, deviceId).erase()).held);
  return held.filter(Boolean).length;
}

/** Every object under the project's archive prefix: `{ objects, rows }` (rows as the manifest records them). */
async function countArchive(env: Env, projectId: string): Promise<{ objects: number; rows: number }> {
  let objects = 0;
  let cursor: string | undefined;
  do {
    const page = await env.ARCHIVE.list({ prefix: chunkKeyPrefix(projectId), limit: R2_PAGE, ...(cursor ? { cursor } : {}) });
    objects += page.objects.length;
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  const rows = (await manifestStore(env.DB).list(projectId)).reduce((n, r) => n + r.rowCount, 0);
  return { objects, rows };
}

/** Deletes every object under the project's archive prefix; how many there were. */
async function deleteArchiveObjects(env: Env, projectId: string): Promise<number> {
  let deleted = 0;
  for (;;) {
    const page = await env.ARCHIVE.list({ prefix: chunkKeyPrefix(projectId), limit: R2_PAGE });
    if (!page.objects.length) return deleted;
    await env.ARCHIVE.delete(page.objects.map((o) => o.key));
    deleted += page.objects.length;
  }
}

export async function runProjectDeletionStep(
  env: Env,
  jobId: string,
  projectId: string,
  crash: (p: CrashPoint) => void,
  c: ProjectDeletionCursor,
  units: { n: number },
): Promise<StepEnd> {
  const ch = clickhouse(getConfig(env).clickhouse);
  const db = drizzle(env.DB);
  switch (c.step) {
    case 'revoke': {
      await assertNoArchiveWriter(env, projectId);
      // First, so that nothing new of the project arrives while it is emptied; with the tombstone
      // (in one batch: neither without the other), so that rows of it still on their way (queue
      // retries, parked messages) are dropped by the writer from now on.
      await db.batch([projectTombstone(db, jobId, projectId, Date.now()), db.delete(clients).where(eq(clients.projectId, projectId))]);
      c.revokedAt = Date.now();
      crash('project.afterRevoke');
      c.step = 'settle';
      return 'commit';
    }
    case 'settle': {
      const settleMs = revokeSettleMs(env);
      const waitMs = c.revokedAt + settleMs - Date.now();
      if (waitMs > 0) await sleep(Math.min(waitMs, settleMs));
      c.step = 'count';
      return 'continue';
    }
    case 'count': {
      // Counted and committed before anything is deleted: a re-run of a deletion counts nothing twice.
      c.result.clickhouse = await countProject(ch, projectId);
      const archive = await countArchive(env, projectId);
      c.result.r2 = { chunksRewritten: 0, objectsDeleted: archive.objects, rows: archive.rows };
      const [devices] = await ch.query<{ n: number | string }>(
        `SELECT uniqExact(device_id) AS n FROM (
           SELECT device_id FROM events WHERE project_id = {projectId:String}
           UNION ALL SELECT device_id FROM sessions WHERE project_id = {projectId:String})`,
        { projectId },
      );
      c.progress.total = Number(devices?.n ?? 0) + 4;
      c.step = 'devices';
      return 'commit';
    }
    case 'devices': {
      if (!c.stalledDone) {
        const stalled = await db.select({ deviceId: stalledOutboxes.deviceId }).from(stalledOutboxes).where(eq(stalledOutboxes.projectId, projectId)).all();
        c.result.deviceObjects += await eraseDeviceObjects(env, projectId, stalled.map((r) => r.deviceId));
        c.stalledDone = true;
      }
      const page = await projectDevicesAfter(ch, projectId, c.deviceAfter, DEVICES_PER_STEP);
      // A device cleared twice (stalled, then listed) holds nothing the second time: counted once.
      c.result.deviceObjects += await eraseDeviceObjects(env, projectId, page);
      units.n += page.length;
      if (page.length) c.deviceAfter = page[page.length - 1]!;
      if (page.length < DEVICES_PER_STEP) c.step = 'deadLetters';
      return 'commit';
    }
    case 'deadLetters': {
      // Parked ingest messages of the project: a re-drive would otherwise bring its rows back.
      // Every row of the project goes: nothing needs looking up in ClickHouse.
      const none = { subjectEventIds: async () => new Set<string>(), profileSessions: async () => ({ subject: new Set<string>(), others: new Set<string>() }) };
      const subject = { kind: 'project', projectId } as const;
      const r = await eraseDeadLetters(env.ARCHIVE, subject, none, c.deadLetters ?? startDeadLetterErasure(subject));
      if (r.busy) console.log(JSON.stringify({ msg: 'project deletion waits for a dead-letter re-drive to end', projectId }));
      c.result.r2 = addArchiveCounts(c.result.r2, { chunksRewritten: r.rewritten, objectsDeleted: r.deleted, rows: r.rows });
      if (r.cursor === null) c.step = 'archive';
      else c.deadLetters = r.cursor;
      return 'commit';
    }
    case 'archive': {
      const manifest = await manifestStore(env.DB).list(projectId);
      for (const row of manifest) await caches.default.delete(chunkCacheUrl(toChunkManifest(row)));
      await deleteArchiveObjects(env, projectId);
      crash('project.afterObjectsDelete');
      await manifestStore(env.DB).forgetProject(projectId);
      units.n += 1;
      c.step = 'fleet';
      return 'continue';
    }
    case 'fleet': {
      // Vehicles, a page at a time, under their fleet leases: a recompute under way since their
      // objects were cleared may have handed them a live position, so they are cleared again, and
      // their cursors deleted, so that no recompute takes them again. A re-run goes on with the
      // cursors left.
      const page = await fleetCursorPage(env.DB, projectId, FLEET_CURSORS_PER_STEP);
      if (!page.length) {
        c.step = 'clickhouse';
        return 'continue';
      }
      await withFleetLeases(
        env.DB,
        page.map((deviceId) => ({ projectId, deviceId })),
        async () => {
          await eraseDeviceObjects(env, projectId, page);
          await db.delete(fleetCursors).where(and(eq(fleetCursors.projectId, projectId), inArray(fleetCursors.deviceId, page)));
        },
      );
      return 'commit';
    }
    case 'clickhouse': {
      await deleteProjectRows(ch, projectId);
      units.n += 1;
      c.step = 'd1';
      return 'commit';
    }
    case 'd1': {
      await db.batch([
        db.delete(heldEvents).where(eq(heldEvents.projectId, projectId)),
        db.delete(legacyDatasets).where(eq(legacyDatasets.projectId, projectId)),
        db.delete(idempotencyKeys).where(eq(idempotencyKeys.projectId, projectId)),
        db.delete(stalledOutboxes).where(eq(stalledOutboxes.projectId, projectId)),
        db.delete(rejectedRows).where(eq(rejectedRows.projectId, projectId)),
        db.delete(vehicles).where(eq(vehicles.projectId, projectId)),
        db.delete(fleetCursors).where(eq(fleetCursors.projectId, projectId)),
        db.delete(clients).where(eq(clients.projectId, projectId)),
        // Its devices' and profiles' tombstones name people: the project's own one covers them.
        db.delete(erasureTombstones).where(and(eq(erasureTombstones.projectId, projectId), or(isNotNull(erasureTombstones.deviceId), isNotNull(erasureTombstones.profileId)))),
      ]);
      units.n += 1;
      c.step = 'verify';
      return 'continue';
    }
    case 'verify': {
      // Rows a device object had already handed to the ingest queue may land after the deletion:
      // their devices are cleared (again) and the rows deleted, and counted.
      const late = await countProject(ch, projectId);
      if (anyRows(late)) {
        for (let after = ''; ; ) {
          const page = await projectDevicesAfter(ch, projectId, after, DEVICES_PER_STEP);
          c.result.deviceObjects += await eraseDeviceObjects(env, projectId, page);
          if (page.length < DEVICES_PER_STEP) break;
          after = page[page.length - 1]!;
        }
        await deleteProjectRows(ch, projectId);
        c.result.clickhouse = addCounts(c.result.clickhouse, late);
        const left = await countProject(ch, projectId);
        if (anyRows(left)) throw new Error(`rows of the project are still arriving in ClickHouse (${JSON.stringify(left)}); retry`);
      }
      const strays = await deleteArchiveObjects(env, projectId);
      if (strays) c.result.r2 = addArchiveCounts(c.result.r2, { chunksRewritten: 0, objectsDeleted: strays, rows: 0 });
      units.n += 1;
      c.step = 'project';
      return 'continue';
    }
    case 'project': {
      await db.delete(projects).where(eq(projects.id, projectId));
      c.step = 'done';
      return 'done';
    }
    case 'done':
      return 'done';
  }
}
