// GET /admin/dead-letters and POST /admin/dead-letters/replay — parked ingest messages back into the queue.
import { Hono } from 'hono';
import { requireAdmin, type AppEnv } from '../auth';
import { ApiError } from '../errors';
import { deadLetterStats, listQuarantine, redriveDeadLetters } from '../pipeline/dead-letters';

const REPLAY_PAGE = 100;

export const adminDeadLettersRoute = new Hono<AppEnv>()
  .get('/admin/dead-letters', requireAdmin, async (c) => {
    const [stats, quarantine] = await Promise.all([deadLetterStats(c.env.ARCHIVE, Date.now()), listQuarantine(c.env.ARCHIVE)]);
    // `count` is `parked` under its first name.
    return c.json({ count: stats.parked, ...stats, quarantine });
  })
  .post('/admin/dead-letters/replay', requireAdmin, async (c) => {
    // The cron does this by itself once ClickHouse answers; an operator may do it at any time.
    const r = await redriveDeadLetters(c.env, Date.now(), { maxObjects: REPLAY_PAGE, requireClickHouse: false });
    if (r.skipped === 'busy') {
      throw new ApiError(409, 'redrive_in_progress', 'another re-drive (the cron, or another replay) is running; retry shortly', { retryable: true }, { 'Retry-After': '5' });
    }
    return c.json({ replayed: r.redriven, quarantined: r.quarantined, failed: r.failed, remaining: r.remaining });
  });
