// The hand-off from the route to a device object: each event packed once, at the edge.
import type { DeviceEvent } from '../../durable-objects/device-object';
import { utf8Bytes } from '../pipeline/messages';

/**
 * A device event packed for the hand-off: the few fields the object reads, and the row and payload
 * already as JSON (`rp` is `"r":{...},"p":"..."`), so the object neither clones nor re-serialises them.
 */
export interface PackedEvent {
  k: string;
  id: string;
  t: string;
  n: string;
  c: number;
  pr: string;
  pos: [number, number] | null;
  rp: string;
  /** Upper bound of the bytes this event's outbox entry takes inside a queue message (UTF-8). */
  b: number;
}

export function packEvent(e: DeviceEvent): PackedEvent {
  const p = e.payload;
  if (p.id !== e.row.id || p.project_id !== e.row.project_id || p.created_at_ms !== e.row.created_at_ms || p.received_at_ms !== e.row.received_at_ms) {
    throw new Error(`payload row of event ${e.row.id} does not match the event row`);
  }
  const rp = `"r":${JSON.stringify(e.row)},"p":${JSON.stringify(p.payload)}`;
  return {
    k: e.dedupKey,
    id: e.row.id,
    t: e.row.type,
    n: e.row.name,
    c: e.row.created_at_ms,
    pr: e.row.profile_id,
    pos: readPosition(e.row.properties),
    rp,
    // The entry is `{"s":"<session id>",` + rp + `}`, spliced into the message as it is.
    b: utf8Bytes(rp) + 64,
  };
}

function readPosition(propertiesJson: string): [number, number] | null {
  if (!propertiesJson.includes('"lat"')) return null;
  const p = JSON.parse(propertiesJson) as { lat?: unknown; lon?: unknown };
  return typeof p.lat === 'number' && typeof p.lon === 'number' ? [p.lat, p.lon] : null;
}
