// POST /track — one OpenPanel event; answers { deviceId, sessionId } as the SDK expects.
import { Hono } from 'hono';
import { ingestRateLimit, requireClient, type AppEnv } from '../auth';
import { ApiError } from '../errors';
import { acceptEvents } from '../ingest/accept';
import { readJsonBodyBytes } from '../ingest/body';
import { requestContext } from '../ingest/context';
import { withIdempotency } from '../ingest/idempotency';
import { MAX_EVENT_BYTES } from '../ingest/wire';

export const trackRoute = new Hono<AppEnv>().post('/track', requireClient, ingestRateLimit, async (c) => {
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
