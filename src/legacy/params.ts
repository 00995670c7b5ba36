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
    /** Rows per chunk (one keyset page). */
    chunkSize: z.number().int().min(1).max(50_000).default(5000),
    /** Yield between chunks so live reads keep their latency. */
    pauseMs: z.number().int().min(0).max(60_000).default(100),
  })
  .strict();

export type LegacyImportParams = z.infer<typeof LegacyImportParams>;
