// GET /v1/events/:id/payload — an event's raw payload as received, from ClickHouse or its archive chunk.
import type { TypedResponse } from 'hono';
import type { JSONValue } from 'hono/utils/types';
import { z } from 'zod';
import { readRateLimit, requireClient } from '../auth';
import { ArchiveCorrupt, ArchiveUnavailable, lookupPayload, type ArchiveReadStats } from '../archive/lazy-payload';
import { manifestStore } from '../archive/manifest';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { CLIENT_SECURITY, createRoute, errors, json, router } from './openapi';
import { readErrors } from './read-query';

const EventIdParam = z.object({
  id: z
    .string()
    .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'must be an event id (a UUID)')
    .transform((s) => s.toLowerCase()),
});

const PayloadView = z.object({
  id: z.string().describe('the event id, lower case'),
  payload: z.unknown().describe('the row exactly as it was received'),
  source: z.enum(['clickhouse', 'archive']).describe('where it was read from: the event store, or its archive chunk in R2'),
});

/** What the read cost the archive, on every answer (see statsHeaders). */
const ARCHIVE_HEADERS = {
  'x-driftline-archive-chunks': { description: 'archive chunks searched for the event, cached or not', schema: { type: 'integer' as const } },
  'x-driftline-archive-bytes-read': { description: 'bytes of chunks read from R2 (0 when all were cached)', schema: { type: 'integer' as const } },
  'x-driftline-archive-cache': { description: '`none` (no chunk consulted), `hit` (all cached) or `miss`', schema: { type: 'string' as const, enum: ['none', 'hit', 'miss'] } },
};

const route = createRoute({
  method: 'get',
  path: '/v1/events/{id}/payload',
  summary: "An event's raw payload as received, wherever it lives now",
  description: 'Archived payloads are read from their one chunk in R2 (cached); the headers say what the read cost.',
  tags: ['read'],
  security: CLIENT_SECURITY,
  middleware: [requireClient, readRateLimit] as const,
  request: { params: EventIdParam },
  responses: {
    200: { ...json(PayloadView, 'the raw payload'), headers: ARCHIVE_HEADERS },
    ...readErrors(
      [],
      { 500: 'archive_corrupt: the chunk holding it failed its integrity checks' },
      { 503: 'archive_unavailable (the chunk cannot be read right now), storage_unavailable or misconfigured; see Retry-After' },
    ),
    404: { ...errors({ 404: 'event_not_found (no such event in this project) or payload_not_found (the event has no raw payload)' })[404]!, headers: ARCHIVE_HEADERS },
  },
});

/** Response headers that show what a read cost the archive (the benchmark and tests read them). */
function statsHeaders(stats: ArchiveReadStats): Record<string, string> {
  return {
    'x-driftline-archive-bytes-read': String(stats.bytesRead),
    'x-driftline-archive-cache': stats.cache,
    'x-driftline-archive-chunks': String(stats.chunksRead),
  };
}

function defaultCache(): Cache | null {
  return typeof caches === 'undefined' ? null : caches.default;
}

export const v1EventPayloadRoute = router().openapi(
  route,
  async (c) => {
    const { id } = c.req.valid('param');
    const { projectId } = c.get('project');
    let result;
    try {
      result = await lookupPayload(
        { ch: clickhouse(getConfig(c.env).clickhouse), manifest: manifestStore(c.env.DB), bucket: c.env.ARCHIVE, cache: defaultCache() },
        projectId,
        id,
      );
    } catch (err) {
      if (err instanceof ArchiveUnavailable) {
        console.error(JSON.stringify({ msg: 'archive chunk unavailable', key: err.key, error: err.message }));
        throw new ApiError(503, 'archive_unavailable', 'the archive holding this payload cannot be read right now; retry later', { retryable: true }, { 'Retry-After': '5' });
      }
      if (err instanceof ArchiveCorrupt) {
        console.error(JSON.stringify({ msg: 'archive chunk corrupt', key: err.key, code: err.reason.code, error: err.message }));
        throw new ApiError(500, 'archive_corrupt', 'the archive chunk holding this payload failed its integrity checks; the operator has been told');
      }
      throw err;
    }
    if (!result.found) {
      const message = result.reason === 'event_not_found' ? `no event ${id} in this project` : `event ${id} has no raw payload`;
      throw new ApiError(404, result.reason, message, { id }, statsHeaders(result.stats));
    }
    // The stored text goes out verbatim (it is JSON: ingest wrote it, or the chunk codec checked it),
    // so the payload arrives byte for byte as it was received.
    try {
      JSON.parse(result.payloadText);
    } catch {
      console.error(JSON.stringify({ msg: 'stored payload is not JSON', id, source: result.source }));
      throw new ApiError(500, 'internal', 'the stored payload of this event is not JSON');
    }
    const body = `{"id":${JSON.stringify(id)},"payload":${result.payloadText},"source":${JSON.stringify(result.source)}}`;
    const res = c.body(body, 200, { 'content-type': 'application/json; charset=UTF-8', ...statsHeaders(result.stats) });
    // Spliced text cannot be typed from its parts: it is the PayloadView the route declares.
    return res as unknown as TypedResponse<{ id: string; payload: JSONValue; source: 'clickhouse' | 'archive' }, 200, 'json'>;
  },
);
