// The cron watchdog: re-kicks stalled jobs and lets held legacy events of completed datasets flow.
import type { Env } from '../env';
import { completedDatasets } from '../legacy/datasets';
import { datasetsWithHeldEvents, releaseHeldEvents } from '../legacy/realtime';
import { rekickStalledJobs } from './engine';

export async function runWatchdog(env: Env, nowMs: number): Promise<{ rekicked: string[]; released: number }> {
  const failures: string[] = [];
  const rekicked = await rekickStalledJobs(env, nowMs).catch((err: unknown) => {
    failures.push(`re-kick: ${String(err)}`);
    return [] as string[];
  });
  let released = 0;
  try {
    const done = new Set(await completedDatasets(env.DB));
    for (const dataset of await datasetsWithHeldEvents(env.DB)) {
      if (done.has(dataset)) released += await releaseHeldEvents(env, dataset);
    }
  } catch (err) {
    failures.push(`release held events: ${String(err)}`);
  }
  if (rekicked.length || released) console.log(JSON.stringify({ msg: 'watchdog', rekicked, released }));
  // A failing watchdog must show up as a failed cron run, not vanish.
  if (failures.length) throw new Error(`watchdog: ${failures.join('; ')}`);
  return { rekicked, released };
}
