// Deterministic ids: a fast 128-bit content hash and UUIDv7s whose time part is the event time.

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const hex8 = (n: number) => HEX_BYTE[n >>> 24]! + HEX_BYTE[(n >>> 16) & 255]! + HEX_BYTE[(n >>> 8) & 255]! + HEX_BYTE[n & 255]!;

const M1 = 2654435761;
const M2 = 1597334677;

const HEX_CODE = Array.from('0123456789abcdef', (c) => c.charCodeAt(0));
/** Char codes of the 32 hex digits being written: one string made from them, not sixteen joined. */
const hexCodes: number[] = new Array<number>(32).fill(48);


/** The four 32-bit words of the last hash absorbed (absorb), then mixed (mix128): one hash at a time. */
const words = new Int32Array(4);

/** The final avalanche of the four lanes, in place. */
function mix128(): void {
  let a1 = words[0]!;
  let a2 = words[1]!;
  let b1 = words[2]!;
  let b2 = words[3]!;
  a1 = Math.imul(a1 ^ (a1 >>> 16), 2246822507);
  a1 ^= Math.imul(a2 ^ (a2 >>> 13), 3266489909);
  a2 = Math.imul(a2 ^ (a2 >>> 16), 2246822507);
  a2 ^= Math.imul(a1 ^ (a1 >>> 13), 3266489909);
  b1 = Math.imul(b1 ^ (b1 >>> 16), 2246822507);
  b1 ^= Math.imul(b2 ^ (b2 >>> 13), 3266489909);
  b2 = Math.imul(b2 ^ (b2 >>> 16), 2246822507);
  b2 ^= Math.imul(b1 ^ (b1 >>> 13), 3266489909);
  words[0] = a1;
  words[1] = a2;
  words[2] = b1;
  words[3] = b2;
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
  absorb(parts);
  mix128();
  putHex(hexCodes, words[0]! >>> 0, 0, 8);
  putHex(hexCodes, words[1]! >>> 0, 8, 8);
  putHex(hexCodes, words[2]! >>> 0, 16, 8);
  putHex(hexCodes, words[3]! >>> 0, 24, 8);
  return String.fromCharCode.apply(null, hexCodes);
}

/** The lanes of the U+0000-joined parts, into `words` (before the final mix). */
function absorb(parts: ReadonlyArray<string | TextPieces>): void {
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
  words[0] = a1;
  words[1] = a2;
  words[2] = b1;
  words[3] = b2;
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

/** Char codes of a UUID being written (see uuidv7OfParts). */
const uuidCodes: number[] = new Array<number>(36).fill(45);
uuidCodes[14] = 55; // '7'

/** Writes the `count` low hex digits of `n` at `at`. */
function putHex(codes: number[], n: number, at: number, count: number): void {
  for (let i = at + count - 1; i >= at; i--) {
    codes[i] = HEX_CODE[n & 15]!;
    n >>>= 4;
  }
}

/**
 * `uuidv7At(timeMs, hash128Joined(parts))`, written straight from the hash's words: no 32-digit
 * text to cut up (an event's id, once per event).
 */
export function uuidv7OfParts(timeMs: number, parts: ReadonlyArray<string | TextPieces>): string {
  absorb(parts);
  mix128();
  const ms = Math.max(0, Math.min(Math.floor(timeMs), 2 ** 48 - 1));
  const a1 = words[0]! >>> 0;
  const a2 = words[1]! >>> 0;
  const b1 = words[2]! >>> 0;
  putHex(uuidCodes, Math.floor(ms / 65536), 0, 8);
  putHex(uuidCodes, ms % 65536, 9, 4);
  // The seed's digits 0–2, then the variant from digit 15 and digits 3–5, then digits 6–17.
  putHex(uuidCodes, a1 >>> 20, 15, 3);
  uuidCodes[19] = HEX_CODE[(a2 & 3) | 8]!;
  putHex(uuidCodes, (a1 >>> 8) & 0xfff, 20, 3);
  putHex(uuidCodes, a1 & 0xff, 24, 2);
  putHex(uuidCodes, a2, 26, 8);
  putHex(uuidCodes, b1 >>> 24, 34, 2);
  return String.fromCharCode.apply(null, uuidCodes);
}

/** Milliseconds carried by a UUIDv7. */
export function uuidv7Time(id: string): number {
  return parseInt(id.replace(/-/g, '').slice(0, 12), 16);
}
