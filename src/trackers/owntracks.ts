// OwnTracks (HTTP mode): one JSON message per request. `location` messages become position events;
// every other `_type` (transition, lwt, waypoint, encrypted, ...) is acknowledged and ignored.
import { badRequest } from '../errors';
import type { Rejection } from '../ingest/normalize';
import { extraFields, fixTime, isPlainObject, knownNumber, originalRow, positionEvent, type AdaptedRequest, type PositionEvent } from './position-event';

/** Elements that become the position's own fields (`vel` is already km/h). */
const MAPPED = new Set(['_type', 'lat', 'lon', 'vel', 'cog', 'acc', 'alt', 'tst']);

const NOT_A_MESSAGE = 'an OwnTracks message must be a JSON object with a "_type"';
const NO_DEVICE = 'no device id: OwnTracks sends it as the X-Limit-D header (its Device ID setting) or as "tid"; or name it in the endpoint URL as ?d=<device>';

/**
 * `limitDevice`: the `X-Limit-D` header (the app's Device ID), else the endpoint URL's `d` parameter;
 * else the message's `tid`. In a list of messages, one that is not an object, or a location that names
 * no device while others do, is refused alone.
 */
export function adaptOwnTracks(body: unknown, limitDevice: string | undefined): AdaptedRequest {
  if (!Array.isArray(body) && !isPlainObject(body)) throw badRequest('invalid_request', NOT_A_MESSAGE);
  const messages = Array.isArray(body) ? body : [body];
  const events: PositionEvent[] = [];
  const originals: unknown[] = [];
  const rejected: Rejection[] = [];
  let ignored = 0;
  let withoutDevice = 0;
  for (const message of messages) {
    if (!isPlainObject(message)) {
      rejected.push({ reason: 'validation', error: NOT_A_MESSAGE, retryable: false });
      continue;
    }
    if (message._type !== 'location') {
      ignored++;
      continue;
    }
    const tid = typeof message.tid === 'string' && message.tid.trim() !== '' ? message.tid.trim() : undefined;
    const deviceId = limitDevice?.trim() || tid;
    if (!deviceId) {
      // In a list, a message without a device is refused alone (the app drops a whole list on a
      // 4xx); a request in which no location names one is set up wrong, and says so.
      withoutDevice++;
      rejected.push({ reason: 'validation', error: NO_DEVICE, retryable: false });
      continue;
    }
    events.push(
      positionEvent({
        deviceId,
        lat: message.lat,
        lon: message.lon,
        time: fixTime(message.tst),
        speedKmh: knownNumber(message.vel),
        heading: knownNumber(message.cog),
        accuracyM: knownNumber(message.acc),
        altitudeM: message.alt ?? undefined,
        extra: extraFields(message, MAPPED),
      }),
    );
    originals.push(originalRow(message));
  }
  if (withoutDevice && !events.length) throw badRequest('device_id_required', NO_DEVICE);
  return { events, originals, ignored, rejected };
}
