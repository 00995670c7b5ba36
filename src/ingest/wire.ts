// OpenPanel-compatible wire schemas: the single source of the ingestion types.
import { z } from 'zod';

export const MAX_BATCH_EVENTS = 2000;
export const MAX_BODY_BYTES = 10 * 1024 * 1024;
export const MAX_EVENT_BYTES = 32 * 1024;
export const MAX_PROPERTY_DEPTH = 8;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * Checks nesting depth, prototype-polluting keys and numbers JSON cannot hold; it never goes more
 * than `maxDepth` + 1 levels down, however deep the value. `forbidKeys: false` for a value only
 * ever stored as text (a tracker app's row as received), where such keys are harmless.
 */
export function checkPropertiesShape(value: unknown, maxDepth = MAX_PROPERTY_DEPTH, options?: { forbidKeys?: boolean }): string | null {
  return shapeError(value, 0, maxDepth, options?.forbidKeys ?? true);
}

/** Depth first, by recursion (bounded by `maxDepth`), allocating nothing per value. */
function shapeError(v: unknown, depth: number, maxDepth: number, forbidKeys: boolean): string | null {
  // JSON.parse reads 1e400 as Infinity, which would be stored as null: refused, not changed.
  if (typeof v === 'number') return Number.isFinite(v) ? null : 'a number beyond the range of a double (about ±1.8e308) cannot be stored';
  if (v === null || typeof v !== 'object') return null;
  if (depth > maxDepth) return `properties nested deeper than ${maxDepth} levels`;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const err = shapeError(v[i], depth + 1, maxDepth, forbidKeys);
      if (err) return err;
    }
    return null;
  }
  for (const key in v) {
    if (!Object.prototype.hasOwnProperty.call(v, key)) continue;
    if (forbidKeys && FORBIDDEN_KEYS.has(key)) return `property key "${key}" is not allowed`;
    const err = shapeError((v as Record<string, unknown>)[key], depth + 1, maxDepth, forbidKeys);
    if (err) return err;
  }
  return null;
}

const Properties = z.record(z.string(), z.unknown());
const ProfileId = z.union([z.string().min(1).max(256), z.number().finite()]).transform(String);

export const TrackPayload = z.object({
  name: z.string().min(1).max(256),
  properties: Properties.optional(),
  profileId: ProfileId.optional(),
  groups: z.array(z.string().max(256)).max(100).optional(),
});

export const IdentifyPayload = z.object({
  profileId: ProfileId,
  firstName: z.string().max(256).optional(),
  lastName: z.string().max(256).optional(),
  email: z.string().max(256).optional(),
  avatar: z.string().max(2048).optional(),
  properties: Properties.optional(),
});

export const IncrementPayload = z.object({
  profileId: ProfileId,
  property: z.string().min(1).max(256),
  /** A step a counter's sum can add up without overflowing (ClickHouse sums Float64: 1e308 twice is inf). */
  value: z.number().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).optional(),
  properties: Properties.optional(),
});

export const GroupPayload = z.object({
  id: z.string().min(1).max(256),
  type: z.string().min(1).max(256),
  name: z.string().min(1).max(256),
  properties: Properties.optional(),
});

export const AssignGroupPayload = z.object({
  groupIds: z.array(z.string().min(1).max(256)).max(100),
  profileId: ProfileId.optional(),
  properties: Properties.optional(),
});

export const WireEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('track'), payload: TrackPayload }),
  z.object({ type: z.literal('identify'), payload: IdentifyPayload }),
  z.object({ type: z.literal('increment'), payload: IncrementPayload }),
  z.object({ type: z.literal('decrement'), payload: IncrementPayload }),
  z.object({ type: z.literal('group'), payload: GroupPayload }),
  z.object({ type: z.literal('assign_group'), payload: AssignGroupPayload }),
]);
export type WireEvent = z.infer<typeof WireEvent>;
export type EventType = WireEvent['type'];

/** `sentAt` is an ISO-8601 instant; the batch itself is checked row by row. */
export const BatchBody = z.object({
  events: z.array(z.unknown()),
  sentAt: z.iso.datetime({ offset: true }).optional(),
});

export const ReservedProperties = z.object({
  __timestamp: z.union([z.iso.datetime({ offset: true }), z.number().int().nonnegative()]).optional(),
  __deviceId: z.string().min(1).max(128).optional(),
  __ip: z.union([z.ipv4(), z.ipv6()]).optional(),
  __eventId: z.string().min(1).max(128).optional(),
});
