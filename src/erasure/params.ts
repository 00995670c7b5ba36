// Parameters of the erasure jobs: the subject (a device or a profile of a project) or a whole project.
import { z } from 'zod';

export const ProjectId = z.string().min(1).max(128);
export const DeviceId = z.string().min(1).max(128);
/** As long as ingestion lets a profile id be. */
export const ProfileId = z.string().min(1).max(256);

/**
 * Named points at which a test makes a job's chunk stop as a crash would: nothing after the point
 * runs and its cursor is not committed. Test-only: the admin routes never accept `faults`; a test
 * starts the job with them through startJob. A point fires on a job's first attempt only (the
 * engine marks every retry `verifyWrites`), so the retry shows how the job converges.
 */
export const CRASH_POINTS = [
  'archive.afterPut',
  'archive.afterInsert',
  'archive.afterVerify',
  'archive.afterObjectDelete',
  'devices.afterErase',
  'clickhouse.afterDelete',
  'project.afterRevoke',
  'project.afterObjectsDelete',
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];
const Faults = z.object({ crashAt: z.enum(CRASH_POINTS) }).optional();

export const DeviceErasureParams = z.object({ projectId: ProjectId, deviceId: DeviceId, faults: Faults });
export const ProfileErasureParams = z.object({ projectId: ProjectId, profileId: ProfileId, faults: Faults });
export const ErasureParams = z.union([DeviceErasureParams, ProfileErasureParams]);
export type ErasureParams = z.infer<typeof ErasureParams>;

export const ProjectDeletionParams = z.object({ projectId: ProjectId, faults: Faults });
export type ProjectDeletionParams = z.infer<typeof ProjectDeletionParams>;

/** Whose rows an erasure removes. */
export type Subject = { kind: 'device'; projectId: string; deviceId: string } | { kind: 'profile'; projectId: string; profileId: string };

export function subjectOf(p: ErasureParams): Subject {
  return 'deviceId' in p ? { kind: 'device', projectId: p.projectId, deviceId: p.deviceId } : { kind: 'profile', projectId: p.projectId, profileId: p.profileId };
}

/** A crash a test asked for (see CRASH_POINTS). */
export class InjectedCrash extends Error {
  override name = 'InjectedCrash';
  constructor(readonly point: CrashPoint) {
    super(`test fault: the chunk stopped at ${point}`);
  }
}

/** The crash hook of one chunk: throws at `point` when the job's params name it and this is its first attempt. */
export function crashHook(faults: { crashAt: CrashPoint } | undefined, firstAttempt: boolean): (point: CrashPoint) => void {
  return (point) => {
    if (firstAttempt && faults?.crashAt === point) throw new InjectedCrash(point);
  };
}
