// GET /healthz (public) and GET /admin/health (operators): failures are reported, never swallowed.
import { Hono } from 'hono';
import { requireAdmin, type AppEnv } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import { jobsHealth } from '../jobs/health';
import { countDeadLetters } from './admin-dead-letters';

async function clickhouseStatus(env: Env): Promise<'ok' | 'down'> {
  try {
    return (await clickhouse(getConfig(env).clickhouse, { timeoutMs: 2000 }).ping()) ? 'ok' : 'down';
  } catch {
    return 'down';
  }
}

export const healthRoute = new Hono<AppEnv>()
  .get('/healthz', async (c) => {
    const status = await clickhouseStatus(c.env);
    const ok = status === 'ok';
    return c.json({ ok, clickhouse: status }, ok ? 200 : 503);
  })
  .get('/admin/health', requireAdmin, async (c) => {
    const status = await clickhouseStatus(c.env);
    const errors: string[] = [];
    const deadLetters = await countDeadLetters(c.env.ARCHIVE).catch((err: unknown) => {
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
        ingest: { deadLetters: deadLetters?.count ?? null, deadLettersTruncated: deadLetters?.truncated ?? null },
        ...(errors.length ? { errors } : {}),
      },
      ok ? 200 : 503,
    );
  });
