// Partition-pruning bounds for `created_at` (a DateTime: unsigned 32-bit seconds) from ms times.

const MAX_DATETIME_SEC = 4_294_967_295;

/**
 * `[fromSec, toSec]` covering event times `[fromMs, toMs]`. A time before 1970 or after 2106 wraps
 * in a DateTime, so a range that reaches one spans every second instead: never a missed row.
 */
export function dateTimeBounds(fromMs: number, toMs: number): { fromSec: number; toSec: number } {
  if (fromMs < 0 || toMs / 1000 > MAX_DATETIME_SEC) return { fromSec: 0, toSec: MAX_DATETIME_SEC };
  return { fromSec: Math.floor(fromMs / 1000), toSec: Math.ceil(toMs / 1000) };
}
