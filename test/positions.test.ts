// Positions through /track/batch: each `position` row is checked on its own (coordinates, types);
// a bad fix is rejected with a message naming the field, the others are stored.
import { describe, expect, it } from 'vitest';
import { createProject, getJson, postBatch, trackEvent, waitUntil } from './helpers';

type BatchResult = { accepted: number; duplicates: number; rejected: Array<{ index: number; reason: string; error: string; retryable: boolean }> };
type EventsBody = { events: Array<{ name: string; createdAt: string; properties: Record<string, unknown> }> };

describe('position events', () => {
  it('stores good fixes and rejects out-of-range, non-numeric and missing coordinates per row', async () => {
    const p = await createProject('positions');
    const base = Date.now() - 30 * 60_000;
    const at = (i: number) => new Date(base + i * 10_000).toISOString();
    const device = 'van-7';
    const fix = (i: number, props: Record<string, unknown>) => trackEvent('position', { __deviceId: device, __timestamp: at(i), ...props });
    const res = await postBatch(p, {
      events: [
        fix(0, { lat: 52.52, lon: 13.405, speed: 42.5, heading: 270, accuracy: 8, altitude: 34, ignition: true, driver: 'ana' }),
        fix(1, { lat: 95, lon: 13.4 }),
        fix(2, { lat: 52.53, lon: '13.41' }),
        fix(3, { lat: 52.54 }),
        fix(4, { lat: -33.86, lon: 151.2, speed: -3 }),
        fix(5, { lat: 0, lon: -180 }),
        trackEvent('reading', { __deviceId: device, __timestamp: at(6), lat: 'not a position' }),
      ],
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as BatchResult;
    expect(body.accepted).toBe(3);
    expect(body.rejected.map((r) => [r.index, r.reason, r.retryable])).toEqual([
      [1, 'validation', false],
      [2, 'validation', false],
      [3, 'validation', false],
      [4, 'validation', false],
    ]);
    expect(body.rejected[0]!.error).toMatch(/lat must be between -90 and 90/);
    expect(body.rejected[1]!.error).toMatch(/lon must be a finite number/);
    expect(body.rejected[2]!.error).toMatch(/lon is required/);
    expect(body.rejected[3]!.error).toMatch(/speed must be ≥ 0/);

    const read = await waitUntil(
      () => getJson<EventsBody>(p, `/v1/events?deviceId=${device}&limit=100`),
      (r) => r.body.events.filter((e) => e.name !== 'session_start' && e.name !== 'session_end').length >= 3,
    );
    const stored = read.body.events.filter((e) => e.name === 'position').sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    expect(stored.map((e) => [e.properties.lat, e.properties.lon])).toEqual([
      [52.52, 13.405],
      [0, -180],
    ]);
    expect(stored[0]!.properties).toEqual({ lat: 52.52, lon: 13.405, speed: 42.5, heading: 270, accuracy: 8, altitude: 34, ignition: true, driver: 'ana' });
    expect(stored[0]!.createdAt).toBe(at(0));
    // Only events named `position` are positions: other events keep any properties they like.
    expect(read.body.events.filter((e) => e.name === 'reading')).toHaveLength(1);
  });
});
