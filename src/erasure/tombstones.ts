// Erasure tombstones: what an erasure or a project deletion forgot, kept for rows still on their way.
//
// A device object hands its rows to the ingest queue before an erasure clears it; a message that
// fails its delivery is retried for minutes, then parked in R2 and re-driven later. Such rows could
// reach ClickHouse after the job removed the subject from every store. The ingest writer, which every
// ingested row passes on its way to ClickHouse, asks this table first and drops them. (Legacy
// imports write straight to ClickHouse; an erasure does not start beside one.)
import { and, eq, isNull, lt, or, sql } from 'drizzle-orm';
import { drizzle, type DrizzleD1Database } from 'drizzle-orm/d1';
import { erasureTombstones, jobs } from '../db/schema';
import { entryRow, type EventRow, type IngestMessage, type OutboxEvent, type PayloadRow, type SessionRow } from '../pipeline/messages';
import type { Subject } from './params';

/** How long a tombstone is kept: far beyond a message's retries, and a re-drive's wait for ClickHouse. */
export const TOMBSTONE_RETENTION_MS = 30 * 86_400_000;

export type Tombstone =
  | { kind: 'project'; projectId: string }
  | { kind: 'device'; projectId: string; deviceId: string; beforeMs: number }
  | { kind: 'profile'; projectId: string; profileId: string; beforeMs: number };

/**
 * Records that an erasure of `s` was asked for at `beforeMs`: rows of the subject received before
 * then are its to forget, later ones are new data (until `raiseTombstone` moves the line). Written
 * once per job: a re-run keeps the first row.
 */
export async function recordErasure(db: D1Database, jobId: string, s: Subject, beforeMs: number, nowMs = Date.now()): Promise<void> {
  await drizzle(db)
    .insert(erasureTombstones)
    .values({
      jobId,
      projectId: s.projectId,
      deviceId: s.kind === 'device' ? s.deviceId : null,
      profileId: s.kind === 'profile' ? s.profileId : null,
      beforeMs,
      createdAt: nowMs,
    })
    .onConflictDoNothing();
}

/**
 * Moves an erasure's line up to now, just before it clears device objects: what an object held
 * until then is gone with it, so its copies still on their way go too, whenever they arrive.
 */
export async function raiseTombstone(db: D1Database, jobId: string, nowMs: number): Promise<void> {
  await drizzle(db)
    .update(erasureTombstones)
    .set({ beforeMs: sql`max(${erasureTombstones.beforeMs}, ${nowMs})`, createdAt: nowMs })
    .where(eq(erasureTombstones.jobId, jobId));
}

/**
 * The insert of a project deletion's tombstone: none of the project's rows is written again,
 * whenever received. Batched with the revocation of its clients, so neither happens alone.
 */
export const projectTombstone = (db: DrizzleD1Database, jobId: string, projectId: string, nowMs: number) =>
  db.insert(erasureTombstones).values({ jobId, projectId, deviceId: null, profileId: null, beforeMs: nowMs, createdAt: nowMs }).onConflictDoNothing();

/** Drops tombstones last written more than the retention ago; run by the watchdog. */
export async function pruneTombstones(db: D1Database, nowMs: number): Promise<number> {
  const r = await drizzle(db)
    .delete(erasureTombstones)
    .where(lt(erasureTombstones.createdAt, nowMs - TOMBSTONE_RETENTION_MS))
    .run();
  return r.meta.changes ?? 0;
}

/** The projects, devices and profiles whose rows some messages carry. */
export interface Subjects {
  projects: Set<string>;
  devices: Set<string>;
  profiles: Set<string>;
}

export const noSubjects = (): Subjects => ({ projects: new Set(), devices: new Set(), profiles: new Set() });

/**
 * Adds the subjects of a message's rows to `into`. A message whose rows cannot be read adds what it
 * can: expanding it fails the same way later, and it is then retried alone.
 */
export function addSubjects(into: Subjects, m: IngestMessage): Subjects {
  const event = (r: { project_id: string; device_id: string; profile_id: string }) => {
    into.projects.add(r.project_id);
    into.devices.add(r.device_id);
    if (r.profile_id) into.profiles.add(r.profile_id);
  };
  try {
    for (const r of m.events) event(r);
    // An entry's own fields over its chunk's base (entryRow's merge, for these three fields only).
    const base = m.base;
    for (const e of m.entries ?? []) {
      const r = e.r;
      // A malformed entry (no row object) adds nothing, and the rest are still read.
      if (typeof r !== 'object' || r === null) continue;
      event({
        project_id: ('project_id' in r ? r.project_id : base?.project_id) as string,
        device_id: ('device_id' in r ? r.device_id : base?.device_id) as string,
        profile_id: r.profile_id,
      });
    }
    // A lined message's entries are text (see decodeIngestBody): its base and header name them.
    if (m.lined && !m.entries && m.base) {
      into.projects.add(m.base.project_id as string);
      into.devices.add(m.base.device_id as string);
      for (const pr of m.lined.prs) if (pr) into.profiles.add(pr);
    }
    for (const r of m.payloads) into.projects.add(r.project_id);
    for (const r of m.sessions) {
      into.projects.add(r.project_id);
      into.devices.add(r.device_id);
    }
    if (m.owner) {
      into.devices.add(m.owner.device_id);
      if (m.owner.profile_id) into.profiles.add(m.owner.profile_id);
    }
    // Last: the one part that is parsed here (and whose failure stops the rest).
    if (m.chunk && !m.entries) for (const e of JSON.parse(m.chunk) as OutboxEvent[]) event(entryRow(e, m.base));
  } catch {
    // A malformed message: see above.
  }
  return into;
}

/**
 * The tombstones that may apply to these subjects (usually none), in one D1 read: the lists are
 * bound as JSON arrays (D1 binds at most 100 parameters). A cancelled erasure's tombstone is not
 * applied: cancelling it stops it forgetting rows still on their way. A project deletion's always
 * is: it was written with the revocation of the project's clients, and the project takes no row
 * again whatever becomes of the job (as for the re-drive, see dead-letters.ts).
 */
export async function tombstonesOf(db: D1Database, subjects: Subjects): Promise<Tombstone[]> {
  if (!subjects.projects.size) return [];
  const list = (set: Set<string>) => JSON.stringify([...set]);
  const t = erasureTombstones;
  const rows = await drizzle(db)
    .select({ projectId: t.projectId, deviceId: t.deviceId, profileId: t.profileId, beforeMs: t.beforeMs })
    .from(t)
    .leftJoin(jobs, eq(jobs.id, t.jobId))
    .where(
      and(
        sql`${t.projectId} IN (SELECT value FROM json_each(${list(subjects.projects)}))`,
        or(
          and(isNull(t.deviceId), isNull(t.profileId)),
          sql`${t.deviceId} IN (SELECT value FROM json_each(${list(subjects.devices)}))`,
          sql`${t.profileId} IN (SELECT value FROM json_each(${list(subjects.profiles)}))`,
        ),
        or(and(isNull(t.deviceId), isNull(t.profileId)), sql`coalesce(${jobs.state}, '') <> 'cancelled'`),
      ),
    )
    .all();
  return rows.map((r): Tombstone => {
    if (r.deviceId !== null) return { kind: 'device', projectId: r.projectId, deviceId: r.deviceId, beforeMs: r.beforeMs };
    if (r.profileId !== null) return { kind: 'profile', projectId: r.projectId, profileId: r.profileId, beforeMs: r.beforeMs };
    return { kind: 'project', projectId: r.projectId };
  });
}

const key = (...parts: string[]) => parts.join('\u0000');

/** Tombstones indexed for the writer's per-row questions. */
export class Forgotten {
  private readonly projects = new Set<string>();
  /** (project, device) → the latest line of that device's erasures; the same for profiles. */
  private readonly devices = new Map<string, number>();
  private readonly profiles = new Map<string, number>();

  constructor(tombstones: readonly Tombstone[]) {
    for (const t of tombstones) {
      if (t.kind === 'project') this.projects.add(t.projectId);
      else if (t.kind === 'device') this.devices.set(key(t.projectId, t.deviceId), Math.max(t.beforeMs, this.devices.get(key(t.projectId, t.deviceId)) ?? 0));
      else this.profiles.set(key(t.projectId, t.profileId), Math.max(t.beforeMs, this.profiles.get(key(t.projectId, t.profileId)) ?? 0));
    }
  }

  get empty(): boolean {
    return this.projects.size === 0 && this.devices.size === 0 && this.profiles.size === 0;
  }

  /** Whether an erasure forgot a row of this project, device and profile received at `receivedAtMs`. */
  forgets(projectId: string, deviceId: string, profileId: string, receivedAtMs: number): boolean {
    if (this.projects.has(projectId)) return true;
    const device = this.devices.get(key(projectId, deviceId));
    if (device !== undefined && receivedAtMs < device) return true;
    if (!profileId) return false;
    const profile = this.profiles.get(key(projectId, profileId));
    return profile !== undefined && receivedAtMs < profile;
  }

  /**
   * The rows of one message an erasure did not forget. A payload goes with its event; a payload
   * sent apart from its event (an oversized one) is judged by the owner its message names, and kept
   * when an older message names none. A session row goes with its device's erasure when it was
   * last changed before the line, and whenever the events of its session in this message were all
   * dropped (the change it carries is theirs: an event received before the line can reach a device
   * object just after it was cleared). A session row that travels without events (an idle end) is
   * judged by its device and time alone.
   */
  keep(m: IngestMessage, rows: { events: EventRow[]; payloads: PayloadRow[]; sessions: SessionRow[] }): { events: EventRow[]; payloads: PayloadRow[]; sessions: SessionRow[]; dropped: number } {
    if (this.empty) return { ...rows, dropped: 0 };
    const droppedIds = new Set<string>();
    const events = rows.events.filter((e) => {
      const gone = this.forgets(e.project_id, e.device_id, e.profile_id, e.received_at_ms);
      if (gone) droppedIds.add(e.id);
      return !gone;
    });
    const carried = new Set(rows.events.map((e) => e.id));
    const owner = m.owner;
    const payloads = rows.payloads.filter((p) => {
      if (droppedIds.has(p.id)) return false;
      if (carried.has(p.id)) return true;
      if (this.projects.has(p.project_id)) return false;
      return !(owner && this.forgets(p.project_id, owner.device_id, owner.profile_id, p.received_at_ms));
    });
    const keptIn = new Set<string>();
    const droppedIn = new Set<string>();
    for (const e of rows.events) (droppedIds.has(e.id) ? droppedIn : keptIn).add(key(e.project_id, e.device_id, e.session_id));
    const sessions = rows.sessions.filter((s) => {
      if (this.forgets(s.project_id, s.device_id, '', s.updated_at_ms)) return false;
      const k = key(s.project_id, s.device_id, s.id);
      return !(droppedIn.has(k) && !keptIn.has(k));
    });
    const dropped = rows.events.length - events.length + (rows.payloads.length - payloads.length) + (rows.sessions.length - sessions.length);
    return { events, payloads, sessions, dropped };
  }
}
