// The legacy_import job's parameters: the wire schema is the type. Names that reach SQL are
// plain identifiers (and are still quoted as identifiers when they do).
import { z } from 'zod';

export const SQL_IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const Identifier = z.string().regex(SQL_IDENTIFIER, 'must be a plain SQL identifier (letters, digits, underscore)');

export const LegacySource = z
  .object({
    table: Identifier,
    key: Identifier,
    createdAt: Identifier,
    deviceId: Identifier,
    name: z.string().trim().min(1).max(200),
  })
  .strict();

export const LegacyImportParams = z
  .object({
    type: z.literal('legacy_import'),
    projectId: z.string().min(1).max(128),
    dataset: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 letters, digits, - or _'),
    source: LegacySource,
    /**
     * Rows per chunk (one commit of progress): the most a chunk takes while the import throttles
     * itself, exactly that with `throttle: false`. Defaults in `pacing`.
     */
    chunkSize: z.number().int().min(1).max(50_000).optional(),
    /** The pause between chunks with `throttle: false`; while throttling, the longest rest it may take. Defaults in `pacing`. */
    pauseMs: z.number().int().min(0).max(60_000).optional(),
    /**
     * The import paces itself on the read latency it causes (on by default); off, it runs chunks of
     * exactly `chunkSize` with `pauseMs` between them (a maintenance window, or hand tuning).
     */
    throttle: z.boolean().default(true),
  })
  .strict();

export type LegacyImportParams = z.infer<typeof LegacyImportParams>;

/** An import at a fixed pace: chunks of this many rows, this pause between them, unless given. */
export const FIXED_CHUNK_SIZE = 5000;
export const FIXED_PAUSE_MS = 100;
/**
 * A self-throttling import's bounds unless given: chunks as large as allowed (a chunk's overhead is
 * paid once; its steps and rests are what readers feel), rests of up to a second.
 */
export const THROTTLED_CHUNK_SIZE = 50_000;
export const THROTTLED_MAX_PAUSE_MS = 1000;

/** The chunk size and pause an import runs with: the operator's, or its mode's defaults. */
export function pacing(p: LegacyImportParams): { chunkSize: number; pauseMs: number } {
  return p.throttle
    ? { chunkSize: p.chunkSize ?? THROTTLED_CHUNK_SIZE, pauseMs: p.pauseMs ?? THROTTLED_MAX_PAUSE_MS }
    : { chunkSize: p.chunkSize ?? FIXED_CHUNK_SIZE, pauseMs: p.pauseMs ?? FIXED_PAUSE_MS };
}
