// Deterministic ids: a fast 128-bit content hash and UUIDv7s whose time part is the event time.

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const hex8 = (n: number) => HEX_BYTE[n >>> 24]! + HEX_BYTE[(n >>> 16) & 255]! + HEX_BYTE[(n >>> 8) & 255]! + HEX_BYTE[n & 255]!;

/**
 * 128-bit non-cryptographic hash as 32 hex chars (dedup keys, id derivation; not for secrets): two
 * 64-bit lanes (seeds 0 and 0x9e3779b9) computed in one pass. Its output is part of stored ids and
 * must never change.
 */
export function hash128(str: string): string {
  const seed = 0x9e3779b9;
  let a1 = 0xdeadbeef;
  let a2 = 0x41c6ce57;
  let b1 = 0xdeadbeef ^ seed;
  let b2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < str.length; i++) {
    const ch = str.charCodeAt(i);
    a1 = Math.imul(a1 ^ ch, 2654435761);
    a2 = Math.imul(a2 ^ ch, 1597334677);
    b1 = Math.imul(b1 ^ ch, 2654435761);
    b2 = Math.imul(b2 ^ ch, 1597334677);
  }
  a1 = Math.imul(a1 ^ (a1 >>> 16), 2246822507);
  a1 ^= Math.imul(a2 ^ (a2 >>> 13), 3266489909);
  a2 = Math.imul(a2 ^ (a2 >>> 16), 2246822507);
  a2 ^= Math.imul(a1 ^ (a1 >>> 13), 3266489909);
  b1 = Math.imul(b1 ^ (b1 >>> 16), 2246822507);
  b1 ^= Math.imul(b2 ^ (b2 >>> 13), 3266489909);
  b2 = Math.imul(b2 ^ (b2 >>> 16), 2246822507);
  b2 ^= Math.imul(b1 ^ (b1 >>> 13), 3266489909);
  return hex8(a1 >>> 0) + hex8(a2 >>> 0) + hex8(b1 >>> 0) + hex8(b2 >>> 0);
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
