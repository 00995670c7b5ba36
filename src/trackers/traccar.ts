// Traccar Client ≥ 9 posts JSON `{ location, device_id }`; older Traccar Clients, the OsmAnd app and
// GPSLogger send the OsmAnd protocol as query or form parameters. Both become position events.
import { badRequest } from '../errors';
import {
  extraFields,
  fixTime,
  isPlainObject,
  KMH_PER_KNOT,
  KMH_PER_MS,
  knownNumber,
  paramNumber,
  originalRow,
  positionEvent,
  type AdaptedRequest,
  type PositionEvent,
} from './position-event';

const COORDS_MAPPED = new Set(['latitude', 'longitude', 'speed', 'heading', 'accuracy', 'altitude']);
const LOCATION_MAPPED = new Set(['coords', 'timestamp']);
const ROOT_MAPPED = new Set(['location', 'device_id']);

const deviceIdOf = (v: unknown): string | undefined =>
  typeof v === 'string' && v.trim() !== '' ? v.trim() : typeof v === 'number' && Number.isFinite(v) ? String(v) : undefined;

const noDevice = () => badRequest('device_id_required', 'no device id: Traccar Client sends "device_id", the OsmAnd protocol "id" or "deviceid"');

/** Traccar Client's JSON (speed in m/s). `location` may also be an array of locations. */
export function adaptTraccarJson(body: unknown, queryDeviceId: string | undefined): AdaptedRequest {
  if (!isPlainObject(body) || (!isPlainObject(body.location) && !Array.isArray(body.location))) {
    throw badRequest('invalid_request', 'the body must be Traccar Client\'s { "location": { "timestamp", "coords": {...}, ... }, "device_id" }');
  }
  const deviceId = deviceIdOf(body.device_id) ?? deviceIdOf(queryDeviceId);
  if (!deviceId) throw noDevice();
  const rootExtra = extraFields(body, ROOT_MAPPED);
  const locations: unknown[] = Array.isArray(body.location) ? body.location : [body.location];
  const events: PositionEvent[] = locations.map((l) => {
    const location = isPlainObject(l) ? l : {};
    const coords = isPlainObject(location.coords) ? location.coords : {};
    // The location SDK's own id of a recorded location, kept across its retries.
    const uuid = typeof location.uuid === 'string' && location.uuid.length > 0 && location.uuid.length <= 128 ? location.uuid : undefined;
    return positionEvent({
      deviceId,
      lat: coords.latitude,
      lon: coords.longitude,
      time: fixTime(location.timestamp),
      speedKmh: knownNumber(coords.speed, KMH_PER_MS),
      heading: knownNumber(coords.heading),
      accuracyM: knownNumber(coords.accuracy),
      altitudeM: coords.altitude ?? undefined,
      eventId: uuid,
      extra: { ...rootExtra, ...extraFields(coords, COORDS_MAPPED), ...extraFields(location, LOCATION_MAPPED) },
    });
  });
  // One row per location: the request's other fields with that one location.
  const root = originalRow(body) as Record<string, unknown>;
  const originals = Array.isArray(root.location) ? root.location.map((location: unknown) => ({ ...root, location })) : [root];
  return { events, originals, ignored: 0 };
}

/** km/h per unit of the OsmAnd `speed` parameter; Traccar documents knots unless `speedUnit` says otherwise. */
const SPEED_UNITS: ReadonlyMap<string, number> = new Map([
  ['kn', KMH_PER_KNOT],
  ['kmh', 1],
  ['ms', KMH_PER_MS],
]);

/** Parameters that become the position's own fields, or are settings and credentials, never stored. */
const PARAMS_MAPPED = new Set(['id', 'deviceid', 'lat', 'lon', 'location', 'timestamp', 'speed', 'bearing', 'heading', 'altitude', 'accuracy', 'speedUnit', 'token']);

/** The OsmAnd protocol's parameters (one fix per request). Other parameters are kept, typed as Traccar types them. */
export function adaptOsmAnd(params: ReadonlyMap<string, string>): AdaptedRequest {
  const deviceId = deviceIdOf(params.get('id')) ?? deviceIdOf(params.get('deviceid'));
  if (!deviceId) throw noDevice();
  const unit = params.get('speedUnit') ?? 'kn';
  const factor = SPEED_UNITS.get(unit);
  if (factor === undefined) throw badRequest('invalid_request', `speedUnit must be one of ${[...SPEED_UNITS.keys()].join(', ')}`, { speedUnit: unit });
  // Traccar Client's heartbeat (no fix since the last one): a sign of life with no position in it.
  if (!params.has('lat') && !params.has('lon') && !params.has('location')) return { events: [], originals: [], ignored: 1 };

  let lat = paramNumber(params.get('lat'));
  let lon = paramNumber(params.get('lon'));
  const location = params.get('location');
  if (lat === undefined && lon === undefined && location !== undefined) {
    const [a, b] = location.split(',');
    lat = paramNumber(a);
    lon = paramNumber(b);
  }
  const extra: Record<string, unknown> = {};
  for (const [key, value] of params) {
    if (PARAMS_MAPPED.has(key)) continue;
    extra[key] = value === 'true' ? true : value === 'false' ? false : (paramNumber(value) ?? value);
  }
  const event = positionEvent({
    deviceId,
    lat,
    lon,
    time: fixTime(params.get('timestamp')),
    speedKmh: knownNumber(paramNumber(params.get('speed')), factor),
    heading: knownNumber(paramNumber(params.get('bearing') ?? params.get('heading'))),
    accuracyM: knownNumber(paramNumber(params.get('accuracy'))),
    altitudeM: paramNumber(params.get('altitude')),
    extra,
  });
  // The parameters as received, but the credential.
  const original = Object.fromEntries([...params].filter(([key]) => key !== 'token'));
  return { events: [event], originals: [original], ignored: 0 };
}
