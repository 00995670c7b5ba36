// The cron watchdog: re-kicks stalled jobs, lets held legacy events of completed datasets flow,
// re-drives parked dead letters once ClickHouse answers, forgets expired idempotency keys and
// erasure tombstones, and (hourly, when ARCHIVE_RAW_PAYLOADS is on) sweeps closed months into
// archive jobs, and recomputes fleet spans a failed recompute left pending.
import { maybeSweepArchives } from '../archive/sweep';
import { clickhouse } from '../clickhouse/client';
import { getConfig } from '../config';
import type { Env } from '../env';
import { pruneTombstones } from '../erasure/tombstones';
import { recomputeLeftPending } from '../fleet/recompute';
import { pruneIdempotencyKeys } from '../ingest/idempotency';
import { releasableDatasets } from '../legacy/datasets';
import { redriveDeadLetters, type RedriveResult } from '../pipeline/dead-letters';
import { releaseHeldEvents } from '../legacy/realtime';
import { rekickStalledJobs } from './engine';

export async function runWatchdog(env: Env, nowMs: number): Promise<{ rekicked: string[]; released: number; redriven: number; quarantined: number }> {
  const failures: string[] = [];
  const rekicked = await rekickStalledJobs(env, nowMs).catch((err: unknown) => {
    failures.push(`re-kick: ${String(err)}`);
    return [] as string[];
  });
  let released = 0;
  try {
    for (const key of await releasableDatasets(env.DB)) released += await releaseHeldEvents(env, key);
  } catch (err) {
    failures.push(`release held events: ${String(err)}`);
  }
  const redrive = await redriveDeadLetters(env, nowMs).catch((err: unknown): RedriveResult | null => {
    failures.push(`re-drive dead letters: ${String(err)}`);
    return null;
  });
  await pruneIdempotencyKeys(env.DB, nowMs).catch((err: unknown) => failures.push(`prune idempotency keys: ${String(err)}`));
  await pruneTombstones(env.DB, nowMs).catch((err: unknown) => failures.push(`prune erasure tombstones: ${String(err)}`));
  await maybeSweepArchives(env, nowMs).catch((err: unknown) => failures.push(`archive sweep: ${String(err)}`));
  await recomputeLeftPending(clickhouse(getConfig(env).clickhouse), env, nowMs).catch((err: unknown) => failures.push(`fleet recompute: ${String(err)}`));
  const redriven = redrive?.redriven ?? 0;
  const quarantined = redrive?.quarantined ?? 0;
  if (rekicked.length || released || redriven || quarantined) console.log(JSON.stringify({ msg: 'watchdog', rekicked, released, redriven, quarantined }));
  if (redrive?.failed) failures.push(`re-drive dead letters: ${redrive.failed} stayed parked`);
  // A failing watchdog must show up as a failed cron run, not vanish.
  if (failures.length) throw new Error(`watchdog: ${failures.join('; ')}`);
  return { rekicked, released, redriven, quarantined };
}
