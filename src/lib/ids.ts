// Deterministic ids: a fast 128-bit content hash and UUIDv7s whose time part is the event time.

function mix32(str: string, seed: number): [number, number] {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < str.length; i++) {
    const ch = str.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return [h1 >>> 0, h2 >>> 0];
}

const hex8 = (n: number) => n.toString(16).padStart(8, '0');

/** 128-bit non-cryptographic hash as 32 hex chars (dedup keys, id derivation; not for secrets). */
export function hash128(str: string): string {
  const [a, b] = mix32(str, 0);
  const [c, d] = mix32(str, 0x9e3779b9);
  return hex8(a) + hex8(b) + hex8(c) + hex8(d);
}

/**
 * A UUIDv7 whose 48-bit time is `timeMs` and whose remaining 74 bits come from `seedHex`
 * (32 hex chars), so the same (time, seed) always gives the same id.
 */
export function uuidv7At(timeMs: number, seedHex: string): string {
  const ms = Math.max(0, Math.min(Math.floor(timeMs), 2 ** 48 - 1));
  const t = ms.toString(16).padStart(12, '0');
  const s = seedHex.padEnd(32, '0');
  const variant = ((parseInt(s[15]!, 16) & 0x3) | 0x8).toString(16);
  return `${t.slice(0, 8)}-${t.slice(8, 12)}-7${s.slice(0, 3)}-${variant}${s.slice(3, 6)}-${s.slice(6, 18)}`;
}

/** Milliseconds carried by a UUIDv7. */
export function uuidv7Time(id: string): number {
  return parseInt(id.replace(/-/g, '').slice(0, 12), 16);
}
