// Tracker apps talk to Driftline unchanged: each request is what the app sends (shapes from the apps'
// documentation and sources), and its fixes come back from /v1/events as `position` events.
import { createExecutionContext, env, SELF, waitOnExecutionContext } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import type { Env } from '../src/env';
import { adaptOsmAnd } from '../src/trackers/traccar';
import { fixEventId, parseFixTime } from '../src/trackers/position-event';
import overlandLocation from './fixtures/trackers/overland-location.json';
import overlandLog from './fixtures/trackers/overland-log.json';
import overlandTripEnd from './fixtures/trackers/overland-trip-end.json';
import overlandTrip from './fixtures/trackers/overland-trip.json';
import owntracksLocation from './fixtures/trackers/owntracks-location.json';
import owntracksTransition from './fixtures/trackers/owntracks-transition.json';
import traccarClient from './fixtures/trackers/traccar-client.json';
import { ADMIN_TOKEN, ch, createProject, getJson, waitUntil, type TestProject } from './helpers';

type Event = { id: string; name: string; deviceId: string; createdAt: string; properties: Record<string, unknown> };
type EventsBody = { events: Event[] };
type Health = { trackers: { rejectedRows: number; recent: Array<{ projectId: string; source: string; count: number; lastReason: string; lastError: string }> } };

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
const bearer = (p: TestProject) => ({ authorization: `Bearer ${p.clientId}:${p.clientSecret}` });
const basic = (user: string, password: string) => ({ authorization: `Basic ${btoa(`${user}:${password}`)}` });
const token = (p: TestProject) => encodeURIComponent(`${p.clientId}:${p.clientSecret}`);

/** `2015-10-01T08:00:00-0700`, the offset form of Overland's README. */
function withOffset(ms: number, offsetH: number): string {
  const local = new Date(ms + offsetH * 3_600_000).toISOString().slice(0, 19);
  const sign = offsetH < 0 ? '-' : '+';
  return `${local}${sign}${String(Math.abs(offsetH)).padStart(2, '0')}00`;
}
/** `2015-10-01T15:00:00Z`, what the iOS app's strftime writes. */
const utcSeconds = (ms: number) => `${new Date(ms).toISOString().slice(0, 19)}Z`;

interface OverlandPoint {
  ms: number;
  lon: number;
  lat: number;
}

/** An Overland batch: `n` locations a minute apart, with `current` and `trip` as the app adds them. */
function overlandBatch(deviceId: string, n: number, startMs: number) {
  const baseMs = Math.floor(startMs / 1000) * 1000;
  const points: OverlandPoint[] = [];
  const locations = Array.from({ length: n }, (_, i) => {
    const f = clone(overlandLocation);
    const ms = baseMs + i * 60_000;
    const point = { ms, lon: Math.round((-122.030581 + i * 0.0004) * 1e7) / 1e7, lat: Math.round((37.3318 + i * 0.0003) * 1e7) / 1e7 };
    points.push(point);
    f.geometry.coordinates = [point.lon, point.lat];
    // Older builds wrote the README's `-0700` offsets; current iOS builds write UTC with `Z`.
    f.properties.timestamp = i % 2 ? withOffset(ms, -7) : utcSeconds(ms);
    f.properties.speed = i % 10 === 9 ? -1 : 4 + (i % 5);
    f.properties.horizontal_accuracy = i % 10 === 9 ? -1 : 5 + (i % 3);
    f.properties.vertical_accuracy = i % 2 ? 3 : -1;
    f.properties.altitude = 20 + (i % 7);
    f.properties.locations_in_payload = n;
    f.properties.device_id = deviceId;
    return f;
  });
  const current = clone(overlandLocation);
  current.geometry.coordinates = [-121.5, 38.5];
  current.properties.timestamp = utcSeconds(baseMs + n * 60_000);
  current.properties.device_id = deviceId;
  const trip = clone(overlandTrip);
  trip.current_location.geometry.coordinates = [-121.5, 38.5];
  trip.current_location.properties.timestamp = current.properties.timestamp;
  trip.start = utcSeconds(baseMs);
  return { body: { locations: locations as unknown[], current, trip }, points };
}

async function post(path: string, init: { method?: string; headers?: Record<string, string>; body?: string | Uint8Array }, bindings?: Env) {
  const request = new Request(`http://gw${path}`, { method: init.method ?? 'POST', headers: init.headers, body: init.body });
  if (!bindings) return SELF.fetch(request);
  const ctx = createExecutionContext();
  const res = await worker.fetch(request, bindings, ctx);
  await waitOnExecutionContext(ctx);
  return res;
}

const postOverland = (p: TestProject, body: unknown, query = '', bindings?: Env) =>
  post(`/ingest/overland${query}`, { headers: { ...bearer(p), 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) }, bindings);

async function positionsOf(p: TestProject, deviceId: string, expected: number): Promise<Event[]> {
  const read = await waitUntil(
    () => getJson<EventsBody>(p, `/v1/events?deviceId=${encodeURIComponent(deviceId)}&limit=1000`),
    (r) => r.status === 200 && r.body.events.filter((e) => e.name === 'position').length >= expected,
  );
  return read.body.events.filter((e) => e.name === 'position').sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/**
 * The newest fix is the vehicle's live position in /v1/fleet/live, and every fix given is on its
 * track (the fleet views are recomputed after the rows reach ClickHouse).
 */
async function expectInFleet(p: TestProject, deviceId: string, fixes: Array<{ ms: number; lat: number; lon: number }>): Promise<void> {
  const newest = fixes.reduce((a, b) => (b.ms > a.ms ? b : a));
  const live = await waitUntil(
    () => getJson<{ vehicles: Array<{ deviceId: string; lat: number; lon: number; at: string }> }>(p, '/v1/fleet/live'),
    (r) => r.status === 200 && r.body.vehicles.some((v) => v.deviceId === deviceId && v.at === new Date(newest.ms).toISOString()),
  );
  expect(live.body.vehicles.find((v) => v.deviceId === deviceId)).toMatchObject({ lat: newest.lat, lon: newest.lon });
  const since = Math.min(...fixes.map((f) => f.ms)) - 1000;
  const track = await getJson<{ type: string; geometry: { type: string; coordinates: Array<[number, number]> }; properties: { times: string[] } }>(
    p,
    `/v1/devices/${encodeURIComponent(deviceId)}/track?since=${since}&until=${newest.ms + 1000}`,
  );
  expect(track.status).toBe(200);
  expect(track.body).toMatchObject({ type: 'Feature', geometry: { type: 'LineString' } });
  for (const f of fixes) {
    const at = track.body.properties.times.indexOf(new Date(f.ms).toISOString());
    expect(at, `fix at ${new Date(f.ms).toISOString()} on the track`).toBeGreaterThanOrEqual(0);
    expect(track.body.geometry.coordinates[at]).toEqual([f.lon, f.lat]);
  }
}

async function storedPositions(projectId: string): Promise<{ rows: number; ids: number }> {
  const [r] = await ch().query<{ rows: number; ids: number }>(
    "SELECT count() AS rows, uniqExact(id) AS ids FROM events WHERE project_id = {p:String} AND name = 'position'",
    { p: projectId },
  );
  return { rows: Number(r!.rows), ids: Number(r!.ids) };
}

async function trackerHealth(): Promise<Health['trackers']> {
  const res = await SELF.fetch('http://gw/admin/health', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return ((await res.json()) as Health).trackers;
}

/** A device namespace whose objects cannot be reached: the rows are not durable, and must be sent again. */
const unreachableStub = {
  ingest: async () => {
    throw new Error('device object unreachable');
  },
};
const unreachableDevices = {
  ...env,
  DEVICE: { idFromName: (name: string) => env.DEVICE.idFromName(name), get: () => unreachableStub, getByName: () => unreachableStub },
} as unknown as Env;

describe('Overland', () => {
  it('stores a batch of 200 as positions in km/h and metres, without `current`, `trip` or log lines, and answers exactly {"result":"ok"}', async () => {
    const p = await createProject('overland');
    const device = 'iphone-overland';
    const { body, points } = overlandBatch(device, 200, Date.now() - 4 * 3_600_000);
    // The app queues its log lines and finished-trip summaries among the locations.
    const log = clone(overlandLog);
    log.properties.timestamp = utcSeconds(points[10]!.ms + 1000);
    const tripEnd = clone(overlandTripEnd);
    tripEnd.properties.timestamp = utcSeconds(points[150]!.ms + 1000);
    body.locations.splice(10, 0, log);
    body.locations.splice(151, 0, tripEnd);

    const res = await postOverland(p, body);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"result":"ok"}');

    const stored = await positionsOf(p, device, 200);
    expect(stored).toHaveLength(200);
    expect(stored.map((e) => [Date.parse(e.createdAt), e.properties.lon, e.properties.lat])).toEqual(points.map((pt) => [pt.ms, pt.lon, pt.lat]));
    // `current` and `trip.current_location` sit at (-121.5, 38.5): never stored.
    expect(stored.some((e) => e.properties.lon === -121.5)).toBe(false);

    const [first, second, tenth] = [stored[0]!, stored[1]!, stored[9]!];
    expect(first.properties).toEqual({
      lat: points[0]!.lat,
      lon: points[0]!.lon,
      speed: 14.4, // 4 m/s
      heading: 90,
      accuracy: 5,
      // vertical_accuracy -1: the altitude is invalid and left out.
      vertical_accuracy: -1,
      speed_accuracy: 0.5,
      course_accuracy: 12.3,
      motion: ['driving', 'stationary'],
      pauses: false,
      activity: 'other_navigation',
      desired_accuracy: 100,
      deferred: 1000,
      significant_change: 'disabled',
      locations_in_payload: 200,
      battery_state: 'charging',
      battery_level: 0.89,
      wifi: '',
    });
    expect(second.properties).toMatchObject({ speed: 18, accuracy: 6, altitude: 21, vertical_accuracy: 3 });
    // iOS reports an unknown speed and accuracy as -1: left out, not stored as -3.6 km/h.
    expect(tenth.properties).not.toHaveProperty('speed');
    expect(tenth.properties).not.toHaveProperty('accuracy');
    expect(stored.every((e) => e.deviceId === device)).toBe(true);
    await expectInFleet(p, device, [points[0]!, points[100]!, points[199]!]);
  });

  it('stores each point of a batch once however often the app resends it', async () => {
    const p = await createProject('overland-resend');
    const { body } = overlandBatch('iphone-resend', 200, Date.now() - 5 * 3_600_000);
    const text = JSON.stringify(body);
    for (let i = 0; i < 3; i++) {
      const res = await postOverland(p, text);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('{"result":"ok"}');
    }
    await waitUntil(() => storedPositions(p.id), (c) => c.ids === 200);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await storedPositions(p.id)).toEqual({ rows: 200, ids: 200 });
  });

  it('takes the device from ?device_id= when the app sends none, and refuses a batch with no device at all', async () => {
    const p = await createProject('overland-device');
    const { body } = overlandBatch('', 3, Date.now() - 3_600_000);
    const none = await postOverland(p, body);
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: { code: string } }).error.code).toBe('device_id_required');

    const res = await postOverland(p, body, '?device_id=ipad-7');
    expect(await res.text()).toBe('{"result":"ok"}');
    expect(await positionsOf(p, 'ipad-7', 3)).toHaveLength(3);
  });

  it('acknowledges a batch with malformed rows, stores the rest and counts the rejected rows for the operator', async () => {
    const p = await createProject('overland-bad');
    const { body, points } = overlandBatch('iphone-bad', 6, Date.now() - 2 * 3_600_000);
    const locations = body.locations as Array<Record<string, any>>;
    delete locations[1]!.geometry.coordinates; // missing coordinates
    locations[2]!.geometry.coordinates = ['-122.03', 37.33]; // a non-numeric longitude
    locations[3]!.properties.speed = 'fast'; // a non-numeric speed
    locations[4]!.geometry.coordinates = [-122.03, 95]; // latitude out of range

    const res = await postOverland(p, body);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"result":"ok"}');
    const stored = await positionsOf(p, 'iphone-bad', 2);
    expect(stored.map((e) => Date.parse(e.createdAt))).toEqual([points[0]!.ms, points[5]!.ms]);

    const health = await trackerHealth();
    const row = health.recent.find((r) => r.projectId === p.id);
    expect(row).toMatchObject({ source: 'overland', count: 4, lastReason: 'validation' });
    expect(row!.lastError).toMatch(/lat must be between -90 and 90/);
    expect(health.rejectedRows).toBeGreaterThanOrEqual(4);
    // The project sees its own rejected rows in the read API, and no other project's.
    const mine = await getJson<{ rejectedRows: number; sources: Array<{ source: string; count: number; lastReason: string }> }>(p, '/v1/rejections');
    expect(mine.status).toBe(200);
    expect(mine.body).toMatchObject({ rejectedRows: 4, sources: [{ source: 'overland', count: 4, lastReason: 'validation' }] });
    const other = await createProject('overland-clean');
    expect((await getJson(other, '/v1/rejections')).body).toEqual({ rejectedRows: 0, sources: [] });
    // Sent again, the same rows are rejected (and counted) again; the stored ones are duplicates.
    await postOverland(p, body);
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)!.count).toBe(8);
    expect(await storedPositions(p.id)).toEqual({ rows: 2, ids: 2 });
  });

  it('answers 503 with Retry-After while the positions cannot be made durable, so the app keeps its copy', async () => {
    const p = await createProject('overland-outage');
    const { body } = overlandBatch('iphone-outage', 20, Date.now() - 3_600_000);
    const res = await postOverland(p, body, '', unreachableDevices);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(((await res.json()) as { error: { code: string; details: { retryable: number } } }).error).toMatchObject({
      code: 'storage_unavailable',
      details: { retryable: 20 },
    });
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)).toBeUndefined();

    const again = await postOverland(p, body);
    expect(await again.text()).toBe('{"result":"ok"}');
    expect(await positionsOf(p, 'iphone-outage', 20)).toHaveLength(20);
  });
});

describe('OwnTracks', () => {
  it('stores a location message sent with Basic auth and X-Limit-U/D, answers [] and ignores transitions and unknown types', async () => {
    const p = await createProject('owntracks');
    const tst = Math.floor(Date.now() / 1000) - 600;
    const headers = { ...basic(p.clientId, p.clientSecret), 'content-type': 'application/json', 'x-limit-u': p.clientId, 'x-limit-d': 'phone' };
    const send = (message: unknown, extra: Record<string, string> = {}) => post('/ingest/owntracks', { headers: { ...headers, ...extra }, body: JSON.stringify(message) });

    const location = { ...owntracksLocation, tst, created_at: tst + 10 };
    const res = await send(location);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('[]');
    for (const message of [{ ...owntracksTransition, tst: tst + 100 }, { _type: 'lwt', tst }, { _type: 'somethingnew', lat: 1, lon: 2, tst }]) {
      const ack = await send(message);
      expect(ack.status).toBe(200);
      expect(await ack.json()).toEqual([]);
    }
    // An empty POST (a deleted friend) is acknowledged too.
    expect(await (await post('/ingest/owntracks', { headers, body: '' })).json()).toEqual([]);

    const [fix] = await positionsOf(p, 'phone', 1);
    expect(Date.parse(fix!.createdAt)).toBe(tst * 1000);
    expect(fix!.properties).toEqual({
      lat: 48.85833,
      lon: 2.29513,
      speed: 31, // vel is km/h already
      heading: 270,
      accuracy: 13,
      altitude: 52,
      BSSID: 'b0:f2:8:45:94:33',
      SSID: 'Home Wifi',
      batt: 83,
      bs: 1,
      conn: 'w',
      created_at: tst + 10,
      inregions: ['Home'],
      m: 1,
      t: 'u',
      tid: 'JJ',
      topic: 'owntracks/jane/phone',
      vac: 4,
    });
    await expectInFleet(p, 'phone', [{ ms: tst * 1000, lat: 48.85833, lon: 2.29513 }]);

    // Without X-Limit-D the device is the tracker id.
    const { 'x-limit-d': _, ...noDevice } = headers;
    expect(await (await post('/ingest/owntracks', { headers: noDevice, body: JSON.stringify({ ...location, tst: tst + 60, lat: 48.86 }) })).json()).toEqual([]);
    expect(await positionsOf(p, 'JJ', 1)).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 1000));
    expect(await storedPositions(p.id)).toEqual({ rows: 2, ids: 2 });
  });

  it('stores the good messages of a list that holds one that is not an object, and counts that one', async () => {
    const p = await createProject('owntracks-list');
    const tst = Math.floor(Date.now() / 1000) - 600;
    const headers = { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'ot-list' };
    const res = await post('/ingest/owntracks', { headers, body: JSON.stringify([{ ...owntracksLocation, tst }, null, 'x', { ...owntracksLocation, tst: tst + 60 }]) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([]);
    expect(await positionsOf(p, 'ot-list', 2)).toHaveLength(2);
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)).toMatchObject({ source: 'owntracks', count: 2, lastReason: 'validation', lastError: expect.stringMatching(/JSON object/) });
    // Refused messages count toward the 2000 a request may hold.
    const nulls = await post('/ingest/owntracks', { headers, body: JSON.stringify(Array(2001).fill(null)) });
    expect(nulls.status).toBe(413);
    expect(((await nulls.json()) as { error: { code: string } }).error.code).toBe('too_many_events');
    // A body that is no message at all is still the client's fault as a whole.
    const scalar = await post('/ingest/owntracks', { headers, body: '42' });
    expect(scalar.status).toBe(400);
    expect(((await scalar.json()) as { error: { code: string } }).error.code).toBe('invalid_request');
  });

  it('stores the messages of a list that name their device when one names none, and counts that one; a list naming none is refused', async () => {
    const p = await createProject('owntracks-no-device');
    const tst = Math.floor(Date.now() / 1000) - 600;
    const { tid: _tid, ...withoutTid } = owntracksLocation as Record<string, unknown>;
    const headers = { ...bearer(p), 'content-type': 'application/json' };
    const res = await post('/ingest/owntracks', { headers, body: JSON.stringify([{ ...owntracksLocation, tid: 'nd', tst }, { ...withoutTid, tst: tst + 60 }]) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([]);
    expect((await positionsOf(p, 'nd', 1)).map((e) => Date.parse(e.createdAt))).toEqual([tst * 1000]);
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)).toMatchObject({ source: 'owntracks', count: 1, lastReason: 'validation', lastError: expect.stringMatching(/no device id/) });
    const none = await post('/ingest/owntracks', { headers, body: JSON.stringify([{ ...withoutTid, tst }]) });
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: { code: string } }).error.code).toBe('device_id_required');
  });

  it("takes the device from the endpoint URL's ?d= when the app sends no X-Limit-D, before its tid", async () => {
    const p = await createProject('owntracks-d');
    const tst = Math.floor(Date.now() / 1000) - 600;
    const res = await post('/ingest/owntracks?d=van-7', { headers: { ...bearer(p), 'content-type': 'application/json' }, body: JSON.stringify({ ...owntracksLocation, tst }) });
    expect(await res.json()).toEqual([]);
    expect(await positionsOf(p, 'van-7', 1)).toHaveLength(1);
    // X-Limit-D still wins over it.
    await post('/ingest/owntracks?d=van-7', { headers: { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'van-8' }, body: JSON.stringify({ ...owntracksLocation, tst: tst + 60 }) });
    expect(await positionsOf(p, 'van-8', 1)).toHaveLength(1);
    expect(await positionsOf(p, 'van-7', 1)).toHaveLength(1);
  });

  it('answers 503 rate_limited with Retry-After once the client spends its budget, so no app deletes its copy', async () => {
    const p = await createProject('owntracks-limit');
    const headers = { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'ot-limit' };
    let limited: Response | undefined;
    // Past the test budget (120 per minute per client; vitest.config.mts), in parallel waves of ignored messages.
    for (let wave = 0; wave < 40 && !limited; wave++) {
      const responses = await Promise.all(Array.from({ length: 10 }, () => post('/ingest/owntracks', { headers, body: '{"_type":"lwt"}' })));
      for (const res of responses) {
        if (res.status !== 200) limited ??= res;
        else await res.body?.cancel();
      }
    }
    expect(limited?.status).toBe(503);
    expect(Number(limited!.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await limited!.json()) as { error: { code: string } }).error.code).toBe('rate_limited');
  });
});

describe('Traccar Client and OsmAnd', () => {
  it('stores Traccar Client JSON sent with ?token=, speed converted from m/s, its other fields kept', async () => {
    const p = await createProject('traccar');
    const at = new Date(Date.now() - 900_000).toISOString();
    const body = clone(traccarClient);
    body.location.timestamp = at;
    const res = await post(`/ingest/traccar?token=${token(p)}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(res.status).toBe(200);

    const [fix] = await positionsOf(p, '48241179', 1);
    expect(fix!.createdAt).toBe(at);
    expect(fix!.properties).toEqual({
      lat: 14.6055938,
      lon: -90.9198331,
      speed: 34.02, // 9.45 m/s
      heading: 54.14,
      accuracy: 12.5,
      altitude: 1540.3,
      is_moving: true,
      odometer: 14351.9,
      event: 'motionchange',
      battery: { level: 0.89, is_charging: false },
      activity: { type: 'in_vehicle' },
      extras: {},
    });
    await expectInFleet(p, '48241179', [{ ms: Date.parse(at), lat: 14.6055938, lon: -90.9198331 }]);
  });

  it('stores OsmAnd-protocol fixes from a GET and from a form POST, speed in knots unless speedUnit says otherwise', async () => {
    const p = await createProject('osmand');
    const t0 = Date.now() - 1_800_000;
    const seconds = Math.floor(t0 / 1000);
    // Traccar Client < 9 and GPSLogger: a GET with query parameters, speed in knots.
    const get = await post(
      `/ingest/traccar?id=osmand-1&timestamp=${seconds}&lat=52.5163&lon=13.3777&speed=10&bearing=181.5&altitude=38&accuracy=4.5&batt=77&charge=true&hdop=0.9&token=${token(p)}`,
      { method: 'GET' },
    );
    expect(get.status).toBe(200);
    // The OsmAnd app: its speed is m/s, so its URL says speedUnit=ms; epoch milliseconds.
    const ms = await post(`/ingest/traccar?id=osmand-1&lat=52.5170&lon=13.3790&timestamp=${t0 + 60_000}&speed=5&speedUnit=ms&token=${token(p)}`, { method: 'GET' });
    expect(ms.status).toBe(200);
    // A form POST, the time as `yyyy-MM-dd HH:mm:ss` (UTC), credentials as HTTP Basic.
    const formTime = new Date(Math.floor((t0 + 120_000) / 1000) * 1000);
    const form = new URLSearchParams({ deviceid: 'osmand-1', lat: '52.518', lon: '13.380', timestamp: formTime.toISOString().slice(0, 19).replace('T', ' '), speed: '0', valid: 'true', driverUniqueId: 'D-17' });
    const posted = await post('/ingest/traccar', {
      headers: { ...basic(p.clientId, p.clientSecret), 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    });
    expect(posted.status).toBe(200);

    const stored = await positionsOf(p, 'osmand-1', 3);
    expect(stored.map((e) => Date.parse(e.createdAt))).toEqual([seconds * 1000, t0 + 60_000, formTime.getTime()]);
    expect(stored[0]!.properties).toEqual({ lat: 52.5163, lon: 13.3777, speed: 18.52, heading: 181.5, altitude: 38, accuracy: 4.5, batt: 77, charge: true, hdop: 0.9 });
    expect(stored[1]!.properties).toEqual({ lat: 52.517, lon: 13.379, speed: 18 });
    expect(stored[2]!.properties).toEqual({ lat: 52.518, lon: 13.38, speed: 0, valid: true, driverUniqueId: 'D-17' });
    await expectInFleet(p, 'osmand-1', [
      { ms: seconds * 1000, lat: 52.5163, lon: 13.3777 },
      { ms: t0 + 60_000, lat: 52.517, lon: 13.379 },
      { ms: formTime.getTime(), lat: 52.518, lon: 13.38 },
    ]);
  });

  it('never stores the token or secret the app carries', async () => {
    const p = await createProject('traccar-secret');
    const at = Date.now() - 600_000;
    await post(`/ingest/traccar?id=leaky&lat=1.5&lon=2.5&timestamp=${at}&token=${token(p)}`, { method: 'GET' });
    const body = clone(traccarClient);
    body.location.timestamp = new Date(at + 1000).toISOString();
    body.device_id = 'leaky';
    await post(`/ingest/traccar?token=${token(p)}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    await positionsOf(p, 'leaky', 2);
    for (const table of ['events', 'event_payloads']) {
      const column = table === 'events' ? 'properties' : 'payload';
      const [r] = await ch().query<{ rows: number; leaks: number }>(
        `SELECT count() AS rows, countIf(position(${column}, {s:String}) > 0 OR position(${column}, 'token') > 0) AS leaks FROM ${table} WHERE project_id = {p:String}`,
        { p: p.id, s: p.clientSecret },
      );
      expect(Number(r!.rows)).toBeGreaterThanOrEqual(2);
      expect(Number(r!.leaks)).toBe(0);
    }
  });

  it('rejects and counts an OsmAnd fix with a non-numeric or out-of-range coordinate, and stores the good ones', async () => {
    const p = await createProject('osmand-bad');
    const at = Date.now() - 600_000;
    const send = (q: string) => post(`/ingest/traccar?id=bad-1&timestamp=${at}&${q}&token=${token(p)}`, { method: 'GET' });
    expect((await send('lat=abc&lon=13.4')).status).toBe(200);
    expect((await send('lat=-91&lon=13.4')).status).toBe(200);
    expect((await send('lon=13.4')).status).toBe(200);
    expect((await send('lat=52.1&lon=13.4')).status).toBe(200);
    expect(await positionsOf(p, 'bad-1', 1)).toHaveLength(1);
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)).toMatchObject({ source: 'traccar', count: 3, lastReason: 'validation', lastError: expect.stringMatching(/lat is required/) });
  });
});

describe('Traccar Client and OsmAnd as the apps really send', () => {
  it("takes the token from the path for Traccar Client (iOS), which replaces the URL's query with its own", async () => {
    const p = await createProject('traccar-path');
    const at = Math.floor(Date.now() / 1000) - 600;
    // What the iOS app sends to a server URL of …/ingest/traccar/<clientId>:<clientSecret>.
    const res = await post(`/ingest/traccar/${token(p)}?id=ios-1&timestamp=${at}&lat=52.520000&lon=13.405000&speed=10.0&bearing=90.0&altitude=34.0&accuracy=5.0&batt=80.0`, { method: 'GET' });
    expect(res.status).toBe(200);
    const [fix] = await positionsOf(p, 'ios-1', 1);
    expect(fix!.properties).toEqual({ lat: 52.52, lon: 13.405, speed: 18.52, heading: 90, altitude: 34, accuracy: 5, batt: 80 });
    // An empty token parameter next to it does not hide it.
    expect((await post(`/ingest/traccar/${token(p)}?token=&id=ios-1&timestamp=${at + 60}&lat=52.53&lon=13.405`, { method: 'GET' })).status).toBe(200);
    expect(await positionsOf(p, 'ios-1', 2)).toHaveLength(2);
    // A wrong token in the path is refused, with a Basic challenge an app with URL credentials answers.
    const wrong = await post(`/ingest/traccar/${encodeURIComponent(`${p.clientId}:nope`)}?id=ios-1&lat=1&lon=2`, { method: 'POST' });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
    expect(((await wrong.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
  });

  it('leaves out the accuracy of 0 m that Traccar Client (Android) sends for every GPS fix', async () => {
    const p = await createProject('traccar-acc0');
    const at = Math.floor(Date.now() / 1000) - 600;
    expect((await post(`/ingest/traccar?token=${token(p)}&id=and-1&timestamp=${at}&lat=52.5&lon=13.4&speed=0.0&bearing=0.0&altitude=0.0&accuracy=0.0&batt=55.0`, { method: 'POST' })).status).toBe(200);
    const [fix] = await positionsOf(p, 'and-1', 1);
    expect(fix!.properties).not.toHaveProperty('accuracy');
    expect(fix!.properties).toMatchObject({ lat: 52.5, lon: 13.4, speed: 0, heading: 0, altitude: 0, batt: 55 });
  });

  it("acknowledges a heartbeat (a request with no position in it) without storing or counting a row", async () => {
    const p = await createProject('traccar-heartbeat');
    const at = Math.floor(Date.now() / 1000) - 600;
    const beat = await post(`/ingest/traccar?token=${token(p)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `id=hb-1&timestamp=${at}&batt=77&charge=false`,
    });
    expect(beat.status).toBe(200);
    expect((await post(`/ingest/traccar?token=${token(p)}&id=hb-1&timestamp=${at + 60}&lat=52.5&lon=13.4`, { method: 'GET' })).status).toBe(200);
    expect(await positionsOf(p, 'hb-1', 1)).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 500));
    expect(await storedPositions(p.id)).toEqual({ rows: 1, ids: 1 });
    expect((await trackerHealth()).recent.find((r) => r.projectId === p.id)).toBeUndefined();
  });

  it('stores nothing for a HEAD (a link checker or prefetch) and answers 405', async () => {
    const p = await createProject('traccar-head');
    const at = Math.floor(Date.now() / 1000) - 600;
    const head = await post(`/ingest/traccar?token=${token(p)}&id=head-1&timestamp=${at}&lat=1&lon=1`, { method: 'HEAD' });
    expect(head.status).toBe(405);
    expect(head.headers.get('allow')).toBe('GET, POST');
    expect((await post(`/ingest/traccar?token=${token(p)}&id=head-1&timestamp=${at + 60}&lat=2&lon=2`, { method: 'GET' })).status).toBe(200);
    const fixes = await positionsOf(p, 'head-1', 1);
    await new Promise((r) => setTimeout(r, 500));
    expect(await storedPositions(p.id)).toEqual({ rows: 1, ids: 1 });
    expect(fixes[0]!.properties).toMatchObject({ lat: 2, lon: 2 });
  });

  it("refuses a speedUnit that names one of an object's own properties", async () => {
    const p = await createProject('traccar-unit');
    for (const unit of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      const res = await post(`/ingest/traccar?token=${token(p)}&id=u-1&lat=52&lon=13&speed=10&speedUnit=${unit}`, { method: 'GET' });
      expect(res.status, unit).toBe(400);
      expect(((await res.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'invalid_request', message: expect.stringMatching(/speedUnit must be one of kn, kmh, ms/) });
    }
  });
});

describe("a position's raw payload is the app's own row", () => {
  /** The stored payload of every position of a device, oldest first, as GET /v1/events/:id/payload answers it. */
  async function payloadsOf(p: TestProject, deviceId: string, n: number): Promise<unknown[]> {
    const out: unknown[] = [];
    for (const e of await positionsOf(p, deviceId, n)) {
      const r = await getJson<{ id: string; payload: unknown; source: string }>(p, `/v1/events/${e.id}/payload`);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ id: e.id, source: 'clickhouse' });
      out.push(r.body.payload);
    }
    return out;
  }

  it('Overland: each location feature as sent (not `current` or `trip`); OwnTracks: the location message', async () => {
    const p = await createProject('raw-trackers');
    const { body } = overlandBatch('raw-overland', 3, Date.now() - 3_600_000);
    expect((await postOverland(p, body)).status).toBe(200);
    expect(await payloadsOf(p, 'raw-overland', 3)).toEqual(body.locations);

    const tst = Math.floor(Date.now() / 1000) - 600;
    const headers = { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'raw-phone' };
    const messages = [{ ...owntracksLocation, tst }, { ...owntracksTransition, tst: tst + 5 }, { ...owntracksLocation, tst: tst + 60, lat: 48.859 }];
    expect((await post('/ingest/owntracks', { headers, body: JSON.stringify(messages) })).status).toBe(200);
    expect(await payloadsOf(p, 'raw-phone', 2)).toEqual([messages[0], messages[2]]);
  });

  it("refuses per row an app's row that cannot be stored as sent (nested past the limit, a number beyond a double), keeping the others", async () => {
    const p = await createProject('raw-hostile');
    const { body } = overlandBatch('raw-deep', 4, Date.now() - 3_600_000);
    // Parts of a feature the mapped position never reads: a field of its geometry, a field of its own.
    const [first, second, third, fourth] = body.locations.map((f) => JSON.stringify(f));
    const deep = first!.replace('"geometry":{', `"geometry":{"deep":${'['.repeat(50_000)}${']'.repeat(50_000)},`);
    const huge = second!.replace('"type":"Feature"', '"type":"Feature","x":1e400');
    // Small, but deeper than a row may nest (the properties' 8 levels and 3 around them).
    const nested = third!.replace('"geometry":{', `"geometry":{"deep":${'['.repeat(12)}${']'.repeat(12)},`);
    const res = await postOverland(p, `{"locations":[${deep},${huge},${nested},${fourth}]}`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ result: 'ok' });
    expect(await payloadsOf(p, 'raw-deep', 1)).toEqual([body.locations[3]]);
    const health = await (await SELF.fetch('http://gw/admin/health', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json<Health>();
    expect(health.trackers.recent.find((r) => r.projectId === p.id)).toMatchObject({ source: 'overland', count: 3, lastReason: 'validation' });

    // A fix time nested past the limit: refused and counted alone, not a 500.
    const headers = { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'raw-deep-phone' };
    const tst = Math.floor(Date.now() / 1000) - 600;
    const list = `[{"_type":"location","lat":48.1,"lon":2.1,"tst":${'['.repeat(50_000)}${']'.repeat(50_000)}},${JSON.stringify({ ...owntracksLocation, tst })}]`;
    const ot = await post('/ingest/owntracks', { headers, body: list });
    expect(ot.status).toBe(200);
    expect(await payloadsOf(p, 'raw-deep-phone', 1)).toEqual([{ ...owntracksLocation, tst }]);
  });

  it('Traccar Client: the request with that one location; OsmAnd: its parameters; never the credential', async () => {
    const p = await createProject('raw-traccar');
    const at = Date.now() - 900_000;
    const one = clone(traccarClient);
    one.location.timestamp = new Date(at).toISOString();
    one.device_id = 'raw-traccar';
    // A token in the body is no way to authenticate, but an app could carry one there, at any depth: it is not stored.
    const secret = `${p.clientId}:${p.clientSecret}`;
    const withToken = { ...one, token: secret, location: { ...one.location, token: secret, coords: { ...one.location.coords, token: secret }, extras: { token: secret, trip: 7 } } };
    expect((await post(`/ingest/traccar?token=${token(p)}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(withToken) })).status).toBe(200);
    const second = { ...clone(traccarClient).location, timestamp: new Date(at + 60_000).toISOString() };
    const third = { ...clone(traccarClient).location, timestamp: new Date(at + 120_000).toISOString() };
    const list = { device_id: 'raw-traccar', location: [{ ...second, token: secret }, third] };
    expect((await post(`/ingest/traccar?token=${token(p)}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(list) })).status).toBe(200);
    expect(await payloadsOf(p, 'raw-traccar', 3)).toEqual([{ ...one, location: { ...one.location, extras: { trip: 7 } } }, { device_id: 'raw-traccar', location: second }, { device_id: 'raw-traccar', location: third }]);
    // The nested field stays in the properties, without its token.
    expect((await positionsOf(p, 'raw-traccar', 3))[0]!.properties.extras).toEqual({ trip: 7 });

    const seconds = Math.floor(at / 1000) + 300;
    expect((await post(`/ingest/traccar?id=raw-osmand&timestamp=${seconds}&lat=52.5163&lon=13.3777&speed=10&batt=77&token=${token(p)}`, { method: 'GET' })).status).toBe(200);
    expect(await payloadsOf(p, 'raw-osmand', 1)).toEqual([{ id: 'raw-osmand', timestamp: String(seconds), lat: '52.5163', lon: '13.3777', speed: '10', batt: '77' }]);

    for (const [table, column] of [['event_payloads', 'payload'], ['events', 'properties']]) {
      const [r] = await ch().query<{ leaks: number }>(`SELECT countIf(position(${column}, {s:String}) > 0 OR position(${column}, 'token') > 0) AS leaks FROM ${table} WHERE project_id = {p:String}`, {
        p: p.id,
        s: p.clientSecret,
      });
      expect(Number(r!.leaks), table).toBe(0);
    }
  });
});

describe('bad requests', () => {
  it('answers 401 for missing or wrong credentials in every form an app carries them', async () => {
    const p = await createProject('trackers-401');
    const other = await createProject('trackers-401-other');
    const json = { 'content-type': 'application/json' };
    const cases: Array<[string, { method?: string; headers?: Record<string, string>; body?: string }]> = [
      ['/ingest/overland', { headers: json, body: '{"locations":[]}' }],
      ['/ingest/overland', { headers: { ...json, authorization: `Bearer ${p.clientId}:${other.clientSecret}` }, body: '{"locations":[]}' }],
      ['/ingest/overland', { headers: { ...json, authorization: `Bearer ${p.clientSecret}` }, body: '{"locations":[]}' }],
      ['/ingest/owntracks', { headers: { ...json, ...basic(p.clientId, 'sec_wrong') }, body: '{"_type":"lwt"}' }],
      ['/ingest/owntracks', { headers: { ...json, authorization: 'Basic !!!' }, body: '{"_type":"lwt"}' }],
      [`/ingest/traccar?id=x&lat=1&lon=2&token=${encodeURIComponent(`${p.clientId}:nope`)}`, { method: 'GET' }],
      ['/ingest/traccar?id=x&lat=1&lon=2', { method: 'GET' }],
    ];
    for (const [path, init] of cases) {
      const res = await post(path, init);
      expect(res.status, path).toBe(401);
      expect(res.headers.get('www-authenticate'), path).toBe('Basic realm="Driftline", charset="UTF-8"');
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    }
    // The right pair in the OpenPanel headers works on these routes too.
    const ok = await post('/ingest/overland', { headers: { ...p.headers }, body: '{"locations":[]}' });
    expect(await ok.text()).toBe('{"result":"ok"}');
  });

  it('answers a coded 400 for a body that is not JSON', async () => {
    const p = await createProject('trackers-400');
    const json = { 'content-type': 'application/json' };
    const cases: Array<[string, Record<string, string>]> = [
      ['/ingest/overland', { ...json, ...bearer(p) }],
      ['/ingest/owntracks', { ...json, ...basic(p.clientId, p.clientSecret), 'x-limit-d': 'phone' }],
      [`/ingest/traccar?token=${token(p)}`, json],
    ];
    for (const [path, headers] of cases) {
      const res = await post(path, { headers, body: '{"locations": [ {"type": "Feat' });
      expect(res.status, path).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    }
    const shape = await postOverland(p, { points: [] });
    expect(shape.status).toBe(400);
    expect(((await shape.json()) as { error: { code: string } }).error.code).toBe('invalid_request');
  });
});

describe('fix times no app sends', () => {
  it('rejects and counts a fix whose time is an object, in every app format, and stores the good fix beside it', async () => {
    const p = await createProject('trackers-object-time');
    const nowS = Math.floor(Date.now() / 1000) - 600;
    const hostile = { toString: 0 };
    const overland = overlandBatch('ov-time', 2, nowS * 1000);
    (overland.body.locations as Array<Record<string, any>>)[1]!.properties.timestamp = hostile;
    expect((await postOverland(p, overland.body)).status).toBe(200);
    const owntracks = [{ ...owntracksLocation, tst: nowS }, { ...owntracksLocation, tst: hostile }];
    const ot = await post('/ingest/owntracks', { headers: { ...bearer(p), 'content-type': 'application/json', 'x-limit-d': 'ot-time' }, body: JSON.stringify(owntracks) });
    expect(ot.status).toBe(200);
    const traccar = clone(traccarClient) as unknown as { device_id: string; location: Record<string, unknown> };
    traccar.device_id = 'tc-time';
    traccar.location.timestamp = hostile;
    expect((await post(`/ingest/traccar?token=${token(p)}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(traccar) })).status).toBe(200);
    expect(await positionsOf(p, 'ov-time', 1)).toHaveLength(1);
    expect(await positionsOf(p, 'ot-time', 1)).toHaveLength(1);
    const rows = await getJson<{ rejectedRows: number }>(p, '/v1/rejections');
    expect(rows.body.rejectedRows).toBe(3);
    expect(await storedPositions(p.id)).toEqual({ rows: 2, ids: 2 });
  });
});

describe('the adapters\' pure core', () => {
  it('reads every time format the apps send, and refuses impossible dates', () => {
    const ms = Date.UTC(2024, 2, 5, 14, 7, 9);
    expect(parseFixTime(ms / 1000)).toBe(ms); // epoch seconds (OwnTracks tst)
    expect(parseFixTime(ms)).toBe(ms); // epoch milliseconds (above 10^11)
    expect(parseFixTime(String(ms / 1000))).toBe(ms);
    expect(parseFixTime('2024-03-05T14:07:09Z')).toBe(ms);
    expect(parseFixTime('2024-03-05T14:07:09.250Z')).toBe(ms + 250);
    expect(parseFixTime('2024-03-05T07:07:09-0700')).toBe(ms); // Overland's README
    expect(parseFixTime('2024-03-05T19:37:09+05:30')).toBe(ms);
    expect(parseFixTime('2024-03-05 14:07:09')).toBe(ms); // OsmAnd, UTC
    for (const bad of ['2024-02-31T00:00:00Z', '2024-03-05T25:00:00Z', 'yesterday', '', -5, true, null]) expect(parseFixTime(bad)).toBeNull();
  });

  it('keys a fix without an id by device, time and coordinates', () => {
    expect(fixEventId('d1', 1000, 1.5, 2.5)).toBe(fixEventId('d1', 1000, 1.5, 2.5));
    expect(new Set([fixEventId('d1', 1000, 1.5, 2.5), fixEventId('d2', 1000, 1.5, 2.5), fixEventId('d1', 1001, 1.5, 2.5), fixEventId('d1', 1000, 1.5, 2.6)]).size).toBe(4);
    const params = new Map([['id', 'd1'], ['lat', '1.5'], ['lon', '2.5'], ['timestamp', '1700000000'], ['token', 'c:s']]);
    const [a] = adaptOsmAnd(params).events;
    const [b] = adaptOsmAnd(new Map([...params, ['batt', '80']])).events;
    expect(a!.payload.properties.__eventId).toBe(b!.payload.properties.__eventId);
    expect(a!.payload.properties).not.toHaveProperty('token');
  });
});
