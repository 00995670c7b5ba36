// One hot device: events/s through a single DeviceObject (SQLite storage, inside workerd via
// Miniflare) with 2000-event batches, against the floor of a raw SQLite insert loop writing the same
// rows in the same object; then storage per device after 100k events across 7 days and after pruning.
// The sustained figure is also set beside the local queue's own cost: the same number of messages of
// the same sizes sent straight from the object, with nothing read or deleted.
// Run alone: `node bench/device.mjs` (no ClickHouse needed: the bench queue consumer only acks).
import { startDeviceWorker } from './lib/device-worker.mjs';
import { floor, result } from './lib/results.mjs';

const TARGET_EVENTS_PER_SEC = 50_000;
const BATCH = 2000;
const HOT_BATCHES = Number(process.env.BENCH_DEVICE_BATCHES ?? 50);
const STORAGE_EVENTS = 100_000;

// The worker under test: the real DeviceObject, plus a floor method on a subclass that writes the
// same seen + outbox rows with plain INSERTs in one transaction (no dedup lookup, no sessions, no JSON).
const entry = `
import { DeviceObject } from './durable-objects/device-object';
import { toDeviceEvent } from './src/ingest/accept';
import { packDeviceEvents } from './src/device/packed';
import { NO_GEO, normalizeEvent } from './src/ingest/normalize';
import { sendMessages } from './src/pipeline/messages';

export class BenchDevice extends DeviceObject {
  private insideMs: number[] = [];

  /** The object's own time for an ingest call (its transaction and alarm scheduling), without RPC. */
  override async ingest(input: Parameters<DeviceObject['ingest']>[0]) {
    const t = performance.now();
    const r = await super.ingest(input);
    this.insideMs.push(performance.now() - t);
    return r;
  }

  async takeInsideMs(): Promise<number[]> {
    const out = this.insideMs;
    this.insideMs = [];
    return out;
  }

  /** The UTF-8 size of each waiting outbox row as a message would carry it (chunk and base). */
  async outboxRowBytes(): Promise<number[]> {
    return this.ctx.storage.sql
      .exec<{ n: number }>("SELECT length(CAST(body AS BLOB)) + coalesce(length(CAST(base AS BLOB)), 0) AS n FROM outbox ORDER BY seq")
      .toArray()
      .map((r) => r.n);
  }

  /** The queue's own cost: messages of these sizes, built before timing, sent as the flush sends them. */
  async queueFloor(sizes: number[]): Promise<number> {
    const messages = sizes.map((bytes) => ({ body: JSON.stringify({ events: [], payloads: [], sessions: [], entries: [] }).slice(0, -1) + ',"pad":"' + 'x'.repeat(Math.max(0, bytes)) + '"}', bytes: bytes + 64 }));
    const t = performance.now();
    await sendMessages(this.env.INGEST_QUEUE, messages);
    return performance.now() - t;
  }

  /** The floor: the same seen and outbox rows, pre-serialised, as plain INSERTs into tables of the
   * same shape and indexes that grow like the real ones; no dedup lookup, sessions or JSON work. */
  async floor(rows: Array<{ key: string; id: string; body: string; payload: string }>, nowMs: number): Promise<number> {
    const sql = this.ctx.storage.sql;
    sql.exec(\`CREATE TABLE IF NOT EXISTS floor_seen (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, created_at_ms INTEGER NOT NULL, seen_at_ms INTEGER NOT NULL) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS floor_seen_at_idx ON floor_seen (seen_at_ms);
      CREATE TABLE IF NOT EXISTS floor_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ref TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '', body TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX IF NOT EXISTS floor_outbox_ref_idx ON floor_outbox (kind, ref);\`);
    this.ctx.storage.transactionSync(() => {
      for (const r of rows) {
        sql.exec('INSERT INTO floor_seen (key, event_id, created_at_ms, seen_at_ms) VALUES (?, ?, ?, ?)', r.key, r.id, nowMs, nowMs);
        sql.exec("INSERT INTO floor_outbox (kind, ref, session_id, body, payload) VALUES ('event', ?, ?, ?, ?)", r.id, r.id, r.body, r.payload);
      }
    });
    return rows.length;
  }
}

function makeEvents(deviceId: string, n: number, startMs: number, stepMs: number, receivedAtMs: number, tag: string) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const raw = { type: 'track', payload: { name: 'trip_point', properties: {
      __deviceId: deviceId, __timestamp: startMs + i * stepMs, ...(i % 2 ? { __eventId: tag + '-' + i } : {}),
      lat: 48.85 + (i % 1000) / 1e4, lon: 2.35 + (i % 777) / 1e4, speedKmh: i % 130, battery: 100 - (i % 100), seq: i } } };
    const r = normalizeEvent(raw, { receivedAtMs, ip: '203.0.113.7', userAgent: 'bench', geo: NO_GEO }, i);
    if (!r.ok) throw new Error(r.rejection.error);
    out.push(toDeviceEvent('bench-project', deviceId, r.event));
  }
  return out;
}

const json = (v: unknown) => new Response(JSON.stringify(v), { headers: { 'content-type': 'application/json' } });

export default {
  async fetch(request: Request, env: any) {
    const url = new URL(request.url);
    const gapMs = 30 * 60 * 1000;
    if (url.pathname === '/hot') {
      const batches = Number(url.searchParams.get('batches'));
      const deviceId = 'hot-' + url.searchParams.get('run');
      const stub = env.DEVICE.get(env.DEVICE.idFromName(deviceId));
      const now = Date.now();
      // Prepared before timing: the route hands the object ready rows.
      const prepared = [];
      for (let b = 0; b < batches; b++) prepared.push(makeEvents(deviceId, ${BATCH}, now - 3_600_000 + b * ${BATCH} * 10, 1, now, 'r' + b));
      // Packed as the route does it (route work, spread over Worker isolates; not the object's):
      // one call per batch of these small events.
      const packed = prepared.map((batch: any[]) => packDeviceEvents(batch)[0]);
      const floorRows = prepared.map((batch: any[], b: number) =>
        batch.map((e: any) => ({ key: e.dedupKey + '#' + b, id: e.row.id, body: JSON.stringify(e.row), payload: e.payload.payload })));
      // Warm both paths once.
      await stub.floor(floorRows[0].slice(0, 10).map((r: any) => ({ ...r, key: 'warm' + r.key })), now);
      await stub.ingest({ projectId: 'bench-project', deviceId, gapMs, events: makeEvents(deviceId, 10, now - 7_200_000, 1, now, 'warm') });
      await stub.takeInsideMs();
      const floorMs = [];
      const ingestMs = [];
      let ingestTotal = 0;
      const t0 = performance.now();
      // Interleaved, so machine noise and table growth hit both alike. Both are timed from the caller
      // (RPC and the storage commit that gates the reply included).
      for (let b = 0; b < batches; b++) {
        let t = performance.now();
        const res = await stub.ingest({ projectId: 'bench-project', deviceId, gapMs, events: packed[b] });
        const ms = performance.now() - t;
        ingestMs.push(ms);
        ingestTotal += ms;
        if (res.results.length !== ${BATCH}) throw new Error('short result');
        t = performance.now();
        await stub.floor(floorRows[b], now);
        floorMs.push(performance.now() - t);
      }
      const insideMs = await stub.takeInsideMs();
      const waiting = await stub.outboxRowBytes();
      // The alarm flushes the outbox to the queue meanwhile; wait until it is empty.
      const tDrain = performance.now();
      for (;;) {
        const s = await stub.state();
        if (s.pendingRows === 0) break;
        await stub.maintain(Date.now());
      }
      const drainMs = performance.now() - tDrain;
      const state = await stub.state();
      const queueFloorMs = await stub.queueFloor(waiting);
      return json({ ingestMs, insideMs, floorMs, ingestTotal, drainMs, sessions: state.sessions, seen: state.seenIds, waitingRows: waiting.length, waitingBytes: waiting.reduce((a: number, b: number) => a + b, 0), queueFloorMs });
    }
    if (url.pathname === '/storage') {
      const deviceId = 'storage-' + url.searchParams.get('run');
      const stub = env.DEVICE.get(env.DEVICE.idFromName(deviceId));
      const day = 24 * 3_600_000;
      const t0 = Date.now();
      const batches = ${STORAGE_EVENTS / BATCH};
      for (let b = 0; b < batches; b++) {
        // 100k events spread evenly over 7 days, each batch received when its events happened.
        const nowMs = t0 + Math.floor((b * 7 * day) / batches);
        const events = makeEvents(deviceId, ${BATCH}, nowMs - ${BATCH} * 1500, 1500, nowMs, 's' + b);
        await stub.ingest({ projectId: 'bench-project', deviceId, gapMs, events, nowMs });
        await stub.maintain(nowMs);
      }
      const full = await stub.state(t0 + 7 * day);
      const pruneAt = t0 + 7 * day + 8 * day + 1;
      const pruned = await stub.maintain(pruneAt);
      const after = await stub.state(pruneAt);
      return json({ full, pruned, after });
    }
    return new Response('not found', { status: 404 });
  },
  async queue(batch: any) {
    batch.ackAll();
  },
};
`;

const mf = await startDeviceWorker({ name: 'bench-device', source: entry, className: 'BenchDevice' });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (n) => Math.round(n).toLocaleString('en-US');

try {
  const run = Date.now();
  const hot = await (await mf.dispatchFetch(`http://bench/hot?batches=${HOT_BATCHES}&run=${run}`)).json();
  if (hot.seen !== HOT_BATCHES * BATCH + 10) throw new Error(`expected ${HOT_BATCHES * BATCH + 10} ids, object holds ${hot.seen}`);
  const total = HOT_BATCHES * BATCH;
  const perBatch = median(hot.ingestMs);
  const inside = median(hot.insideMs);
  const floorPerBatch = median(hot.floorMs);
  const ingestRate = BATCH / (perBatch / 1000);
  const floorRate = BATCH / (floorPerBatch / 1000);
  console.log(`one hot device, ${HOT_BATCHES} batches of ${BATCH} events (${fmt(total)} events, ${hot.sessions} session(s)), alarm flushes running alongside:`);
  console.log(`  ingest through RPC: median ${perBatch.toFixed(1)} ms/batch = ${fmt(ingestRate)} events/s (object's own time ${inside.toFixed(1)} ms/batch = ${fmt(BATCH / (inside / 1000))} events/s)`);
  console.log(`  floor, raw INSERTs of the same seen + outbox rows through RPC: median ${floorPerBatch.toFixed(1)} ms/batch = ${fmt(floorRate)} events/s`);
  console.log(`  ratio ingest/floor: ${(perBatch / floorPerBatch).toFixed(2)}x the floor's time`);
  const sustained = total / ((hot.ingestTotal + hot.drainMs) / 1000);
  const ceiling = total / ((hot.ingestTotal + hot.queueFloorMs) / 1000);
  console.log(`  sustained until the outbox was drained to the queue: ${fmt(sustained)} events/s (ingest ${fmt(hot.ingestTotal)} ms + drain ${fmt(hot.drainMs)} ms)`);
  console.log(`  local queue floor: the ${fmt(hot.waitingRows)} messages the drain sent (${(hot.waitingBytes / 1e6).toFixed(1)} MB), the same sizes sent straight from the object: ${fmt(hot.queueFloorMs)} ms = ${((hot.queueFloorMs * 1000) / total).toFixed(1)} µs/event`);
  console.log(`  ceiling with this local queue (ingest through RPC + those sends alone): ${fmt(ceiling)} events/s; sustained is ${(sustained / ceiling).toFixed(2)}x of it; the drain's own share: ${fmt(hot.drainMs - hot.queueFloorMs)} ms`);
  result('hot_device_events_per_s', sustained);
  floor('hot_device_events_per_s', floorRate);
  result('hot_device_local_queue_ceiling_events_per_s', ceiling);
  console.log(`  target >= ${fmt(TARGET_EVENTS_PER_SEC)} events/s through one object: ${ingestRate >= TARGET_EVENTS_PER_SEC ? 'met' : 'NOT met'}`);

  const st = await (await mf.dispatchFetch(`http://bench/storage?run=${run}`)).json();
  console.log(`storage per device, ${fmt(STORAGE_EVENTS)} events received across 7 days (outbox flushed):`);
  console.log(`  ${fmt(st.full.storageBytes)} bytes = ${(st.full.storageBytes / STORAGE_EVENTS).toFixed(1)} bytes/event (${fmt(st.full.seenIds)} dedup ids, ${st.full.sessions} session(s))`);
  console.log(`  after pruning (clock +8 days): ${fmt(st.after.storageBytes)} bytes (${fmt(st.after.seenIds)} dedup ids, ${st.after.sessions} session(s), ${fmt(st.pruned.pruned)} ids pruned); back to the empty-schema size`);
} finally {
  await mf.dispose();
}
