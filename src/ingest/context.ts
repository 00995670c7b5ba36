// What the edge knows about a request: when it arrived, from where, and the geo of `request.cf`.
import type { Geo, RequestContext } from './normalize';

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function num(v: unknown): number | null {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v !== '' ? Number(v) : NaN;
  return Number.isFinite(n) ? n : null;
}

export function geoOf(request: Request): Geo {
  const cf = (request as { cf?: Record<string, unknown> }).cf ?? {};
  return {
    country: str(cf.country),
    region: str(cf.region),
    city: str(cf.city),
    timezone: str(cf.timezone),
    latitude: num(cf.latitude),
    longitude: num(cf.longitude),
  };
}

export function clientIp(request: Request): string {
  const h = request.headers;
  return (h.get('cf-connecting-ip') ?? h.get('x-forwarded-for')?.split(',')[0] ?? h.get('x-real-ip') ?? '').trim();
}

/**
 * `receivedAtMs` and `client`: a retried idempotent request keeps the first one's receipt time and
 * client identity, so rows without ids of their own get the same dedup keys and device ids.
 */
export function requestContext(request: Request, sentAtMs?: number, receivedAtMs = Date.now(), client?: { ip: string; userAgent: string }): RequestContext {
  return {
    receivedAtMs,
    sentAtMs,
    ip: client?.ip ?? clientIp(request),
    userAgent: client?.userAgent ?? request.headers.get('user-agent') ?? '',
    geo: geoOf(request),
  };
}
