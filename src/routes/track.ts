// POST /track — one OpenPanel event; answers { deviceId, sessionId } as the SDK expects.
import { ingestRateLimit, requireClient } from '../auth';
import { ApiError } from '../errors';
import { acceptEvents } from '../ingest/accept';
import { readJsonBodyBytes } from '../ingest/body';
import { requestContext } from '../ingest/context';
import { withIdempotency } from '../ingest/idempotency';
import { MAX_EVENT_BYTES, WireEvent } from '../ingest/wire';
import { CLIENT_SECURITY, createRoute, documentRoute, errors, json, router, z } from './openapi';

/** Request headers both ingest routes honour (the handlers read them; this describes them). */
export const IngestHeaders = z.object({
  'idempotency-key': z
    .string()
    .min(1)
    .max(255)
    .optional()
    .describe('1 to 255 printable ASCII characters: a retry with the same key and body is answered as the first request was, with `Idempotent-Replayed: true`, and stores nothing new (keys are kept 24 hours)'),
  'content-encoding': z.enum(['gzip', 'identity']).optional().describe('the limits count the body after decompression'),
});

export const REPLAYED_HEADER = { 'idempotent-replayed': { description: '`true` when this is the stored answer of an earlier request with the same Idempotency-Key', schema: { type: 'string' as const } } };

/** The error answers of both ingest routes; `bad` names the 400 codes, `tooLarge` the 413 ones. */
export function ingestErrors(bad: string, tooLarge: string) {
  return errors(
    { 400: bad },
    { 401: 'unauthorized: missing client headers, unknown client or wrong secret' },
    { 409: 'idempotency_in_progress: a request with this Idempotency-Key is still being processed; retry' },
    { 413: tooLarge },
    { 415: 'unsupported_media_type (the body must be application/json or text/plain) or unsupported_encoding (gzip or none)' },
    { 422: 'idempotency_key_reused: the Idempotency-Key was used for a different request' },
    { 429: 'rate_limited: the client sent too many requests; see Retry-After' },
    { 503: 'nothing was stored; retry after Retry-After (`unavailable`, `idempotency_unavailable`, `storage_unavailable` or `misconfigured`)' },
  );
}

/** One event on the wire, a named component shared by both ingest routes. */
export const IngestEvent = WireEvent.openapi('IngestEvent', { description: 'an OpenPanel event: `{ type, payload }`' });

const Tracked = z.object({
  deviceId: z.string().describe('`__deviceId`, or derived from a daily salt, the IP and the user agent'),
  sessionId: z.string().describe('the session the event joined, by event time'),
});

const route = createRoute({
  method: 'post',
  path: '/track',
  summary: 'Ingest one event (OpenPanel wire format)',
  description: `The OpenPanel SDK's request. \`alias\` is refused. Reserved properties: \`__timestamp\` (ISO-8601 or epoch ms), \`__deviceId\`, \`__ip\`, \`__eventId\` (idempotency key). At most ${MAX_EVENT_BYTES} bytes; \`text/plain\` bodies are read as JSON too.`,
  tags: ['ingest'],
  security: CLIENT_SECURITY,
  request: { headers: IngestHeaders, body: { required: true, content: { 'application/json': { schema: IngestEvent } } } },
  responses: {
    200: { ...json(Tracked, 'stored (or a duplicate of a stored event)'), headers: REPLAYED_HEADER },
    ...ingestErrors(
      'invalid_json, invalid_gzip, invalid_idempotency_key, invalid_event (not the shape), too_old (older than 5 days) or unsupported (an event type not taken)',
      'payload_too_large: the body is over the event limit (`details.limitBytes`)',
    ),
  },
});

export const trackRoute = router();

// The handler reads the body itself (gzip, byte limit, Idempotency-Key over the exact bytes).
trackRoute.post('/track', requireClient, ingestRateLimit, async (c) => {
  const { json: body, bytes } = await readJsonBodyBytes(c.req.raw, MAX_EVENT_BYTES);
  return withIdempotency(c.env.DB, c.req.raw, c.get('project').projectId, 'track', bytes, async (receivedAtMs, client) => {
    const result = await acceptEvents(c.env, c.get('project'), [body], requestContext(c.req.raw, undefined, receivedAtMs, client));
    const rejection = result.rejected[0];
    if (rejection) {
      if (rejection.reason === 'internal') {
        throw new ApiError(503, 'unavailable', rejection.error, { retryable: true }, { 'Retry-After': '1' });
      }
      const code = rejection.reason === 'validation' ? 'invalid_event' : rejection.reason;
      throw new ApiError(400, code, rejection.error);
    }
    const row = result.rows[0]!;
    return { status: 200, body: { deviceId: row.deviceId, sessionId: row.sessionId }, final: true };
  });
});
documentRoute(trackRoute, route);
