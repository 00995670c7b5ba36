// Configuration read and validated once per env object, never scattered `env.X ?? default`.
import { z } from 'zod';
import { DEFAULT_ARCHIVE_CHUNK_ROWS } from './archive/chunk';
import { DEFAULT_ARCHIVE_LAG_MONTHS } from './archive/month';
import type { Env } from './env';
import { DEFAULT_FLEET_RULES, type FleetRules } from './fleet/rules';

const ConfigSchema = z.object({
  clickhouse: z.object({
    url: z.string().url(),
    database: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/),
    username: z.string(),
    password: z.string(),
  }),
  adminToken: z.string().optional(),
  legacyDatasets: z.array(z.string().min(1)),
  /** Realtime events held per (project, dataset) while its initial import runs; more are refused, retryable. */
  legacyMaxHeld: z.number().int().positive(),
  sessionGapMs: z.number().int().positive(),
  /** How long an isolate trusts a client it checked: a revoked client may still pass this long. */
  clientCacheMs: z.number().int().min(0).max(300_000),
  fleet: z.object({
    /** A vehicle whose newest fix is older than this is `offline` (seconds). */
    offlineAfterS: z.number().int().min(1).max(30 * 24 * 3600),
  }),
  archive: z.object({
    /** The Cron sweep archives closed months by itself; the admin routes work either way. */
    rawPayloads: z.boolean(),
    /** Whole months a month must lie behind the current one before the sweep archives it. */
    lagMonths: z.number().int().min(0).max(1200),
    /** Rows per chunk (one R2 object). */
    chunkRows: z.number().int().min(1).max(1_000_000),
  }),
});

export type Config = z.infer<typeof ConfigSchema>;

/** A setting of the deployment is invalid: the operator's fault, never the client's. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(readonly settings: string[], detail: string) {
    super(`invalid settings: ${settings.join(', ')} (${detail})`);
  }
}

/** The environment variable behind each config path, for messages an operator can act on. */
const SETTING_NAMES: Record<string, string> = {
  'clickhouse.url': 'CLICKHOUSE_URL',
  'clickhouse.database': 'CLICKHOUSE_DATABASE',
  'clickhouse.username': 'CLICKHOUSE_USER',
  'clickhouse.password': 'CLICKHOUSE_PASSWORD',
  adminToken: 'ADMIN_TOKEN',
  legacyDatasets: 'LEGACY_DATASETS',
  legacyMaxHeld: 'LEGACY_MAX_HELD',
  sessionGapMs: 'SESSION_GAP_MS',
  clientCacheMs: 'CLIENT_CACHE_SEC',
  'fleet.offlineAfterS': 'FLEET_OFFLINE_AFTER_S',
  'archive.rawPayloads': 'ARCHIVE_RAW_PAYLOADS',
  'archive.lagMonths': 'ARCHIVE_LAG_MONTHS',
  'archive.chunkRows': 'ARCHIVE_CHUNK_ROWS',
};

export const DEFAULT_SESSION_GAP_MS = 30 * 60 * 1000;
export const DEFAULT_LEGACY_MAX_HELD = 100_000;

/** `true`/`false` (any case), empty or unset → the default; anything else is left for zod to refuse. */
function flag(value: string | undefined, fallback: boolean): unknown {
  if (value === undefined || value.trim() === '') return fallback;
  const v = value.trim().toLowerCase();
  return v === 'true' ? true : v === 'false' ? false : value;
}

export const DEFAULT_CLIENT_CACHE_SEC = 30;

const cache = new WeakMap<object, Config>();

export function getConfig(env: Env): Config {
  const hit = cache.get(env);
  if (hit) return hit;
  const parsed = ConfigSchema.safeParse({
    clickhouse: {
      url: env.CLICKHOUSE_URL,
      database: env.CLICKHOUSE_DATABASE || 'driftline',
      username: env.CLICKHOUSE_USER || 'default',
      password: env.CLICKHOUSE_PASSWORD || '',
    },
    adminToken: env.ADMIN_TOKEN || undefined,
    legacyDatasets: (env.LEGACY_DATASETS ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    legacyMaxHeld: env.LEGACY_MAX_HELD ? Number(env.LEGACY_MAX_HELD) : DEFAULT_LEGACY_MAX_HELD,
    sessionGapMs: env.SESSION_GAP_MS ? Number(env.SESSION_GAP_MS) : DEFAULT_SESSION_GAP_MS,
    clientCacheMs: (env.CLIENT_CACHE_SEC ? Number(env.CLIENT_CACHE_SEC) : DEFAULT_CLIENT_CACHE_SEC) * 1000,
    fleet: { offlineAfterS: env.FLEET_OFFLINE_AFTER_S ? Number(env.FLEET_OFFLINE_AFTER_S) : DEFAULT_FLEET_RULES.offlineAfterS },
    archive: {
      rawPayloads: flag(env.ARCHIVE_RAW_PAYLOADS, false),
      lagMonths: env.ARCHIVE_LAG_MONTHS ? Number(env.ARCHIVE_LAG_MONTHS) : DEFAULT_ARCHIVE_LAG_MONTHS,
      chunkRows: env.ARCHIVE_CHUNK_ROWS ? Number(env.ARCHIVE_CHUNK_ROWS) : DEFAULT_ARCHIVE_CHUNK_ROWS,
    },
  });
  if (!parsed.success) {
    const paths = [...new Set(parsed.error.issues.map((i) => i.path.map(String).join('.')))];
    const names = paths.map((p) => SETTING_NAMES[p] ?? SETTING_NAMES[p.split('.')[0]!] ?? p);
    throw new ConfigError(names, parsed.error.issues.map((i) => i.message).join('; '));
  }
  const config = parsed.data;
  cache.set(env, config);
  return config;
}

/** The fleet rules as the read routes apply them: the defaults, with the deployment's offline delay. */
export function fleetReadRules(env: Env): FleetRules {
  return { ...DEFAULT_FLEET_RULES, offlineAfterS: getConfig(env).fleet.offlineAfterS };
}
