// What every route file shares to describe itself in /openapi.json: the router, the error
// envelope, the security schemes. Routes are declared with createRoute from the zod schemas that
// validate them; a route that must read its body itself (gzip, byte limits, rows validated one by
// one) declares the same schema with `documentRoute` and keeps its own reader.
import { OpenAPIHono, z, type RouteConfig } from '@hono/zod-openapi';
import type { AppEnv } from '../auth';
import { validationHook } from './validation';

export { createRoute, z } from '@hono/zod-openapi';

/** A router whose validators fail into the one error envelope (400 `invalid_request`). */
export function router(): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
}

export const ErrorEnvelope = z
  .object({
    error: z.object({
      code: z.string().openapi({ description: 'stable, machine-readable', example: 'invalid_request' }),
      message: z.string().openapi({ description: 'for people; may change' }),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  })
  .openapi('Error');

/** Security requirements, by the scheme names registered in src/index.ts. */
type SecurityRequirement = Record<string, string[]>;
export const ADMIN_SECURITY: SecurityRequirement[] = [{ adminBearer: [] }];
export const CLIENT_SECURITY: SecurityRequirement[] = [{ clientId: [], clientSecret: [] }];
/** Tracker apps: the OpenPanel headers, `Bearer <id>:<secret>`, HTTP Basic or `?token=`; any one. */
export const APP_SECURITY: SecurityRequirement[] = [{ clientId: [], clientSecret: [] }, { clientBearer: [] }, { clientBasic: [] }, { clientToken: [] }];

/** The 503 every admin route can answer (401 is the other one requireAdmin gives). */
export const ADMIN_DISABLED = '`admin_disabled`: ADMIN_TOKEN is not configured';

export const SECURITY_SCHEMES = {
  adminBearer: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN, for every /admin/* route' },
  clientId: { type: 'apiKey', in: 'header', name: 'openpanel-client-id', description: "the project's client id" },
  clientSecret: { type: 'apiKey', in: 'header', name: 'openpanel-client-secret', description: "the project's client secret" },
  clientBearer: { type: 'http', scheme: 'bearer', description: 'tracker apps: `<clientId>:<clientSecret>`' },
  clientBasic: { type: 'http', scheme: 'basic', description: 'tracker apps: user = client id, password = client secret' },
  clientToken: { type: 'apiKey', in: 'query', name: 'token', description: 'tracker apps: `<clientId>:<clientSecret>` (least preferred: URLs reach proxy logs)' },
} as const;

const STATUS_TEXT: Record<number, string> = {
  400: 'invalid request; `code` says which rule',
  401: 'missing or wrong credentials',
  404: 'not found',
  409: 'conflicts with the current state',
  413: 'body too large',
  415: 'unsupported content type or encoding',
  429: 'rate limited; see Retry-After',
  503: 'a dependency or setting is unavailable; see Retry-After',
};

/**
 * Error responses in the one envelope, by status: `errors(400, 401)` or with descriptions that
 * name the codes, `errors({ 409: 'archive_already_active' })`.
 */
export function errors(...statuses: (number | Record<number, string>)[]): RouteConfig['responses'] {
  const out: RouteConfig['responses'] = {};
  for (const s of statuses) {
    const entries: [number, string | undefined][] = typeof s === 'number' ? [[s, undefined]] : Object.entries(s).map(([k, v]) => [Number(k), v]);
    for (const [status, text] of entries) {
      out[status] = { description: text ?? STATUS_TEXT[status] ?? 'error', content: { 'application/json': { schema: ErrorEnvelope } } };
    }
  }
  return out;
}

/** A JSON response body. */
export function json<T extends z.ZodType>(schema: T, description: string) {
  return { description, content: { 'application/json': { schema } } };
}

/**
 * Documents a route whose handler reads its own body (registered in the app's description, no
 * validator added). The handler is mounted separately with the same path in Hono's `:param` form.
 */
export function documentRoute(app: OpenAPIHono<AppEnv>, route: RouteConfig): void {
  app.openAPIRegistry.registerPath(route);
}
