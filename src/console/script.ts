// The console's script: plain DOM and fetch against the /admin routes with the token kept in
// sessionStorage. Served inline and allowed by its hash, so it must not vary per request.
import { JOB_STATES, nextState, type JobAction } from '../jobs/states';

const JOB_ACTIONS: readonly JobAction[] = ['pause', 'resume', 'cancel', 'retry'];

/** Which buttons a job row offers in each state: the engine's own transition table, not a copy. */
const actionsByState = Object.fromEntries(JOB_STATES.map((s) => [s, JOB_ACTIONS.filter((a) => nextState(s, a) !== null)]));

// No backticks or template placeholders below: this is JavaScript inside a TypeScript string.
const SOURCE = String.raw`
(function () {
  'use strict';
  var JOB_ACTIONS_BY_STATE = __JOB_ACTIONS__;
  var TOKEN_KEY = 'driftline.adminToken';
  var REFRESH_MS = 3000;
  // Longer than the gateway's own ClickHouse timeout (30 s), which answers 503 first.
  var REQUEST_TIMEOUT_MS = 40000;
  var SVG_NS = 'http://www.w3.org/2000/svg';
  var MAP_W = 640, MAP_H = 400, MAP_PAD = 24;

  var token = sessionStorage.getItem(TOKEN_KEY);
  var projects = [];
  var selectedVehicle = null;
  var timer = 0, refreshing = false, again = false;

  function byTestId(id) { return document.querySelector('[data-testid="' + id + '"]'); }
  function byId(id) { return document.getElementById(id); }

  function h(tag, attrs) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    for (var i = 2; i < arguments.length; i++) if (arguments[i] != null) e.append(arguments[i]);
    return e;
  }
  function s(tag, attrs) {
    var e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    return e;
  }
  function setAttrs(e, attrs) {
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function setText(e, text) { if (e.textContent !== text) e.textContent = text; }
  function show(e, visible) { e.hidden = !visible; }

  // --- formatting ---
  function num(n) { return n == null ? '—' : String(n); }
  function bytes(n) {
    if (n == null) return '—';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }
  function duration(sec) {
    if (sec == null) return '—';
    sec = Math.round(sec);
    if (sec < 60) return sec + ' s';
    var m = Math.floor(sec / 60), r = sec % 60;
    if (m < 60) return m + ' min ' + r + ' s';
    var hr = Math.floor(m / 60);
    if (hr < 48) return hr + ' h ' + (m % 60) + ' min';
    return Math.floor(hr / 24) + ' d ' + (hr % 24) + ' h';
  }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : '—'; }
  function shortId(id) { return id.length > 13 ? id.slice(0, 8) + '…' : id; }
  function projectName(id) {
    for (var i = 0; i < projects.length; i++) if (projects[i].id === id) return projects[i].name;
    return id;
  }

  // --- the API ---
  function Refused(message) { this.message = message; }

  /** fetch and read the JSON answer; a request that hangs fails instead of holding up every later refresh. */
  async function request(path, init) {
    var controller = new AbortController();
    var timeout = setTimeout(function () { controller.abort(); }, REQUEST_TIMEOUT_MS);
    try {
      var res = await fetch(path, Object.assign({ cache: 'no-store', credentials: 'omit', signal: controller.signal }, init));
      var data = null;
      try { data = await res.json(); } catch (e) { if (e.name === 'AbortError') throw e; data = null; }
      return { res: res, data: data };
    } catch (e) {
      if (e.name === 'AbortError') throw new Error('no answer within ' + REQUEST_TIMEOUT_MS / 1000 + ' s');
      throw e;
    } finally {
      clearTimeout(timeout);
    }
  }

  async function api(method, path, body) {
    // A load that was already on its way when the operator signed out asks nothing more.
    if (!token) throw new Refused('signed out');
    var sentWith = token;
    var headers = { authorization: 'Bearer ' + token };
    if (body !== undefined) headers['content-type'] = 'application/json';
    var answer = await request(path, { method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body) });
    // Signed out (or in with another token) while this was in flight: its answer is not shown.
    if (token !== sentWith) throw new Refused('signed out while the request was in flight');
    var res = answer.res, data = answer.data;
    var apiError = data && data.error && typeof data.error === 'object' ? data.error : null;
    if (res.status === 401) {
      signOut('The token was refused' + (apiError ? ': ' + apiError.message : '.') + ' Sign in again.');
      throw new Refused('the token was refused');
    }
    // /admin/health answers 503 with its full report when something is wrong: that is data.
    if (apiError || (!res.ok && !data)) {
      var err = new Error(apiError ? apiError.message + ' (' + apiError.code + ')' : 'HTTP ' + res.status);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // --- sign in and out ---
  var loginSection = byId('login'), app = byId('app'), session = byId('session');
  var loginError = byTestId('login-error'), tokenInput = byTestId('token-input'), loginButton = byTestId('login-button');

  byId('login-form').addEventListener('submit', async function (ev) {
    ev.preventDefault();
    var candidate = tokenInput.value.trim();
    show(loginError, false);
    if (!candidate) return failLogin('Enter the admin token.');
    loginButton.disabled = true;
    try {
      var answer = await request('/admin/health', { headers: { authorization: 'Bearer ' + candidate } });
      var res = answer.res, data = answer.data;
      var apiError = data && data.error && typeof data.error === 'object' ? data.error : null;
      if (res.status === 401) return failLogin('The token was refused' + (apiError ? ': ' + apiError.message : '.'));
      if (apiError) return failLogin(apiError.message);
      if (!data) return failLogin('The gateway answered HTTP ' + res.status + '.');
      token = candidate;
      sessionStorage.setItem(TOKEN_KEY, token);
      tokenInput.value = '';
      signedIn();
    } catch (e) {
      failLogin('The gateway could not be reached: ' + e.message);
    } finally {
      loginButton.disabled = false;
    }
  });

  function failLogin(message) {
    setText(loginError, message);
    show(loginError, true);
  }

  byTestId('logout-button').addEventListener('click', function () { signOut(null); });

  function signedIn() {
    show(loginSection, false);
    show(app, true);
    show(session, true);
    refreshSoon();
  }

  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    timer = 0;
    again = false;
    clearViews();
    show(app, false);
    show(session, false);
    show(loginSection, true);
    if (message) failLogin(message);
    else show(loginError, false);
    tokenInput.focus();
  }

  /** Nothing read with the token stays in the page once it is gone. */
  function clearViews() {
    projects = [];
    selectedVehicle = null;
    ['job-rows', 'archive-rows', 'project-rows', 'vehicle-rows', 'trip-rows', 'health-errors', 'map-vehicles', 'map-trips'].forEach(function (id) { byId(id).replaceChildren(); });
    ['health-clickhouse', 'ingest-backlog', 'dead-letters-parked', 'dead-letters-quarantined', 'last-refresh'].forEach(function (id) { setText(byTestId(id), '—'); });
    ['replay-result', 'import-result', 'archive-result', 'job-action-result', 'project-result', 'project-secret', 'project-client-id'].forEach(function (id) { setText(byTestId(id), ''); });
    ['import-project', 'archive-project', 'fleet-project'].forEach(function (id) {
      var select = byTestId(id);
      select.replaceChildren();
      select.removeAttribute('data-signature');
    });
    show(byId('project-created'), false);
    show(byTestId('refresh-error'), false);
    drawTrack([]);
    setText(byId('map-caption'), '');
  }

  // --- the refresh loop: one at a time, the next scheduled only after the last one finished ---
  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }
  function refreshSoon() {
    if (refreshing) again = true;
    else schedule(0);
  }
  document.addEventListener('visibilitychange', function () {
    if (token && !document.hidden) refreshSoon();
  });

  async function refresh() {
    timer = 0;
    if (!token) return;
    if (refreshing) { again = true; return; }
    // A hidden tab polls nothing; becoming visible again refreshes at once.
    if (document.hidden) return;
    refreshing = true;
    var failures = [];
    function note(what) {
      return function (e) { if (!(e instanceof Refused)) failures.push(what + ': ' + (e && e.message ? e.message : String(e))); };
    }
    try {
      await Promise.all([
        loadHealth().catch(note('health')),
        loadJobs().catch(note('jobs')),
        loadProjects().catch(note('projects')).then(function () { return loadFleet().catch(note('fleet')); }),
      ]);
      // Archives name projects: read them once the project list is in.
      await loadArchives().catch(note('archives'));
    } catch (e) {
      note('refresh')(e);
    } finally {
      refreshing = false;
      // Whatever failed, the loop goes on (until sign-out).
      if (token) {
        setText(byTestId('last-refresh'), new Date().toLocaleTimeString());
        var refreshError = byTestId('refresh-error');
        setText(refreshError, failures.length ? 'Refresh failed — ' + failures.join('; ') : '');
        show(refreshError, failures.length > 0);
        var soon = again;
        again = false;
        schedule(soon ? 0 : REFRESH_MS);
      }
    }
  }

  // --- health and dead letters ---
  async function loadHealth() {
    var health = await api('GET', '/admin/health');
    var ch = byTestId('health-clickhouse');
    setText(ch, health.clickhouse);
    ch.className = health.clickhouse === 'ok' ? 'val-ok' : 'val-down';
    var okBadge = byId('health-ok');
    setText(okBadge, health.ok ? 'ok' : 'needs attention');
    okBadge.className = 'badge ' + (health.ok ? 'ok' : 'failed');
    var ingest = health.ingest || {};
    setText(byTestId('ingest-backlog'), num(ingest.pendingRows));
    setText(byId('backlog-devices'), ingest.stalledDevices ? ingest.stalledDevices + ' device(s) stalled' : '');
    var dead = health.deadLetters || {};
    setText(byTestId('dead-letters-parked'), num(dead.parked));
    setText(byTestId('dead-letters-quarantined'), num(dead.quarantined));
    setText(byId('dead-letters-age'), dead.oldestAgeSec != null ? 'oldest ' + duration(dead.oldestAgeSec) : '');
    var jobs = health.jobs || {};
    setText(byId('jobs-running'), num(jobs.running ? jobs.running.length : null));
    setText(byId('jobs-failed'), num(jobs.failed ? jobs.failed.length : null));
    byId('health-errors').replaceChildren.apply(byId('health-errors'), (health.errors || []).map(function (e) { return h('li', { text: e }); }));
  }

  byTestId('replay-button').addEventListener('click', async function () {
    var button = this, out = byTestId('replay-result');
    button.disabled = true;
    try {
      var r = await api('POST', '/admin/dead-letters/replay');
      report(out, 'Replayed ' + r.replayed + ', quarantined ' + r.quarantined + ', failed ' + r.failed + (r.remaining ? '; more remain: replay again' : '') + '.', false);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, 'Replay failed: ' + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  });

  function report(out, text, failed) {
    setText(out, text);
    out.classList.toggle('failed', !!failed);
  }

  // --- rows kept by key, so a refresh updates them in place (focus and clicks survive) ---
  function syncRows(tbody, items, keyOf, create, update) {
    var existing = new Map();
    Array.prototype.forEach.call(tbody.children, function (row) { existing.set(row.getAttribute('data-key'), row); });
    var previous = null;
    items.forEach(function (item) {
      var key = keyOf(item);
      var row = existing.get(key);
      if (row) existing.delete(key);
      else { row = create(item); row.setAttribute('data-key', key); }
      update(row, item);
      var expected = previous ? previous.nextSibling : tbody.firstChild;
      if (row !== expected) tbody.insertBefore(row, expected);
      previous = row;
    });
    existing.forEach(function (row) { row.remove(); });
  }
  function part(row, role) { return row.querySelector('[data-role="' + role + '"], [data-testid="' + role + '"]'); }

  // --- jobs ---
  async function loadJobs() {
    var data = await api('GET', '/admin/backfills');
    var jobs = data.backfills || [];
    syncRows(byId('job-rows'), jobs, function (j) { return j.id; }, createJobRow, updateJobRow);
    show(byId('jobs-empty'), jobs.length === 0);
  }

  function createJobRow(job) {
    var buttons = ['pause', 'resume', 'cancel', 'retry'].map(function (action) {
      return h('button', { type: 'button', class: 'small', 'data-testid': 'job-' + action, onclick: function () { jobAction(job.id, action, this); }, text: action[0].toUpperCase() + action.slice(1) });
    });
    return h('tr', { 'data-testid': 'job-row' },
      h('td', {}, h('div', { 'data-role': 'type' }), h('code', { 'data-role': 'id', title: job.id, text: shortId(job.id) })),
      h('td', {}, h('span', { 'data-role': 'state', class: 'badge' })),
      h('td', {}, h('progress', { 'data-testid': 'job-progress' })),
      h('td', { class: 'num', 'data-testid': 'job-rows' }),
      h('td', { class: 'num', 'data-testid': 'job-rate' }),
      h('td', { class: 'num', 'data-testid': 'job-eta' }),
      h('td', { class: 'error-text', 'data-testid': 'job-error' }),
      h.apply(null, ['td', { class: 'buttons' }].concat(buttons)));
  }

  function updateJobRow(row, job) {
    row.setAttribute('data-job-id', job.id);
    row.setAttribute('data-job-type', job.type);
    row.setAttribute('data-job-state', job.state);
    row.title = 'created ' + when(job.createdAt) + (job.endedAt ? ', ended ' + when(job.endedAt) : '');
    setText(part(row, 'type'), job.type.replace(/_/g, ' '));
    var state = part(row, 'state');
    setText(state, job.state);
    state.className = 'badge ' + job.state;
    var done = job.rowsProcessed, total = job.rowsTotal;
    var bar = part(row, 'job-progress');
    if (total != null && total > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
    } else if (total === 0) {
      bar.max = 1;
      bar.value = job.state === 'succeeded' ? 1 : 0;
    } else if (job.state === 'running' || job.state === 'enqueued') {
      bar.removeAttribute('value'); // indeterminate: the total is not known yet
    } else {
      bar.max = 1;
      bar.value = 0;
    }
    bar.setAttribute('aria-valuenow', String(done));
    if (total != null) bar.setAttribute('aria-valuemax', String(total));
    else bar.removeAttribute('aria-valuemax');
    setText(part(row, 'job-rows'), done + ' / ' + (total == null ? '?' : total) + (job.rowsSkipped ? ' (' + job.rowsSkipped + ' skipped)' : ''));
    var active = job.state === 'running' || job.state === 'enqueued' || job.state === 'pausing';
    setText(part(row, 'job-rate'), active && job.ratePerSec != null ? job.ratePerSec + ' rows/s' : '—');
    setText(part(row, 'job-eta'), active && job.etaSec != null ? duration(job.etaSec) : '—');
    setText(part(row, 'job-error'), job.error || '');
    var allowed = JOB_ACTIONS_BY_STATE[job.state] || [];
    ['pause', 'resume', 'cancel', 'retry'].forEach(function (action) {
      var b = part(row, 'job-' + action);
      var applies = allowed.indexOf(action) >= 0;
      b.hidden = !applies;
      b.disabled = !applies;
    });
  }

  async function jobAction(id, action, button) {
    var out = byTestId('job-action-result');
    button.disabled = true;
    try {
      var job = await api('POST', '/admin/backfills/' + encodeURIComponent(id) + '/' + action);
      report(out, action + ' ' + shortId(id) + ': now ' + job.state + '.', false);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, action + ' ' + shortId(id) + ' refused: ' + e.message, true);
    } finally {
      refreshSoon();
    }
  }

  byTestId('import-form').addEventListener('submit', async function (ev) {
    ev.preventDefault();
    var out = byTestId('import-result');
    var value = function (id) { return byTestId(id).value.trim(); };
    var body = {
      type: 'legacy_import',
      projectId: value('import-project'),
      dataset: value('import-dataset'),
      source: { table: value('import-table'), key: value('import-key'), createdAt: value('import-created-at'), deviceId: value('import-device-id'), name: value('import-name') },
      throttle: byTestId('import-throttle').checked,
    };
    // Pacing fields left empty take the server's defaults for the mode chosen.
    if (value('import-chunk-size') !== '') body.chunkSize = Number(value('import-chunk-size'));
    if (value('import-pause-ms') !== '') body.pauseMs = Number(value('import-pause-ms'));
    var button = byTestId('import-start');
    button.disabled = true;
    try {
      var job = await api('POST', '/admin/backfills', body);
      report(out, 'Started import job ' + job.id + ' (' + job.state + ').', false);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, 'Not started: ' + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  });

  // --- archives ---
  async function loadArchives() {
    var data = await api('GET', '/admin/archives');
    var months = data.archives || [];
    syncRows(byId('archive-rows'), months, function (a) { return a.projectId + ' ' + a.month; }, createArchiveRow, updateArchiveRow);
    show(byId('archives-empty'), months.length === 0);
  }

  function createArchiveRow(a) {
    return h('tr', { 'data-testid': 'archive-row' },
      h('td', { 'data-role': 'project' }),
      h('td', { 'data-role': 'month', class: 'mono' }),
      h('td', {}, h('span', { 'data-role': 'state', class: 'badge' }), h('span', { 'data-role': 'job', class: 'muted' })),
      h('td', { class: 'num', 'data-role': 'chunks' }),
      h('td', { class: 'num', 'data-role': 'rows' }),
      h('td', { class: 'num', 'data-role': 'bytes' }),
      h('td', { class: 'num', 'data-role': 'ratio' }),
      h('td', { 'data-role': 'verified' }),
      h('td', { class: 'error-text', 'data-role': 'error' }),
      h('td', { class: 'buttons' },
        h('button', { type: 'button', class: 'small', 'data-testid': 'archive-rerun', text: 'Archive', onclick: function () { startArchive(a.projectId, a.month, this); } }),
        h('button', { type: 'button', class: 'small', 'data-testid': 'archive-restore', text: 'Restore', onclick: function () { restoreArchive(a.projectId, a.month, this); } })));
  }

  function updateArchiveRow(row, a) {
    row.setAttribute('data-project', a.projectId);
    row.setAttribute('data-month', a.month);
    row.setAttribute('data-state', a.state);
    var project = part(row, 'project');
    setText(project, projectName(a.projectId));
    project.title = a.projectId;
    setText(part(row, 'month'), a.month);
    var state = part(row, 'state');
    setText(state, a.state);
    state.className = 'badge ' + a.state;
    setText(part(row, 'chunks'), num(a.chunks));
    setText(part(row, 'rows'), num(a.rows) + (a.pendingRows ? ' (+' + a.pendingRows + ' in ClickHouse)' : ''));
    setText(part(row, 'bytes'), bytes(a.bytes) + ' → ' + bytes(a.compressedBytes));
    setText(part(row, 'ratio'), a.compressionRatio == null ? '—' : a.compressionRatio + '×');
    setText(part(row, 'verified'), when(a.verifiedAt));
    setText(part(row, 'job'), a.lastJobState && a.lastJobState !== 'succeeded' ? 'archive job ' + a.lastJobState : '');
    setText(part(row, 'error'), a.lastError || '');
    // Archive again what is not wholly in R2; restore what is.
    part(row, 'archive-rerun').hidden = a.state === 'archived';
    part(row, 'archive-restore').hidden = a.state === 'restored';
  }

  async function startArchive(projectId, month, button) {
    var out = byTestId('archive-result');
    button.disabled = true;
    try {
      var job = await api('POST', '/admin/archives', { projectId: projectId, month: month });
      report(out, 'Archive job ' + job.id + ' for ' + projectName(projectId) + ' ' + month + ' (' + job.state + ').', false);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, 'Archive of ' + month + ' not started: ' + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  }

  async function restoreArchive(projectId, month, button) {
    var out = byTestId('archive-result');
    button.disabled = true;
    try {
      var job = await api('POST', '/admin/archives/restore', { projectId: projectId, month: month });
      report(out, 'Restore job ' + job.id + ' for ' + projectName(projectId) + ' ' + month + ' (' + job.state + ').', false);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, 'Restore of ' + month + ' not started: ' + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  }

  byTestId('archive-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    startArchive(byTestId('archive-project').value, byTestId('archive-month').value.trim(), byTestId('archive-start'));
  });

  // The last closed month: the one an operator most often archives by hand.
  (function () {
    var d = new Date();
    var m = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, 1));
    byTestId('archive-month').value = m.toISOString().slice(0, 7);
  })();

  // --- projects ---
  async function loadProjects() {
    var data = await api('GET', '/admin/projects');
    projects = data.projects || [];
    syncRows(byId('project-rows'), projects, function (p) { return p.id; }, function () {
      return h('tr', { 'data-testid': 'project-row' }, h('td', { 'data-role': 'name' }), h('td', {}, h('code', { 'data-role': 'id' })), h('td', {}, h('code', { 'data-role': 'client' })), h('td', { 'data-role': 'created' }));
    }, function (row, p) {
      row.setAttribute('data-project-id', p.id);
      setText(part(row, 'name'), p.name);
      setText(part(row, 'id'), p.id);
      setText(part(row, 'client'), p.clientId || '—');
      setText(part(row, 'created'), when(p.createdAt));
    });
    show(byId('projects-empty'), projects.length === 0);
    ['import-project', 'archive-project', 'fleet-project'].forEach(function (id) { fillProjectSelect(byTestId(id)); });
  }

  /** Rebuilt only when the list changed, keeping the choice: a refresh never undoes a selection. */
  function fillProjectSelect(select) {
    var signature = projects.map(function (p) { return p.id + '=' + p.name; }).join('|');
    if (select.getAttribute('data-signature') === signature) return;
    var chosen = select.value;
    select.replaceChildren.apply(select, projects.map(function (p) { return h('option', { value: p.id, text: p.name + ' (' + shortId(p.id) + ')' }); }));
    if (projects.some(function (p) { return p.id === chosen; })) select.value = chosen;
    select.setAttribute('data-signature', signature);
  }

  byId('project-form').addEventListener('submit', async function (ev) {
    ev.preventDefault();
    var input = byTestId('project-create-name'), out = byTestId('project-result');
    var name = input.value.trim();
    if (!name) return report(out, 'Name the project.', true);
    var button = byTestId('project-create');
    button.disabled = true;
    try {
      var p = await api('POST', '/admin/projects', { name: name });
      input.value = '';
      report(out, 'Created ' + name + '.', false);
      setText(byTestId('project-client-id'), p.clientId);
      setText(byTestId('project-secret'), p.clientSecret);
      show(byId('project-created'), true);
    } catch (e) {
      if (!(e instanceof Refused)) report(out, 'Not created: ' + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  });

  byId('project-created-dismiss').addEventListener('click', function () {
    setText(byTestId('project-secret'), '');
    setText(byTestId('project-client-id'), '');
    show(byId('project-created'), false);
  });

  // --- fleet ---
  byTestId('fleet-project').addEventListener('change', function () { selectedVehicle = null; refreshSoon(); });
  byTestId('fleet-window').addEventListener('change', function () { refreshSoon(); });

  async function loadFleet() {
    var projectId = byTestId('fleet-project').value;
    if (!projectId) {
      byId('vehicle-rows').replaceChildren();
      byId('trip-rows').replaceChildren();
      drawMap([], null, []);
      return;
    }
    var base = '/admin/projects/' + encodeURIComponent(projectId);
    var live = await api('GET', base + '/fleet/live');
    var vehicle = selectedVehicle, track = null, trips = [];
    if (vehicle) {
      var since = Date.now() - Number(byTestId('fleet-window').value);
      var answers = await Promise.all([
        api('GET', base + '/devices/' + encodeURIComponent(vehicle) + '/track?since=' + since),
        api('GET', base + '/trips?deviceId=' + encodeURIComponent(vehicle) + '&since=' + since),
      ]);
      track = answers[0];
      trips = answers[1].trips || [];
    }
    // The operator may have chosen another project or vehicle while this was read.
    if (projectId !== byTestId('fleet-project').value || vehicle !== selectedVehicle) return;
    renderVehicles(live.vehicles || []);
    renderTrips(trips);
    drawMap(live.vehicles || [], track, trips);
  }

  function selectVehicle(deviceId) {
    selectedVehicle = selectedVehicle === deviceId ? null : deviceId;
    Array.prototype.forEach.call(byId('vehicle-rows').children, function (row) {
      row.classList.toggle('selected', row.getAttribute('data-device-id') === selectedVehicle);
      row.setAttribute('aria-selected', String(row.getAttribute('data-device-id') === selectedVehicle));
    });
    refreshSoon();
  }

  function renderVehicles(vehicles) {
    syncRows(byId('vehicle-rows'), vehicles, function (v) { return v.deviceId; }, function (v) {
      return h('tr', {
        'data-testid': 'vehicle-row', class: 'vehicle', tabindex: '0',
        onclick: function () { selectVehicle(v.deviceId); },
        onkeydown: function (ev) { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); selectVehicle(v.deviceId); } },
      }, h('td', { 'data-role': 'name' }), h('td', {}, h('span', { 'data-role': 'status', class: 'badge' })), h('td', { class: 'num', 'data-role': 'speed' }), h('td', { 'data-role': 'at' }));
    }, function (row, v) {
      row.setAttribute('data-device-id', v.deviceId);
      row.setAttribute('data-status', v.status);
      row.setAttribute('aria-selected', String(v.deviceId === selectedVehicle));
      row.classList.toggle('selected', v.deviceId === selectedVehicle);
      setText(part(row, 'name'), v.name ? v.name + ' · ' + v.deviceId : v.deviceId);
      var status = part(row, 'status');
      setText(status, v.status);
      status.className = 'badge ' + v.status;
      setText(part(row, 'speed'), v.speed == null ? '—' : Math.round(v.speed) + ' km/h');
      setText(part(row, 'at'), when(v.at));
    });
    show(byId('vehicles-empty'), vehicles.length === 0);
  }

  function renderTrips(trips) {
    syncRows(byId('trip-rows'), trips, function (t) { return t.deviceId + ' ' + t.startAt; }, function () {
      return h('tr', { 'data-testid': 'trip-row' }, h('td', { 'data-role': 'start' }), h('td', { 'data-role': 'end' }), h('td', { class: 'num', 'data-role': 'duration' }), h('td', { class: 'num', 'data-role': 'distance' }), h('td', { class: 'num', 'data-role': 'speeds' }));
    }, function (row, t) {
      setText(part(row, 'start'), when(t.startAt));
      setText(part(row, 'end'), when(t.endAt));
      setText(part(row, 'duration'), duration(t.durationMs / 1000));
      setText(part(row, 'distance'), (t.distanceM / 1000).toFixed(2) + ' km');
      setText(part(row, 'speeds'), Math.round(t.avgSpeedKmh) + ' / ' + Math.round(t.maxSpeedKmh) + ' km/h');
    });
    show(byId('trips-empty'), trips.length === 0);
  }

  /**
   * Equirectangular projection fitted to what is shown: the chosen vehicle's track and trips, or
   * every vehicle's live position. Longitudes are scaled by cos(latitude) so shapes keep their
   * proportions at the scale of a city or a region.
   */
  function projection(points) {
    var lat0 = 0;
    points.forEach(function (p) { lat0 += p.lat; });
    lat0 = points.length ? lat0 / points.length : 0;
    var k = Math.cos(lat0 * Math.PI / 180);
    var xs = points.map(function (p) { return p.lon * k; }), ys = points.map(function (p) { return p.lat; });
    var minX = Math.min.apply(null, xs), maxX = Math.max.apply(null, xs), minY = Math.min.apply(null, ys), maxY = Math.max.apply(null, ys);
    var spanX = Math.max(maxX - minX, 0.002), spanY = Math.max(maxY - minY, 0.002);
    var scale = Math.min((MAP_W - 2 * MAP_PAD) / spanX, (MAP_H - 2 * MAP_PAD) / spanY);
    var cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    return function (p) {
      return { x: MAP_W / 2 + (p.lon * k - cx) * scale, y: MAP_H / 2 - (p.lat - cy) * scale };
    };
  }

  function drawTrack(points) {
    var line = byTestId('track-line');
    line.setAttribute('points', points.map(function (p) { return p.x.toFixed(1) + ',' + p.y.toFixed(1); }).join(' '));
    line.setAttribute('data-points', String(points.length));
  }

  function drawMap(vehicles, track, trips) {
    var coords = track ? track.geometry.coordinates.map(function (c) { return { lon: c[0], lat: c[1] }; }) : [];
    var tripEnds = [];
    trips.forEach(function (t) { tripEnds.push(t.start, t.end); });
    var fit = coords.length ? coords.concat(tripEnds) : vehicles.map(function (v) { return { lat: v.lat, lon: v.lon }; });
    var note = byId('map-note');
    var vehicleLayer = byId('map-vehicles'), tripLayer = byId('map-trips');
    if (!fit.length) {
      vehicleLayer.replaceChildren();
      tripLayer.replaceChildren();
      drawTrack([]);
      setText(note, track ? 'No accepted fixes in this window.' : 'No positions yet.');
      setText(byId('map-caption'), selectedVehicle ? 'Track of ' + selectedVehicle + ': no fixes in the window.' : '');
      return;
    }
    setText(note, '');
    var at = projection(fit);
    drawTrack(coords.map(at));
    tripLayer.replaceChildren.apply(tripLayer, trips.reduce(function (marks, t) {
      var a = at(t.start), b = at(t.end);
      marks.push(s('circle', { class: 'trip-start', cx: a.x.toFixed(1), cy: a.y.toFixed(1), r: 6 }));
      marks.push(s('rect', { class: 'trip-end', x: (b.x - 5).toFixed(1), y: (b.y - 5).toFixed(1), width: 10, height: 10 }));
      return marks;
    }, []));
    vehicleLayer.replaceChildren.apply(vehicleLayer, vehicles.map(function (v) {
      var p = at(v);
      var g = s('g', {});
      var dot = s('circle', { class: 'vehicle ' + v.status + (v.deviceId === selectedVehicle ? ' selected' : ''), cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: 7 });
      var title = s('title', {});
      title.textContent = (v.name || v.deviceId) + ' — ' + v.status;
      dot.append(title);
      // A label on the right half reads leftwards from its dot, so it never runs off the picture.
      var right = p.x > MAP_W / 2;
      var label = s('text', { class: 'label', x: (right ? p.x - 10 : p.x + 10).toFixed(1), y: (p.y + 4).toFixed(1), 'text-anchor': right ? 'end' : 'start' });
      label.textContent = v.name || v.deviceId;
      g.append(dot, label);
      return g;
    }));
    setText(byId('map-caption'), selectedVehicle
      ? 'Track of ' + selectedVehicle + ': ' + coords.length + ' fixes, ' + trips.length + ' trip(s); circles mark trip starts, squares their ends.'
      : vehicles.length + ' vehicle(s) at their last position. Choose one to draw its track.');
  }

  if (token) signedIn();
  else tokenInput.focus();
})();
`;

/** The script as served: the job-action table filled in once, at module load. */
export const CONSOLE_SCRIPT = SOURCE.replace('__JOB_ACTIONS__', JSON.stringify(actionsByState));
