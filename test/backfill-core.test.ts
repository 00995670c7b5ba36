// Pure cores of the backfill engine and the legacy import: transitions, progress, ids, row mapping.
import { describe, expect, it } from 'vitest';
import { advance, chunkRetryDelaySec, JOB_STATES, nextState, type JobAction } from '../src/jobs/states';
import { LegacyImportParams, pacing } from '../src/legacy/params';
import { legacyRef } from '../src/legacy/realtime';
import { keyText, legacyEventId, translateRow, UnusableLegacyRow } from '../src/legacy/translate';
import { uuidv7Time } from '../src/lib/ids';

describe('job transitions', () => {
  it('allows exactly the documented operator actions', () => {
    const table: Record<string, Partial<Record<JobAction, string>>> = {
      enqueued: { pause: 'paused', cancel: 'cancelled' },
      running: { pause: 'pausing', cancel: 'cancelling' },
      pausing: { resume: 'running', cancel: 'cancelling' },
      paused: { resume: 'enqueued', cancel: 'cancelled' },
      cancelling: {},
      cancelled: { retry: 'enqueued' },
      succeeded: {},
      failed: { retry: 'enqueued' },
    };
    for (const state of JOB_STATES) {
      for (const action of ['pause', 'resume', 'cancel', 'retry'] as const) {
        expect(nextState(state, action), `${action} on ${state}`).toBe(table[state]![action] ?? null);
      }
    }
  });
});

describe('progress', () => {
  it('adds rows up, smooths the rate and lets the ETA fall to zero', () => {
    let p = { rowsProcessed: 0, rowsTotal: 10_000, ratePerSec: null as number | null, etaSec: null as number | null };
    const etas: number[] = [];
    for (let i = 0; i < 10; i++) {
      p = advance(p, 1000, 100);
      etas.push(p.etaSec!);
    }
    expect(p.rowsProcessed).toBe(10_000);
    expect(p.ratePerSec).toBe(10_000);
    expect(etas.at(-1)).toBe(0);
    for (let i = 1; i < etas.length; i++) expect(etas[i]!).toBeLessThanOrEqual(etas[i - 1]!);
  });

  it('a first chunk that only planned leaves the rate unknown instead of starting it at 0', () => {
    const planned = advance({ rowsProcessed: 0, rowsTotal: 10_000, ratePerSec: null, etaSec: null }, 0, 250);
    expect(planned).toEqual({ rowsProcessed: 0, rowsTotal: 10_000, ratePerSec: null, etaSec: null });
    // The first chunk with rows sets the rate at once, as if the plan had not been there.
    expect(advance(planned, 1000, 100)).toEqual({ rowsProcessed: 1000, rowsTotal: 10_000, ratePerSec: 10_000, etaSec: 1 });
    // A later chunk without rows still counts as time spent.
    expect(advance({ rowsProcessed: 1000, rowsTotal: 10_000, ratePerSec: 10_000, etaSec: 1 }, 0, 1000).ratePerSec).toBeLessThan(10_000);
  });

  it('backs off retries up to a minute', () => {
    expect([1, 2, 3, 6, 10].map(chunkRetryDelaySec)).toEqual([2, 4, 8, 60, 60]);
  });
});

describe('legacy rows', () => {
  const params = LegacyImportParams.parse({
    type: 'legacy_import',
    projectId: 'p1',
    dataset: 'citylens',
    source: { table: 'tracks', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_track' },
  });

  it('throttles by default within generous bounds, keeps the hand-set pace with the throttle off, and refuses non-identifiers', () => {
    expect(params.throttle).toBe(true);
    expect(pacing(params)).toEqual({ chunkSize: 50_000, pauseMs: 1000 });
    expect(pacing({ ...params, throttle: false })).toEqual({ chunkSize: 5000, pauseMs: 100 });
    expect(pacing({ ...params, chunkSize: 800, pauseMs: 0 })).toEqual({ chunkSize: 800, pauseMs: 0 });
    for (const bad of ['tracks;drop', 'a b', '"x"', '1abc', 'a'.repeat(64)]) {
      expect(LegacyImportParams.safeParse({ ...params, source: { ...params.source, table: bad } }).success, bad).toBe(false);
    }
  });

  it('gives every run the same UUIDv7 carrying the legacy time, and keeps every other column as a property', () => {
    const at = new Date('2021-06-01T12:00:00.123Z');
    const row = { id: '9007199254740993', device_id: 42, created_at: at, speed: 12.5, seen: new Date('2021-06-02T00:00:00Z'), note: null };
    const { event, map } = translateRow(params, row, 1);
    expect(event.id).toBe(legacyEventId('citylens', '9007199254740993', at.getTime()));
    expect(translateRow(params, row, 2).event.id).toBe(event.id);
    expect(event.id[14]).toBe('7');
    expect(uuidv7Time(event.id)).toBe(at.getTime());
    expect(legacyEventId('fleetone', '9007199254740993', at.getTime())).not.toBe(event.id);
    expect(event).toMatchObject({ project_id: 'p1', device_id: '42', name: 'legacy_track', created_at_ms: at.getTime(), ref_id: '' });
    expect(JSON.parse(event.properties)).toEqual({ id: '9007199254740993', speed: 12.5, seen: '2021-06-02T00:00:00.000Z', note: null });
    expect(map).toEqual({ dataset: 'citylens', legacy_id: '9007199254740993', new_id: event.id, project_id: 'p1', created_at_ms: at.getTime() });
  });

  it('refuses rows without a time or a device', () => {
    expect(() => translateRow(params, { id: 1, device_id: 'd', created_at: null }, 0)).toThrow(/created_at/);
    expect(() => translateRow(params, { id: 1, device_id: null, created_at: new Date() }, 0)).toThrow(/device_id/);
  });

  it('stores an epoch time as whole milliseconds, and skips one beyond a double\'s safe integers', () => {
    expect(translateRow(params, { id: 1, device_id: 'd', created_at: 1714521600000.7 }, 0).event.created_at_ms).toBe(1714521600000);
    expect(translateRow(params, { id: 1, device_id: 'd', created_at: '1714521600123' }, 0).event.created_at_ms).toBe(1714521600123);
    for (const created_at of [1e300, -1e300, '99999999999999999999', 2 ** 53]) {
      expect(() => translateRow(params, { id: 1, device_id: 'd', created_at }, 0), String(created_at)).toThrow(UnusableLegacyRow);
    }
  });

  it('writes cursors the same way whatever the driver returned', () => {
    expect(keyText(5)).toBe('5');
    expect(keyText('5')).toBe('5');
  });

  it('recognises realtime events that carry a legacy reference', () => {
    expect(legacyRef({ __dataset: 'citylens', __legacyId: 7 })).toEqual({ dataset: 'citylens', legacyId: '7' });
    expect(legacyRef({ __dataset: 'citylens', __legacyId: 'abc' })).toEqual({ dataset: 'citylens', legacyId: 'abc' });
    expect(legacyRef({ __dataset: 'citylens' })).toBeNull();
    expect(legacyRef({ __legacyId: '1' })).toBeNull();
    expect(legacyRef({ __dataset: '', __legacyId: '1' })).toBeNull();
  });
});
