// Configuration read and validated once per env object, never scattered `env.X ?? default`.
import { z } from 'zod';
import type { Env } from './env';

const ConfigSchema = z.object({
  clickhouse: z.object({
    url: z.string().url(),
    database: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/),
    username: z.string(),
    password: z.string(),
  }),
  adminToken: z.string().optional(),
  legacyDatasets: z.array(z.string().min(1)),
  sessionGapMs: z.number().int().positive(),
});

export type Config = z.infer<typeof ConfigSchema>;

export const DEFAULT_SESSION_GAP_MS = 30 * 60 * 1000;

const cache = new WeakMap<object, Config>();

export function getConfig(env: Env): Config {
  const hit = cache.get(env);
  if (hit) return hit;
  const config = ConfigSchema.parse({
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
    sessionGapMs: env.SESSION_GAP_MS ? Number(env.SESSION_GAP_MS) : DEFAULT_SESSION_GAP_MS,
  });
  cache.set(env, config);
  return config;
}
