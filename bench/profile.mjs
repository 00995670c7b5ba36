// Where a device call's cost goes: the route's work per call, then inside the object (statements,
// rows written, transactions, alarms, queue messages, time per stage), for the default mix (2000-event
// batches over 100 of 1000 devices) and for one device per batch. Runs the real DeviceObject in workerd.
import { printCost, queueOperationsPerMessage } from './lib/cost.mjs';
import { startDeviceProfile } from './lib/device-profile.mjs';
import { selfTimeByFunction, startInspectorProfile } from './lib/inspector-profile.mjs';
import { result } from './lib/results.mjs';

const BATCHES = Number(process.env.BENCH_PROFILE_BATCHES ?? 4);
// 100 devices per batch as in the default mix, each called once per run as there; a smaller fleet
// than its 1000 keeps the run short (the local queue broker, not the objects, sets its pace).
const FLEET = BATCHES * 100;

const fmt = (n, d = 1) => n.toFixed(d);

function report(label, p) {
  const perCall = (n) => n / p.calls;
  const events = p.events;
  console.log(`\n${label}: ${p.calls} device calls, ${events} events (${fmt(events / p.calls, 0)} per call)`);
  const r = p.route;
  console.log(`  route, per call:   normalise ${fmt((r.normalizeMs * 1000) / r.calls, 0)} µs, rows + ids ${fmt((r.rowMs * 1000) / r.calls, 0)} µs, pack ${fmt((r.packMs * 1000) / r.calls, 0)} µs, RPC wait ${fmt(r.rpcMs / r.calls * 1000 / 1, 0)} µs (16 in flight)`);
  console.log(`  workerd CPU (route, object, alarm, local queue and bench consumer): ${fmt((p.workerdCpuSec * 1e6) / events, 0)} µs/event = ${fmt((p.workerdCpuSec * 1e6) / p.calls, 0)} µs per call; objects constructed: ${p.constructed}`);
  console.log(`  object, per call:  ${fmt(perCall(p.statements))} SQL statements, ${fmt(perCall(p.rowsWritten))} rows written, ${fmt(perCall(p.rowsRead))} rows read, ${fmt(perCall(p.transactions))} transactions,`);
  console.log(`                     ${fmt(perCall(p.alarms), 2)} alarm runs, ${fmt(perCall(p.alarmSets), 2)} setAlarm + ${fmt(perCall(p.alarmGets), 2)} getAlarm, ${fmt(p.consumed.messages / p.calls, 2)} queue messages (${fmt(p.consumed.bytes / p.consumed.messages / 1024)} KB each)`);
  console.log(`                     ${fmt((p.objectMs * 1000) / p.calls, 0)} µs of the object's time (ingest ${fmt((p.ingestMs * 1000) / p.calls, 0)} µs, alarm and flush the rest) (+ ${fmt((p.sendMs * 1000) / p.calls, 0)} µs waiting on the local queue)`);
  console.log(`  stage                          µs/call  statements/call  rows written/call`);
  for (const [name, s] of Object.entries(p.stages).sort((a, b) => b[1].ms - a[1].ms)) {
    console.log(`  ${name.padEnd(30)} ${fmt((s.ms * 1000) / p.calls, 0).padStart(7)}  ${fmt(s.statements / p.calls, 2).padStart(15)}  ${fmt(s.rowsWritten / p.calls, 2).padStart(17)}`);
  }
}

// BENCH_PROFILE_CPU=<file>: a CPU profile of the isolates (DevTools protocol) around the warm default mix.
const inspectorPort = process.env.BENCH_PROFILE_CPU ? 9300 + Math.floor(Math.random() * 500) : undefined;
const profile = await startDeviceProfile({ inspectorPort });
try {
  // Every device once, so no table creation or first load is in the figures.
  await profile.run({ batches: BATCHES, devicesPerBatch: 100, fleet: FLEET });
  if (process.env.BENCH_PROFILE_STATEMENTS) await profile.byQuery(true);
  const recording = inspectorPort ? await startInspectorProfile(inspectorPort) : null;
  const warm = await profile.run({ batches: BATCHES, devicesPerBatch: 100, fleet: FLEET });
  if (process.env.BENCH_PROFILE_STATEMENTS) {
    const q = await profile.byQuery(false);
    console.log('  statements of the warm default mix, time per run (its rows read included), runs:');
    for (const [k, v] of Object.entries(q).sort((a, b) => b[1].ms - a[1].ms).slice(0, 20)) console.log(`  ${(v.ms * 1000 / v.n).toFixed(1).padStart(7)} µs × ${v.n}  ${k}`);
  }
  if (recording) {
    for (const [i, p] of (await recording.stop(process.env.BENCH_PROFILE_CPU)).entries()) {
      const { total, rows } = selfTimeByFunction(p);
      console.log(`  CPU profile of ${recording.targets[i]} (warm default mix), ${total} samples, self time:`);
      for (const [fn, n] of rows) console.log(`    ${((100 * n) / total).toFixed(1).padStart(5)}%  ${fn}`);
    }
  }
  report(`default mix (2000-event batches over 100 of ${FLEET} devices), objects still in memory`, warm);
  // Floors in the same run: the local queue alone (the same messages through the same broker and
  // consumer) and the device calls' RPC alone (objects that answer at once).
  const entries = Math.round(warm.consumed.entries / warm.consumed.messages);
  const queueOnly = await profile.queueOnly({ messages: warm.consumed.messages, entries, entryBytes: Math.round(warm.consumed.bytes / warm.consumed.messages / entries) });
  const rpcOnly = await profile.rpcOnly({ batches: BATCHES, devicesPerBatch: 100, fleet: FLEET });
  const perCallUs = (sec) => fmt((sec * 1e6) / warm.calls, 0);
  console.log(`  floors, workerd CPU per call: local queue alone ${perCallUs(queueOnly.workerdCpuSec)} µs (${warm.consumed.messages} messages), RPC alone ${perCallUs(rpcOnly.workerdCpuSec)} µs; the rest ${perCallUs(warm.workerdCpuSec - queueOnly.workerdCpuSec - rpcOnly.workerdCpuSec)} µs`);
  result('device_call_local_queue_cpu_us', (queueOnly.workerdCpuSec * 1e6) / warm.calls);
  result('device_call_rpc_cpu_us', (rpcOnly.workerdCpuSec * 1e6) / warm.calls);
  // As in production, where a device sends a batch every minute or so and its object was idle since.
  const mix = await profile.run({ batches: BATCHES, devicesPerBatch: 100, fleet: FLEET, cold: true });
  report(`default mix, each object cold (out of memory since its last call)`, mix);
  const single = await profile.run({ batches: BATCHES, devicesPerBatch: 1, fleet: FLEET });
  report('one device per batch (2000 events per call)', single);
  // The bill of these calls alone (bench/e2e.mjs prints it with the whole path's CPU and ClickHouse).
  console.log('');
  printCost(
    {
      workersRequests: (BATCHES + mix.consumed.messages / 100) / mix.events,
      workersCpuMs: (mix.workerdCpuSec * 1000) / mix.events,
      doRequests: (mix.calls + mix.alarms) / mix.events,
      doActiveSeconds: mix.objectMs / 1000 / mix.events,
      doRowsWritten: mix.rowsWritten / mix.events,
      queueOperations: mix.consumed.opsBytes.reduce((n, b) => n + queueOperationsPerMessage(b), 0) / mix.events,
    },
    {
      measured: 'everything per event in this profile: workerd CPU here is route, objects, local queue and a consumer that only counts (no ClickHouse)',
      estimated: 'consumer invocations (100 messages each); object duration = its own time, queue-send waits left out',
    },
  );
  result('device_call_statements', mix.statements / mix.calls);
  result('device_call_rows_written', mix.rowsWritten / mix.calls);
  result('device_call_statements_warm', warm.statements / warm.calls);
  result('device_call_rows_written_warm', warm.rowsWritten / warm.calls);
  result('device_call_us', (mix.objectMs * 1000) / mix.calls);
  result('device_call_workerd_cpu_us', (mix.workerdCpuSec * 1e6) / mix.calls);
} finally {
  await profile.dispose();
}
