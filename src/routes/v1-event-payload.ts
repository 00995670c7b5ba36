// GET /v1/events/:id/payload — an event's raw payload as received, from ClickHouse or its archive chunk.
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import { z } from 'zod';
import { readRateLimit, requireClient, type AppEnv } from '../auth';
import { ArchiveCorrupt, ArchiveUnavailable, lookupPayload, type ArchiveReadStats } from '../archive/lazy-payload';
import { manifestStore } from '../archive/manifest';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import { ApiError } from '../errors';
import { validationHook } from './validation';

const EventIdParam = z.object({
  id: z
    .string()
    .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'must be an event id (a UUID)')
    .transform((s) => s.toLowerCase()),
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

export const v1EventPayloadRoute = new Hono<AppEnv>().get(
  '/v1/events/:id/payload',
  requireClient,
  readRateLimit,
  zValidator('param', EventIdParam, validationHook),
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
    return c.body(body, 200, { 'content-type': 'application/json; charset=UTF-8', ...statsHeaders(result.stats) });
  },
);
