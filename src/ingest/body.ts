// Reads a JSON request body within a byte limit, gunzipping it when the client says so.
import { ApiError } from '../errors';

export async function readJsonBody(request: Request, maxBytes: number): Promise<unknown> {
  return (await readJsonBodyBytes(request, maxBytes)).json;
}

/** The parsed body and its (decompressed) bytes, which an Idempotency-Key is checked against. */
export async function readJsonBodyBytes(request: Request, maxBytes: number): Promise<{ json: unknown; bytes: Uint8Array }> {
  const contentType = (request.headers.get('content-type') ?? 'application/json').toLowerCase();
  if (!contentType.startsWith('application/json') && !contentType.startsWith('text/plain')) {
    throw new ApiError(415, 'unsupported_media_type', 'the body must be application/json');
  }
  const bytes = await readBodyBytes(request, maxBytes);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    throw new ApiError(400, 'invalid_json', 'the body is not valid UTF-8');
  }
  try {
    return { json: JSON.parse(text) as unknown, bytes };
  } catch (err) {
    const message = err instanceof RangeError ? 'the body is nested too deeply' : 'the body is not valid JSON';
    throw new ApiError(400, 'invalid_json', message);
  }
}

/**
 * The request body's bytes, gunzipped when `Content-Encoding: gzip`, refused past `maxBytes` (the
 * declared length first, then as it streams, so a 50 MB body is never held whole).
 */
export async function readBodyBytes(request: Request, maxBytes: number): Promise<Uint8Array> {
  const encoding = (request.headers.get('content-encoding') ?? 'identity').toLowerCase().trim();
  if (encoding !== 'identity' && encoding !== 'gzip') {
    throw new ApiError(415, 'unsupported_encoding', `Content-Encoding ${encoding} is not supported; use gzip or none`);
  }
  const tooLarge = () =>
    new ApiError(413, 'payload_too_large', `the body exceeds ${maxBytes} bytes after decompression`, { limitBytes: maxBytes });
  const declared = Number(request.headers.get('content-length') ?? '0');
  if (declared > maxBytes) throw tooLarge();
  if (!request.body) return new Uint8Array(0);

  let stream: ReadableStream<Uint8Array> = request.body;
  if (encoding === 'gzip') stream = stream.pipeThrough(new DecompressionStream('gzip'));
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof ApiError) throw err;
    throw new ApiError(400, 'invalid_gzip', `the gzip body could not be decompressed: ${(err as Error).message}`);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.byteLength;
  }
  return bytes;
}
