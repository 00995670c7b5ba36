// The in-memory index over a device's dedup chunks: a 31-bit fingerprint of each key → the chunk(s)
// that may hold it. A miss proves a key is new; a hit is confirmed against the stored chunk.

/** FNV-1a over UTF-16 code units, folded to a non-negative 31-bit integer (a V8 small integer). */
export function fingerprint(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h ^ (h >>> 31)) & 0x7fffffff;
}

export class SeenIndex {
  /** Fingerprint → the chunk holding it, or the chunks (ascending) when keys of several collide. */
  private readonly chunksOf = new Map<number, number | number[]>();

  get fingerprints(): number {
    return this.chunksOf.size;
  }

  add(fp: number, chunk: number): void {
    const at = this.chunksOf.get(fp);
    if (at === undefined) this.chunksOf.set(fp, chunk);
    else if (typeof at === 'number') {
      if (at !== chunk) this.chunksOf.set(fp, [at, chunk]);
    } else if (!at.includes(chunk)) at.push(chunk);
  }

  addChunk(chunk: number, fps: ArrayLike<number>): void {
    for (let i = 0; i < fps.length; i++) this.add(fps[i]!, chunk);
  }

  removeChunk(chunk: number, fps: ArrayLike<number>): void {
    for (let i = 0; i < fps.length; i++) {
      const fp = fps[i]!;
      const at = this.chunksOf.get(fp);
      if (at === chunk) this.chunksOf.delete(fp);
      else if (Array.isArray(at)) {
        const rest = at.filter((c) => c !== chunk);
        if (rest.length === 0) this.chunksOf.delete(fp);
        else this.chunksOf.set(fp, rest.length === 1 ? rest[0]! : rest);
      }
    }
  }

  /** The chunks that may hold a key with this fingerprint (none: the key is certainly new). */
  candidates(fp: number): readonly number[] {
    const at = this.chunksOf.get(fp);
    return at === undefined ? [] : typeof at === 'number' ? [at] : at;
  }
}

/** Fingerprints stored as an Int32 blob beside each chunk, so the index loads without parsing keys. */
export function encodeFingerprints(fps: number[]): ArrayBuffer {
  return new Int32Array(fps).buffer;
}

export function decodeFingerprints(blob: ArrayBuffer): Int32Array {
  return new Int32Array(blob);
}
