// The ingest path per device call, measured on the real DeviceObject inside workerd (Miniflare): the
// route's work to hand a device its events, and the object's statements, rows written, transactions,
// alarms and queue messages, with the time of each stage. No ClickHouse: the bench consumer only counts.
import { cpuSeconds } from './cpu.mjs';
import { startDeviceWorker } from './device-worker.mjs';

const entry = `
import { DeviceObject } from './durable-objects/device-object';
import { toDeviceEvent } from './src/ingest/accept';
import { packDeviceEvents } from './src/device/packed';
import { normalizeEvent } from './src/ingest/normalize';
import { mapPool } from './src/lib/pool';

type Stage = { ms: number; statements: number; rowsWritten: number; calls: number };
function newTally() {
  return { calls: 0, events: 0, alarms: 0, transactions: 0, alarmSets: 0, alarmGets: 0, statements: 0, rowsWritten: 0, rowsRead: 0,
    ingestMs: 0, alarmMs: 0, afterCallMs: 0, sendMs: 0, sendBatches: 0, constructed: 0, stages: {} as Record<string, Stage> };
}

let BY_QUERY: Record<string, { n: number; ms: number }> | null = null;
// One tally for every object of the isolate (an idle object may be evicted; its counts must stay).
let TALLY = newTally();

export class ProfiledDevice extends DeviceObject {
  private get tally() {
    return TALLY;
  }
  private stage: Stage | null = null;
  private inAlarm = false;

  constructor(ctx: DurableObjectState, env: any) {
    super(ctx, env);
    const self = this;
    self.tally.constructed++;
    // Time spent waiting on the local queue broker is the machine's, not the object's work.
    // Wrapped once: every object of the isolate shares this env.
    const queue = env.INGEST_QUEUE;
    if (!queue.profiled) env.INGEST_QUEUE = {
      profiled: true,
      send: (...a: unknown[]) => queue.send(...a),
      sendBatch: async (...a: unknown[]) => {
        const t = performance.now();
        try {
          return await queue.sendBatch(...a);
        } finally {
          self.tally.sendMs += performance.now() - t;
          self.tally.sendBatches++;
        }
      },
    };
    const sql: any = ctx.storage.sql;
    const exec = sql.exec.bind(sql);
    sql.exec = (query: string, ...args: unknown[]) => {
      const t0 = performance.now();
      const cursor = exec(query, ...args);
      if (BY_QUERY) {
        // A SELECT's rows are read as its cursor is: time the reading too.
        const first = cursor.toArray();
        const q = (BY_QUERY[query.slice(0, 90)] ??= { n: 0, ms: 0 });
        q.n++;
        q.ms += performance.now() - t0;
        const rows = first;
        const c: any = { toArray: () => rows, one: () => rows[0], [Symbol.iterator]: () => rows[Symbol.iterator](), get rowsWritten() { return cursor.rowsWritten; }, get rowsRead() { return cursor.rowsRead; }, raw: () => cursor.raw(), next: () => rows.length ? { done: false, value: rows.shift() } : { done: true, value: undefined } };
        self.tally.statements++;
        if (self.stage) self.stage.statements++;
        queueMicrotask(() => { self.tally.rowsWritten += cursor.rowsWritten; self.tally.rowsRead += cursor.rowsRead; });
        return c;
      }
      self.tally.statements++;
      if (self.stage) self.stage.statements++;
      // Counted once the statement ran: INSERT/UPDATE/DELETE run on exec, SELECTs as they are read.
      queueMicrotask(() => {
        self.tally.rowsWritten += cursor.rowsWritten;
        self.tally.rowsRead += cursor.rowsRead;
      });
      if (self.stage) {
        const st = self.stage;
        queueMicrotask(() => (st.rowsWritten += cursor.rowsWritten));
      }
      return cursor;
    };
    const storage: any = ctx.storage;
    const tx = storage.transactionSync.bind(storage);
    storage.transactionSync = (fn: () => unknown) => {
      self.tally.transactions++;
      return tx(fn);
    };
    const setAlarm = storage.setAlarm.bind(storage);
    storage.setAlarm = (...a: unknown[]) => {
      self.tally.alarmSets++;
      return setAlarm(...a);
    };
    const getAlarm = storage.getAlarm.bind(storage);
    storage.getAlarm = (...a: unknown[]) => {
      self.tally.alarmGets++;
      return getAlarm(...a);
    };
    const stores: any = (this as any).stores;
    const wrap = (obj: any, method: string, name: string) => {
      const fn = obj[method].bind(obj);
      obj[method] = (...a: unknown[]) => {
        const outer = self.stage;
        const st = (self.tally.stages[name] ??= { ms: 0, statements: 0, rowsWritten: 0, calls: 0 });
        self.stage = st;
        st.calls++;
        const t = performance.now();
        const done = () => {
          st.ms += performance.now() - t;
          self.stage = outer;
        };
        try {
          const r = fn(...a);
          if (r && typeof r.then === 'function') return r.finally(done);
          done();
          return r;
        } catch (err) {
          done();
          throw err;
        }
      };
    };
    // The flush a call starts once it has answered: the object's time too, outside ingest() and alarm().
    // (Absent from objects older than it, which a paired run may profile.)
    const flushOutbox = (this as any).flushOutbox?.bind(this);
    if (flushOutbox) {
      (this as any).flushOutbox = async () => {
        if (self.inAlarm) return flushOutbox();
        const t = performance.now();
        try {
          return await flushOutbox();
        } finally {
          self.tally.afterCallMs += performance.now() - t;
        }
      };
    }
    wrap(this, 'hasSchema', 'schema check');
    wrap(stores.live, 'identify', 'identity + gap (meta)');
    wrap(stores.dedup, 'lookup', 'dedup lookup');
    wrap(stores.sessions, 'assign', 'sessions assign');
    wrap(stores.outbox, 'enqueueSessions', 'outbox: session rows');
    wrap(stores.dedup, 'record', 'dedup record');
    wrap(stores.outbox, 'appendEvents', 'outbox: event chunk');
    wrap(stores.live, 'record', 'live state');
    wrap(stores.sessions, 'at', 'duplicates\\' sessions');
    wrap(this, 'scheduleAlarm', 'alarm scheduling');
    wrap(this, 'endAndPrune', 'alarm: end idle + prune');
    wrap(stores.outbox, 'flush', 'flush to queue');
  }

  override async ingest(input: any) {
    const t = performance.now();
    try {
      return await super.ingest(input);
    } finally {
      this.tally.ingestMs += performance.now() - t;
      this.tally.calls++;
      this.tally.events += Array.isArray(input.events) ? input.events.length : input.events.rp.length;
    }
  }

  /** Answers a call at once (the RPC floor): the same shape of answer as ingest gives. */
  echo(input: any) {
    const n = Array.isArray(input.events) ? input.events.length : input.events.rp.length;
    return { results: Array.from({ length: n }, () => ({ status: 'accepted', sessionId: '01234567-89ab-cdef-0123-456789abcdef', eventId: '01234567-89ab-cdef-0123-456789abcdef' })) };
  }

  /** Drops this object from memory (its storage stays): its next call finds it cold. */
  evict() {
    this.ctx.abort('bench: evicted');
  }

  override async alarm() {
    const t = performance.now();
    this.inAlarm = true;
    try {
      return await super.alarm();
    } finally {
      this.inAlarm = false;
      this.tally.alarmMs += performance.now() - t;
      this.tally.alarms++;
    }
  }

}

const consumed = { messages: 0, bytes: 0, entries: 0, sessions: 0, batches: 0, opsBytes: [] as number[] };
const route = { calls: 0, events: 0, normalizeMs: 0, rowMs: 0, packMs: 0, rpcMs: 0 };

function rawBatch(b: number, count: number, devicesPerBatch: number, fleet: number, nowMs: number) {
  const first = (b * devicesPerBatch) % fleet;
  const events = [];
  for (let i = 0; i < count; i++) {
    const properties: Record<string, unknown> = {
      __deviceId: 'fleet-' + ((first + (i % devicesPerBatch)) % fleet),
      __timestamp: new Date(nowMs - 3_600_000 + Math.floor((i / count) * 3_500_000)).toISOString(),
      lat: 48.85 + ((i * 7919) % 1000) / 1e4, lon: 2.35 + ((i * 104729) % 1000) / 1e4, speedKmh: (i * 37) % 1300 / 10, battery: i % 100,
    };
    if (i % 2 === 0) properties.__eventId = 'e' + b + '-' + i;
    events.push({ type: 'track', payload: { name: i % 10 === 0 ? 'trip_point_ext' : 'trip_point', properties } });
  }
  return events;
}

export default {
  async fetch(request: Request, env: any) {
    const url = new URL(request.url);
    const q = (k: string) => Number(url.searchParams.get(k));
    if (url.pathname === '/run') {
      const nowMs = Date.now();
      const ctx = { receivedAtMs: nowMs, sentAtMs: nowMs, ip: '203.0.113.7', userAgent: 'bench', geo: { country: 'FR', region: 'IDF', city: 'Paris', timezone: 'Europe/Paris', latitude: 48.85, longitude: 2.35 } };
      const projectId = 'bench-project';
      for (let b = 0; b < q('batches'); b++) {
        const raws = rawBatch(q('offset') + b, q('events'), q('devicesPerBatch'), q('fleet'), nowMs);
        let t = performance.now();
        const valid = raws.map((raw, i) => {
          const r = normalizeEvent(raw, ctx, i);
          if (!r.ok) throw new Error(r.rejection.error);
          return r.event;
        });
        route.normalizeMs += performance.now() - t;
        t = performance.now();
        const byDevice = new Map<string, any[]>();
        for (const e of valid) {
          let list = byDevice.get(e.deviceId!);
          if (!list) byDevice.set(e.deviceId!, (list = []));
          list.push(toDeviceEvent(projectId, e.deviceId!, e));
        }
        route.rowMs += performance.now() - t;
        t = performance.now();
        const calls = [...byDevice].map(([deviceId, list]) => ({ deviceId, packed: packDeviceEvents(list) }));
        route.packMs += performance.now() - t;
        t = performance.now();
        await mapPool(calls, 16, async ({ deviceId, packed }) => {
          const stub = env.DEVICE.get(env.DEVICE.idFromName(projectId + ':' + deviceId));
          for (const events of packed) {
            const res = await stub.ingest({ projectId, deviceId, gapMs: 30 * 60 * 1000, events });
            if (res.results.length !== events.rp.length) throw new Error('short result');
            route.calls++;
          }
        });
        route.rpcMs += performance.now() - t;
        route.events += raws.length;
      }
      return Response.json({ ok: true });
    }
    if (url.pathname === '/queue-only') {
      // The local queue alone: as many messages of the same size as the objects sent, one sendBatch
      // each, through the same broker to the same consumer (its CPU is the machine's, not the gateway's).
      const body = JSON.stringify({ events: [], payloads: [], sessions: [], entries: Array.from({ length: q('entries') }, () => ({ pad: 'x'.repeat(Math.max(0, q('entryBytes') - 12)) })) });
      await mapPool(Array.from({ length: q('messages') }, (_, i) => i), 16, async () => {
        await env.INGEST_QUEUE.sendBatch([{ body, contentType: 'text' }]);
      });
      return Response.json({ ok: true });
    }
    if (url.pathname === '/rpc-only') {
      // RPC alone: the same calls with the same packed events to objects that answer at once.
      const nowMs = Date.now();
      const ctx = { receivedAtMs: nowMs, sentAtMs: nowMs, ip: '203.0.113.7', userAgent: 'bench', geo: { country: 'FR', region: 'IDF', city: 'Paris', timezone: 'Europe/Paris', latitude: 48.85, longitude: 2.35 } };
      const projectId = 'bench-project';
      const raws = rawBatch(0, q('events'), q('devicesPerBatch'), q('fleet'), nowMs);
      const byDevice = new Map<string, any[]>();
      raws.forEach((raw, i) => {
        const r: any = normalizeEvent(raw, ctx, i);
        let list = byDevice.get(r.event.deviceId);
        if (!list) byDevice.set(r.event.deviceId, (list = []));
        list.push(toDeviceEvent(projectId, r.event.deviceId, r.event));
      });
      const calls = [...byDevice].map(([deviceId, list]) => ({ deviceId, packed: packDeviceEvents(list) }));
      for (let b = 0; b < q('batches'); b++) {
        await mapPool(calls, 16, async ({ deviceId, packed }) => {
          const stub = env.DEVICE.get(env.DEVICE.idFromName('rpc-only:' + deviceId));
          for (const events of packed) await stub.echo({ projectId, deviceId, gapMs: 30 * 60 * 1000, events });
        });
      }
      return Response.json({ ok: true });
    }
    if (url.pathname === '/evict') {
      // Every object of the fleet out of memory, so the next calls each find their object cold.
      const projectId = 'bench-project';
      await mapPool(Array.from({ length: q('fleet') }, (_, i) => i), 16, async (i) => {
        const stub = env.DEVICE.get(env.DEVICE.idFromName(projectId + ':fleet-' + i));
        await stub.evict().catch(() => undefined);
      });
      return Response.json({ ok: true });
    }
    if (url.pathname === '/by-query') {
      const out = BY_QUERY;
      BY_QUERY = url.searchParams.get('on') ? {} : null;
      return Response.json(out ?? {});
    }
    if (url.pathname === '/take') {
      // Waits until every event reached the queue consumer, then collects the objects' tallies.
      const want = q('events');
      for (let i = 0; consumed.entries < want; i++) {
        if (i > 6000) throw new Error('events never reached the queue: ' + consumed.entries + ' of ' + want);
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 50));
      const out = { route: { ...route }, consumed: { ...consumed }, tallies: [TALLY] };
      TALLY = newTally();
      Object.assign(route, { calls: 0, events: 0, normalizeMs: 0, rowMs: 0, packMs: 0, rpcMs: 0 });
      Object.assign(consumed, { messages: 0, bytes: 0, entries: 0, sessions: 0, batches: 0, opsBytes: [] });
      return Response.json(out);
    }
    return new Response('not found', { status: 404 });
  },
  async queue(batch: any) {
    consumed.batches++;
    for (const m of batch.messages) {
      const text = typeof m.body === 'string' ? m.body : JSON.stringify(m.body);
      const bytes = new TextEncoder().encode(text).byteLength;
      consumed.messages++;
      consumed.bytes += bytes;
      consumed.opsBytes.push(bytes);
      const body = JSON.parse(text);
      consumed.entries += (body.entries?.length ?? 0) + (body.chunk ? JSON.parse(body.chunk).length : 0) + body.events.length;
      consumed.sessions += body.sessions.length;
    }
    batch.ackAll();
  },
};
`;

/** Starts the profiled worker; `run(shape)` drives batches through it and answers the tallies. */
export async function startDeviceProfile({ inspectorPort } = {}) {
  const mf = await startDeviceWorker({ name: 'bench-profile', source: entry, className: 'ProfiledDevice', inspectorPort });
  let offset = 0;
  return {
    /**
     * Runs `batches` batches of `events` over `devicesPerBatch` of `fleet` devices; answers per-call
     * figures. `cold`: every object is dropped from memory first, as an idle one is in production.
     */
    async run({ batches, events = 2000, devicesPerBatch, fleet, cold = false }) {
      const get = async (path) => {
        const res = await mf.dispatchFetch(`http://bench${path}`);
        if (!res.ok) throw new Error(`${path}: ${res.status} ${(await res.text()).slice(0, 300)}`);
        return res.json();
      };
      if (cold) await get(`/evict?fleet=${fleet}`);
      const cpu = cpuSeconds({ ppid: process.pid });
      await get(`/run?batches=${batches}&events=${events}&devicesPerBatch=${devicesPerBatch}&fleet=${fleet}&offset=${offset}`);
      offset += batches;
      const taken = await get(`/take?events=${batches * events}&fleet=${fleet}`);
      return { ...summarize(taken), workerdCpuSec: cpuSeconds({ ppid: process.pid }) - cpu };
    },
    /** workerd CPU of the local queue alone: `messages` messages of `entries` entries of about `entryBytes` each. */
    async queueOnly({ messages, entries, entryBytes }) {
      const cpu = cpuSeconds({ ppid: process.pid });
      const get = async (path) => {
        const res = await mf.dispatchFetch(`http://bench${path}`);
        if (!res.ok) throw new Error(`${path}: ${res.status} ${(await res.text()).slice(0, 300)}`);
        return res.json();
      };
      await get(`/queue-only?messages=${messages}&entries=${entries}&entryBytes=${entryBytes}`);
      await get(`/take?events=${messages * entries}&fleet=0`);
      return { workerdCpuSec: cpuSeconds({ ppid: process.pid }) - cpu };
    },
    /** workerd CPU of the device calls' RPC alone (objects that answer at once). */
    async rpcOnly({ batches, events = 2000, devicesPerBatch, fleet }) {
      const call = async (n) => {
        const res = await mf.dispatchFetch(`http://bench/rpc-only?batches=${n}&events=${events}&devicesPerBatch=${devicesPerBatch}&fleet=${fleet}`);
        if (!res.ok) throw new Error(`rpc-only: ${res.status} ${(await res.text()).slice(0, 300)}`);
        await res.json();
      };
      // Once unmeasured: the answering objects are created, as the profiled ones were before.
      await call(1);
      const cpu = cpuSeconds({ ppid: process.pid });
      await call(batches);
      return { workerdCpuSec: cpuSeconds({ ppid: process.pid }) - cpu };
    },
    async byQuery(on) {
      const res = await mf.dispatchFetch(`http://bench/by-query${on ? '?on=1' : ''}`);
      return res.json();
    },
    dispose: () => mf.dispose(),
  };
}

function summarize({ route, consumed, tallies }) {
  const sum = (k) => tallies.reduce((n, t) => n + t[k], 0);
  const calls = sum('calls');
  const stages = {};
  for (const t of tallies) {
    for (const [name, s] of Object.entries(t.stages)) {
      const into = (stages[name] ??= { ms: 0, statements: 0, rowsWritten: 0, calls: 0 });
      for (const k of Object.keys(into)) into[k] += s[k];
    }
  }
  return {
    calls,
    events: sum('events'),
    alarms: sum('alarms'),
    transactions: sum('transactions'),
    alarmSets: sum('alarmSets'),
    alarmGets: sum('alarmGets'),
    statements: sum('statements'),
    rowsWritten: sum('rowsWritten'),
    rowsRead: sum('rowsRead'),
    ingestMs: sum('ingestMs'),
    sendMs: sum('sendMs'),
    sendBatches: sum('sendBatches'),
    constructed: sum('constructed'),
    alarmMs: sum('alarmMs'),
    afterCallMs: sum('afterCallMs'),
    // The objects' own time: their calls, alarms and after-call flushes, less the waits on the queue.
    objectMs: sum('ingestMs') + sum('alarmMs') + sum('afterCallMs') - sum('sendMs'),
    stages,
    route,
    consumed,
  };
}
