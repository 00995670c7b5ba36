// The operator console as one static document: it holds no data (everything is read with the
// token after sign-in) and its inline script and style are allowed by hash, nothing else.
import { CONSOLE_SCRIPT } from './script';
import { CONSOLE_CSS } from './style';

const BODY = String.raw`
<header class="bar">
  <h1>Driftline<span>operator console</span></h1>
  <div class="status" id="session" hidden>
    <span>last refresh <span data-testid="last-refresh">—</span></span>
    <span class="error" data-testid="refresh-error" role="status" hidden></span>
    <button type="button" data-testid="logout-button">Sign out</button>
  </div>
</header>
<main>
  <section class="card login" id="login" aria-labelledby="login-title">
    <h2 id="login-title">Sign in</h2>
    <p class="hint">The gateway's admin token (<code>ADMIN_TOKEN</code>). It is kept in this tab only and forgotten when the tab closes.</p>
    <form id="login-form" autocomplete="off">
      <input type="password" data-testid="token-input" aria-label="Admin token" placeholder="admin token" autocomplete="off" spellcheck="false">
      <button type="submit" class="primary" data-testid="login-button">Sign in</button>
    </form>
    <p class="error" data-testid="login-error" role="alert" hidden></p>
  </section>

  <div id="app" hidden>
    <section class="card" data-testid="health-panel" aria-labelledby="health-title">
      <h2 id="health-title">Health <span class="badge" id="health-ok"></span></h2>
      <dl class="stats">
        <div><dt>ClickHouse</dt><dd data-testid="health-clickhouse">—</dd></div>
        <div><dt>Ingest backlog (rows)</dt><dd><span data-testid="ingest-backlog">—</span> <small id="backlog-devices"></small></dd></div>
        <div><dt>Dead letters parked</dt><dd><span data-testid="dead-letters-parked">—</span> <small id="dead-letters-age"></small></dd></div>
        <div><dt>Quarantined</dt><dd data-testid="dead-letters-quarantined">—</dd></div>
        <div><dt>Jobs active / failed</dt><dd><span id="jobs-running">—</span> / <span id="jobs-failed">—</span></dd></div>
      </dl>
      <div class="row">
        <button type="button" data-testid="replay-button">Replay dead letters</button>
        <output data-testid="replay-result"></output>
      </div>
      <ul class="errors" id="health-errors"></ul>
    </section>

    <section class="card" aria-labelledby="projects-title">
      <h2 id="projects-title">Projects</h2>
      <div class="table-wrap">
        <table>
          <thead><tr><th>Name</th><th>Project id</th><th>Client id</th><th>Created</th></tr></thead>
          <tbody id="project-rows"></tbody>
        </table>
      </div>
      <p class="empty" id="projects-empty" hidden>No projects yet.</p>
      <form class="inline" id="project-form" autocomplete="off">
        <label>New project<input data-testid="project-create-name" maxlength="200" placeholder="name"></label>
        <button type="submit" data-testid="project-create">Create</button>
        <output data-testid="project-result"></output>
      </form>
      <div class="secret" id="project-created" hidden>
        <p>Client id <code data-testid="project-client-id"></code></p>
        <p>Client secret <code data-testid="project-secret"></code></p>
        <p class="hint">The secret is shown this once and stored only as a hash: copy it now.</p>
        <button type="button" class="small" id="project-created-dismiss">Done</button>
      </div>
    </section>

    <section class="card wide" aria-labelledby="jobs-title">
      <h2 id="jobs-title">Jobs</h2>
      <div class="table-wrap">
        <table>
          <thead><tr><th>Job</th><th>State</th><th>Progress</th><th>Rows done / total</th><th>Rate</th><th>ETA</th><th>Last error</th><th></th></tr></thead>
          <tbody id="job-rows"></tbody>
        </table>
      </div>
      <p class="empty" id="jobs-empty" hidden>No jobs yet.</p>
      <output data-testid="job-action-result"></output>
      <h3>Start a legacy import</h3>
      <form class="inline" data-testid="import-form" autocomplete="off">
        <label>Project<select data-testid="import-project" required></select></label>
        <label>Dataset<input data-testid="import-dataset" required placeholder="enabled in LEGACY_DATASETS"></label>
        <label>Table<input data-testid="import-table" required value="tracks"></label>
        <label>Key column<input data-testid="import-key" required value="id"></label>
        <label>Time column<input data-testid="import-created-at" required value="created_at"></label>
        <label>Device column<input data-testid="import-device-id" required value="device_id"></label>
        <label>Event name<input data-testid="import-name" required value="legacy_track"></label>
        <label title="Paces itself on the read latency it causes; off: fixed chunks and pauses">Throttle itself<input data-testid="import-throttle" type="checkbox" checked></label>
        <label title="Throttled: the most rows a chunk takes (default 50000). Off: exactly this many (default 5000)">Rows per chunk<input class="short" data-testid="import-chunk-size" type="number" min="1" max="50000" placeholder="default"></label>
        <label title="Throttled: the longest rest (default 1000). Off: the pause between chunks (default 100)">Pause (ms)<input class="short" data-testid="import-pause-ms" type="number" min="0" max="60000" placeholder="default"></label>
        <button type="submit" class="primary" data-testid="import-start">Start import</button>
      </form>
      <output data-testid="import-result"></output>
    </section>

    <section class="card wide" aria-labelledby="archives-title">
      <h2 id="archives-title">Archives</h2>
      <div class="table-wrap">
        <table>
          <thead><tr><th>Project</th><th>Month</th><th>State</th><th>Chunks</th><th>Rows</th><th>Bytes (raw → stored)</th><th>Ratio</th><th>Verified</th><th>Last error</th><th></th></tr></thead>
          <tbody id="archive-rows"></tbody>
        </table>
      </div>
      <p class="empty" id="archives-empty" hidden>No archived months yet.</p>
      <form class="inline" data-testid="archive-form" autocomplete="off">
        <label>Project<select data-testid="archive-project" required></select></label>
        <label>Month<input class="short" data-testid="archive-month" required placeholder="YYYY-MM" pattern="\d{4}-\d{2}"></label>
        <button type="submit" class="primary" data-testid="archive-start">Archive month</button>
        <output data-testid="archive-result"></output>
      </form>
    </section>

    <section class="card wide" aria-labelledby="fleet-title">
      <h2 id="fleet-title">Fleet</h2>
      <div class="row">
        <label>Project <select data-testid="fleet-project"></select></label>
        <label>Track window
          <select data-testid="fleet-window">
            <option value="3600000">1 hour</option>
            <option value="21600000">6 hours</option>
            <option value="86400000" selected>24 hours</option>
            <option value="604800000">7 days</option>
            <option value="2592000000">30 days</option>
          </select>
        </label>
      </div>
      <div class="fleet-grid">
        <div class="table-wrap">
          <table>
            <thead><tr><th>Vehicle</th><th>Status</th><th>Speed</th><th>Last fix</th></tr></thead>
            <tbody id="vehicle-rows"></tbody>
          </table>
          <p class="empty" id="vehicles-empty" hidden>No vehicle has sent a position.</p>
        </div>
        <div>
          <svg class="map" data-testid="track-svg" viewBox="0 0 640 400" role="img" aria-label="Vehicle positions and the chosen vehicle's track">
            <g class="grid">
              <line x1="160" y1="0" x2="160" y2="400"/><line x1="320" y1="0" x2="320" y2="400"/><line x1="480" y1="0" x2="480" y2="400"/>
              <line x1="0" y1="100" x2="640" y2="100"/><line x1="0" y1="200" x2="640" y2="200"/><line x1="0" y1="300" x2="640" y2="300"/>
            </g>
            <polyline class="track" data-testid="track-line" data-points="0" points=""/>
            <g id="map-trips"></g>
            <g id="map-vehicles"></g>
            <text class="note" id="map-note" x="320" y="200" text-anchor="middle"></text>
          </svg>
          <p class="caption" id="map-caption"></p>
        </div>
      </div>
      <h3>Trips of the chosen vehicle</h3>
      <div class="table-wrap">
        <table>
          <thead><tr><th>Start</th><th>End</th><th>Duration</th><th>Distance</th><th>Avg / max speed</th></tr></thead>
          <tbody id="trip-rows"></tbody>
        </table>
      </div>
      <p class="empty" id="trips-empty" hidden>No trips in the window.</p>
    </section>
  </div>
</main>
`;

export const CONSOLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Driftline console</title>
<link rel="icon" href="data:,">
<style>${CONSOLE_CSS}</style>
</head>
<body>${BODY}<script>${CONSOLE_SCRIPT}</script>
</body>
</html>
`;

async function sha256Base64(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return btoa(String.fromCharCode(...digest));
}

let csp: Promise<string> | undefined;

/**
 * The page's Content-Security-Policy: its one inline script and one inline style by hash, fetches
 * to this origin only, no frames, forms or base URL. Hashed once per isolate (the page never varies).
 */
export function consoleCsp(): Promise<string> {
  csp ??= Promise.all([sha256Base64(CONSOLE_SCRIPT), sha256Base64(CONSOLE_CSS)]).then(([script, style]) =>
    [
      "default-src 'none'",
      `script-src 'sha256-${script}'`,
      `style-src 'sha256-${style}'`,
      "img-src 'self' data:",
      "connect-src 'self'",
      "base-uri 'none'",
      "form-action 'none'",
      "frame-ancestors 'none'",
    ].join('; '),
  );
  return csp;
}
