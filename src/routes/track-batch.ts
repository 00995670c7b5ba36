// POST /track/batch — up to 2000 events; each row is validated and accepted or rejected on its own.
import { Hono } from 'hono';
import { ingestRateLimit, requireClient, type AppEnv } from '../auth';
import { ApiError } from '../errors';
import { acceptEvents } from '../ingest/accept';
import { readJsonBodyBytes } from '../ingest/body';
import { requestContext } from '../ingest/context';
import { withIdempotency } from '../ingest/idempotency';
import { BatchBody, MAX_BATCH_EVENTS, MAX_BODY_BYTES } from '../ingest/wire';

export const trackBatchRoute = new Hono<AppEnv>().post('/track/batch', requireClient, ingestRateLimit, async (c) => {
  const { json: body, bytes } = await readJsonBodyBytes(c.req.raw, MAX_BODY_BYTES);
  return withIdempotency(c.env.DB, c.req.raw, c.get('project').projectId, 'track/batch', bytes, async (receivedAtMs, client) => {
    const parsed = BatchBody.safeParse(body);
    if (!parsed.success) {
      throw new ApiError(400, 'invalid_batch', 'the body must be { "events": [...], "sentAt"?: ISO-8601 }', {
        issues: parsed.error.issues.slice(0, 5).map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
      });
    }
    const { events, sentAt } = parsed.data;
    if (events.length > MAX_BATCH_EVENTS) {
      throw new ApiError(413, 'too_many_events', `a batch holds at most ${MAX_BATCH_EVENTS} events`, {
        limitEvents: MAX_BATCH_EVENTS,
        events: events.length,
      });
    }
    const context = requestContext(c.req.raw, sentAt ? Date.parse(sentAt) : undefined, receivedAtMs, client);
    const result = await acceptEvents(c.env, c.get('project'), events, context);
    return {
      status: 202,
      body: { accepted: result.accepted, duplicates: result.duplicates, rejected: result.rejected },
      // Rows that came back retryable must be tried again: this answer is not the final one.
      final: !result.rejected.some((r) => r.retryable),
    };
  });
});
