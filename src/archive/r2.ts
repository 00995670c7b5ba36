// Chunk objects in R2: written create-only with the SHA-256 R2 checks on upload, read back whole.
import type { ArchiveChunkManifest } from './chunk';

/** A chunk object to put: its gzip body, and the figures stored beside it (the archive job gives ClickHouse's, before it reads the object back). */
export interface ChunkUpload {
  manifest: Pick<ArchiveChunkManifest, 'key' | 'sha256Hex' | 'rowCount' | 'idsChecksumHex'>;
  body: Uint8Array;
}

/** What a create-only put found: `created`, or an object already at the key (an earlier attempt's, or an orphan). */
export type PutOutcome = 'created' | 'exists';

/**
 * Puts a chunk at its key only if no object is there (R2's `If-None-Match: *`), with its SHA-256 so
 * R2 refuses a body damaged on the way. Never overwrites: an existing object is reported, and the
 * caller reads it back to see whether it is this very chunk (a retried upload) or another.
 */
export async function putChunkCreateOnly(bucket: R2Bucket, chunk: ChunkUpload): Promise<PutOutcome> {
  const { manifest, body } = chunk;
  const put = await bucket.put(manifest.key, body, {
    sha256: manifest.sha256Hex,
    onlyIf: { etagDoesNotMatch: '*' },
    httpMetadata: { contentType: 'application/x-ndjson', contentEncoding: 'identity' },
    customMetadata: { rows: String(manifest.rowCount), idsChecksum: manifest.idsChecksumHex },
  });
  return put === null ? 'exists' : 'created';
}

/** The whole object at `key`, or null when there is none. */
export async function readObject(bucket: R2Bucket, key: string): Promise<Uint8Array | null> {
  const obj = await bucket.get(key);
  return obj ? new Uint8Array(await obj.arrayBuffer()) : null;
}
