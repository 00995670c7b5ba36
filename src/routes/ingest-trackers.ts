// POST /ingest/overland, POST /ingest/owntracks, GET|POST /ingest/traccar — tracker apps unchanged:
// each request is mapped to position events and handed to the same path as /track/batch.
import { Hono, type Context } from 'hono';
import { ingestRateLimit, requireAppClient, type AppEnv } from '../auth';
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
  if (events.length > MAX_BATCH_EVENTS) {
    throw new ApiError(413, 'too_many_events', `a request holds at most ${MAX_BATCH_EVENTS} positions`, { limitEvents: MAX_BATCH_EVENTS, events: events.length });
  }
  if (!events.length) return;
  const project = c.get('project');
  const context = requestContext(c.req.raw);
  const result = await acceptEvents(c.env, project, events, context);
  const retryable = result.rejected.filter((r) => r.retryable).length;
  if (retryable) throw retryLater(`${retryable} of ${events.length} positions could not be stored yet; send them again later`, { retryable });
  try {
    await countRejectedRows(c.env.DB, project.projectId, source, result.rejected, context.receivedAtMs);
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

export const ingestTrackersRoute = new Hono<AppEnv>()
  // Overland deletes its copy only on exactly {"result":"ok"}; anything else and it resends the batch.
  .post('/ingest/overland', requireAppClient, ingestRateLimit, async (c) => {
    const { json } = await readJsonBodyBytes(c.req.raw, MAX_BODY_BYTES);
    await deliver(c, 'overland', adaptOverland(json, c.req.query('device_id')));
    return c.json({ result: 'ok' });
  })
  .post('/ingest/owntracks', requireAppClient, ingestRateLimit, async (c) => {
    // OwnTracks posts an empty body when a friend is deleted: nothing to store.
    if (!c.req.raw.body || c.req.header('content-length') === '0') return c.json([]);
    const { json } = await readJsonBodyBytes(c.req.raw, MAX_BODY_BYTES);
    await deliver(c, 'owntracks', adaptOwnTracks(json, c.req.header('x-limit-d')));
    return c.json([]);
  })
  .on(['GET', 'POST'], '/ingest/traccar', requireAppClient, ingestRateLimit, async (c) => {
    const request = c.req.raw;
    const adapted =
      request.method === 'POST' && isJson(request)
        ? adaptTraccarJson((await readJsonBodyBytes(request, MAX_BODY_BYTES)).json, c.req.query('device_id'))
        : adaptOsmAnd(await osmAndParams(request));
    await deliver(c, 'traccar', adapted);
    return c.body(null, 200);
  });
