// The operator console in a real headless Chromium against a whole local gateway: sign-in, a new
// project's secret, a running import's progress, pause, resume, cancel and retry, a dead-letter replay
// after an outage, an archive and its restore, a vehicle's track, and a sign-out mid-refresh.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../../scripts/lib/gateway.mjs';
import { drive, eventually, fix, gatewayApi, launchChromium, requireChromium, seedLegacyTable, startConsoleStack } from './console-harness.mjs';

const ARTIFACTS = join(ROOT, 'test-artifacts', 'console');
/** Set to refresh the README's screenshot (docs/console.png) from this run. */
const UPDATE_DOCS_SCREENSHOT = process.env.UPDATE_CONSOLE_SCREENSHOT === '1';

const IMPORT_ROWS = 12_000;
const HISTORY_ROWS = 300;
const VEHICLE = 'van-7';
const DEAD_LETTER_DEVICE = 'cab-outage';
const DEAD_LETTER_EVENTS = 5;

const dir = mkdtempSync(join(tmpdir(), 'driftline-console-test-'));
const logs = [];
const startedAt = Date.now();
const log = (line) => logs.push(`[${((Date.now() - startedAt) / 1000).toFixed(1)} s] ${line}`);
let stack;
let api;
let browser;
let page;
let project;
let fixes;
let historyMonth;
let importJobId;
let shots = 0;

// Console errors and CSP violations: none is expected, except what a step announces (a refused
// token answers 401, an outage makes reads answer 503) — and a CSP violation never is.
const consoleErrors = [];
let expectedErrors = [];
function onConsoleError(text) {
  if (!/Content.Security.Policy/i.test(text) && expectedErrors.some((re) => re.test(text))) return;
  consoleErrors.push(text);
}

/** The console refreshes every few seconds and the machine may be busy: wait for what it shows. */
const poll = (fn) => expect.poll(fn, { timeout: 90_000, interval: 250 });
const byTestId = (id) => page.getByTestId(id);
const jobRow = (id) => page.locator(`[data-testid="job-row"][data-job-id="${id}"]`);

async function screenshot(name) {
  shots += 1;
  const file = join(ARTIFACTS, `${String(shots).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Rows done of a job as its bar shows them: a determinate <progress>, or the ARIA values. */
async function progressOf(id) {
  return jobRow(id)
    .getByTestId('job-progress')
    .evaluate((bar) => {
      if (bar instanceof HTMLProgressElement && bar.hasAttribute('value')) return { value: bar.value, max: bar.max };
      const now = bar.getAttribute('aria-valuenow');
      const max = bar.getAttribute('aria-valuemax');
      return now === null || max === null ? null : { value: Number(now), max: Number(max) };
    });
}

/** Resolves after the console finished `n` more refreshes (its `last-refresh` text changes each time). */
async function refreshes(n) {
  for (let i = 0; i < n; i++) {
    const before = await byTestId('last-refresh').textContent();
    await poll(() => byTestId('last-refresh').textContent()).not.toBe(before);
  }
}

function monthsAgo(n) {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - n, 3));
}

beforeAll(async () => {
  requireChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
  historyMonth = monthsAgo(2);
  const started = await Promise.allSettled([
    startConsoleStack({ dir, datasets: ['citylens', 'history'], log }),
    launchChromium(),
  ]);
  [stack, browser] = started.map((s) => (s.status === 'fulfilled' ? s.value : undefined));
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) throw failed.reason;
  api = gatewayApi(stack.gateway);
  log('gateway and Chromium ready');

  // Seeded through the real API: a project, a vehicle's drive, an import of an old month's trips
  // (their raw rows are what an archive moves), and the legacy table the console will import.
  project = await api.createProject('Harbour cabs');
  await Promise.all([
    seedLegacyTable(stack.postgres.url, { table: 'history_trips', rows: HISTORY_ROWS, fromMs: historyMonth.getTime(), stepMs: 60_000 }),
    seedLegacyTable(stack.postgres.url, { table: 'city_trips', rows: IMPORT_ROWS, fromMs: Date.now() - 4 * 86_400_000, stepMs: 20_000 }),
  ]);
  // A drive with turns, and two more vehicles on the map: one on the move, one parked, ignition off.
  fixes = drive({ deviceId: VEHICLE, start: { lat: 52.37, lon: 4.89 }, legs: [[80, 5], [20, 4], [95, 6], [150, 3], [70, 4]], parked: 12 });
  const along = (i, dLat) => ({ lat: fixes[i].payload.properties.lat + dLat, lon: fixes[i].payload.properties.lon });
  await api.trackBatch(project, [
    ...fixes,
    fix('truck-2', along(8, 0.004), { atMs: Date.now() - 60_000, speed: 35, heading: 200, eventId: 'truck-2-fix' }),
    fix('bus-4', along(16, -0.005), { atMs: Date.now() - 20 * 60_000, ignition: false, eventId: 'bus-4-fix' }),
  ]);
  const history = await api.startImport({
    projectId: project.id,
    dataset: 'history',
    source: { table: 'history_trips', key: 'id', createdAt: 'created_at', deviceId: 'device_id', name: 'legacy_trip' },
    chunkSize: 5000,
    pauseMs: 0,
  });
  await eventually('the history import succeeds', async () => (await api.job(history.id)).state === 'succeeded', { timeoutMs: 120_000 });
  await eventually(`the track of ${VEHICLE} holds every fix`, async () => {
    const res = await fetch(`${stack.gateway.url}/v1/devices/${VEHICLE}/track`, {
      headers: { 'openpanel-client-id': project.clientId, 'openpanel-client-secret': project.clientSecret },
    });
    return (await res.json()).geometry?.coordinates?.length === fixes.length;
  });
  log('seeded: a project, a drive, an imported month');

  page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
  page.on('console', (msg) => {
    if (msg.type() === 'error') onConsoleError(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(`uncaught: ${err.message}`));
}, 420_000);

afterEach(() => {
  expectedErrors = [];
  const seen = consoleErrors.splice(0);
  expect(seen, 'console errors or CSP violations in the page').toEqual([]);
});

afterAll(async () => {
  await browser?.close();
  // What the gateway said, next to the screenshots: the first thing to read when a step failed.
  if (stack) writeFileSync(join(ARTIFACTS, 'gateway.log'), `${logs.join('\n')}\n--- wrangler dev (last lines) ---\n${stack.gateway.output()}`);
  await stack?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('operator console', () => {
  it('refuses a wrong token with a clear message and shows no data', async () => {
    expectedErrors = [/Failed to load resource: the server responded with a status of 401/];
    await page.goto(`${stack.gateway.url}/admin/console`);
    await byTestId('token-input').fill('not-the-admin-token');
    await byTestId('login-button').click();
    await poll(() => byTestId('login-error').isVisible()).toBe(true);
    expect(await byTestId('login-error').textContent()).toMatch(/token was refused/i);
    await screenshot('wrong-token');
    expect(await byTestId('health-panel').isVisible()).toBe(false);
    expect(await page.getByTestId('job-row').count()).toBe(0);
    expect(await page.getByTestId('project-row').count()).toBe(0);
    expect(await page.content()).not.toContain(project.id);
  });

  it('signs in with the admin token and shows health and projects', async () => {
    await byTestId('token-input').fill(stack.gateway.adminToken);
    await byTestId('login-button').click();
    await poll(() => byTestId('health-panel').isVisible()).toBe(true);
    expect(await byTestId('login-error').isVisible()).toBe(false);
    await poll(() => byTestId('health-clickhouse').textContent()).toBe('ok');
    await poll(() => page.locator(`[data-testid="project-row"][data-project-id="${project.id}"]`).count()).toBe(1);
    await poll(() => byTestId('dead-letters-parked').textContent()).toBe('0');
    await screenshot('signed-in');
  });

  it('creates a project and shows its secret once, until dismissed', async () => {
    const name = `Night buses ${Date.now()}`;
    await byTestId('project-create-name').fill(name);
    await byTestId('project-create').click();
    await poll(() => byTestId('project-result').textContent()).toMatch(/^Created /);
    const clientId = (await byTestId('project-client-id').textContent()).trim();
    const secret = (await byTestId('project-secret').textContent()).trim();
    expect(clientId).not.toBe('');
    expect(secret.length).toBeGreaterThanOrEqual(20);
    // The listing knows the project, never its secret.
    const { body } = await api.admin('GET', '/admin/projects');
    const created = body.projects.find((p) => p.name === name);
    expect(created).toBeDefined();
    expect(JSON.stringify(body)).not.toContain(secret);
    await poll(() => page.locator(`[data-testid="project-row"][data-project-id="${created.id}"]`).count()).toBe(1);
    // The credentials work: the new project accepts an event.
    await api.trackBatch({ clientId, clientSecret: secret }, [{ type: 'track', payload: { name: 'boot', properties: { __deviceId: 'night-bus-1' } } }]);
    await screenshot('project-created');
    await page.locator('#project-created-dismiss').click();
    expect(await byTestId('project-secret').textContent()).toBe('');
    await refreshes(1);
    expect(await page.content()).not.toContain(secret);
  });

  it('replays a dead letter once ClickHouse is back, and its rows arrive', async () => {
    // While ClickHouse is cut off the console's reads answer 503: that is what it should show.
    expectedErrors = [/Failed to load resource: the server responded with a status of 503/];
    await stack.setClickHouse('down');
    try {
      await poll(() => byTestId('health-clickhouse').textContent()).toBe('down');
      const events = Array.from({ length: DEAD_LETTER_EVENTS }, (_, i) => ({
        type: 'track',
        payload: { name: 'door_open', properties: { __deviceId: DEAD_LETTER_DEVICE, __eventId: `outage-${i}`, door: i } },
      }));
      await api.trackBatch(project, events); // accepted: durable in the device object
      // The writer fails, the queue gives up, the dead-letter consumer parks the message.
      await poll(async () => Number(await byTestId('dead-letters-parked').textContent())).toBeGreaterThan(0);
      await screenshot('outage-parked');
    } finally {
      await stack.setClickHouse('up');
    }
    await poll(() => byTestId('health-clickhouse').textContent()).toBe('ok');
    expect(await api.events(project, DEAD_LETTER_DEVICE)).toEqual([]);

    await byTestId('replay-button').click();
    await poll(() => byTestId('replay-result').textContent()).toMatch(/Replayed [1-9]\d*/);
    await poll(() => byTestId('dead-letters-parked').textContent()).toBe('0');
    const arrived = await eventually('the replayed rows are stored', async () => {
      const stored = (await api.events(project, DEAD_LETTER_DEVICE)).filter((e) => e.name === 'door_open');
      return stored.length === DEAD_LETTER_EVENTS && stored;
    });
    expect(arrived.map((e) => e.properties.door).sort()).toEqual([0, 1, 2, 3, 4]);
    await screenshot('replayed');
  });

  it('shows a running import advancing on its progress bar', async () => {
    await byTestId('import-project').selectOption(project.id);
    await byTestId('import-dataset').fill('citylens');
    await byTestId('import-table').fill('city_trips');
    await byTestId('import-key').fill('id');
    await byTestId('import-created-at').fill('created_at');
    await byTestId('import-device-id').fill('device_id');
    await byTestId('import-name').fill('legacy_trip');
    // Throttled by default; here a fixed pace of small chunks a second apart, so the import runs
    // for a minute or two, long enough to watch.
    expect(await byTestId('import-throttle').isChecked()).toBe(true);
    expect(await byTestId('import-chunk-size').inputValue()).toBe('');
    await byTestId('import-throttle').uncheck();
    await byTestId('import-chunk-size').fill('200');
    await byTestId('import-pause-ms').fill('1000');
    await byTestId('import-start').click();
    await poll(() => byTestId('import-result').textContent()).toMatch(/[0-9a-f-]{36}/);
    importJobId = /[0-9a-f-]{36}/.exec(await byTestId('import-result').textContent())[0];
    expect(await api.job(importJobId)).toMatchObject({ type: 'legacy_import', throttle: null });

    await poll(() => jobRow(importJobId).getAttribute('data-job-state')).toBe('running');
    const first = await eventually('the bar shows rows done', async () => {
      const p = await progressOf(importJobId);
      return p && p.value > 0 && p;
    });
    expect(first.max).toBe(IMPORT_ROWS);
    await poll(async () => (await progressOf(importJobId)).value).toBeGreaterThan(first.value);
    expect(await jobRow(importJobId).getByTestId('job-rate').textContent()).toMatch(/\d+ rows\/s/);
    expect(await jobRow(importJobId).getByTestId('job-rows').textContent()).toMatch(new RegExp(`^\\d+ / ${IMPORT_ROWS}`));
    await screenshot('import-running');
  });

  it('pauses the import (its bar stops) and resumes it (its bar advances again)', async () => {
    const row = jobRow(importJobId);
    await row.getByTestId('job-pause').click();
    await poll(() => row.getAttribute('data-job-state')).toBe('paused');
    await refreshes(1);
    const paused = await progressOf(importJobId);
    expect(await row.getByTestId('job-resume').isVisible()).toBe(true);
    expect(await row.getByTestId('job-pause').isVisible()).toBe(false);
    await screenshot('import-paused');
    // Two more refreshes later, nothing moved: neither the bar nor the job itself.
    await refreshes(2);
    expect(await progressOf(importJobId)).toEqual(paused);
    expect((await api.job(importJobId)).rowsProcessed).toBe(paused.value);

    await row.getByTestId('job-resume').click();
    await poll(() => row.getAttribute('data-job-state')).toMatch(/^(enqueued|running)$/);
    await poll(async () => (await progressOf(importJobId)).value).toBeGreaterThan(paused.value);
    expect(await row.getByTestId('job-pause').isVisible()).toBe(true);
  });

  it('cancels the import and retries it from the start', async () => {
    const row = jobRow(importJobId);
    await row.getByTestId('job-cancel').click();
    await poll(() => row.getAttribute('data-job-state')).toBe('cancelled');
    expect(await row.getByTestId('job-retry').isVisible()).toBe(true);
    expect(await row.getByTestId('job-cancel').isVisible()).toBe(false);
    const cancelled = await api.job(importJobId);
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.rowsProcessed).toBeLessThan(IMPORT_ROWS);

    await row.getByTestId('job-retry').click();
    await poll(() => row.getAttribute('data-job-state')).toMatch(/^(enqueued|running)$/);
    await poll(async () => (await api.job(importJobId)).rowsProcessed).toBeGreaterThan(0);
    await screenshot('import-retried');
  });

  it('archives a closed month from the form until it is archived', async () => {
    const month = historyMonth.toISOString().slice(0, 7);
    await byTestId('archive-project').selectOption(project.id);
    await byTestId('archive-month').fill(month);
    await byTestId('archive-start').click();
    await poll(() => byTestId('archive-result').textContent()).toMatch(/[0-9a-f-]{36}/);
    const jobId = /[0-9a-f-]{36}/.exec(await byTestId('archive-result').textContent())[0];
    await poll(() => jobRow(jobId).getAttribute('data-job-type')).toBe('archive');
    await poll(() => jobRow(jobId).getAttribute('data-job-state')).toBe('succeeded');
    const archiveRow = page.locator(`[data-testid="archive-row"][data-project="${project.id}"][data-month="${month}"]`);
    await poll(() => archiveRow.getAttribute('data-state')).toBe('archived');
    // Every imported row of that month went to R2.
    const { body } = await api.admin('GET', `/admin/archives?projectId=${project.id}&month=${month}`);
    expect(body.archives).toMatchObject([{ state: 'archived', rows: HISTORY_ROWS }]);
    expect(await archiveRow.getByTestId('archive-restore').isVisible()).toBe(true);
    await screenshot('archived');
  });

  it('restores the archived month from its row', async () => {
    const month = historyMonth.toISOString().slice(0, 7);
    const archiveRow = page.locator(`[data-testid="archive-row"][data-project="${project.id}"][data-month="${month}"]`);
    await archiveRow.getByTestId('archive-restore').click();
    await poll(() => archiveRow.getAttribute('data-state')).toBe('restored');
    const { body } = await api.admin('GET', `/admin/archives?projectId=${project.id}&month=${month}`);
    expect(body.archives).toMatchObject([{ state: 'restored', rows: HISTORY_ROWS }]);
    expect(await archiveRow.getByTestId('archive-restore').isVisible()).toBe(false);
    expect(await archiveRow.getByTestId('archive-rerun').isVisible()).toBe(true);
    await screenshot('restored');
  });

  it("draws a chosen vehicle's track and trips", async () => {
    await byTestId('fleet-project').selectOption(project.id);
    const vehicle = page.locator(`[data-testid="vehicle-row"][data-device-id="${VEHICLE}"]`);
    await poll(() => vehicle.count()).toBe(1);
    const statusOf = (deviceId) => page.locator(`[data-testid="vehicle-row"][data-device-id="${deviceId}"]`).getAttribute('data-status');
    expect(await statusOf('truck-2')).toBe('moving');
    expect(await statusOf('bus-4')).toBe('parked');
    await vehicle.click();
    const line = byTestId('track-svg').getByTestId('track-line');
    await poll(() => line.getAttribute('data-points')).toBe(String(fixes.length));
    // One drawn vertex per fix, each a pair of finite coordinates inside the picture.
    const vertices = await line.evaluate((el) => (el.getAttribute('points') ?? el.getAttribute('d') ?? '').trim().match(/-?\d+(\.\d+)?/g)?.map(Number) ?? []);
    expect(vertices).toHaveLength(fixes.length * 2);
    expect(vertices.every(Number.isFinite)).toBe(true);
    expect(new Set(vertices.filter((_, i) => i % 2 === 0)).size).toBeGreaterThan(1); // it goes somewhere
    await poll(() => page.getByTestId('trip-row').count()).toBe(1);
    // Every vehicle's label lies inside the picture (viewBox 640 × 400), wherever its dot is.
    const labels = await page.locator('#map-vehicles text').evaluateAll((els) => els.map((el) => { const b = el.getBBox(); return { x: b.x, right: b.x + b.width }; }));
    expect(labels.length).toBeGreaterThanOrEqual(3);
    for (const l of labels) {
      expect(l.x).toBeGreaterThanOrEqual(0);
      expect(l.right).toBeLessThanOrEqual(640);
    }
    await screenshot('track');
    const file = await screenshot('console');
    if (UPDATE_DOCS_SCREENSHOT) copyFileSync(file, join(ROOT, 'docs', 'console.png'));
  });

  it('keeps the answer of a read still in flight at sign-out off the page', async () => {
    // Hold the jobs list of the next refresh until after the operator signed out.
    let caught;
    const inFlight = new Promise((resolve) => (caught = resolve));
    let release;
    const held = new Promise((resolve) => (release = resolve));
    let delivered;
    const answered = new Promise((resolve) => (delivered = resolve));
    await page.route('**/admin/backfills', async (route) => {
      const response = await route.fetch();
      caught();
      await held;
      await route.fulfill({ response });
      delivered();
    });
    try {
      await page.getByTestId('job-row').first().waitFor({ state: 'attached' });
      await inFlight;
      await byTestId('logout-button').click();
      expect(await page.getByTestId('job-row').count()).toBe(0);
      release();
      await answered;
      // The late answer has reached the page's script; give it a few turns of its event loop.
      await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 500)));
      expect(await page.getByTestId('job-row').count()).toBe(0);
      expect(await page.locator('#login-form').isVisible()).toBe(true);
      const html = await page.content();
      expect(html).not.toContain(importJobId);
      expect(html).not.toContain(project.id);
    } finally {
      release();
      await page.unroute('**/admin/backfills');
    }
  });
});
