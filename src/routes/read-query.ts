// Query-string schema shared by the read routes.
import { z } from 'zod';

const Instant = z.union([
  z.string().regex(/^\d{1,15}$/).transform(Number),
  z.iso.datetime({ offset: true }).transform((s) => Date.parse(s)),
]);

export const DEFAULT_LOOKBACK_MS = 7 * 24 * 60 * 60 * 1000;

export const ReadQuery = z
  .object({
    deviceId: z.string().min(1).max(128).optional(),
    since: Instant.optional(),
    until: Instant.optional(),
    limit: z.coerce.number().int().min(1).max(1000).default(100),
  })
  .transform((q) => {
    const untilMs = q.until ?? Date.now() + 60_000;
    return { deviceId: q.deviceId, sinceMs: q.since ?? untilMs - DEFAULT_LOOKBACK_MS, untilMs, limit: q.limit };
  })
  .refine((q) => q.sinceMs <= q.untilMs, { message: 'since must not be after until' });
