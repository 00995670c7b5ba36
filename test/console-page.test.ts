// The operator console: the page is served under a strict CSP that allows exactly its own inline
// script and style, never cached, and holds no data; the admin reads it relies on (projects, fleet)
// need the admin token and answer as their /v1 twins do.
import { SELF } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import type { Fix } from '../src/fleet/position';
import { ADMIN_TOKEN, createProject, getJson, type TestProject } from './helpers';
import { destination, HOME, HOUR, MIN, positionEvent, sendPositions, settled } from './fleet-fixtures';

const admin = (path: string, token = ADMIN_TOKEN) => SELF.fetch(`http://gw${path}`, { headers: { authorization: `Bearer ${token}` } });

async function adminJson<T>(path: string): Promise<{ status: number; body: T; res: Response }> {
  const res = await admin(path);
  return { status: res.status, body: (await res.json()) as T, res };
}

async function sha256Base64(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return btoa(String.fromCharCode(...digest));
}

function directives(csp: string): Map<string, string[]> {
  return new Map(
    csp
      .split(';')
      .map((d) => d.trim().split(/\s+/))
      .filter((parts) => parts[0])
      .map(([name, ...values]) => [name!, values]),
  );
}

/** The text between each `<tag ...>` and `</tag>` of a document, with the opening tag's attributes. */
function elements(html: string, tag: string): Array<{ attributes: string; text: string }> {
  return [...html.matchAll(new RegExp(`<${tag}(\\s[^>]*)?>([\\s\\S]*?)</${tag}>`, 'g'))].map((m) => ({ attributes: m[1] ?? '', text: m[2]! }));
}

describe('GET /admin/console', () => {
  it('serves the page under a CSP that allows only its own inline script and style, uncached', async () => {
    const res = await SELF.fetch('http://gw/admin/console');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    const html = await res.text();

    const scripts = elements(html, 'script');
    const styles = elements(html, 'style');
    expect(scripts).toHaveLength(1);
    expect(styles).toHaveLength(1);
    // Nothing loaded from elsewhere: no script or stylesheet files, fonts or images by URL.
    expect(scripts[0]!.attributes).not.toMatch(/src=/);
    expect(html).not.toMatch(/<link[^>]+stylesheet/i);
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//i);
    expect(html).not.toMatch(/@import|url\(/i);

    const csp = directives(res.headers.get('content-security-policy') ?? '');
    expect(csp.get('default-src')).toEqual(["'none'"]);
    expect(csp.get('script-src')).toEqual([`'sha256-${await sha256Base64(scripts[0]!.text)}'`]);
    expect(csp.get('style-src')).toEqual([`'sha256-${await sha256Base64(styles[0]!.text)}'`]);
    expect(csp.get('img-src')).toEqual(["'self'", 'data:']);
    expect(csp.get('connect-src')).toEqual(["'self'"]);
    expect(csp.get('base-uri')).toEqual(["'none'"]);
    expect(csp.get('form-action')).toEqual(["'none'"]);
    expect(csp.get('frame-ancestors')).toEqual(["'none'"]);
    expect([...csp.values()].flat().join(' ')).not.toMatch(/unsafe|\*/);
  });

  it('reveals nothing without the token: the same document for everyone, with no data and no token in it', async () => {
    const p = await createProject('console-unseen-project-name');
    const anonymous = await (await SELF.fetch('http://gw/admin/console')).text();
    const withToken = await (await admin('/admin/console')).text();
    expect(withToken).toBe(anonymous);
    for (const secret of [p.id, p.clientId, p.clientSecret, 'console-unseen-project-name', ADMIN_TOKEN]) expect(anonymous).not.toContain(secret);
    // The token lives in the tab only: the script keeps it in sessionStorage, never in localStorage or a cookie.
    const script = elements(anonymous, 'script')[0]!.text;
    expect(script).toContain('sessionStorage');
    expect(script).not.toMatch(/localStorage|document\.cookie/);
    // It reads its data from the /admin routes with the bearer token.
    for (const route of ['/admin/health', '/admin/backfills', '/admin/archives', '/admin/projects', '/admin/dead-letters/replay']) expect(script).toContain(`'${route}`);
    expect(script).toContain("'Bearer '");
  });

  it('offers each job only the actions its state allows', async () => {
    const script = elements(await (await SELF.fetch('http://gw/admin/console')).text(), 'script')[0]!.text;
    const table = JSON.parse(/JOB_ACTIONS_BY_STATE = (\{[^\n]*\});/.exec(script)![1]!) as Record<string, string[]>;
    expect(table).toEqual({
      enqueued: ['pause', 'cancel'],
      running: ['pause', 'cancel'],
      pausing: ['resume', 'cancel'],
      paused: ['resume', 'cancel'],
      cancelling: [],
      cancelled: ['retry'],
      succeeded: [],
      failed: ['retry'],
    });
  });
});

describe('operator answers', () => {
  it('are never cached: the console\'s JSON calls, a new secret and an error alike', async () => {
    const created = await SELF.fetch('http://gw/admin/projects', {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'no-store' }),
    });
    expect(created.status).toBe(201);
    expect(created.headers.get('cache-control')).toBe('no-store');
    for (const path of ['/admin/health', '/admin/backfills', '/admin/archives', '/admin/dead-letters']) {
      const res = await admin(path);
      expect(res.headers.get('cache-control'), path).toBe('no-store');
      await res.body?.cancel();
    }
    const refused = await admin('/admin/backfills', 'wrong-token');
    expect(refused.status).toBe(401);
    expect(refused.headers.get('cache-control')).toBe('no-store');
  });
});

describe('GET /admin/projects', () => {
  it('lists projects with their client id to the admin only, never a secret', async () => {
    const p = await createProject('console-list');
    expect((await SELF.fetch('http://gw/admin/projects')).status).toBe(401);
    expect((await admin('/admin/projects', 'wrong-token')).status).toBe(401);
    const { status, body, res } = await adminJson<{ projects: Array<Record<string, unknown>> }>('/admin/projects');
    expect(status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const mine = body.projects.find((x) => x.id === p.id);
    expect(mine).toEqual({ id: p.id, name: 'console-list', clientId: p.clientId, sessionGapMs: 1_800_000, createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
    expect(JSON.stringify(body)).not.toContain(p.clientSecret);
    for (const project of body.projects) expect(Object.keys(project).filter((k) => /secret|hash/i.test(k))).toEqual([]);
  });
});

describe('admin fleet reads', () => {
  const fix = (id: string, atMs: number, extra: Partial<Fix> = {}): Fix => ({ id, atMs, ...HOME, ...extra });

  async function drive(p: TestProject, deviceId: string): Promise<Fix[]> {
    const now = Date.now();
    const fixes: Fix[] = [];
    for (let i = 0; i < 40; i++) fixes.push(fix(`${deviceId}-${i}`, now - 30 * MIN + i * 5000, { ...destination(HOME, 90, i * 70), speedKmh: 50 }));
    for (let i = 0; i < 10; i++) fixes.push(fix(`${deviceId}-park-${i}`, now - 20 * MIN + i * MIN, { ...destination(HOME, 90, 39 * 70), speedKmh: 0 }));
    await sendPositions(p, fixes.map((f) => positionEvent(deviceId, f)), 100);
    await settled(p, deviceId, fixes.length);
    return fixes;
  }

  it('need the admin token, and name an unknown project', async () => {
    const paths = ['/admin/projects/nope/fleet/live', '/admin/projects/nope/devices/van/track', '/admin/projects/nope/trips'];
    for (const path of paths) {
      expect((await SELF.fetch(`http://gw${path}`)).status).toBe(401);
      expect((await admin(path, 'wrong-token')).status).toBe(401);
      const { status, body } = await adminJson<{ error: { code: string } }>(path);
      expect({ path, status, code: body.error.code }).toEqual({ path, status: 404, code: 'unknown_project' });
    }
  });

  it("answer a project's vehicles, a vehicle's track and its trips as the /v1 routes do", async () => {
    const p = await createProject('console-fleet');
    const other = await createProject('console-fleet-other');
    const fixes = await drive(p, 'van-7');
    const base = `/admin/projects/${p.id}`;
    const window = `since=${Date.now() - HOUR}`;

    const live = await adminJson<{ vehicles: Array<{ deviceId: string; status: string; lat: number; lon: number }> }>(`${base}/fleet/live`);
    expect(live.status).toBe(200);
    expect(live.res.headers.get('cache-control')).toBe('no-store');
    expect(live.body.vehicles).toHaveLength(1);
    expect(live.body.vehicles[0]).toMatchObject({ deviceId: 'van-7', status: 'parked', lat: fixes.at(-1)!.lat, lon: fixes.at(-1)!.lon });
    expect(live.body).toEqual((await getJson(p, '/v1/fleet/live')).body);
    expect((await adminJson<{ vehicles: unknown[] }>(`${base}/fleet/live?status=moving`)).body.vehicles).toEqual([]);

    const track = await adminJson<{ type: string; geometry: { coordinates: number[][] }; properties: { deviceId: string; times: string[] } }>(`${base}/devices/van-7/track?${window}`);
    expect(track.status).toBe(200);
    expect(track.body.type).toBe('Feature');
    expect(track.body.geometry.coordinates).toHaveLength(fixes.length);
    expect(track.body.geometry.coordinates[0]).toEqual([fixes[0]!.lon, fixes[0]!.lat]);
    expect(track.body.properties.times[0]).toBe(new Date(fixes[0]!.atMs).toISOString());
    expect(track.body).toEqual((await getJson(p, `/v1/devices/van-7/track?${window}`)).body);

    const trips = await adminJson<{ trips: Array<{ deviceId: string; distanceM: number }> }>(`${base}/trips?deviceId=van-7&${window}`);
    expect(trips.status).toBe(200);
    expect(trips.body.trips).toHaveLength(1);
    expect(trips.body.trips[0]!.distanceM).toBeGreaterThan(2000);
    expect(trips.body).toEqual((await getJson(p, `/v1/trips?deviceId=van-7&${window}`)).body);

    // Another project's id shows none of it, and bad parameters are refused as on /v1.
    const elsewhere = `/admin/projects/${other.id}`;
    expect((await adminJson<{ vehicles: unknown[] }>(`${elsewhere}/fleet/live`)).body.vehicles).toEqual([]);
    expect((await adminJson<{ geometry: { coordinates: unknown[] } }>(`${elsewhere}/devices/van-7/track?${window}`)).body.geometry.coordinates).toEqual([]);
    expect((await adminJson<{ trips: unknown[] }>(`${elsewhere}/trips?deviceId=van-7&${window}`)).body.trips).toEqual([]);
    const refused = async (path: string) => {
      const { status, body } = await adminJson<{ error: { code: string } }>(path);
      return { status, code: body.error.code };
    };
    expect(await refused(`${base}/fleet/live?status=asleep`)).toEqual({ status: 400, code: 'invalid_request' });
    expect(await refused(`${base}/devices/van-7/track?since=0&until=9999999999999`)).toEqual({ status: 400, code: 'window_too_large' });
    expect(await refused(`${base}/trips?since=yesterday`)).toEqual({ status: 400, code: 'invalid_request' });
  });
});
