// Chunk objects in miniflare's real R2: create-only puts never overwrite, and R2 checks the SHA-256.
import { env } from 'cloudflare:test';
import { expect, it } from 'vitest';
import { encodeChunk, sha256Hex } from '../src/archive/chunk';
import { putChunkCreateOnly, readObject } from '../src/archive/r2';
import { hash128, uuidv7At } from '../src/lib/ids';

const T0 = Date.UTC(2025, 5, 1);

async function chunk(projectId: string, number: number, text: string) {
  return encodeChunk({ projectId, month: '2025-06', number, rows: [{ id: uuidv7At(T0, hash128(text)), deviceId: 'd', createdAtMs: T0, receivedAtMs: T0, payload: JSON.stringify({ text }) }] });
}

it('puts a chunk once: a second put at the key reports the object there and leaves it as it was', async () => {
  const projectId = `r2-${crypto.randomUUID()}`;
  const first = await chunk(projectId, 1, 'first');
  expect(await putChunkCreateOnly(env.ARCHIVE, first)).toBe('created');
  const second = await chunk(projectId, 1, 'second');
  expect(await putChunkCreateOnly(env.ARCHIVE, second)).toBe('exists');
  const stored = await readObject(env.ARCHIVE, first.manifest.key);
  expect(await sha256Hex(stored!)).toBe(first.manifest.sha256Hex);
  expect(await readObject(env.ARCHIVE, `${first.manifest.key}.missing`)).toBeNull();
});

it('R2 refuses a body whose SHA-256 is not the one given', async () => {
  const projectId = `r2-${crypto.randomUUID()}`;
  const c = await chunk(projectId, 1, 'x');
  const damaged = { ...c, manifest: { ...c.manifest, sha256Hex: '0'.repeat(64) } };
  await expect(putChunkCreateOnly(env.ARCHIVE, damaged)).rejects.toThrow(/SHA-256/i);
  expect(await readObject(env.ARCHIVE, c.manifest.key)).toBeNull();
});

it('never gives a removed chunk number to new content: numbers only grow', async () => {
  const { manifestStore } = await import('../src/archive/manifest');
  const store = manifestStore(env.DB);
  const projectId = `mf-${crypto.randomUUID()}`;
  expect(await store.nextNumber(projectId, '2025-06')).toBe(1);
  for (const n of [1, 2, 3]) await store.insert((await chunk(projectId, n, `c${n}`)).manifest, 'job', Date.now());
  expect(await store.nextNumber(projectId, '2025-06')).toBe(4);
  // An erasure emptied the newest chunk and removed its row: 3 stays used.
  await store.remove(projectId, '2025-06', 3);
  await store.remove(projectId, '2025-06', 2);
  expect((await store.list(projectId)).map((r) => r.number)).toEqual([1]);
  expect(await store.nextNumber(projectId, '2025-06')).toBe(4);
  // Other months and projects have numbers of their own; a project's deletion forgets them.
  expect(await store.nextNumber(projectId, '2025-07')).toBe(1);
  await store.forgetProject(projectId);
  expect(await store.list(projectId)).toEqual([]);
  expect(await store.nextNumber(projectId, '2025-06')).toBe(1);
});
