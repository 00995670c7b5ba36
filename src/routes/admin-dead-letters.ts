// GET /admin/dead-letters and POST /admin/dead-letters/replay — parked ingest messages back into the queue.
import { Hono } from 'hono';
import { requireAdmin, type AppEnv } from '../auth';
import type { IngestMessage } from '../pipeline/messages';
import { DEAD_LETTER_PREFIX } from '../pipeline/writer';

const REPLAY_PAGE = 100;

export async function countDeadLetters(bucket: R2Bucket): Promise<{ count: number; truncated: boolean }> {
  const listing = await bucket.list({ prefix: DEAD_LETTER_PREFIX, limit: 1000 });
  return { count: listing.objects.length, truncated: listing.truncated };
}

export const adminDeadLettersRoute = new Hono<AppEnv>()
  .get('/admin/dead-letters', requireAdmin, async (c) => c.json(await countDeadLetters(c.env.ARCHIVE)))
  .post('/admin/dead-letters/replay', requireAdmin, async (c) => {
    const listing = await c.env.ARCHIVE.list({ prefix: DEAD_LETTER_PREFIX, limit: REPLAY_PAGE });
    let replayed = 0;
    for (const obj of listing.objects) {
      const body = await c.env.ARCHIVE.get(obj.key);
      if (!body) continue;
      const message = (await body.json()) as IngestMessage;
      // Flagged as a redelivery: the writer skips rows ClickHouse already holds.
      await c.env.INGEST_QUEUE.send({ ...message, redelivery: true }, { contentType: 'json' });
      await c.env.ARCHIVE.delete(obj.key);
      replayed++;
    }
    return c.json({ replayed, remaining: listing.truncated });
  });
