// Overland (iOS/Android): a batch of GeoJSON Point Features → position events. Only `locations` are
// positions; `current` and `trip` repeat points the app still holds; features with `action` are the
// app's own log lines (and visits), and features of `type: "trip"` its summaries of finished trips.
import { badRequest } from '../errors';
import {
  extraFields,
  fixTime,
  isPlainObject,
  KMH_PER_MS,
  knownNumber,
  originalRow,
  positionEvent,
  type AdaptedRequest,
  type PositionEvent,
} from './position-event';

/** Properties Overland sends that become the position's own fields. */
const MAPPED = new Set(['timestamp', 'speed', 'horizontal_accuracy', 'altitude', 'course', 'device_id']);

const deviceIdOf = (v: unknown): string | undefined =>
  typeof v === 'string' && v.trim() !== '' ? v.trim() : typeof v === 'number' && Number.isFinite(v) ? String(v) : undefined;

/**
 * The device of a location: its `properties.device_id`, else the `device_id` query parameter, else
 * the batch's (a malformed feature of a batch still belongs to the phone that sent it).
 */
export function adaptOverland(body: unknown, queryDeviceId: string | undefined): AdaptedRequest {
  if (!isPlainObject(body) || !Array.isArray(body.locations)) {
    throw badRequest('invalid_request', 'the body must be Overland\'s { "locations": [GeoJSON Point Features], "current"?, "trip"? }');
  }
  const received: unknown[] = body.locations;
  const features = received.map((f) => (isPlainObject(f) ? f : {}));
  const propsOf = (f: Record<string, unknown>) => (isPlainObject(f.properties) ? f.properties : {});
  const batchDevice = deviceIdOf(queryDeviceId) ?? features.map((f) => deviceIdOf(propsOf(f).device_id)).find((d) => d !== undefined);

  const events: PositionEvent[] = [];
  const originals: unknown[] = [];
  let ignored = 0;
  for (const [i, feature] of features.entries()) {
    const props = propsOf(feature);
    if (props.action !== undefined || props.type === 'trip') {
      ignored++;
      continue;
    }
    const deviceId = deviceIdOf(props.device_id) ?? batchDevice;
    if (!deviceId) {
      throw badRequest('device_id_required', "no device id: set the Device ID in Overland's settings, or add ?device_id=<name> to the receiver URL");
    }
    const geometry = isPlainObject(feature.geometry) ? feature.geometry : {};
    const coordinates: unknown[] = Array.isArray(geometry.coordinates) ? geometry.coordinates : [];
    // iOS marks an invalid altitude with a negative vertical accuracy.
    const altitudeUnknown = typeof props.vertical_accuracy === 'number' && props.vertical_accuracy < 0;
    events.push(
      positionEvent({
        deviceId,
        lon: coordinates[0],
        lat: coordinates[1],
        time: fixTime(props.timestamp),
        speedKmh: knownNumber(props.speed, KMH_PER_MS),
        heading: knownNumber(props.course),
        accuracyM: knownNumber(props.horizontal_accuracy),
        altitudeM: altitudeUnknown || props.altitude === null ? undefined : props.altitude,
        extra: extraFields(props, MAPPED),
      }),
    );
    originals.push(originalRow(received[i]));
  }
  return { events, originals, ignored };
}
