// Realtime events of legacy datasets, per (project, dataset): translated through the project's id map
// once its initial import is complete, held durably in D1 until then (up to a cap), and released by
// the import or the watchdog.
import { and, asc, eq, inArray, lte, sql } from 'drizzle-orm';
import type { BatchItem } from 'drizzle-orm/batch';
import { drizzle } from 'drizzle-orm/d1';
import type { ProjectAuth } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { heldEvents, legacyDatasets } from '../db/schema';
import { packDeviceEvents } from '../device/packed';
import { deviceStub } from '../device/stub';
import type { DeviceEvent, SessionRecord } from '../device/types';
import type { Env } from '../env';
import type { NormalizedEvent } from '../ingest/normalize';
import { currentSessionsOfDevices } from '../read/sessions';
import { initialMigrationCompletedAt, type DatasetKey } from './datasets';
import { lookupNewIds } from './store';

/*
 * D1's documented limits (developers.cloudflare.com/d1/platform/limits): 100 bound parameters and
 * 100 KB of SQL text per statement (values are bound, not part of the text), 2 MB per value or
 * row, 30 s per query, 50 MB per result, 1000 queries per invocation (50 on the free plan). It
 * documents no size for a batch, so held rows are written in transactions of bounded bytes.
 */
/** A held row binds 7 parameters. */
const HELD_ROWS_PER_INSERT = 14;
/** Bound event text per insert statement (a held event is at most a few hundred KB as stored). */
const HELD_BYTES_PER_INSERT = 512 * 1024;
/** Event text per hold transaction: a 10 MB batch (about twice that as stored) takes about a dozen. */
const HOLD_TRANSACTION_BYTES = 2 * 1024 * 1024;
/** Held events read and released per page: bounded in rows and in bytes of stored event text. */
const RELEASE_PAGE_ROWS = 500;
const RELEASE_PAGE_BYTES = 2 * 1024 * 1024;

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
 * What the hook did with the rows it took out (by index in the request): `held` are stored and
 * count as accepted; `refused` were not kept and must be sent again (retryable).
 */
export interface Diversion {
  held: Array<{ index: number; deviceId: string; eventId: string }>;
  refused: Array<{ index: number; error: string }>;
}

const RETRY = 'the event could not be stored; retry it';

/**
 * The ingest hook: takes events of enabled legacy datasets out of `byDevice`. Those of a dataset
 * the project has completed go back in with `ref_id` set; the others are held, and counted accepted
 * once held. Beyond the dataset's cap of held events they are refused, retryable: the import will
 * complete and release the backlog, and a retry then goes through.
 */
export async function divertLegacyEvents(
  env: Env,
  project: ProjectAuth,
  valid: ReadonlyArray<{ index: number; event: NormalizedEvent }>,
  byDevice: DeviceLists,
): Promise<Diversion> {
  const result: Diversion = { held: [], refused: [] };
  const config = getConfig(env);
  const enabled = config.legacyDatasets;
  if (enabled.length === 0) return result;
  const refs = new Map<number, LegacyRef>();
  for (const v of valid) {
    const ref = legacyRef(v.event.properties);
    if (ref && enabled.includes(ref.dataset)) refs.set(v.index, ref);
  }
  if (refs.size === 0) return result;
  const keyOf = (dataset: string): DatasetKey => ({ projectId: project.projectId, dataset });

  const toHold: HeldItem[] = [];
  const toTranslate = new Map<string, Array<{ event: DeviceEvent; ref: LegacyRef }>>();
  const heldBefore = new Map<string, number>();
  try {
    const completed = new Map<string, boolean>();
    for (const dataset of new Set([...refs.values()].map((r) => r.dataset))) {
      completed.set(dataset, (await initialMigrationCompletedAt(env.DB, keyOf(dataset))) !== null);
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
    for (const dataset of new Set(toHold.map((h) => h.ref.dataset))) heldBefore.set(dataset, await countHeld(env.DB, keyOf(dataset)));
    if (toTranslate.size) await translate(env, project.projectId, toTranslate);
  } catch (err) {
    // Neither held nor translated: the client must send these again rather than lose them.
    console.error(JSON.stringify({ msg: 'legacy events could not be routed', error: String(err) }));
    removeFrom(byDevice, new Set(refs.keys()));
    for (const index of refs.keys()) result.refused.push({ index, error: RETRY });
    return result;
  }
  removeFrom(byDevice, new Set(toHold.map((h) => h.index)));
  if (toHold.length === 0) return result;

  // The cap, per dataset, in request order: the rows past it are refused and nothing of them kept.
  // It is read before holding, so requests racing each other can pass it by their own rows at most.
  const room = new Map([...heldBefore].map(([dataset, n]) => [dataset, Math.max(0, config.legacyMaxHeld - n)]));
  const holding: HeldItem[] = [];
  for (const h of toHold.sort((a, b) => a.index - b.index)) {
    const left = room.get(h.ref.dataset)!;
    if (left > 0) {
      room.set(h.ref.dataset, left - 1);
      holding.push(h);
      continue;
    }
    result.refused.push({
      index: h.index,
      error: `the held backlog of dataset ${h.ref.dataset} is full (${heldBefore.get(h.ref.dataset)} events wait for its initial import, LEGACY_MAX_HELD is ${config.legacyMaxHeld}); retry once the import has completed`,
    });
  }
  if (holding.length === 0) return result;
  // Held in order, a transaction at a time: those of a transaction that failed (and after it) are
  // refused, retryable; the others are held and counted, so accepted is exactly what was held.
  const held = await holdEvents(env.DB, project, holding);
  for (const h of holding.slice(0, held)) result.held.push({ index: h.index, deviceId: h.deviceId, eventId: h.event.row.id });
  for (const h of holding.slice(held)) result.refused.push({ index: h.index, error: RETRY });
  return result;
}

type HeldItem = { index: number; deviceId: string; event: DeviceEvent; ref: LegacyRef };

function removeFrom(byDevice: DeviceLists, indexes: ReadonlySet<number>): void {
  if (indexes.size === 0) return;
  for (const [deviceId, list] of byDevice) {
    const keep = list.filter((item) => !indexes.has(item.index));
    if (keep.length) byDevice.set(deviceId, keep);
    else byDevice.delete(deviceId);
  }
}

/** Sets `ref_id` to the new id of each event's legacy row in the project (left empty when the row was never imported). */
async function translate(env: Env, projectId: string, byDataset: Map<string, Array<{ event: DeviceEvent; ref: LegacyRef }>>): Promise<void> {
  const ch = clickhouse(getConfig(env).clickhouse);
  for (const [dataset, list] of byDataset) {
    const ids = await lookupNewIds(
      ch,
      { projectId, dataset },
      list.map((l) => l.ref.legacyId),
    );
    for (const l of list) l.event.row.ref_id = ids.get(l.ref.legacyId) ?? '';
  }
}

/**
 * Holds `items` in order, in transactions of at most HOLD_TRANSACTION_BYTES of event text, each
 * with its rows and the datasets' counts: all of a transaction or none of it. Returns how many of
 * the first items are held; it stops at the first transaction D1 refused.
 */
async function holdEvents(d1: D1Database, project: ProjectAuth, items: readonly HeldItem[]): Promise<number> {
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
  let held = 0;
  for (const part of splitByBytes(values, HOLD_TRANSACTION_BYTES, Infinity)) {
    const statements: BatchItem<'sqlite'>[] = splitByBytes(part, HELD_BYTES_PER_INSERT, HELD_ROWS_PER_INSERT).map((rows) => db.insert(heldEvents).values(rows));
    // The dataset's count moves with its rows.
    const perDataset = new Map<string, number>();
    for (const v of part) perDataset.set(v.dataset, (perDataset.get(v.dataset) ?? 0) + 1);
    for (const [dataset, n] of perDataset) {
      statements.push(
        db
          .insert(legacyDatasets)
          .values({ projectId: project.projectId, dataset, held: n })
          .onConflictDoUpdate({ target: [legacyDatasets.projectId, legacyDatasets.dataset], set: { held: sql`${legacyDatasets.held} + ${n}` } }),
      );
    }
    try {
      await db.batch(statements as [BatchItem<'sqlite'>, ...BatchItem<'sqlite'>[]]);
    } catch (err) {
      console.error(JSON.stringify({ msg: 'legacy events could not be held', held, refused: values.length - held, error: String(err) }));
      break;
    }
    held += part.length;
  }
  return held;
}

/** Consecutive runs of `rows`, each within `maxBytes` of event text (one row may exceed it alone) and `maxRows`. */
function splitByBytes<T extends { event: string }>(rows: readonly T[], maxBytes: number, maxRows: number): T[][] {
  const out: T[][] = [];
  let group: T[] = [];
  let bytes = 0;
  for (const r of rows) {
    if (group.length && (group.length >= maxRows || bytes + r.event.length > maxBytes)) {
      out.push(group);
      group = [];
      bytes = 0;
    }
    group.push(r);
    bytes += r.event.length;
  }
  if (group.length) out.push(group);
  return out;
}

/** Realtime events of a project's dataset waiting for its initial import. */
export async function countHeld(d1: D1Database, key: DatasetKey): Promise<number> {
  const row = await drizzle(d1)
    .select({ held: legacyDatasets.held })
    .from(legacyDatasets)
    .where(and(eq(legacyDatasets.projectId, key.projectId), eq(legacyDatasets.dataset, key.dataset)))
    .get();
  return row?.held ?? 0;
}

/**
 * Sends a completed dataset's held events, translated, through their device objects, oldest
 * first, and only then forgets them. A crash in between replays them; the device objects' dedup
 * keeps each event once. Held events may be older than their device object keeps sessions (8 days
 * after they end), so each call brings the sessions ClickHouse has around them: an event joins the
 * session it belongs to, however late it is released, instead of opening a second one.
 */
export async function releaseHeldEvents(env: Env, key: DatasetKey, { maxMs = 20_000 } = {}): Promise<number> {
  if ((await initialMigrationCompletedAt(env.DB, key)) === null) return 0;
  const db = drizzle(env.DB);
  const ch = clickhouse(getConfig(env).clickhouse);
  const ofDataset = and(eq(heldEvents.projectId, key.projectId), eq(heldEvents.dataset, key.dataset));
  const started = Date.now();
  let released = 0;
  while (Date.now() - started < maxMs) {
    // A page is bounded in bytes too: held events may be 32 KB each (more as stored), and a page is
    // one D1 read and one call per device object.
    const sizes = await db
      .select({ seq: heldEvents.seq, bytes: sql<number>`length(CAST(${heldEvents.event} AS BLOB))` })
      .from(heldEvents)
      .where(ofDataset)
      .orderBy(asc(heldEvents.seq))
      .limit(RELEASE_PAGE_ROWS)
      .all();
    const last = releasePageEnd(sizes, RELEASE_PAGE_BYTES);
    const page = last === null ? [] : await db.select().from(heldEvents).where(and(ofDataset, lte(heldEvents.seq, last))).orderBy(asc(heldEvents.seq)).limit(RELEASE_PAGE_ROWS).all();
    if (last !== null && page.length === 0) continue; // a release running alongside took them
    if (page.length === 0) {
      // Nothing waits: the count says so too, whatever a cut-short release left in it.
      await db
        .update(legacyDatasets)
        .set({ held: sql`(SELECT count(*) FROM ${heldEvents} WHERE ${ofDataset})` })
        .where(and(eq(legacyDatasets.projectId, key.projectId), eq(legacyDatasets.dataset, key.dataset)));
      break;
    }
    const ids = await lookupNewIds(
      ch,
      key,
      page.map((h) => h.legacyId),
    );
    const groups = new Map<string, { deviceId: string; gapMs: number; events: DeviceEvent[]; seqs: number[] }>();
    for (const h of page) {
      const event = JSON.parse(h.event) as DeviceEvent;
      event.row.ref_id = ids.get(h.legacyId) ?? '';
      let g = groups.get(h.deviceId);
      if (!g) groups.set(h.deviceId, (g = { deviceId: h.deviceId, gapMs: h.gapMs, events: [], seqs: [] }));
      g.events.push(event);
      g.seqs.push(h.seq);
    }
    const known = await sessionsAround(ch, key.projectId, [...groups.values()]);
    for (const g of groups.values()) {
      const stub = deviceStub(env, key.projectId, g.deviceId);
      const knownSessions = known.get(g.deviceId) ?? [];
      for (const events of packDeviceEvents(g.events)) {
        await stub.ingest({ projectId: key.projectId, deviceId: g.deviceId, gapMs: g.gapMs, events, knownSessions });
      }
      for (let i = 0; i < g.seqs.length; i += 90) {
        const gone = await db
          .delete(heldEvents)
          .where(and(ofDataset, inArray(heldEvents.seq, g.seqs.slice(i, i + 90))))
          .returning({ seq: heldEvents.seq });
        // Only what this call removed: a release running alongside never counts a row twice.
        if (gone.length) {
          await db
            .update(legacyDatasets)
            .set({ held: sql`max(0, ${legacyDatasets.held} - ${gone.length})` })
            .where(and(eq(legacyDatasets.projectId, key.projectId), eq(legacyDatasets.dataset, key.dataset)));
        }
      }
      released += g.events.length;
    }
  }
  return released;
}

/**
 * The last seq of a release page over `rows` (oldest first): as many as fit `maxBytes`, and always
 * the first, however large, so a page never stalls the release. null when nothing is held.
 */
export function releasePageEnd(rows: ReadonlyArray<{ seq: number; bytes: number }>, maxBytes: number): number | null {
  let end: number | null = null;
  let total = 0;
  for (const r of rows) {
    if (end !== null && total + r.bytes > maxBytes) break;
    total += r.bytes;
    end = r.seq;
  }
  return end;
}

/** The sessions ClickHouse holds within a session gap of each device's released `track` events. */
async function sessionsAround(
  ch: ReturnType<typeof clickhouse>,
  projectId: string,
  groups: ReadonlyArray<{ deviceId: string; gapMs: number; events: readonly DeviceEvent[] }>,
): Promise<Map<string, SessionRecord[]>> {
  const windows = new Map<string, { from: number; to: number }>();
  for (const g of groups) {
    const times = g.events.filter((e) => e.row.type === 'track').map((e) => e.row.created_at_ms);
    if (times.length) windows.set(g.deviceId, { from: Math.min(...times) - g.gapMs, to: Math.max(...times) + g.gapMs });
  }
  const out = new Map<string, SessionRecord[]>();
  if (windows.size === 0) return out;
  const all = [...windows.values()];
  const stored = await currentSessionsOfDevices(
    ch,
    projectId,
    [...windows.keys()],
    Math.min(...all.map((w) => w.from)),
    Math.max(...all.map((w) => w.to)),
  );
  for (const s of stored) {
    const w = windows.get(s.deviceId);
    if (!w || s.startMs > w.to || s.endMs < w.from) continue;
    let l = out.get(s.deviceId);
    if (!l) out.set(s.deviceId, (l = []));
    l.push({ id: s.id, startMs: s.startMs, endMs: s.endMs, eventCount: s.eventCount, ended: s.ended, version: s.version });
  }
  return out;
}
