// GET /healthz (public) and GET /admin/health (operators): failures are reported, never swallowed.
import { Hono } from 'hono';
import { requireAdmin, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { ConfigError, getConfig } from '../config';
import type { Env } from '../env';
import { jobsHealth } from '../jobs/health';
import { deadLetterStats } from '../pipeline/dead-letters';

async function clickhouseStatus(env: Env): Promise<'ok' | 'down'> {
  try {
    return (await clickhouse(getConfig(env).clickhouse, { timeoutMs: 2000 }).ping()) ? 'ok' : 'down';
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    return 'down';
  }
}

/** The settings that are invalid, for operators (clients only ever see 503 `misconfigured`). */
function misconfigured(env: Env): string[] {
  try {
    getConfig(env);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.settings;
    throw err;
  }
}

export const healthRoute = new Hono<AppEnv>()
  .get('/healthz', async (c) => {
    const status = await clickhouseStatus(c.env);
    const ok = status === 'ok';
    return c.json({ ok, clickhouse: status }, ok ? 200 : 503);
  })
  .get('/admin/health', requireAdmin, async (c) => {
    const errors: string[] = [];
    const invalid = misconfigured(c.env);
    if (invalid.length) errors.push(`misconfigured: invalid settings ${invalid.join(', ')}`);
    const status = invalid.length ? 'down' : await clickhouseStatus(c.env);
    const deadLetters = await deadLetterStats(c.env.ARCHIVE, Date.now()).catch((err: unknown) => {
      errors.push(`dead letters: ${String(err)}`);
      return null;
    });
    const jobs = await jobsHealth(c.env).catch((err: unknown) => {
      errors.push(`jobs: ${String(err)}`);
      return null;
    });
    const ok = status === 'ok' && errors.length === 0;
    return c.json(
      {
        ok,
        clickhouse: status,
        jobs: jobs ?? { running: null, failed: null },
        ingest: { deadLetters: deadLetters?.parked ?? null, deadLettersTruncated: deadLetters?.truncated ?? null },
        // Parked messages wait for the cron's re-drive; quarantined ones for an operator.
        deadLetters: deadLetters ?? { parked: null, oldestAgeSec: null, quarantined: null, truncated: null },
        ...(invalid.length ? { misconfigured: invalid } : {}),
        ...(errors.length ? { errors } : {}),
      },
      ok ? 200 : 503,
    );
  });
