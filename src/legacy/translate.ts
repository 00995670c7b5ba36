// Pure core of the legacy import: one legacy row becomes one event with a deterministic UUIDv7.
import { hash128, uuidv7At } from '../lib/ids';
import type { EventRow } from '../pipeline/messages';
import type { LegacyImportParams } from './params';
import type { LegacyRow } from './source';

export interface IdMapRow {
  dataset: string;
  legacy_id: string;
  new_id: string;
  project_id: string;
  created_at_ms: number;
}

/** The new id of a legacy row: its time is the legacy created_at, its other bits hash (dataset, key). */
export function legacyEventId(dataset: string, legacyKey: string, createdAtMs: number): string {
  return uuidv7At(createdAtMs, hash128(`${dataset}\u0000${legacyKey}`));
}

/** A cursor and an id seed must not depend on how the driver typed the key. */
export function keyText(value: unknown): string {
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

export function toEpochMs(value: unknown, column: string, key: string): number {
  if (value instanceof Date && !Number.isNaN(value.getTime())) return value.getTime();
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string') {
    if (/^\d+$/.test(value)) return Number(value);
    const t = Date.parse(value);
    if (!Number.isNaN(t)) return t;
  }
  throw new Error(`legacy row ${key}: column ${column} is not a timestamp (${JSON.stringify(value)})`);
}

function propertyValue(v: unknown): unknown {
  if (v instanceof Date) return v.toISOString();
  if (v instanceof Uint8Array) return [...v].map((b) => b.toString(16).padStart(2, '0')).join('');
  if (typeof v === 'bigint') return v.toString();
  return v;
}

export function translateRow(p: Pick<LegacyImportParams, 'projectId' | 'dataset' | 'source'>, row: LegacyRow, importedAtMs: number): { event: EventRow; map: IdMapRow } {
  const s = p.source;
  const legacyId = keyText(row[s.key]);
  const createdAtMs = toEpochMs(row[s.createdAt], s.createdAt, legacyId);
  const device = row[s.deviceId];
  if (device === null || device === undefined || device === '') throw new Error(`legacy row ${legacyId}: column ${s.deviceId} is empty`);
  const properties: Record<string, unknown> = {};
  for (const [col, v] of Object.entries(row)) {
    if (col !== s.createdAt && col !== s.deviceId) properties[col] = propertyValue(v);
  }
  const id = legacyEventId(p.dataset, legacyId, createdAtMs);
  return {
    event: {
      id,
      project_id: p.projectId,
      device_id: String(device),
      session_id: '',
      profile_id: '',
      type: 'track',
      name: s.name,
      created_at_ms: createdAtMs,
      received_at_ms: importedAtMs,
      synced_at_ms: importedAtMs,
      properties: JSON.stringify(properties),
      ref_id: '',
      ip: '',
      country: '',
      region: '',
      city: '',
      timezone: '',
      latitude: null,
      longitude: null,
    },
    map: { dataset: p.dataset, legacy_id: legacyId, new_id: id, project_id: p.projectId, created_at_ms: createdAtMs },
  };
}
