// Driftline: the Worker's entry. Routes, queue consumers and crons, wired once.
import { OpenAPIHono } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import { ZodError } from 'zod';
import type { AppEnv } from './auth';
import { ClickHouseUnavailable } from './clickhouse/client';
import { ConfigError } from './config';
import type { Env } from './env';
import { ApiError, loggedPath } from './errors';
import type { IngestBody } from './pipeline/messages';
import { handleJobsBatch, JOBS_QUEUE } from './jobs/engine';
import { runWatchdog } from './jobs/watchdog';
import { handleDeadLetters } from './pipeline/dead-letters';
import { handleIngestBatch } from './pipeline/writer';
import { adminConsoleRoute } from './routes/admin-console';
import { adminFleetRoute } from './routes/admin-fleet';
import { adminProjectsListRoute } from './routes/admin-projects-list';
import { adminArchivesRestoreRoute } from './routes/admin-archives-restore';
import { adminArchivesRoute } from './routes/admin-archives';
import { adminBackfillsRoute } from './routes/admin-backfills';
import { adminDatasetsRoute } from './routes/admin-datasets';
import { adminDeadLettersRoute } from './routes/admin-dead-letters';
import { adminErasuresRoute } from './routes/admin-erasures';
import { adminProjectsRoute } from './routes/admin-projects';
import { fleetRoute } from './routes/fleet';
import { healthRoute } from './routes/health';
import { ingestTrackersRoute } from './routes/ingest-trackers';
import { trackRoute } from './routes/track';
import { trackBatchRoute } from './routes/track-batch';
import { v1DevicesRoute } from './routes/v1-devices';
import { v1DevicesRegistryRoute } from './routes/v1-devices-registry';
import { v1EventsRoute } from './routes/v1-events';
import { v1EventPayloadRoute } from './routes/v1-event-payload';
import { v1ProfilesRoute } from './routes/v1-profiles';
import { v1RejectionsRoute } from './routes/v1-rejections';
import { v1SessionsRoute } from './routes/v1-sessions';
import { openapiRoute } from './routes/openapi-document';
import { SECURITY_SCHEMES } from './routes/openapi';
import { validationHook } from './routes/validation';

export { DeviceObject } from '../durable-objects/device-object';

export const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });

// Operator answers (a client secret, job state, health) are never kept by a browser or a proxy.
app.use('/admin/*', async (c, next) => {
  await next();
  c.res.headers.set('Cache-Control', 'no-store');
});

/**
 * The JSON bodies of the read, registry and admin routes are small (a vehicle, a job's parameters):
 * past this they are refused before they are read whole. Ingestion reads its own bodies, with
 * limits of their own (10 MB).
 */
const MAX_JSON_BODY_BYTES = 1024 * 1024;
const limitJsonBody = bodyLimit({
  maxSize: MAX_JSON_BODY_BYTES,
  onError: () => {
    throw new ApiError(413, 'payload_too_large', `the body is over ${MAX_JSON_BODY_BYTES} bytes`, { limitBytes: MAX_JSON_BODY_BYTES });
  },
});
// A GET or HEAD reads no body (and a request rebuilt with one would be refused by the runtime).
const jsonBodyLimit: MiddlewareHandler<AppEnv> = (c, next) => (c.req.method === 'GET' || c.req.method === 'HEAD' ? next() : limitJsonBody(c, next));
app.use('/v1/*', jsonBodyLimit);
app.use('/admin/*', jsonBodyLimit);

app
  .route('/', healthRoute)
  .route('/', trackRoute)
  .route('/', trackBatchRoute)
  .route('/', ingestTrackersRoute)
  .route('/', v1EventsRoute)
  .route('/', v1EventPayloadRoute)
  .route('/', v1SessionsRoute)
  .route('/', v1DevicesRoute)
  .route('/', v1DevicesRegistryRoute)
  .route('/', fleetRoute)
  .route('/', v1ProfilesRoute)
  .route('/', v1RejectionsRoute)
  .route('/', adminProjectsRoute)
  .route('/', adminDeadLettersRoute)
  .route('/', adminBackfillsRoute)
  .route('/', adminArchivesRoute)
  .route('/', adminArchivesRestoreRoute)
  .route('/', adminErasuresRoute)
  .route('/', adminDatasetsRoute)
  .route('/', adminConsoleRoute)
  .route('/', adminProjectsListRoute)
  .route('/', adminFleetRoute);

for (const [name, scheme] of Object.entries(SECURITY_SCHEMES)) app.openAPIRegistry.registerComponent('securitySchemes', name, scheme);
app.route('/', openapiRoute(app));

app.notFound((c) => c.json({ error: { code: 'not_found', message: `no route for ${c.req.method} ${c.req.path}` } }, 404));

/** Codes for the statuses Hono's own HTTPException carries (malformed JSON in a validator: 400). */
const HTTP_CODES: Record<number, string> = { 400: 'invalid_request', 401: 'unauthorized', 404: 'not_found', 405: 'method_not_allowed', 413: 'payload_too_large', 415: 'unsupported_media_type', 429: 'rate_limited' };

app.onError((err, c) => {
  if (err instanceof ApiError) {
    for (const [k, v] of Object.entries(err.headers ?? {})) c.header(k, v);
    return c.json(err.toJSON(), err.status);
  }
  if (err instanceof ClickHouseUnavailable) {
    console.error(JSON.stringify({ msg: 'ClickHouse unavailable', path: loggedPath(c.req.path), error: err.message }));
    c.header('Retry-After', '5');
    return c.json({ error: { code: 'storage_unavailable', message: 'the event store is unavailable; retry later' } }, 503);
  }
  if (err instanceof ConfigError) {
    // The deployment's fault: the client learns only that; the log and /admin/health name the setting.
    console.error(JSON.stringify({ msg: 'misconfigured', path: loggedPath(c.req.path), settings: err.settings, error: err.message }));
    c.header('Retry-After', '60');
    return c.json({ error: { code: 'misconfigured', message: 'the gateway is misconfigured; its operator has been told' } }, 503);
  }
  if (err instanceof HTTPException && err.status < 500) {
    const malformed = /malformed json/i.test(err.message);
    return c.json({ error: { code: malformed ? 'invalid_json' : (HTTP_CODES[err.status] ?? 'invalid_request'), message: err.message || 'invalid request' } }, err.status);
  }
  if (err instanceof ZodError) {
    return c.json({ error: { code: 'invalid_request', message: err.issues[0]?.message ?? 'invalid request' } }, 400);
  }
  console.error(JSON.stringify({ msg: 'unhandled error', path: loggedPath(c.req.path), error: String(err), stack: (err as Error).stack }));
  return c.json({ error: { code: 'internal', message: 'internal error' } }, 500);
});

// Not exported: workerd treats every named export of the main module as an entrypoint.
const INGEST_QUEUE = 'driftline-ingest';
const INGEST_DLQ = 'driftline-ingest-dlq';

export default {
  fetch: app.fetch,
  async queue(batch: MessageBatch<unknown>, env: Env, _ctx: ExecutionContext): Promise<void> {
    if (batch.queue === INGEST_QUEUE) return handleIngestBatch(batch as MessageBatch<IngestBody>, env);
    if (batch.queue === INGEST_DLQ) return handleDeadLetters(batch, env);
    if (batch.queue === JOBS_QUEUE) return handleJobsBatch(batch, env);
    console.error(JSON.stringify({ msg: 'message for an unknown queue; retrying', queue: batch.queue }));
    batch.retryAll({ delaySeconds: 60 });
  },
  async scheduled(controller: ScheduledController, env: Env, _ctx: ExecutionContext): Promise<void> {
    await runWatchdog(env, controller.scheduledTime);
  },
} satisfies ExportedHandler<Env, unknown>;
