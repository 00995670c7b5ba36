// Validate → enrich → hand each device's rows to its object. A row counts as accepted only once
// its device object has written it to the outbox.
import type { ProjectAuth } from '../auth';
import { packDeviceEvents, positionOf } from '../device/packed';
import { deviceStub } from '../device/stub';
import type { DeviceEvent } from '../device/types';
import type { Env } from '../env';
import { divertLegacyEvents } from '../legacy/realtime';
import { uuidv7OfParts } from '../lib/ids';
import { mapPool } from '../lib/pool';
import { dailySalt, deriveDeviceId, utcDay } from './device-id';
import { normalizeEvent, type NormalizedEvent, type Rejection, type RequestContext } from './normalize';

/** Where callers of old found it; new code imports it from `src/device/stub`. */
export { deviceStub } from '../device/stub';

export const DEVICE_CALL_CONCURRENCY = 16;

export interface RowRejection extends Rejection {
  index: number;
}

export interface RowOutcome {
  deviceId: string;
  sessionId: string;
  eventId: string;
  duplicate: boolean;
}

export interface AcceptResult {
  accepted: number;
  duplicates: number;
  rejected: RowRejection[];
  rows: Array<RowOutcome | null>;
}

export function toDeviceEvent(projectId: string, deviceId: string, e: NormalizedEvent): DeviceEvent {
  const id = uuidv7OfParts(e.createdAtMs, [projectId, deviceId, e.dedupKey]);
  return {
    dedupKey: e.dedupKey,
    row: {
      id,
      project_id: projectId,
      device_id: deviceId,
      profile_id: e.profileId,
      type: e.type,
      name: e.name,
      created_at_ms: e.createdAtMs,
      received_at_ms: e.receivedAtMs,
      properties: e.propertiesJson,
      ref_id: '',
      ip: e.ip,
      country: e.geo.country,
      region: e.geo.region,
      city: e.geo.city,
      timezone: e.geo.timezone,
      latitude: e.geo.latitude,
      longitude: e.geo.longitude,
    },
    payload: { id, project_id: projectId, created_at_ms: e.createdAtMs, received_at_ms: e.receivedAtMs, payload: e.payloadJson },
    // From the parsed properties: packing does not parse the row's JSON again to find it.
    position: positionOf(e.properties),
  };
}

/**
 * `originals`: for rows mapped from another format (tracker apps), each row as its sender wrote it,
 * stored as the raw payload instead of the mapped row.
 */
export async function acceptEvents(env: Env, project: ProjectAuth, raws: readonly unknown[], ctx: RequestContext, originals?: readonly unknown[]): Promise<AcceptResult> {
  const rejected: RowRejection[] = [];
  const rows: Array<RowOutcome | null> = new Array(raws.length).fill(null);
  const valid: Array<{ index: number; event: NormalizedEvent }> = [];
  raws.forEach((raw, index) => {
    const r = normalizeEvent(raw, ctx, index, originals ? originals[index] : raw);
    if (r.ok) valid.push({ index, event: r.event });
    else rejected.push({ index, ...r.rejection });
  });

  // Cookieless device ids: one digest per distinct IP in the request.
  const derived = new Map<string, string>();
  if (valid.some((v) => v.event.deviceId === null)) {
    const salt = await dailySalt(env.DB, utcDay(ctx.receivedAtMs));
    for (const ip of new Set(valid.filter((v) => v.event.deviceId === null).map((v) => v.event.ip))) {
      derived.set(ip, await deriveDeviceId(salt, project.projectId, ip, ctx.userAgent));
    }
  }

  const byDevice = new Map<string, Array<{ index: number; event: DeviceEvent }>>();
  for (const { index, event } of valid) {
    const deviceId = event.deviceId ?? derived.get(event.ip)!;
    let list = byDevice.get(deviceId);
    if (!list) byDevice.set(deviceId, (list = []));
    list.push({ index, event: toDeviceEvent(project.projectId, deviceId, event) });
  }

  // Realtime events of legacy datasets: translated, or held until their import completes.
  const legacy = await divertLegacyEvents(env, project, valid, byDevice);
  for (const h of legacy.held) rows[h.index] = { deviceId: h.deviceId, sessionId: '', eventId: h.eventId, duplicate: false };
  for (const r of legacy.refused) rejected.push({ index: r.index, reason: 'internal', error: r.error, retryable: true });
  let accepted = legacy.held.length;
  let duplicates = 0;
  await mapPool([...byDevice], DEVICE_CALL_CONCURRENCY, async ([deviceId, list]) => {
    const stub = deviceStub(env, project.projectId, deviceId);
    let done = 0;
    try {
      // A large batch takes several calls, in order: each one's rows are durable once it answers.
      for (const events of packDeviceEvents(list.map((l) => l.event))) {
        const { results } = await stub.ingest({ projectId: project.projectId, deviceId, gapMs: project.sessionGapMs, events });
        results.forEach((r, k) => {
          const index = list[done + k]!.index;
          rows[index] = { deviceId, sessionId: r.sessionId, eventId: r.eventId, duplicate: r.status === 'duplicate' };
          if (r.status === 'accepted') accepted++;
          else duplicates++;
        });
        done += events.rp.length;
      }
    } catch (err) {
      console.error(JSON.stringify({ msg: 'device ingest failed', deviceId, error: String(err) }));
      for (const { index } of list.slice(done)) {
        rejected.push({ index, reason: 'internal', error: 'the event could not be stored; retry it', retryable: true });
      }
    }
  });
  rejected.sort((a, b) => a.index - b.index);
  return { accepted, duplicates, rejected, rows };
}
