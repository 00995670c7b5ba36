// Deterministic ids: a fast 128-bit content hash and UUIDv7s whose time part is the event time.

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const hex8 = (n: number) => HEX_BYTE[n >>> 24]! + HEX_BYTE[(n >>> 16) & 255]! + HEX_BYTE[(n >>> 8) & 255]! + HEX_BYTE[n & 255]!;

const M1 = 2654435761;
const M2 = 1597334677;

const HEX_CODE = Array.from('0123456789abcdef', (c) => c.charCodeAt(0));
/** Char codes of the 32 hex digits being written: one string made from them, not sixteen joined. */
const hexCodes: number[] = new Array<number>(32).fill(48);

function putHex8(n: number, at: number): void {
  for (let i = at + 7; i >= at; i--) {
    hexCodes[i] = HEX_CODE[n & 15]!;
    n >>>= 4;
  }
}

function finish128(a1: number, a2: number, b1: number, b2: number): string {
  a1 = Math.imul(a1 ^ (a1 >>> 16), 2246822507);
  a1 ^= Math.imul(a2 ^ (a2 >>> 13), 3266489909);
  a2 = Math.imul(a2 ^ (a2 >>> 16), 2246822507);
  a2 ^= Math.imul(a1 ^ (a1 >>> 13), 3266489909);
  b1 = Math.imul(b1 ^ (b1 >>> 16), 2246822507);
  b1 ^= Math.imul(b2 ^ (b2 >>> 13), 3266489909);
  b2 = Math.imul(b2 ^ (b2 >>> 16), 2246822507);
  b2 ^= Math.imul(b1 ^ (b1 >>> 13), 3266489909);
  putHex8(a1 >>> 0, 0);
  putHex8(a2 >>> 0, 8);
  putHex8(b1 >>> 0, 16);
  putHex8(b2 >>> 0, 24);
  return String.fromCharCode.apply(null, hexCodes);
}

/**
 * 128-bit non-cryptographic hash as 32 hex chars (dedup keys, id derivation; not for secrets): two
 * 64-bit lanes (seeds 0 and 0x9e3779b9) computed in one pass. Its output is part of stored ids and
 * must never change.
 */
export function hash128(str: string): string {
  return hash128Joined([str]);
}

/** Pieces of one text taken as one string: `text.slice(from, to)` for each [from, to] pair of `pieces`, joined. */
export interface TextPieces {
  text: string;
  pieces: readonly number[];
}

/**
 * `hash128(parts.join('\u0000'))`, without building the joined string (a per-event key made of a
 * few fields, one of them the event's whole properties text, which may be given as pieces of the
 * row's text it was cut from).
 */
export function hash128Joined(parts: ReadonlyArray<string | TextPieces>): string {
  const seed = 0x9e3779b9;
  let a1 = 0xdeadbeef;
  let a2 = 0x41c6ce57;
  let b1 = 0xdeadbeef ^ seed;
  let b2 = 0x41c6ce57 ^ seed;
  for (let p = 0; p < parts.length; p++) {
    if (p > 0) {
      // The separator, U+0000: x ^ 0 is x.
      a1 = Math.imul(a1, M1);
      a2 = Math.imul(a2, M2);
      b1 = Math.imul(b1, M1);
      b2 = Math.imul(b2, M2);
    }
    const part = parts[p]!;
    if (typeof part === 'string') {
      for (let i = 0; i < part.length; i++) {
        const ch = part.charCodeAt(i);
        a1 = Math.imul(a1 ^ ch, M1);
        a2 = Math.imul(a2 ^ ch, M2);
        b1 = Math.imul(b1 ^ ch, M1);
        b2 = Math.imul(b2 ^ ch, M2);
      }
      continue;
    }
    // The same loop over each piece of the text in turn (kept apart: the plain loop stays as tight).
    const { text, pieces } = part;
    for (let k = 0; k < pieces.length; k += 2) {
      const to = pieces[k + 1]!;
      for (let i = pieces[k]!; i < to; i++) {
        const ch = text.charCodeAt(i);
        a1 = Math.imul(a1 ^ ch, M1);
        a2 = Math.imul(a2 ^ ch, M2);
        b1 = Math.imul(b1 ^ ch, M1);
        b2 = Math.imul(b2 ^ ch, M2);
      }
    }
  }
  return finish128(a1, a2, b1, b2);
}

/** The RFC 9562 variant digit for a seed's 16th hex digit (its two low bits kept); '8' for a non-hex one, as parseInt's NaN gave. */
const VARIANT_DIGIT: Record<string, string> = {};
for (let d = 0; d < 16; d++) {
  const v = ((d & 0x3) | 0x8).toString(16);
  VARIANT_DIGIT[d.toString(16)] = v;
  VARIANT_DIGIT[d.toString(16).toUpperCase()] = v;
}

/**
 * A UUIDv7 whose 48-bit time is `timeMs` and whose remaining 74 bits come from `seedHex`
 * (32 hex chars), so the same (time, seed) always gives the same id.
 */
export function uuidv7At(timeMs: number, seedHex: string): string {
  const ms = Math.max(0, Math.min(Math.floor(timeMs), 2 ** 48 - 1));
  const high = Math.floor(ms / 65536);
  const low = ms % 65536;
  const s = seedHex.length >= 32 ? seedHex : seedHex.padEnd(32, '0');
  const variant = VARIANT_DIGIT[s[15]!] ?? '8';
  return `${hex8(high)}-${HEX_BYTE[low >>> 8]}${HEX_BYTE[low & 255]}-7${s.slice(0, 3)}-${variant}${s.slice(3, 6)}-${s.slice(6, 18)}`;
}

/** Milliseconds carried by a UUIDv7. */
export function uuidv7Time(id: string): number {
  return parseInt(id.replace(/-/g, '').slice(0, 12), 16);
}
