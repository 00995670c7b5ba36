// GET /openapi.json describes exactly the routes the app answers, both ways, with the error envelope
// on every operation and the security scheme each route really checks. (The document's validity
// against the OpenAPI 3.1 schema is checked in test/node/openapi.test.mjs.)
import { SELF } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import { app } from '../src/index';

interface Schema {
  $ref?: string;
  anyOf?: Schema[];
  oneOf?: Schema[];
  enum?: unknown[];
  [key: string]: unknown;
}
interface Parameter {
  name: string;
  in: string;
  required?: boolean;
  schema?: Schema;
}
interface Operation {
  security?: Array<Record<string, string[]>>;
  parameters?: Parameter[];
  requestBody?: { content?: Record<string, { schema?: Schema }> };
  responses: Record<string, { description?: string; content?: Record<string, { schema?: Schema }> }>;
}
interface OpenAPIDocument {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema>; securitySchemes: Record<string, Record<string, unknown>> };
}

const HTTP_METHODS = new Set(['get', 'put', 'post', 'delete', 'patch', 'options', 'head', 'trace']);
const ERROR_REF = '#/components/schemas/Error';
/** Routes anyone may call. */
const PUBLIC = new Set(['GET /healthz', 'GET /openapi.json', 'GET /admin/console']);
/** Routes that take a JSON body (the ones the hostile suite sends malformed JSON to, and OwnTracks'). */
const JSON_BODIES = [
  'POST /track',
  'POST /track/batch',
  'POST /ingest/overland',
  'POST /ingest/owntracks',
  'PUT /v1/devices/{deviceId}',
  'POST /admin/projects',
  'POST /admin/backfills',
  'POST /admin/archives',
  'POST /admin/archives/restore',
  'POST /admin/erasures',
  'POST /admin/fleet/recompute',
];

let doc: OpenAPIDocument;

beforeAll(async () => {
  const res = await SELF.fetch('http://gw/openapi.json');
  expect(res.status).toBe(200);
  doc = (await res.json()) as OpenAPIDocument;
});

function operations(): Array<{ key: string; method: string; path: string; op: Operation }> {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => HTTP_METHODS.has(method))
      .map(([method, op]) => ({ key: `${method.toUpperCase()} ${path}`, method: method.toUpperCase(), path, op })),
  );
}

/** Hono's `:id` (with an optional `{regex}` or `?`) in OpenAPI's `{id}` form. */
const openapiPath = (honoPath: string) => honoPath.replace(/:([A-Za-z0-9_]+)(\{[^}]*\})?\??/g, '{$1}');

/** Whether a schema is the error envelope, or offers it as one of its alternatives. */
const showsEnvelope = (s: Schema | undefined): boolean => !!s && (s.$ref === ERROR_REF || [...(s.anyOf ?? []), ...(s.oneOf ?? [])].some(showsEnvelope));

describe('GET /openapi.json', () => {
  it('is public OpenAPI 3.1 JSON', async () => {
    const res = await SELF.fetch('http://gw/openapi.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const body = (await res.json()) as OpenAPIDocument;
    expect(body.openapi).toMatch(/^3\.1\.\d+$/);
    expect(Object.keys(body.paths).length).toBeGreaterThan(0);
  });

  it('documents every route the app answers, and nothing else', () => {
    const answered = new Set(
      app.routes
        // `ALL` entries are middleware (app.use); a route's own handlers share its method and path.
        .filter((r) => r.method !== 'ALL')
        .map((r) => `${r.method} ${openapiPath(r.path)}`),
    );
    const documented = new Set(operations().map((o) => o.key));
    expect([...answered].filter((k) => !documented.has(k)).sort(), 'answered but not documented').toEqual([]);
    expect([...documented].filter((k) => !answered.has(k)).sort(), 'documented but not answered').toEqual([]);
  });

  it('has a handler behind every documented operation', async () => {
    for (const { key, method, path, op } of operations()) {
      // A value each path parameter accepts: the first of an enum, else any word.
      const url = path.replace(/\{([^}]+)\}/g, (_, name: string) => {
        const values = op.parameters?.find((p) => p.in === 'path' && p.name === name)?.schema?.enum;
        return encodeURIComponent(String(values?.[0] ?? 'x1'));
      });
      // No credentials: nothing runs past authentication, and public routes only read.
      const res = await SELF.fetch(`http://gw${url}`, { method });
      const text = await res.text();
      const noRoute = res.status === 404 && /"code":"not_found"/.test(text) && /no route for/.test(text);
      expect(noRoute, `${key} -> ${res.status} ${text.slice(0, 200)}`).toBe(false);
    }
  });

  it('declares every path parameter, and a JSON body where the route reads one', () => {
    for (const { key, path, op } of operations()) {
      for (const [, name] of path.matchAll(/\{([^}]+)\}/g)) {
        expect(op.parameters?.find((p) => p.in === 'path' && p.name === name), `${key}: path parameter ${name}`).toMatchObject({ required: true });
      }
    }
    const byKey = new Map(operations().map((o) => [o.key, o.op]));
    for (const key of JSON_BODIES) {
      expect(byKey.get(key)?.requestBody?.content?.['application/json']?.schema, `${key}: JSON request body`).toBeDefined();
    }
  });

  it('shows the error envelope on every operation, and on every error response', () => {
    const envelope = doc.components.schemas.Error as { properties: { error: { required: string[]; properties: Record<string, unknown> } } };
    expect(envelope.properties.error.required).toEqual(expect.arrayContaining(['code', 'message']));
    expect(Object.keys(envelope.properties.error.properties)).toEqual(expect.arrayContaining(['code', 'message', 'details']));
    for (const { key, op } of operations()) {
      const failures = Object.entries(op.responses).filter(([status]) => Number(status) >= 400);
      expect(
        failures.some(([, r]) => r.content?.['application/json']?.schema?.$ref === ERROR_REF),
        `${key}: no 4xx/5xx response with the error envelope`,
      ).toBe(true);
      for (const [status, r] of failures) {
        if (r.content) expect(showsEnvelope(r.content['application/json']?.schema), `${key} ${status}`).toBe(true);
      }
    }
  });

  it('names the security each route checks: admin bearer on /admin, client id and secret on client routes, none on public ones', () => {
    const schemes = doc.components.securitySchemes;
    expect(schemes.adminBearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(schemes.clientId).toMatchObject({ type: 'apiKey', in: 'header', name: 'openpanel-client-id' });
    expect(schemes.clientSecret).toMatchObject({ type: 'apiKey', in: 'header', name: 'openpanel-client-secret' });
    for (const { key, path, op } of operations()) {
      for (const requirement of op.security ?? []) {
        for (const name of Object.keys(requirement)) expect(schemes[name], `${key}: unknown scheme ${name}`).toBeDefined();
      }
      if (PUBLIC.has(key)) {
        expect(op.security ?? [], key).toEqual([]);
      } else if (path.startsWith('/admin/')) {
        expect(op.security, key).toEqual([{ adminBearer: [] }]);
      } else {
        expect(op.security, key).toContainEqual({ clientId: [], clientSecret: [] });
      }
    }
  });
});
