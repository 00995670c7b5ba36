// Cookieless device ids: sha256(daily salt, project, IP, user agent), as OpenPanel derives them.
import { eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { salts } from '../db/schema';

const saltCache = new Map<string, string>();

export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

function randomHex(bytes: number): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

/** The salt of a UTC day, created by the first request of that day (first writer wins). */
export async function dailySalt(d1: D1Database, day: string): Promise<string> {
  const cached = saltCache.get(day);
  if (cached) return cached;
  const db = drizzle(d1);
  await db.insert(salts).values({ day, salt: randomHex(32), createdAt: Date.now() }).onConflictDoNothing();
  const row = await db.select().from(salts).where(eq(salts.day, day)).get();
  if (!row) throw new Error(`salt for ${day} missing after insert`);
  if (saltCache.size > 4) saltCache.clear();
  saltCache.set(day, row.salt);
  return row.salt;
}

export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((x) => x.toString(16).padStart(2, '0')).join('');
}

export async function deriveDeviceId(salt: string, projectId: string, ip: string, userAgent: string): Promise<string> {
  return (await sha256Hex(`${salt}:${projectId}:${ip}:${userAgent}`)).slice(0, 32);
}
