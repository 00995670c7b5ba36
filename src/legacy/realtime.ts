// Realtime events of legacy datasets: translated through the id map once the dataset's initial
// import is complete, held durably in D1 until then, and released by the import or the watchdog.
import { and, asc, eq, inArray, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import type { DeviceEvent } from '../../durable-objects/device-object';
import type { ProjectAuth } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { heldEvents } from '../db/schema';
import { packDeviceEvents } from '../device/packed';
import type { Env } from '../env';
import type { AcceptResult, RowRejection } from '../ingest/accept';
import type { NormalizedEvent } from '../ingest/normalize';
import { initialMigrationCompletedAt } from './datasets';
import { lookupNewIds } from './store';

/** D1 allows 100 bound parameters per statement; a held row binds 7. */
const HELD_ROWS_PER_INSERT = 14;
const HELD_BYTES_PER_INSERT = 60 * 1024;
const RELEASE_PAGE = 500;

export interface LegacyRef {
  dataset: string;
  legacyId: string;
}

/** The legacy reference an event carries in its own properties, if any. */
export function legacyRef(properties: Record<string, unknown>): LegacyRef | null {
  const dataset = properties.__dataset;
  const legacyId = properties.__legacyId;
  if (typeof dataset !== 'string' || dataset === '') return null;
  if ((typeof legacyId !== 'string' || legacyId === '') && typeof legacyId !== 'number') return null;
  return { dataset, legacyId: String(legacyId) };
}

type DeviceLists = Map<string, Array<{ index: number; event: DeviceEvent }>>;

/**
 * The ingest hook: takes events of enabled legacy datasets out of `byDevice`. Those of a completed
 * dataset go back in with `ref_id` set; the others are held, and counted accepted once held.
 * Returns how many were held.
 */
export async function divertLegacyEvents(
  env: Env,
  project: ProjectAuth,
  valid: ReadonlyArray<{ index: number; event: NormalizedEvent }>,
  byDevice: DeviceLists,
  result: Pick<AcceptResult, 'rows'> & { rejected: RowRejection[] },
): Promise<number> {
  const enabled = getConfig(env).legacyDatasets;
  if (enabled.length === 0) return 0;
  const refs = new Map<number, LegacyRef>();
  for (const v of valid) {
    const ref = legacyRef(v.event.properties);
    if (ref && enabled.includes(ref.dataset)) refs.set(v.index, ref);
  }
  if (refs.size === 0) return 0;

  const toHold: Array<{ index: number; deviceId: string; event: DeviceEvent; ref: LegacyRef }> = [];
  const toTranslate = new Map<string, Array<{ event: DeviceEvent; ref: LegacyRef }>>();
  try {
    const completed = new Map<string, boolean>();
    for (const dataset of new Set([...refs.values()].map((r) => r.dataset))) {
      completed.set(dataset, (await initialMigrationCompletedAt(env.DB, dataset)) !== null);
    }
    for (const [deviceId, list] of byDevice) {
      for (const item of list) {
        const ref = refs.get(item.index);
        if (!ref) continue;
        if (!completed.get(ref.dataset)) toHold.push({ index: item.index, deviceId, event: item.event, ref });
        else {
          let l = toTranslate.get(ref.dataset);
          if (!l) toTranslate.set(ref.dataset, (l = []));
          l.push({ event: item.event, ref });
        }
      }
    }
    if (toTranslate.size) await translate(env, toTranslate);
  } catch (err) {
    // Neither held nor translated: the client must send these again rather than lose them.
    console.error(JSON.stringify({ msg: 'legacy events could not be routed', error: String(err) }));
    removeFrom(byDevice, new Set(refs.keys()));
    for (const index of refs.keys()) result.rejected.push({ index, reason: 'internal', error: 'the event could not be stored; retry it', retryable: true });
    return 0;
  }
  removeFrom(byDevice, new Set(toHold.map((h) => h.index)));

  if (toHold.length === 0) return 0;
  try {
    await holdEvents(env.DB, project, toHold);
  } catch (err) {
    console.error(JSON.stringify({ msg: 'legacy events could not be held', error: String(err) }));
    for (const h of toHold) result.rejected.push({ index: h.index, reason: 'internal', error: 'the event could not be stored; retry it', retryable: true });
    return 0;
  }
  for (const h of toHold) result.rows[h.index] = { deviceId: h.deviceId, sessionId: '', eventId: h.event.row.id, duplicate: false };
  return toHold.length;
}

function removeFrom(byDevice: DeviceLists, indexes: ReadonlySet<number>): void {
  if (indexes.size === 0) return;
  for (const [deviceId, list] of byDevice) {
    const keep = list.filter((item) => !indexes.has(item.index));
    if (keep.length) byDevice.set(deviceId, keep);
    else byDevice.delete(deviceId);
  }
}

/** Sets `ref_id` to the new id of each event's legacy row (left empty when the row was never imported). */
async function translate(env: Env, byDataset: Map<string, Array<{ event: DeviceEvent; ref: LegacyRef }>>): Promise<void> {
  const ch = clickhouse(getConfig(env).clickhouse);
  for (const [dataset, list] of byDataset) {
    const ids = await lookupNewIds(
      ch,
      dataset,
      list.map((l) => l.ref.legacyId),
    );
    for (const l of list) l.event.row.ref_id = ids.get(l.ref.legacyId) ?? '';
  }
}

async function holdEvents(d1: D1Database, project: ProjectAuth, items: ReadonlyArray<{ deviceId: string; event: DeviceEvent; ref: LegacyRef }>): Promise<void> {
  const db = drizzle(d1);
  const now = Date.now();
  const values = items.map((h) => ({
    dataset: h.ref.dataset,
    legacyId: h.ref.legacyId,
    projectId: project.projectId,
    deviceId: h.deviceId,
    gapMs: project.sessionGapMs,
    event: JSON.stringify(h.event),
    heldAt: now,
  }));
  // Statements stay under D1's 100 bound parameters and 100 KB each.
  const statements = [];
  let group: typeof values = [];
  let bytes = 0;
  for (const v of values) {
    if (group.length && (group.length >= HELD_ROWS_PER_INSERT || bytes + v.event.length > HELD_BYTES_PER_INSERT)) {
      statements.push(db.insert(heldEvents).values(group));
      group = [];
      bytes = 0;
    }
    group.push(v);
    bytes += v.event.length;
  }
  if (group.length) statements.push(db.insert(heldEvents).values(group));
  // One batch is one transaction: all of them are held, or none (and the route says retry).
  await db.batch(statements as [(typeof statements)[0], ...typeof statements]);
}

export async function countHeld(d1: D1Database, dataset: string): Promise<number> {
  const row = await drizzle(d1).select({ n: sql<number>`count(*)` }).from(heldEvents).where(eq(heldEvents.dataset, dataset)).get();
  return Number(row?.n ?? 0);
}

/** Datasets with events waiting. */
export async function datasetsWithHeldEvents(d1: D1Database): Promise<string[]> {
  const rows = await drizzle(d1).selectDistinct({ dataset: heldEvents.dataset }).from(heldEvents).all();
  return rows.map((r) => r.dataset);
}

/**
 * Sends a completed dataset's held events, translated, through their device objects, oldest
 * first, and only then forgets them. A crash in between replays them; the device objects' dedup
 * keeps each event once.
 */
export async function releaseHeldEvents(env: Env, dataset: string, { maxMs = 20_000 } = {}): Promise<number> {
  if ((await initialMigrationCompletedAt(env.DB, dataset)) === null) return 0;
  const db = drizzle(env.DB);
  const ch = clickhouse(getConfig(env).clickhouse);
  const started = Date.now();
  let released = 0;
  while (Date.now() - started < maxMs) {
    const page = await db.select().from(heldEvents).where(eq(heldEvents.dataset, dataset)).orderBy(asc(heldEvents.seq)).limit(RELEASE_PAGE).all();
    if (page.length === 0) break;
    const ids = await lookupNewIds(
      ch,
      dataset,
      page.map((h) => h.legacyId),
    );
    const groups = new Map<string, { projectId: string; deviceId: string; gapMs: number; events: DeviceEvent[]; seqs: number[] }>();
    for (const h of page) {
      const event = JSON.parse(h.event) as DeviceEvent;
      event.row.ref_id = ids.get(h.legacyId) ?? '';
      const k = `${h.projectId}\u0000${h.deviceId}`;
      let g = groups.get(k);
      if (!g) groups.set(k, (g = { projectId: h.projectId, deviceId: h.deviceId, gapMs: h.gapMs, events: [], seqs: [] }));
      g.events.push(event);
      g.seqs.push(h.seq);
    }
    for (const g of groups.values()) {
      const stub = env.DEVICE.get(env.DEVICE.idFromName(`${g.projectId}:${g.deviceId}`));
      for (const events of packDeviceEvents(g.events)) {
        await stub.ingest({ projectId: g.projectId, deviceId: g.deviceId, gapMs: g.gapMs, events });
      }
      for (let i = 0; i < g.seqs.length; i += 90) {
        await db.delete(heldEvents).where(and(eq(heldEvents.dataset, dataset), inArray(heldEvents.seq, g.seqs.slice(i, i + 90))));
      }
      released += g.events.length;
    }
  }
  return released;
}
