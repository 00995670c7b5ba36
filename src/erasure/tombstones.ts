// Erasure tombstones: what an erasure or a project deletion forgot, kept for rows still on their way.
//
// A device object hands its rows to the ingest queue before an erasure clears it; a message that
// fails its delivery is retried for minutes, then parked in R2 and re-driven later. Such rows could
// reach ClickHouse after the job removed the subject from every store. The ingest writer, which every
// row passes on its way to ClickHouse, asks this table first and drops them.
import { inArray, lt } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { erasureTombstones } from '../db/schema';
import type { EventRow, IngestMessage, PayloadRow, SessionRow } from '../pipeline/messages';
import type { Subject } from './params';

/** How long a tombstone is kept: far beyond a message's retries, and a re-drive's wait for ClickHouse. */
export const TOMBSTONE_RETENTION_MS = 30 * 86_400_000;

/** D1 binds at most 100 parameters per statement. */
const PROJECTS_PER_READ = 90;

export type Tombstone =
  | { kind: 'project'; projectId: string }
  | { kind: 'device'; projectId: string; deviceId: string; beforeMs: number }
  | { kind: 'profile'; projectId: string; profileId: string; beforeMs: number };

/**
 * Records that an erasure of `s` began at `beforeMs`: rows of the subject received before then are
 * its to forget, later ones are new data. Written once per job (a re-run keeps the first time).
 */
export async function recordErasure(db: D1Database, jobId: string, s: Subject, beforeMs: number): Promise<void> {
  await drizzle(db)
    .insert(erasureTombstones)
    .values({
      jobId,
      projectId: s.projectId,
      deviceId: s.kind === 'device' ? s.deviceId : null,
      profileId: s.kind === 'profile' ? s.profileId : null,
      beforeMs,
      createdAt: beforeMs,
    })
    .onConflictDoNothing();
}

/** Records that a project is being deleted: none of its rows is written again, whenever received. */
export async function recordProjectDeletion(db: D1Database, jobId: string, projectId: string, nowMs: number): Promise<void> {
  await drizzle(db).insert(erasureTombstones).values({ jobId, projectId, deviceId: null, profileId: null, beforeMs: nowMs, createdAt: nowMs }).onConflictDoNothing();
}

/** Drops tombstones older than the retention; run by the watchdog. */
export async function pruneTombstones(db: D1Database, nowMs: number): Promise<number> {
  const r = await drizzle(db)
    .delete(erasureTombstones)
    .where(lt(erasureTombstones.createdAt, nowMs - TOMBSTONE_RETENTION_MS))
    .run();
  return r.meta.changes ?? 0;
}

/** The tombstones of these projects (usually none). */
export async function tombstonesOf(db: D1Database, projectIds: Iterable<string>): Promise<Tombstone[]> {
  const ids = [...new Set(projectIds)];
  const out: Tombstone[] = [];
  for (let i = 0; i < ids.length; i += PROJECTS_PER_READ) {
    const rows = await drizzle(db)
      .select({ projectId: erasureTombstones.projectId, deviceId: erasureTombstones.deviceId, profileId: erasureTombstones.profileId, beforeMs: erasureTombstones.beforeMs })
      .from(erasureTombstones)
      .where(inArray(erasureTombstones.projectId, ids.slice(i, i + PROJECTS_PER_READ)))
      .all();
    for (const r of rows) {
      if (r.deviceId !== null) out.push({ kind: 'device', projectId: r.projectId, deviceId: r.deviceId, beforeMs: r.beforeMs });
      else if (r.profileId !== null) out.push({ kind: 'profile', projectId: r.projectId, profileId: r.profileId, beforeMs: r.beforeMs });
      else out.push({ kind: 'project', projectId: r.projectId });
    }
  }
  return out;
}

/** The projects whose rows a message carries. */
export function messageProjects(m: IngestMessage): Set<string> {
  const ids = new Set<string>();
  for (const r of m.events) ids.add(r.project_id);
  for (const r of m.payloads) ids.add(r.project_id);
  for (const r of m.sessions) ids.add(r.project_id);
  for (const e of m.entries ?? []) ids.add(e.r.project_id);
  if (m.chunk) for (const e of JSON.parse(m.chunk) as Array<{ r: { project_id: string } }>) ids.add(e.r.project_id);
  return ids;
}

const key = (...parts: string[]) => parts.join('\u0000');

/** Tombstones indexed for the writer's per-row questions. */
export class Forgotten {
  private readonly projects = new Set<string>();
  /** (project, device) → the latest erasure start of that device. */
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
   * last changed before it began (a profile's sessions are not told apart from their device's here).
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
    const sessions = rows.sessions.filter((s) => !this.forgets(s.project_id, s.device_id, '', s.updated_at_ms));
    const dropped = rows.events.length - events.length + (rows.payloads.length - payloads.length) + (rows.sessions.length - sessions.length);
    return { events, payloads, sessions, dropped };
  }
}
