// GET /healthz (public) and GET /admin/health (operators): failures are reported, never swallowed.
import { asc, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { z } from 'zod';
import { requireAdmin } from '../auth';
import { clickhouse } from '../clickhouse/client';
import { ConfigError, getConfig } from '../config';
import { stalledOutboxes } from '../db/schema';
import type { Env } from '../env';
import { jobsHealth } from '../jobs/health';
import { deadLetterStats } from '../pipeline/dead-letters';
import { trackerRejections } from '../trackers/rejections';
import { Job } from './admin-backfills';
import { ADMIN_DISABLED, ADMIN_SECURITY, createRoute, ErrorEnvelope, errors, json, router } from './openapi';

/**
 * A device outbox that has not reached the ingest queue for this long makes `/admin/health` not ok.
 * Shorter stalls are shown but are no alarm: the object's back-off (1 s doubling) rides out a
 * queue hiccup by itself within a few minutes.
 */
export const STALLED_OUTBOX_ALERT_SEC = 5 * 60;
/** Stalled outboxes listed by name (the oldest first); the counts cover all of them. */
const STALLED_LISTED = 10;

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

/**
 * ClickHouse as it is, whatever else is misconfigured: only invalid ClickHouse settings leave
 * nothing to reach ('down'). Other invalid settings are left at their defaults for the ping.
 */
async function clickhouseStatusDespite(env: Env, invalid: readonly string[]): Promise<'ok' | 'down'> {
  if (invalid.some((s) => /^clickhouse/i.test(s))) return 'down';
  if (!invalid.length) return clickhouseStatus(env);
  const withDefaults = { ...env, ...Object.fromEntries(invalid.map((s) => [s, undefined])) } as Env;
  return clickhouseStatus(withDefaults).catch(() => 'down' as const);
}

export interface StalledOutbox {
  projectId: string;
  deviceId: string;
  pendingRows: number;
  since: string;
  failures: number;
  lastError: string;
  updatedAt: string;
}

export interface IngestBacklog {
  /** Device objects whose outbox flush to the ingest queue fails (reported by each object). */
  stalledDevices: number;
  /** Events (and session rows) waiting in those outboxes, as of each one's last attempt. */
  pendingRows: number;
  /** Since when the oldest stall has lasted; null when none. */
  oldestStalledAgeSec: number | null;
  stalled: StalledOutbox[];
}

async function ingestBacklog(d1: D1Database, nowMs: number): Promise<IngestBacklog> {
  const db = drizzle(d1);
  try {
    const [totals, oldest] = await Promise.all([
      db
        .select({
          devices: sql<number>`count(*)`,
          rows: sql<number>`coalesce(sum(${stalledOutboxes.pendingRows}), 0)`,
          since: sql<number | null>`min(${stalledOutboxes.since})`,
        })
        .from(stalledOutboxes)
        .get(),
      db.select().from(stalledOutboxes).orderBy(asc(stalledOutboxes.since)).limit(STALLED_LISTED).all(),
    ]);
    const since = totals?.since ?? null;
    return {
      stalledDevices: totals?.devices ?? 0,
      pendingRows: totals?.rows ?? 0,
      oldestStalledAgeSec: since === null ? null : Math.max(0, Math.floor((nowMs - since) / 1000)),
      stalled: oldest.map((s) => ({
        projectId: s.projectId,
        deviceId: s.deviceId,
        pendingRows: s.pendingRows,
        since: new Date(s.since).toISOString(),
        failures: s.failures,
        lastError: s.lastError,
        updatedAt: new Date(s.updatedAt).toISOString(),
      })),
    };
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new Error(`cannot read stalled outboxes from D1: ${cause}`);
  }
}

const ClickHouseStatus = z.enum(['ok', 'down']);
const Healthz = z.object({ ok: z.boolean(), clickhouse: ClickHouseStatus }).openapi('Healthz');

const StalledOutbox = z.object({
  projectId: z.string(),
  deviceId: z.string(),
  pendingRows: z.number(),
  since: z.string(),
  failures: z.number(),
  lastError: z.string(),
  updatedAt: z.string(),
}) satisfies z.ZodType<StalledOutbox>;

// A part the report could not read shows its fields as null, and its reason in `errors`.
const AdminHealth = z
  .object({
    ok: z.boolean().describe('ClickHouse answers and `errors` is empty'),
    clickhouse: ClickHouseStatus,
    jobs: z.object({ running: z.array(Job).nullable(), failed: z.array(Job).nullable().describe('the latest 20') }),
    ingest: z.object({
      deadLetters: z.number().nullable().describe('parked ingest messages'),
      deadLettersTruncated: z.boolean().nullable(),
      stalledDevices: z.number().nullable().describe('device objects whose outbox cannot reach the ingest queue'),
      pendingRows: z.number().nullable().describe('rows waiting in those outboxes'),
      oldestStalledAgeSec: z.number().nullable(),
      stalled: z.array(StalledOutbox).nullable().describe('the oldest 10'),
    }),
    deadLetters: z.object({ parked: z.number().nullable(), oldestAgeSec: z.number().nullable(), quarantined: z.number().nullable(), truncated: z.boolean().nullable() }),
    trackers: z.object({
      rejectedRows: z.number().nullable().describe('tracker-app rows rejected for good (the apps were told "ok")'),
      recent: z.array(z.object({ projectId: z.string(), source: z.string(), count: z.number(), lastReason: z.string(), lastError: z.string(), lastAt: z.string() })).nullable(),
    }),
    misconfigured: z.array(z.string()).optional().describe('invalid settings, by name'),
    errors: z.array(z.string()).optional().describe('what makes the gateway not ok, including parts that could not be read'),
  })
  .openapi('AdminHealth');

const healthz = createRoute({
  method: 'get',
  path: '/healthz',
  summary: 'Liveness: whether ClickHouse answers',
  tags: ['operations'],
  responses: {
    200: json(Healthz, 'ClickHouse answers'),
    503: json(z.union([Healthz, ErrorEnvelope]), 'ClickHouse is down (the report), or `misconfigured` (the error envelope; Retry-After)'),
    ...errors({ 500: '`internal`: a fault of the gateway' }),
  },
});

const adminHealth = createRoute({
  method: 'get',
  path: '/admin/health',
  summary: 'Health for operators: ClickHouse, jobs, ingest backlog, dead letters, tracker rejections',
  description: 'A part that cannot be read is reported in `errors` and makes the report not ok; it is never left out silently.',
  tags: ['operations'],
  security: ADMIN_SECURITY,
  middleware: [requireAdmin] as const,
  responses: {
    200: json(AdminHealth, 'all is well'),
    ...errors(401),
    503: json(z.union([AdminHealth, ErrorEnvelope]), `not ok (the report says why), or ${ADMIN_DISABLED} (the error envelope)`),
  },
});

export const healthRoute = router()
  .openapi(healthz, async (c) => {
    const status = await clickhouseStatus(c.env);
    const report = { ok: status === 'ok', clickhouse: status };
    return report.ok ? c.json(report, 200) : c.json(report, 503);
  })
  .openapi(adminHealth, async (c) => {
    const errors: string[] = [];
    const now = Date.now();
    const invalid = misconfigured(c.env);
    if (invalid.length) errors.push(`misconfigured: invalid settings ${invalid.join(', ')}`);
    const [status, deadLetters, jobs, backlog, trackers] = await Promise.all([
      clickhouseStatusDespite(c.env, invalid),
      deadLetterStats(c.env.ARCHIVE, now).catch((err: unknown) => {
        errors.push(`dead letters: ${String(err)}`);
        return null;
      }),
      jobsHealth(c.env).catch((err: unknown) => {
        errors.push(`jobs: ${String(err)}`);
        return null;
      }),
      ingestBacklog(c.env.DB, now).catch((err: unknown) => {
        errors.push(`ingest backlog: ${String(err)}`);
        return null;
      }),
      trackerRejections(c.env.DB).catch((err: unknown) => {
        errors.push(`trackers: ${String(err)}`);
        return null;
      }),
    ]);
    // Quarantined dead letters never go back by themselves: an operator must act.
    if (deadLetters?.quarantined) {
      errors.push(`dead letters: ${deadLetters.quarantined} quarantined message(s) wait for an operator (GET /admin/dead-letters)`);
    }
    if (backlog && (backlog.oldestStalledAgeSec ?? 0) >= STALLED_OUTBOX_ALERT_SEC) {
      const oldest = backlog.stalled[0];
      errors.push(
        `ingest: ${backlog.stalledDevices} device outbox(es) cannot reach the ingest queue (${backlog.pendingRows} rows wait), the oldest for ${backlog.oldestStalledAgeSec} s${oldest ? `: ${oldest.lastError}` : ''}`,
      );
    }
    const ok = status === 'ok' && errors.length === 0;
    const report = {
      ok,
      clickhouse: status,
      jobs: jobs ?? { running: null, failed: null },
      ingest: {
        deadLetters: deadLetters?.parked ?? null,
        deadLettersTruncated: deadLetters?.truncated ?? null,
        ...(backlog ?? { stalledDevices: null, pendingRows: null, oldestStalledAgeSec: null, stalled: null }),
      },
      // Parked messages wait for the cron's re-drive; quarantined ones for an operator.
      deadLetters: deadLetters ?? { parked: null, oldestAgeSec: null, quarantined: null, truncated: null },
      // Tracker-app rows rejected for good: the apps were told "ok", so they show only here.
      trackers: trackers ?? { rejectedRows: null, recent: null },
      ...(invalid.length ? { misconfigured: invalid } : {}),
      ...(errors.length ? { errors } : {}),
    };
    return ok ? c.json(report, 200) : c.json(report, 503);
  });
