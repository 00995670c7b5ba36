// POST /track/batch — up to 2000 events; each row is validated and accepted or rejected on its own.
import { ingestRateLimit, requireClient } from '../auth';
import { ApiError } from '../errors';
import { acceptEvents } from '../ingest/accept';
import { readJsonBodyBytes } from '../ingest/body';
import { requestContext } from '../ingest/context';
import { withIdempotency } from '../ingest/idempotency';
import type { RejectReason } from '../ingest/normalize';
import { BatchBody, MAX_BATCH_EVENTS, MAX_BODY_BYTES } from '../ingest/wire';
import { CLIENT_SECURITY, createRoute, documentRoute, json, router, z } from './openapi';
import { IngestEvent, IngestHeaders, ingestErrors, REPLAYED_HEADER } from './track';

/** The batch as a client should send it: BatchBody checks the envelope, WireEvent each row on its own. */
const DocumentedBatch = BatchBody.extend({
  events: z.array(IngestEvent).max(MAX_BATCH_EVENTS).describe('each row is validated on its own: a malformed row is rejected in `rejected` and never fails the others'),
  sentAt: BatchBody.shape.sentAt.describe("the client's clock when it sent the batch: event times are corrected by its skew from receipt"),
});

const REJECT_REASONS = ['validation', 'too_old', 'unsupported', 'internal'] as const satisfies readonly RejectReason[];

const BatchResult = z.object({
  accepted: z.number().int().describe('rows made durable by this request'),
  duplicates: z.number().int().describe('rows already stored (an event id seen in the last 7 days)'),
  rejected: z.array(
    z.object({
      index: z.number().int().describe('position of the row in `events`'),
      reason: z.enum(REJECT_REASONS),
      error: z.string(),
      retryable: z.boolean().describe('true only for `internal`: send the row again'),
    }),
  ),
});

const route = createRoute({
  method: 'post',
  path: '/track/batch',
  summary: 'Ingest a batch of events',
  description: `At most ${MAX_BATCH_EVENTS} events and ${MAX_BODY_BYTES} bytes after decompression. A 202 answers for every row: accepted, duplicate, or in \`rejected\`; an accepted row is never lost.`,
  tags: ['ingest'],
  security: CLIENT_SECURITY,
  request: { headers: IngestHeaders, body: { required: true, content: { 'application/json': { schema: DocumentedBatch } } } },
  responses: {
    202: { ...json(BatchResult, 'every row accounted for'), headers: REPLAYED_HEADER },
    ...ingestErrors(
      'invalid_json, invalid_gzip, invalid_idempotency_key or invalid_batch (not `{ "events": [...], "sentAt"? }`)',
      'payload_too_large (`details.limitBytes`) or too_many_events (`details.limitEvents`)',
    ),
  },
});

export const trackBatchRoute = router();

// The handler reads the body itself (gzip, byte limit) and validates each row on its own.
trackBatchRoute.post('/track/batch', requireClient, ingestRateLimit, async (c) => {
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
documentRoute(trackBatchRoute, route);
