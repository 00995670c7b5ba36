// A position fix: what a `position` event carries, validated per field, in the shape the fleet core reads.
import { z } from 'zod';

/** One GPS fix of a device. `id` is the event id (the dedup key); `atMs` the event time, epoch ms. */
export interface Fix {
  id: string;
  atMs: number;
  /** WGS84 degrees. */
  lat: number;
  lon: number;
  speedKmh?: number;
  /** Degrees clockwise from north, 0–360. */
  heading?: number;
  /** Horizontal accuracy radius, metres. */
  accuracyM?: number;
  altitudeM?: number;
  ignition?: boolean;
}

export const POSITION_EVENT_NAME = 'position';

function numberField(name: string, unit: string) {
  return z.number({ error: (iss) => (iss.input === undefined ? `${name} is required` : `${name} must be a finite number (${unit})`) });
}

/**
 * Properties of a `position` event. Other properties pass through untouched (the event keeps them).
 * Messages name the field, so a per-row rejection tells the SDK author what to fix. An optional
 * field that is null is unknown, as if left out: a legacy table's NULL column arrives that way
 * through an import (and the browser's Geolocation API reports an unknown speed as null).
 */
export const PositionPropertiesSchema = z.looseObject({
  lat: numberField('lat', 'degrees').min(-90, 'lat must be between -90 and 90 degrees').max(90, 'lat must be between -90 and 90 degrees'),
  lon: numberField('lon', 'degrees').min(-180, 'lon must be between -180 and 180 degrees').max(180, 'lon must be between -180 and 180 degrees'),
  speed: numberField('speed', 'km/h').min(0, 'speed must be ≥ 0 km/h').nullish(),
  heading: numberField('heading', 'degrees').min(0, 'heading must be between 0 and 360 degrees').max(360, 'heading must be between 0 and 360 degrees').nullish(),
  accuracy: numberField('accuracy', 'metres').min(0, 'accuracy must be ≥ 0 metres').nullish(),
  altitude: numberField('altitude', 'metres').nullish(),
  ignition: z.boolean({ error: 'ignition must be true or false' }).nullish(),
}, { error: 'position properties must be an object' });

export type PositionProperties = z.infer<typeof PositionPropertiesSchema>;

export type PositionCheck = { ok: true; properties: PositionProperties } | { ok: false; message: string; issues: Array<{ field: string; message: string }> };

/** Validates a position event's properties; the message lists every bad field. */
export function checkPositionProperties(properties: unknown): PositionCheck {
  const result = PositionPropertiesSchema.safeParse(properties);
  if (result.success) return { ok: true, properties: result.data };
  const issues = result.error.issues.map((i) => ({ field: i.path.map(String).join('.') || '(properties)', message: i.message }));
  return { ok: false, message: `invalid position: ${issues.map((i) => i.message).join('; ')}`, issues };
}

/** The fix a validated position event describes. */
export function fixFromPosition(id: string, atMs: number, p: PositionProperties): Fix {
  const fix: Fix = { id, atMs, lat: p.lat, lon: p.lon };
  if (p.speed != null) fix.speedKmh = p.speed;
  if (p.heading != null) fix.heading = p.heading;
  if (p.accuracy != null) fix.accuracyM = p.accuracy;
  if (p.altitude != null) fix.altitudeM = p.altitude;
  if (p.ignition != null) fix.ignition = p.ignition;
  return fix;
}
