// A CPU profile of the gateway's workerd isolates through wrangler's inspector port (DevTools
// protocol): BENCH_E2E_PROFILE=<file> makes bench/e2e.mjs record one around the default mix.
import { writeFileSync } from 'node:fs';

/** DevTools sessions to every isolate behind wrangler's inspector port: `send(method, params)` each. */
async function connectIsolates(inspectorPort) {
  const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
  const sessions = [];
  for (const target of targets) {
    if (!target.webSocketDebuggerUrl) continue;
    // wrangler's inspector proxy admits a DevTools client from localhost only
    const ws = new WebSocket(target.webSocketDebuggerUrl, { headers: { origin: 'http://localhost' } });
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    let id = 0;
    const pending = new Map();
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.id && pending.has(msg.id)) {
        pending.get(msg.id)(msg);
        pending.delete(msg.id);
      }
    };
    const send = (method, params = {}) =>
      new Promise((resolve) => {
        const n = ++id;
        pending.set(n, resolve);
        ws.send(JSON.stringify({ id: n, method, params }));
      });
    sessions.push({ title: target.title ?? target.id, ws, send });
  }
  return sessions;
}

export async function startInspectorProfile(inspectorPort) {
  const sessions = await connectIsolates(inspectorPort);
  for (const { send } of sessions) {
    await send('Profiler.enable');
    await send('Profiler.setSamplingInterval', { interval: 200 });
    await send('Profiler.start');
  }
  return { targets: sessions.map((s) => s.title), stop: (file) => stopAll(sessions, 'Profiler.stop', file) };
}

/** Sends `method` to every session, closes it, and writes the profiles it answered to `file` (`file.<n>` for several). */
async function stopAll(sessions, method, file) {
  const out = [];
  for (const s of sessions) {
    const r = await s.send(method);
    s.ws.close();
    if (r.result?.profile) out.push(r.result.profile);
  }
  out.forEach((p, i) => writeFileSync(out.length === 1 ? file : `${file}.${i}`, JSON.stringify(p)));
  return out;
}

/** Self time by function (and by file:line of the function) over a profile's samples, top first. */
export function selfTimeByFunction(profile, top = 40) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const id of profile.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
  const by = new Map();
  let total = 0;
  for (const [id, c] of counts) {
    const f = byId.get(id).callFrame;
    const key = `${f.functionName || '(anon)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`;
    by.set(key, (by.get(key) ?? 0) + c);
    total += c;
  }
  return { total, rows: [...by].sort((a, b) => b[1] - a[1]).slice(0, top) };
}

/**
 * A heap-sampling profile of the isolates (V8's sampling heap profiler: about one allocation in
 * every `intervalBytes` bytes recorded with its stack, objects collected young or old included), so
 * what a run allocates, and where, is measured: BENCH_E2E_HEAP=<file> for bench/e2e.mjs.
 */
export async function startInspectorHeapSampling(inspectorPort, intervalBytes = 8192) {
  const sessions = await connectIsolates(inspectorPort);
  for (const { send } of sessions) {
    await send('HeapProfiler.enable');
    await send('HeapProfiler.startSampling', { samplingInterval: intervalBytes, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  }
  return { stop: (file) => stopAll(sessions, 'HeapProfiler.stopSampling', file) };
}

/** Bytes allocated by function (self: the function's own allocations), top first, over a heap-sampling profile. */
export function allocationByFunction(profile, top = 25) {
  const by = new Map();
  let total = 0;
  const walk = (node) => {
    const f = node.callFrame;
    const key = `${f.functionName || '(anon)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`;
    by.set(key, (by.get(key) ?? 0) + node.selfSize);
    total += node.selfSize;
    for (const c of node.children ?? []) walk(c);
  };
  walk(profile.head);
  return { total, rows: [...by].sort((a, b) => b[1] - a[1]).slice(0, top) };
}
