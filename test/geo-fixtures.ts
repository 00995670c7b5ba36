// Test geometry free of Workers-only imports, shared by the Workers tests and the Node console harness.
import { EARTH_RADIUS_M, type LatLon } from '../src/fleet/geo';

export const RAD = Math.PI / 180;

/** The point `distM` from `p` along the great circle leaving at `bearingDeg`. */
export function destination(p: LatLon, bearingDeg: number, distM: number): LatLon {
  const d = distM / EARTH_RADIUS_M;
  const th = bearingDeg * RAD;
  const f1 = p.lat * RAD;
  const f2 = Math.asin(Math.sin(f1) * Math.cos(d) + Math.cos(f1) * Math.sin(d) * Math.cos(th));
  const l2 = p.lon * RAD + Math.atan2(Math.sin(th) * Math.sin(d) * Math.cos(f1), Math.cos(d) - Math.sin(f1) * Math.sin(f2));
  return { lat: f2 / RAD, lon: l2 / RAD };
}
