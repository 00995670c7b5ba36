// The document the Worker serves at /openapi.json is valid OpenAPI 3.1 by a maintained validator.
// Here in Node because the validator reads its JSON schemas from its package files, which workerd
// cannot see; the Worker itself runs in workerd as `wrangler dev` runs it (no ClickHouse needed).
import { Validator } from '@seriousme/openapi-schema-validator';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unstable_startWorker } from 'wrangler';
import { ROOT } from '../../scripts/lib/gateway.mjs';

const dir = mkdtempSync(join(tmpdir(), 'driftline-openapi-test-'));
let worker;
let doc;

beforeAll(async () => {
  process.env.WRANGLER_SEND_METRICS = 'false';
  process.env.WRANGLER_LOG_PATH = join(dir, 'logs');
  worker = await unstable_startWorker({
    config: join(ROOT, 'wrangler.toml'),
    dev: { server: { hostname: '127.0.0.1', port: 0 }, inspector: false, persist: join(dir, 'state'), logLevel: 'error' },
  });
  await worker.ready;
  const res = await worker.fetch('http://gw.test/openapi.json');
  expect(res.status).toBe(200);
  doc = await res.json();
});

afterAll(async () => {
  await worker?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

describe('/openapi.json', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const validator = new Validator();
    const result = await validator.validate(doc);
    expect(result.errors ?? [], JSON.stringify(result.errors, null, 2)?.slice(0, 4000)).toEqual([]);
    expect(result.valid).toBe(true);
    expect(validator.version).toBe('3.1');
  });

  it('would fail the check if it were broken', async () => {
    // The same document with one response missing its description and one dangling reference.
    const broken = structuredClone(doc);
    const [path, item] = Object.entries(broken.paths)[0];
    const [method, op] = Object.entries(item)[0];
    const [status] = Object.keys(op.responses);
    delete op.responses[status].description;
    expect((await new Validator().validate(broken)).valid, `${method} ${path} ${status} without a description`).toBe(false);
    const dangling = structuredClone(doc);
    dangling.components.schemas.Error = { $ref: '#/components/schemas/NoSuchSchema' };
    expect((await new Validator().validate(dangling)).valid, 'a reference to a missing schema').toBe(false);
  });
});
