// GET /admin/dead-letters and POST /admin/dead-letters/replay — parked ingest messages back into the queue.
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { ApiError } from '../errors';
import { deadLetterStats, listQuarantine, redriveDeadLetters, type DeadLetterStats as DeadLetterStatsView, type QuarantinedLetter as QuarantinedLetterView } from '../pipeline/dead-letters';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, errors, json, router } from './openapi';

const REPLAY_PAGE = 100;

const DeadLetterStats = z
  .object({
    parked: z.number().describe('messages parked and waiting for a re-drive'),
    oldestAgeSec: z.number().nullable().describe('seconds since the oldest of them was parked; null when none waits'),
    quarantined: z.number().describe('parked messages that could not be re-driven; they wait for an operator'),
    truncated: z.boolean().describe('more than 10 000 objects under a prefix: the counts are lower bounds'),
  })
  .openapi('DeadLetterStats') satisfies z.ZodType<DeadLetterStatsView>;

const QuarantinedLetter = z.object({
  key: z.string(),
  parkedKey: z.string().nullable(),
  reason: z.string().nullable(),
  quarantinedAt: z.string().nullable(),
  size: z.number(),
}) satisfies z.ZodType<QuarantinedLetterView>;

const list = createRoute({
  method: 'get',
  path: '/admin/dead-letters',
  summary: 'Parked and quarantined ingest messages',
  tags: ['operations'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  responses: {
    200: json(DeadLetterStats.extend({ count: z.number().describe('the same as `parked`'), quarantine: z.array(QuarantinedLetter).describe('the first 100') }), 'the dead letters'),
    ...errors(401, { 503: ADMIN_DISABLED }),
  },
});

const replay = createRoute({
  method: 'post',
  path: '/admin/dead-letters/replay',
  summary: 'Re-drive up to 100 parked messages into the ingest queue now',
  description: 'The cron does this by itself once ClickHouse answers.',
  tags: ['operations'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  responses: {
    200: json(
      z.object({ replayed: z.number(), quarantined: z.number(), failed: z.number().describe('stay parked for the next run'), remaining: z.boolean().describe('more parked messages than this run took') }),
      'what this run did',
    ),
    ...errors(401, { 409: '`redrive_in_progress`: another re-drive is running; see Retry-After' }, { 503: ADMIN_DISABLED }),
  },
});

export const adminDeadLettersRoute = router()
  .openapi(list, async (c) => {
    const [stats, quarantine] = await Promise.all([deadLetterStats(c.env.ARCHIVE, Date.now()), listQuarantine(c.env.ARCHIVE)]);
    // `count` is `parked` under its first name.
    return c.json({ count: stats.parked, ...stats, quarantine }, 200);
  })
  .openapi(replay, async (c) => {
    // The cron does this by itself once ClickHouse answers; an operator may do it at any time.
    const r = await redriveDeadLetters(c.env, Date.now(), { maxObjects: REPLAY_PAGE, requireClickHouse: false });
    if (r.skipped === 'busy') {
      throw new ApiError(409, 'redrive_in_progress', 'another re-drive (the cron, or another replay) is running; retry shortly', { retryable: true }, { 'Retry-After': '5' });
    }
    return c.json({ replayed: r.redriven, quarantined: r.quarantined, failed: r.failed, remaining: r.remaining }, 200);
  });
