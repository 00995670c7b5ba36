// POST /ingest/overland, POST /ingest/owntracks, GET|POST /ingest/traccar — tracker apps unchanged:
// each request is mapped to position events and handed to the same path as /track/batch.
import type { Context, MiddlewareHandler } from 'hono';
import { requireAppClient, trackerRateLimit, type AppEnv } from '../auth';
import { ApiError } from '../errors';
import { acceptEvents } from '../ingest/accept';
import { readBodyBytes, readJsonBodyBytes } from '../ingest/body';
import { requestContext } from '../ingest/context';
import { MAX_BATCH_EVENTS, MAX_BODY_BYTES } from '../ingest/wire';
import { adaptOverland } from '../trackers/overland';
import { adaptOwnTracks } from '../trackers/owntracks';
import type { AdaptedRequest, TrackerSource } from '../trackers/position-event';
import { countRejectedRows } from '../trackers/rejections';
import { adaptOsmAnd, adaptTraccarJson } from '../trackers/traccar';
import { APP_SECURITY, createRoute, documentRoute, errors, json, router, z } from './openapi';

/** One OsmAnd fix as form parameters is a few hundred bytes. */
const MAX_FORM_BYTES = 64 * 1024;
const RETRY_AFTER_SEC = 5;

const retryLater = (message: string, details: Record<string, unknown> = {}) =>
  new ApiError(503, 'storage_unavailable', message, { ...details, retryAfterSec: RETRY_AFTER_SEC }, { 'Retry-After': String(RETRY_AFTER_SEC) });

/**
 * Returns once every position is durable or rejected for good (and counted); throws a 503 while
 * any is not, so the app keeps its copy and resends — the stored ones then come back as duplicates.
 */
async function deliver(c: Context<AppEnv>, source: TrackerSource, adapted: AdaptedRequest): Promise<void> {
  const { events } = adapted;
  // Each event is stored with its own original: a list out of step would store rows under other ids.
  if (adapted.originals.length !== events.length) throw new Error(`${source} adapter: ${events.length} events but ${adapted.originals.length} original rows`);
  const refused = adapted.rejected ?? [];
  // Messages refused by the adapter count too: a list of nulls is not a way past the limit.
  if (events.length + refused.length > MAX_BATCH_EVENTS) {
    const rows = events.length + refused.length;
    throw new ApiError(413, 'too_many_events', `a request holds at most ${MAX_BATCH_EVENTS} positions`, { limitEvents: MAX_BATCH_EVENTS, events: rows });
  }
  if (!events.length && !refused.length) return;
  const project = c.get('project');
  const context = requestContext(c.req.raw);
  const result = events.length ? await acceptEvents(c.env, project, events, context, adapted.originals) : { rejected: [] };
  const retryable = result.rejected.filter((r) => r.retryable).length;
  if (retryable) throw retryLater(`${retryable} of ${events.length} positions could not be stored yet; send them again later`, { retryable });
  try {
    await countRejectedRows(c.env.DB, project.projectId, source, [...refused, ...result.rejected], context.receivedAtMs);
  } catch (err) {
    // Uncounted, a rejected row would vanish unseen: the app resends, and the row is counted then.
    console.error(JSON.stringify({ msg: 'counting rejected tracker rows failed', projectId: project.projectId, source, error: String(err) }));
    throw retryLater('the rejected positions of this request could not be recorded; send it again later');
  }
}

/** Query parameters, then (for a form POST) the body's, which win. */
async function osmAndParams(request: Request): Promise<Map<string, string>> {
  const params = new Map(new URL(request.url).searchParams);
  if (request.method === 'POST' && request.body) {
    for (const [key, value] of new URLSearchParams(await readFormText(request, MAX_FORM_BYTES))) params.set(key, value);
  }
  return params;
}

async function readFormText(request: Request, maxBytes: number): Promise<string> {
  return new TextDecoder().decode(await readBodyBytes(request, maxBytes));
}

const isJson = (request: Request) => (request.headers.get('content-type') ?? '').toLowerCase().startsWith('application/json');

/** APP_SECURITY as OpenAPI requirements: its inferred type (a union with optional keys) fits no route config. */
const appSecurity = APP_SECURITY as Array<Record<string, string[]>>;

// The apps' formats, as the adapters read them (src/trackers/*). They describe; the adapters decide:
// a field that cannot be read rejects its row alone, and unknown fields are kept as properties.
const Num = z.number();
const FixTime = z.union([z.number(), z.string()]).describe('epoch seconds or milliseconds (above 10^11), ISO 8601, or `yyyy-MM-dd HH:mm:ss` in UTC');
const DeviceIdValue = z.union([z.string(), z.number()]);

const OverlandBody = z
  .object({
    locations: z.array(
      z.object({
        type: z.literal('Feature'),
        geometry: z.object({ type: z.literal('Point'), coordinates: z.array(Num).min(2).describe('[lon, lat]') }),
        properties: z
          .looseObject({
            timestamp: FixTime.optional(),
            device_id: DeviceIdValue.optional().describe('else the `device_id` query parameter'),
            speed: Num.optional().describe('m/s; -1 (unknown) is left out'),
            course: Num.optional().describe('degrees; -1 is left out'),
            horizontal_accuracy: Num.optional().describe('metres; -1 is left out'),
            altitude: Num.optional().describe('metres; left out when `vertical_accuracy` is negative'),
            vertical_accuracy: Num.optional(),
            action: z.string().optional().describe("the app's own log lines: acknowledged, not stored"),
          })
          .describe('other fields are stored as properties under their own names'),
      }),
    ),
    current: z.unknown().optional().describe('neither stored nor used as the live position'),
    trip: z.unknown().optional().describe('neither stored nor used'),
  })
  .openapi('OverlandBatch');

const OwnTracksMessage = z
  .looseObject({
    _type: z.string().describe('`location` is stored; every other type is acknowledged and ignored'),
    lat: Num.optional(),
    lon: Num.optional(),
    tst: Num.optional().describe('epoch seconds'),
    vel: Num.optional().describe('km/h'),
    cog: Num.optional().describe('degrees'),
    acc: Num.optional().describe('metres'),
    alt: Num.optional().describe('metres'),
    tid: z.string().optional().describe('tracker id: the device when there is no `X-Limit-D`'),
  })
  .openapi('OwnTracksMessage');

const TraccarLocation = z.looseObject({
  timestamp: FixTime.optional(),
  uuid: z.string().max(128).optional().describe("the app's id of the fix, kept across its retries"),
  coords: z.looseObject({
    latitude: Num,
    longitude: Num,
    speed: Num.optional().describe('m/s'),
    heading: Num.optional(),
    accuracy: Num.optional().describe('metres'),
    altitude: Num.optional(),
  }),
});

const TraccarJson = z
  .looseObject({
    device_id: DeviceIdValue.optional().describe('else the `device_id` query parameter'),
    location: z.union([TraccarLocation, z.array(TraccarLocation)]),
  })
  .openapi('TraccarLocation');

const OsmAndParams = z
  .looseObject({
    id: z.string().optional().describe('the device (or `deviceid`)'),
    deviceid: z.string().optional(),
    lat: z.string().optional(),
    lon: z.string().optional(),
    location: z.string().optional().describe('`lat,lon` when `lat` and `lon` are absent'),
    timestamp: z.string().optional().describe('epoch seconds or milliseconds (above 10^11), ISO 8601, or `yyyy-MM-dd HH:mm:ss` in UTC'),
    speed: z.string().optional().describe('in `speedUnit`'),
    speedUnit: z.enum(['kn', 'kmh', 'ms']).optional().describe('unit of `speed`; default knots, as Traccar documents (the OsmAnd app sends m/s)'),
    bearing: z.string().optional().describe('degrees (or `heading`)'),
    altitude: z.string().optional().describe('metres'),
    accuracy: z.string().optional().describe('metres'),
    batt: z.string().optional().describe('battery %; kept as a property like every other parameter'),
  })
  .describe('the OsmAnd protocol: one fix per request; other parameters are kept as properties');

/** Every tracker route's error answers: the app sees a coded 4xx for its own fault, 503 for the gateway's. */
const trackerErrors = (bad: string) =>
  errors(
    { 400: bad },
    { 401: 'unauthorized: no usable credentials, unknown client or wrong secret' },
    { 413: 'payload_too_large (`details.limitBytes`) or too_many_events (`details.limitEvents`)' },
    { 415: 'unsupported_media_type or unsupported_encoding (gzip or none)' },
    {
      503: 'storage_unavailable (some positions are not durable yet: the app keeps its copy and resends), rate_limited (the client\'s ingestion budget is spent: a 503, not a 429, since OwnTracks deletes a message on any 4xx) or misconfigured; see Retry-After',
    },
  );

const overland = createRoute({
  method: 'post',
  path: '/ingest/overland',
  summary: "Overland's batch of GeoJSON locations",
  description: 'Answers `{"result":"ok"}` once every location is durable or rejected for good (rejected rows are counted in `GET /v1/rejections`).',
  tags: ['trackers'],
  security: appSecurity,
  request: {
    query: z.object({ device_id: z.string().optional().describe('the device of locations that carry no `properties.device_id`') }),
    body: { required: true, content: { 'application/json': { schema: OverlandBody } } },
  },
  responses: {
    200: json(z.object({ result: z.literal('ok') }), 'every location durable or rejected for good: the app may delete its copy'),
    ...trackerErrors('invalid_json, invalid_gzip, invalid_request (not the Overland shape) or device_id_required'),
  },
});

const ownTracks = createRoute({
  method: 'post',
  path: '/ingest/owntracks',
  summary: 'An OwnTracks HTTP message',
  description:
    'OwnTracks deletes a message on a 2xx (on iOS also on a 4xx) and resends it after a 5xx: the rows are durable before 200 is sent, and a spent budget answers 503. In a list, a message that is not an object is rejected and counted alone. An empty body stores nothing.',
  tags: ['trackers'],
  security: appSecurity,
  request: {
    query: z.object({ d: z.string().optional().describe('the device, for an endpoint URL written `…/ingest/owntracks?d=<device>`') }),
    headers: z.object({
      'x-limit-d': z.string().optional().describe('the device (OwnTracks sends its Device ID here); else the `d` query parameter, else the message\'s `tid`'),
      'x-limit-u': z.string().optional().describe('the user OwnTracks sends; not used'),
    }),
    body: { required: false, content: { 'application/json': { schema: z.union([OwnTracksMessage, z.array(OwnTracksMessage)]) } } },
  },
  responses: {
    200: json(z.array(z.unknown()).max(0), 'stored (or acknowledged and ignored): always an empty list'),
    ...trackerErrors('invalid_json, invalid_gzip, invalid_request (not a JSON object with `_type`) or device_id_required'),
  },
});

const TraccarQuery = OsmAndParams.extend({ device_id: z.string().optional().describe("Traccar Client's JSON: the device when the body names none") });
const traccarAnswer = { description: 'stored, or rejected for good and counted (empty body)' };
const traccarBad = 'invalid_json, invalid_gzip, invalid_request (not the shape, or an unknown `speedUnit`) or device_id_required';

const traccarGet = createRoute({
  method: 'get',
  path: '/ingest/traccar',
  summary: 'One fix in the OsmAnd protocol (query parameters)',
  tags: ['trackers'],
  security: appSecurity,
  request: { query: OsmAndParams },
  responses: { 200: traccarAnswer, ...trackerErrors(traccarBad) },
});

const traccarPost = createRoute({
  method: 'post',
  path: '/ingest/traccar',
  summary: "Traccar Client's JSON, or the OsmAnd protocol as a form",
  description: 'A JSON body is Traccar Client\'s `{ location, device_id }` (speed in m/s); any other body is read as OsmAnd form parameters, which win over the query\'s.',
  tags: ['trackers'],
  security: appSecurity,
  request: {
    query: TraccarQuery,
    body: { required: false, content: { 'application/json': { schema: TraccarJson }, 'application/x-www-form-urlencoded': { schema: OsmAndParams } } },
  },
  responses: { 200: traccarAnswer, ...trackerErrors(traccarBad) },
});

export const ingestTrackersRoute = router();

/** A GET stores a fix; a HEAD (a link checker, a proxy's prefetch) must not. */
const getOrPostOnly: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (c.req.method !== 'GET' && c.req.method !== 'POST') {
    throw new ApiError(405, 'method_not_allowed', `${c.req.method} is not allowed here: send the fix with GET or POST`, { allow: ['GET', 'POST'] }, { Allow: 'GET, POST' });
  }
  await next();
};

const traccar = async (c: Context<AppEnv>) => {
  const request = c.req.raw;
  const adapted =
    request.method === 'POST' && isJson(request)
      ? adaptTraccarJson((await readJsonBodyBytes(request, MAX_BODY_BYTES)).json, c.req.query('device_id'))
      : adaptOsmAnd(await osmAndParams(request));
  await deliver(c, 'traccar', adapted);
  return c.body(null, 200);
};

// Each handler reads its own body (byte limits, gzip, apps' formats checked row by row), so the
// routes are mounted as they are and described beside them.
ingestTrackersRoute
  // Overland deletes its copy only on exactly {"result":"ok"}; anything else and it resends the batch.
  .post('/ingest/overland', requireAppClient, trackerRateLimit, async (c) => {
    const { json } = await readJsonBodyBytes(c.req.raw, MAX_BODY_BYTES);
    await deliver(c, 'overland', adaptOverland(json, c.req.query('device_id')));
    return c.json({ result: 'ok' });
  })
  .post('/ingest/owntracks', requireAppClient, trackerRateLimit, async (c) => {
    // OwnTracks posts an empty body when a friend is deleted: nothing to store.
    if (!c.req.raw.body || c.req.header('content-length') === '0') return c.json([]);
    const { json } = await readJsonBodyBytes(c.req.raw, MAX_BODY_BYTES);
    await deliver(c, 'owntracks', adaptOwnTracks(json, c.req.header('x-limit-d') || c.req.query('d')));
    return c.json([]);
  })
  // A HEAD comes in as a GET (Hono answers it from the GET handler): getOrPostOnly turns it away.
  .on(['GET', 'POST'], '/ingest/traccar', getOrPostOnly, requireAppClient, trackerRateLimit, traccar)
  // Traccar Client (iOS) replaces the server URL's query with its own parameters: its token rides in the path.
  .on(['GET', 'POST'], '/ingest/traccar/:token', getOrPostOnly, requireAppClient, trackerRateLimit, traccar);

const PathToken = z.object({ token: z.string().describe('`<clientId>:<clientSecret>`, for apps that replace the URL\'s query with their own (Traccar Client on iOS)') });
const traccarGetWithToken = createRoute({ ...traccarGet, path: '/ingest/traccar/{token}', summary: `${traccarGet.summary}, the token in the path`, request: { ...traccarGet.request, params: PathToken } });
const traccarPostWithToken = createRoute({ ...traccarPost, path: '/ingest/traccar/{token}', summary: `${traccarPost.summary}, the token in the path`, request: { ...traccarPost.request, params: PathToken } });

for (const route of [overland, ownTracks, traccarGet, traccarPost, traccarGetWithToken, traccarPostWithToken]) documentRoute(ingestTrackersRoute, route);
