// Admin bearer tokens and project client credentials, both compared in constant time.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import type { Context, MiddlewareHandler } from 'hono';
import { getConfig } from './config';
import { clients, projects } from './db/schema';
import type { Env } from './env';
import { ApiError } from './errors';
import { sha256Hex } from './ingest/device-id';

export interface ProjectAuth {
  projectId: string;
  clientId: string;
  sessionGapMs: number;
}

export type AppEnv = { Bindings: Env; Variables: { project: ProjectAuth } };

const encoder = new TextEncoder();

/** Equal-length digests make the comparison independent of where the inputs differ. */
export async function secretsEqual(a: string, b: string): Promise<boolean> {
  const [da, db] = await Promise.all([
    crypto.subtle.digest('SHA-256', encoder.encode(a)),
    crypto.subtle.digest('SHA-256', encoder.encode(b)),
  ]);
  return crypto.subtle.timingSafeEqual(da, db);
}

export const requireAdmin: MiddlewareHandler<AppEnv> = async (c, next) => {
  // Read on its own: an operator must reach /admin/health to learn which other setting is invalid.
  const expected = c.env.ADMIN_TOKEN || undefined;
  if (!expected) throw new ApiError(503, 'admin_disabled', 'ADMIN_TOKEN is not configured');
  const header = c.req.header('authorization') ?? '';
  const token = header.startsWith('Bearer ') ? header.slice(7) : '';
  if (!token || !(await secretsEqual(token, expected))) {
    throw new ApiError(401, 'unauthorized', 'a valid admin bearer token is required');
  }
  await next();
};

const clientCache = new Map<string, { at: number; projectId: string; secretHash: string; sessionGapMs: number }>();

async function lookupClient(env: Env, clientId: string) {
  const hit = clientCache.get(clientId);
  // CLIENT_CACHE_SEC: how long this isolate trusts a client it checked (a revoked one passes this long).
  if (hit && Date.now() - hit.at < getConfig(env).clientCacheMs) return hit;
  const row = await drizzle(env.DB)
    .select({ projectId: clients.projectId, secretHash: clients.secretHash, sessionGapMs: projects.sessionGapMs })
    .from(clients)
    .innerJoin(projects, eq(projects.id, clients.projectId))
    .where(eq(clients.id, clientId))
    .get();
  if (!row) return null;
  const entry = { at: Date.now(), ...row };
  if (clientCache.size > 1000) clientCache.clear();
  clientCache.set(clientId, entry);
  return entry;
}

async function verifyClient(env: Env, clientId: string, secret: string): Promise<ProjectAuth> {
  const client = clientId.length <= 128 ? await lookupClient(env, clientId) : null;
  const ok = client !== null && (await secretsEqual(await sha256Hex(secret), client.secretHash));
  if (!client || !ok) throw new ApiError(401, 'unauthorized', 'unknown client or wrong secret');
  return { projectId: client.projectId, clientId, sessionGapMs: client.sessionGapMs };
}

export async function authenticateClient(c: Context<AppEnv>): Promise<ProjectAuth> {
  const clientId = c.req.header('openpanel-client-id') ?? '';
  const secret = c.req.header('openpanel-client-secret') ?? '';
  if (!clientId || !secret) {
    throw new ApiError(401, 'unauthorized', 'openpanel-client-id and openpanel-client-secret headers are required');
  }
  return verifyClient(c.env, clientId, secret);
}

export const requireClient: MiddlewareHandler<AppEnv> = async (c, next) => {
  c.set('project', await authenticateClient(c));
  await next();
};

export interface ClientCredentials {
  clientId: string;
  secret: string;
}

/** `<clientId>:<clientSecret>`; the client id never holds a colon, the secret may. */
function credentialPair(pair: string): ClientCredentials | null {
  const colon = pair.indexOf(':');
  if (colon <= 0 || colon === pair.length - 1) return null;
  return { clientId: pair.slice(0, colon), secret: pair.slice(colon + 1) };
}

function basicCredentials(encoded: string): ClientCredentials | null {
  try {
    const bytes = Uint8Array.from(atob(encoded), (ch) => ch.charCodeAt(0));
    return credentialPair(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes));
  } catch {
    return null;
  }
}

/**
 * Credentials as a tracker app can carry them, in this order: the OpenPanel headers;
 * `Authorization: Bearer <clientId>:<clientSecret>`; HTTP Basic (user = client id, password =
 * client secret); the `token` query parameter `<clientId>:<clientSecret>`, else the same token as
 * the route's last path segment where it has one (least preferred: URLs end up in proxy logs).
 * The first one present is the one checked. Null when none is usable.
 */
export function appCredentials(request: Request, pathToken?: string): ClientCredentials | null {
  const h = request.headers;
  const clientId = h.get('openpanel-client-id');
  const secret = h.get('openpanel-client-secret');
  if (clientId && secret) return { clientId, secret };
  const authorization = h.get('authorization')?.trim();
  if (authorization) {
    const space = authorization.indexOf(' ');
    const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase();
    const value = space < 0 ? '' : authorization.slice(space + 1).trim();
    if (scheme === 'bearer') return credentialPair(value);
    if (scheme === 'basic') return basicCredentials(value);
    return null;
  }
  const token = new URL(request.url).searchParams.get('token') || pathToken;
  return token ? credentialPair(token) : null;
}

/** Project authentication of the `/ingest/*` routes, for apps that hold only a URL and a token or a user and password. */
export const requireAppClient: MiddlewareHandler<AppEnv> = async (c, next) => {
  const credentials = appCredentials(c.req.raw, c.req.param('token'));
  // The challenge lets an app that holds `user:password@` in its URL send them (iOS apps answer it).
  const challenge = { 'WWW-Authenticate': 'Basic realm="Driftline", charset="UTF-8"' };
  if (!credentials) {
    throw new ApiError(
      401,
      'unauthorized',
      'credentials are required: Authorization: Bearer <clientId>:<clientSecret>, HTTP Basic (user = client id, password = client secret), or ?token=<clientId>:<clientSecret>',
      undefined,
      challenge,
    );
  }
  try {
    c.set('project', await verifyClient(c.env, credentials.clientId, credentials.secret));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw new ApiError(401, err.code, err.message, err.details, challenge);
    throw err;
  }
  await next();
};

/** Spends one unit of the client's ingestion budget; `status` with Retry-After when it is gone. */
const spendIngestBudget =
  (status: 429 | 503): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    const { clientId } = c.get('project');
    const { success } = await c.env.INGEST_LIMITER.limit({ key: clientId });
    if (!success) {
      throw new ApiError(status, 'rate_limited', 'too many requests for this client; retry later', { retryAfterSec: 10 }, { 'Retry-After': '10' });
    }
    await next();
  };

/** The ingestion budget of `/track` and `/track/batch`: 429 with Retry-After when it is gone. */
export const ingestRateLimit = spendIngestBudget(429);

/**
 * The same budget for the tracker apps, which answer it with 503: OwnTracks (iOS) deletes a message
 * on any 4xx and its Android app holds its whole queue behind one for weeks, while OwnTracks,
 * Overland and current Traccar Client keep and resend what got a 5xx. The code (`rate_limited`)
 * and Retry-After say what it is.
 */
export const trackerRateLimit = spendIngestBudget(503);

/**
 * Spends one unit of the project's read budget (every client of a project shares it); 429 with
 * Retry-After when it is gone. Runs before validation, so malformed reads spend it too.
 */
export const readRateLimit: MiddlewareHandler<AppEnv> = async (c, next) => {
  const { success } = await c.env.READ_LIMITER.limit({ key: c.get('project').projectId });
  if (!success) {
    throw new ApiError(429, 'rate_limited', 'too many reads for this project; retry later', { retryAfterSec: 10 }, { 'Retry-After': '10' });
  }
  await next();
};
