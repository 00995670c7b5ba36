// Geodesy for fleet tracks: great-circle distance on the WGS84 mean sphere, coordinate checks and
// Douglas–Peucker simplification with a tolerance in metres.

/** WGS84 mean Earth radius (IUGG R1), metres. */
export const EARTH_RADIUS_M = 6_371_008.8;

export interface LatLon {
  lat: number;
  lon: number;
}

const RAD = Math.PI / 180;

export function isValidLat(lat: unknown): lat is number {
  return typeof lat === 'number' && Number.isFinite(lat) && lat >= -90 && lat <= 90;
}

export function isValidLon(lon: unknown): lon is number {
  return typeof lon === 'number' && Number.isFinite(lon) && lon >= -180 && lon <= 180;
}

export function isValidLatLon(p: { lat: unknown; lon: unknown }): boolean {
  return isValidLat(p.lat) && isValidLon(p.lon);
}

/** Haversine distance in metres; numerically stable for the few-metre steps of parked jitter. */
export function haversineM(a: LatLon, b: LatLon): number {
  const dLat = (b.lat - a.lat) * RAD;
  const dLon = (b.lon - a.lon) * RAD;
  const s = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * RAD) * Math.cos(b.lat * RAD) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(s)));
}

/** Average speed in km/h of `distanceM` covered in `durationMs` (0 for no time). */
export function averageSpeedKmh(distanceM: number, durationMs: number): number {
  return durationMs > 0 ? (distanceM / durationMs) * 3600 : 0;
}

/** Implied speeds use at least this interval, so fixes a few ms apart are not judged at infinite speed. */
export const MIN_IMPLIED_INTERVAL_MS = 1000;

/** Speed in km/h implied by going from `a` to `b`. */
export function impliedSpeedKmh(a: LatLon & { atMs: number }, b: LatLon & { atMs: number }): number {
  const dtMs = Math.max(Math.abs(b.atMs - a.atMs), MIN_IMPLIED_INTERVAL_MS);
  return (haversineM(a, b) / dtMs) * 3600;
}

/** Longitude difference folded into (-180, 180], so tracks across the antimeridian stay short. */
function lonDelta(lon: number, origin: number): number {
  let d = lon - origin;
  if (d > 180) d -= 360;
  else if (d <= -180) d += 360;
  return d;
}

/** Distance in the projected plane from p to the segment a–b (not the infinite line). */
function segmentDistance(px: number, py: number, ax: number, ay: number, bx: number, by: number): number {
  const dx = bx - ax;
  const dy = by - ay;
  const len2 = dx * dx + dy * dy;
  let t = len2 === 0 ? 0 : ((px - ax) * dx + (py - ay) * dy) / len2;
  t = Math.max(0, Math.min(1, t));
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}

/**
 * Douglas–Peucker on a local equirectangular projection (centred on the track's mid latitude):
 * keeps both endpoints and every point farther than `toleranceM` from the simplified line.
 * Iterative, so 100k-point tracks do not exhaust the stack. Returns the kept points, in order.
 */
export function simplifyTrack<T extends LatLon>(points: readonly T[], toleranceM: number): T[] {
  if (!Number.isFinite(toleranceM) || toleranceM < 0) throw new RangeError(`simplify tolerance must be a finite number ≥ 0 metres, got ${toleranceM}`);
  const n = points.length;
  if (n <= 2) return points.slice();
  let minLat = Infinity;
  let maxLat = -Infinity;
  for (const p of points) {
    if (p.lat < minLat) minLat = p.lat;
    if (p.lat > maxLat) maxLat = p.lat;
  }
  const originLon = points[0]!.lon;
  const kx = EARTH_RADIUS_M * RAD * Math.cos(((minLat + maxLat) / 2) * RAD);
  const ky = EARTH_RADIUS_M * RAD;
  const xs = new Float64Array(n);
  const ys = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    xs[i] = lonDelta(points[i]!.lon, originLon) * kx;
    ys[i] = points[i]!.lat * ky;
  }

  const keep = new Uint8Array(n);
  keep[0] = 1;
  keep[n - 1] = 1;
  const stack: number[] = [0, n - 1];
  while (stack.length) {
    const last = stack.pop()!;
    const first = stack.pop()!;
    let worst = -1;
    let worstD = toleranceM;
    for (let i = first + 1; i < last; i++) {
      const d = segmentDistance(xs[i]!, ys[i]!, xs[first]!, ys[first]!, xs[last]!, ys[last]!);
      if (d > worstD) {
        worstD = d;
        worst = i;
      }
    }
    if (worst < 0) continue;
    keep[worst] = 1;
    if (worst - first > 1) stack.push(first, worst);
    if (last - worst > 1) stack.push(worst, last);
  }
  const out: T[] = [];
  for (let i = 0; i < n; i++) if (keep[i]) out.push(points[i]!);
  return out;
}
