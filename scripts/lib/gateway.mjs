// Brings up the local gateway: ClickHouse (found, or started: embedded chDB by default), migrations,
// `wrangler dev` (optionally supervised), a demo project and the cron schedule. Used by `npm start`
// and by the benchmarks.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrateClickHouse } from './clickhouse-migrate.mjs';
import { clickhouseAnswers, freePort, startClickHouse } from './services.mjs';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const WRANGLER = join(ROOT, 'node_modules', 'wrangler', 'bin', 'wrangler.js');
const D1_DATABASE = 'driftline';
const HYPERDRIVE_ENV = 'CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_LEGACY_DB';

/** Minimal dotenv reader for `.dev.vars` (KEY=VALUE, optional quotes, # comments). */
export function parseDotVars(text) {
  const out = {};
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m) continue;
    let v = m[2];
    if (/^(["']).*\1$/.test(v)) v = v.slice(1, -1);
    else v = v.replace(/\s+#.*$/, '');
    out[m[1]] = v;
  }
  return out;
}

const quoteVar = (v) => JSON.stringify(String(v));

/** `[vars]` and `crons` of wrangler.toml, read just enough to know the defaults and the schedule. */
export function readWranglerToml(file = join(ROOT, 'wrangler.toml')) {
  const text = readFileSync(file, 'utf8');
  const vars = {};
  const varsBlock = /^\[vars\]\s*\n([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(text);
  if (varsBlock) {
    for (const m of varsBlock[1].matchAll(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"/gm)) vars[m[1]] = m[2];
  }
  const cronsLine = /^\s*crons\s*=\s*\[([^\]]*)\]/m.exec(text);
  const crons = cronsLine ? [...cronsLine[1].matchAll(/"([^"]+)"/g)].map((m) => m[1]) : [];
  return { vars, crons };
}

// --- cron schedule (standard five fields: minute hour day-of-month month day-of-week) ---
function fieldMatches(field, value, min, max) {
  return field.split(',').some((part) => {
    const [range, stepText] = part.split('/');
    const step = stepText ? Number(stepText) : 1;
    let lo;
    let hi;
    if (range === '*') [lo, hi] = [min, max];
    else if (range.includes('-')) [lo, hi] = range.split('-').map(Number);
    else [lo, hi] = [Number(range), stepText ? max : Number(range)];
    return value >= lo && value <= hi && (value - lo) % step === 0;
  });
}

/** Whether a cron expression fires in the UTC minute of `date` (L/W/# and names are not handled). */
export function cronMatches(expr, date) {
  const f = expr.trim().split(/\s+/);
  if (f.length !== 5) return false;
  const dow = date.getUTCDay();
  const domOk = fieldMatches(f[2], date.getUTCDate(), 1, 31);
  const dowOk = fieldMatches(f[4], dow, 0, 7) || (dow === 0 && fieldMatches(f[4], 7, 0, 7));
  const dayOk = f[2] !== '*' && f[4] !== '*' ? domOk || dowOk : domOk && dowOk;
  return (
    fieldMatches(f[0], date.getUTCMinutes(), 0, 59) &&
    fieldMatches(f[1], date.getUTCHours(), 0, 23) &&
    fieldMatches(f[3], date.getUTCMonth() + 1, 1, 12) &&
    dayOk
  );
}

function runToEnd(args, { env, cwd = ROOT }) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRANGLER, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`wrangler ${args.slice(0, 3).join(' ')} exited with ${code}:\n${out.slice(-3000)}`))));
  });
}

function adminTokenFromDevVars(devVarsPath) {
  return existsSync(devVarsPath) ? parseDotVars(readFileSync(devVarsPath, 'utf8')).ADMIN_TOKEN || undefined : undefined;
}

async function ensureDemoProject({ url, adminToken, file }) {
  if (existsSync(file)) {
    try {
      const saved = JSON.parse(readFileSync(file, 'utf8'));
      const res = await fetch(`${url}/v1/events?limit=1`, {
        headers: { 'openpanel-client-id': saved.clientId, 'openpanel-client-secret': saved.clientSecret },
      });
      await res.arrayBuffer();
      if (res.ok) return { ...saved, reused: true };
    } catch {
      /* unreadable or stale: make a new one */
    }
  }
  const res = await fetch(`${url}/admin/projects`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'demo' }),
  });
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST /admin/projects answered ${res.status}: ${body.slice(0, 500)}`);
  const project = JSON.parse(body);
  writeFileSync(file, JSON.stringify({ id: project.id, clientId: project.clientId, clientSecret: project.clientSecret }, null, 2) + '\n', { mode: 0o600 });
  return { ...project, reused: false };
}

/** chDB comes with the dev dependencies for linux-x64; elsewhere say what to use instead. */
async function loadChdbServer() {
  try {
    return await import('./chdb-server.mjs');
  } catch (err) {
    throw new Error(
      `the embedded ClickHouse (chDB) cannot be loaded here (${err.message.split('\n')[0]}). ` +
        'Set CLICKHOUSE_URL to a running ClickHouse, or LOCAL_CLICKHOUSE=server to start Debian\'s clickhouse-server.',
    );
  }
}

const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 10 * 60_000;

/** `wrangler dev` in its own process group (so stopping it also stops workerd), output kept in a tail. */
function spawnWrangler(args, env, quiet) {
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let tail = '';
  let crashes = 0;
  const onOutput = (stream) => (b) => {
    const text = b.toString();
    if (/runtime crashed unexpectedly/i.test(text)) crashes += 1;
    tail = (tail + text).slice(-8000);
    if (!quiet) stream.write(b);
  };
  child.stdout.on('data', onOutput(process.stdout));
  child.stderr.on('data', onOutput(process.stderr));
  let exitCode;
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((exitCode = code ?? signal))));
  const killGroup = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      /* already gone */
    }
  };
  return {
    pid: child.pid,
    exited,
    exitCode: () => exitCode,
    tail: () => tail,
    /** How often wrangler said the Workers runtime crashed (it restarts it itself). */
    crashes: () => crashes,
    async stop() {
      if (exitCode !== undefined) return killGroup('SIGKILL'); // stragglers of the group (workerd)
      killGroup('SIGTERM');
      const timer = setTimeout(() => killGroup('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      killGroup('SIGKILL');
    },
  };
}

/**
 * Waits for /healthz to answer 200 (or for wrangler to fail: exit, a build error, 120 s). After a
 * restart (`anyAnswer`) the gateway's own 503 counts too: ClickHouse may be down, the gateway is up.
 */
async function waitUntilServing(url, wrangler, checkAborted, { anyAnswer = false } = {}) {
  const deadline = Date.now() + 120_000;
  let lastHealth = 'no answer';
  for (;;) {
    checkAborted();
    const tail = wrangler.tail();
    if (wrangler.exitCode() !== undefined) throw new Error(`wrangler dev exited (${wrangler.exitCode()}) before the gateway came up:\n${tail.slice(-3000)}`);
    if (Date.now() > deadline) throw new Error(`the gateway at ${url}/healthz did not become ready in 120 s (${lastHealth}):\n${tail.slice(-3000)}`);
    // wrangler keeps watching after a failed build; a start cannot succeed until the source is fixed
    const buildFailed = tail.lastIndexOf('Build failed');
    if (buildFailed >= 0 && tail.lastIndexOf('Ready on') < buildFailed) {
      throw new Error(`wrangler dev could not build the Worker:\n${tail.slice(buildFailed, buildFailed + 3000)}`);
    }
    if (anyAnswer) {
      const answer = await gatewayAnswers(url, 2000);
      if (answer === true) return;
      lastHealth = answer;
    } else {
      try {
        const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) });
        lastHealth = `${res.status} ${(await res.text()).slice(0, 200)}`;
        if (res.ok) return;
      } catch (err) {
        lastHealth = err.message;
      }
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * True when the gateway itself answers /healthz: its JSON (`ok`, `clickhouse`), with 200 or with 503
 * while ClickHouse is down. wrangler's proxy in front of a dead runtime answers too (a 500, a text
 * 503), so any other answer is a miss; the reason otherwise.
 */
async function gatewayAnswers(url, timeoutMs) {
  try {
    const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    if (res.status !== 200 && res.status !== 503) return `${res.status} ${text.slice(0, 100)}`;
    const body = JSON.parse(text);
    return typeof body.ok === 'boolean' && typeof body.clickhouse === 'string' ? true : `not the gateway's answer: ${text.slice(0, 100)}`;
  } catch (err) {
    return err.message;
  }
}

/**
 * Resolves with a reason once /healthz has not given the gateway's own answer (any status counts as one: a 503
 * while ClickHouse is down is the gateway answering) `failures` times in a row. wrangler restarts a
 * crashed workerd by itself, but the restarted runtime can stop answering, so after wrangler reports
 * a crash the checks come every few seconds; otherwise one every `idleMs` (each shows in its log).
 */
async function stopsAnswering(url, wrangler, stopped, log, { idleMs = 30_000, afterCrashMs = 3000, timeoutMs = 5000, failures = 3 } = {}) {
  let misses = 0;
  let seenCrashes = wrangler.crashes();
  while (!stopped() && wrangler.exitCode() === undefined) {
    const due = Date.now() + (misses > 0 ? afterCrashMs : idleMs);
    while (Date.now() < due && wrangler.crashes() === seenCrashes && !stopped()) await new Promise((r) => setTimeout(r, 250));
    if (wrangler.crashes() !== seenCrashes) {
      seenCrashes = wrangler.crashes();
      log('Gateway: wrangler dev reports that the Workers runtime crashed and restarts it; checking that the gateway answers');
      await new Promise((r) => setTimeout(r, afterCrashMs)); // give its own restart a chance first
    }
    if (stopped()) break;
    const answer = await gatewayAnswers(url, timeoutMs);
    if (answer === true) {
      misses = 0;
    } else {
      misses += 1;
      if (misses >= failures) return `the gateway stopped answering ${url}/healthz (${misses} checks in a row: ${answer})`;
    }
  }
  return new Promise(() => {}); // exited or stopping: the other side of the race decides
}

/**
 * Starts the whole local gateway. Options:
 * - port: HTTP port (default PORT or 8787; 0 picks a free one)
 * - dataDir: where ClickHouse data, wrangler state and the demo project live (default `.data`)
 * - adminToken: otherwise ADMIN_TOKEN, then `.dev.vars`, then a random one written to `.dev.vars`
 *   (only when `writeDevVars`, as `npm start` does)
 * - quiet: keep wrangler's output to ourselves (shown only if it fails)
 * - crons: fire the Cron Triggers of wrangler.toml on their schedule (default true)
 * - clickhouseUrl, clickhouseDatabase: override CLICKHOUSE_URL / CLICKHOUSE_DATABASE
 * - log: where progress lines go (default console.log)
 * - signal: an AbortSignal that cancels a start in progress (what was started is stopped)
 * - supervise: restart wrangler dev when it exits or stops answering (as `npm start` does)
 * - localClickHouse: `chdb` (embedded, default) or `server` when no configured ClickHouse answers
 * - localObservability: false turns off wrangler dev's local trace collector (every invocation's
 *   trace written to local storage for its explorer); the benches do, since a deployment has no
 *   such collector in its CPU. Default: wrangler's (on, or X_LOCAL_OBSERVABILITY)
 * - wranglerConfig: another wrangler config to run instead of the project's wrangler.toml (tests
 *   shorten queue retries with it; paths in it must be absolute)
 * Returns { url, adminToken, adminTokenSource, clickhouse: { url, started }, project, crons, exited, stop }.
 */
export async function startGateway(options = {}) {
  const env = process.env;
  const quiet = options.quiet ?? false;
  const log = options.log ?? ((line) => console.log(line));
  const dataDir = options.dataDir ?? join(ROOT, '.data');
  const port = options.port === 0 ? await freePort() : Number(options.port ?? env.PORT ?? 8787);
  const { vars: fileVars, crons } = readWranglerToml(options.wranglerConfig);
  const configArgs = options.wranglerConfig ? ['--config', options.wranglerConfig] : [];
  const devVarsPath = join(ROOT, '.dev.vars');
  const devVars = existsSync(devVarsPath) ? parseDotVars(readFileSync(devVarsPath, 'utf8')) : {};
  mkdirSync(dataDir, { recursive: true });

  const cleanups = [];
  const signal = options.signal;
  const checkAborted = () => {
    if (signal?.aborted) throw new Error('start cancelled');
  };
  const stopAll = async () => {
    for (const fn of cleanups.splice(0).reverse()) {
      try {
        await fn();
      } catch (err) {
        log(`cleanup failed: ${err.message}`);
      }
    }
  };

  try {
    // 1. ClickHouse: the configured one if it answers, else a local one with data under dataDir:
    //    embedded chDB (ClickHouse 26, nothing to install) or, when asked, Debian's clickhouse-server.
    const wantedUrl = options.clickhouseUrl ?? env.CLICKHOUSE_URL ?? devVars.CLICKHOUSE_URL ?? fileVars.CLICKHOUSE_URL;
    const localKind = options.localClickHouse ?? (env.LOCAL_CLICKHOUSE || devVars.LOCAL_CLICKHOUSE || 'chdb');
    if (localKind !== 'chdb' && localKind !== 'server') throw new Error(`LOCAL_CLICKHOUSE must be chdb or server, not ${localKind}`);
    let clickhouseUrl;
    let startedClickHouse = null;
    if (wantedUrl && (await clickhouseAnswers(wantedUrl))) {
      clickhouseUrl = wantedUrl.replace(/\/+$/, '');
      log(`ClickHouse: using ${clickhouseUrl}`);
    } else {
      const what = localKind === 'server' ? 'clickhouse-server' : 'the embedded ClickHouse (chDB)';
      if (options.clickhouseUrl ?? env.CLICKHOUSE_URL) log(`ClickHouse: CLICKHOUSE_URL=${wantedUrl} does not answer; starting ${what}`);
      const dir = join(dataDir, localKind === 'server' ? 'clickhouse' : 'chdb');
      startedClickHouse = localKind === 'server' ? await startClickHouse({ dir }) : await (await loadChdbServer()).startChdbServer({ dir });
      cleanups.push(() => startedClickHouse.stop());
      clickhouseUrl = startedClickHouse.url;
      log(`ClickHouse: started ${what} at ${clickhouseUrl} (data in ${dir})`);
    }
    checkAborted();
    const database = options.clickhouseDatabase || env.CLICKHOUSE_DATABASE || devVars.CLICKHOUSE_DATABASE || fileVars.CLICKHOUSE_DATABASE || 'driftline';
    const applied = await migrateClickHouse({
      url: clickhouseUrl,
      database,
      user: env.CLICKHOUSE_USER || devVars.CLICKHOUSE_USER || undefined,
      password: env.CLICKHOUSE_PASSWORD || devVars.CLICKHOUSE_PASSWORD || undefined,
    });
    log(`ClickHouse: database ${database} migrated${applied.length ? ` (applied ${applied.join(', ')})` : ' (up to date)'}`);

    // 2. Admin token: option, environment, .dev.vars, or a new random one.
    let adminToken = options.adminToken ?? env.ADMIN_TOKEN;
    let adminTokenSource = options.adminToken ? 'option' : env.ADMIN_TOKEN ? 'ADMIN_TOKEN' : null;
    if (!adminToken) {
      adminToken = adminTokenFromDevVars(devVarsPath);
      if (adminToken) adminTokenSource = '.dev.vars';
    }
    if (!adminToken) {
      adminToken = randomBytes(24).toString('base64url');
      if (options.writeDevVars) {
        const prefix = existsSync(devVarsPath) && !readFileSync(devVarsPath, 'utf8').endsWith('\n') ? '\n' : '';
        appendFileSync(devVarsPath, `${prefix}ADMIN_TOKEN=${adminToken}\n`, { mode: 0o600 });
        adminTokenSource = 'generated into .dev.vars';
      } else {
        adminTokenSource = 'generated';
      }
    }

    // 3. Variables for the Worker: .dev.vars, overridden by the environment, written to one env file
    //    that wrangler loads instead of .dev.vars (keeps the token off the command line).
    const workerVars = { ...devVars, CLICKHOUSE_URL: clickhouseUrl, CLICKHOUSE_DATABASE: database, ADMIN_TOKEN: adminToken };
    // Every setting wrangler.toml declares (and the secrets) may come from the environment.
    for (const key of new Set([...Object.keys(fileVars), 'CLICKHOUSE_USER', 'CLICKHOUSE_PASSWORD', 'LEGACY_DATASETS', 'LEGACY_MAX_HELD', 'SESSION_GAP_MS'])) {
      if (key !== 'CLICKHOUSE_URL' && key !== 'CLICKHOUSE_DATABASE' && env[key] !== undefined) workerVars[key] = env[key];
    }
    Object.assign(workerVars, options.vars ?? {});
    const wranglerDir = join(dataDir, 'wrangler');
    mkdirSync(wranglerDir, { recursive: true });
    const envFile = join(dataDir, 'worker.env');
    writeFileSync(envFile, Object.entries(workerVars).map(([k, v]) => `${k}=${quoteVar(v)}`).join('\n') + '\n', { mode: 0o600 });
    chmodSync(envFile, 0o600);

    const childEnv = { ...env, CI: 'true', WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1', FORCE_COLOR: '0' };
    delete childEnv.NODE_OPTIONS;
    if (options.localObservability === false) childEnv.X_LOCAL_OBSERVABILITY = 'false';
    // wrangler's debug log (it can reach hundreds of MB under load) stays with the data it belongs to
    childEnv.WRANGLER_LOG_PATH = env.WRANGLER_LOG_PATH || join(dataDir, 'logs');

    // 4. D1 migrations into the same local state wrangler dev will use.
    const d1Out = await runToEnd(['d1', 'migrations', 'apply', D1_DATABASE, '--local', '--persist-to', wranglerDir, ...configArgs], { env: childEnv });
    log(`D1: ${/No migrations to apply/i.test(d1Out) ? 'migrations up to date' : 'migrations applied'} (state in ${wranglerDir})`);

    checkAborted();
    // 5. wrangler dev, in its own process group so stopping it also stops workerd.
    const inspectorPort = await freePort();
    const args = [
      WRANGLER, 'dev', ...configArgs, '--local', '--ip', '127.0.0.1', '--port', String(port), '--inspector-port', String(inspectorPort),
      '--persist-to', wranglerDir, '--env-file', envFile, '--show-interactive-dev-session=false',
    ];
    const url = `http://127.0.0.1:${port}`;
    let wrangler = spawnWrangler(args, childEnv, quiet);
    cleanups.push(() => wrangler.stop());
    await waitUntilServing(url, wrangler, checkAborted);
    log(`Gateway: ${url} is up (/healthz ok)`);

    // The gateway answers again after wrangler or workerd dies: restart wrangler dev (never the
    // ClickHouse we own), at most MAX_RESTARTS times in RESTART_WINDOW_MS, then give up.
    let stopping = false;
    cleanups.push(() => {
      stopping = true; // runs before wrangler is stopped (cleanups run in reverse)
    });
    let resolveExited;
    const exited = new Promise((resolve) => (resolveExited = resolve));
    if (options.supervise) {
      const restarts = [];
      void (async () => {
        for (;;) {
          const why = await Promise.race([
            wrangler.exited.then((code) => `wrangler dev exited (${code})`),
            stopsAnswering(url, wrangler, () => stopping, log, options.healthCheck),
          ]);
          if (stopping) return;
          const now = Date.now();
          while (restarts.length && now - restarts[0] > RESTART_WINDOW_MS) restarts.shift();
          const lastLines = wrangler.tail().trim().split('\n').slice(-12).join('\n');
          log(`Gateway: ${why}. Last output of wrangler dev:\n${lastLines}`);
          if (restarts.length >= MAX_RESTARTS) {
            log(`Gateway: ${restarts.length} restarts within ${RESTART_WINDOW_MS / 60_000} minutes; giving up.`);
            await wrangler.stop();
            return resolveExited(why);
          }
          restarts.push(now);
          await wrangler.stop();
          await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * 2 ** (restarts.length - 1))).unref());
          if (stopping) return;
          log(`Gateway: restarting wrangler dev (restart ${restarts.length} of at most ${MAX_RESTARTS} in ${RESTART_WINDOW_MS / 60_000} minutes; ClickHouse keeps running)`);
          wrangler = spawnWrangler(args, childEnv, quiet);
          try {
            await waitUntilServing(url, wrangler, () => {}, { anyAnswer: true });
            log(`Gateway: ${url} answers again`);
          } catch (err) {
            log(`Gateway: the restarted wrangler dev did not come up: ${err.message.split('\n')[0]}`);
          }
        }
      })();
    } else {
      void wrangler.exited.then((code) => resolveExited(`wrangler dev exited (${code})`));
    }

    // 6. Demo project (reused while its credentials still work).
    const project = options.demoProject === false ? null : await ensureDemoProject({ url, adminToken, file: join(dataDir, 'demo-project.json') });

    checkAborted();
    // 7. Cron Triggers: wrangler dev never fires them; do it at the start of each matching minute.
    const cronRuns = [];
    let cronTimer = null;
    if (options.crons !== false && crons.length) {
      const fire = async () => {
        const now = new Date();
        for (const expr of crons.filter((c) => cronMatches(c, now))) {
          try {
            const res = await fetch(`${url}/cdn-cgi/handler/scheduled?cron=${encodeURIComponent(expr)}&time=${now.getTime()}`);
            const text = await res.text();
            cronRuns.push({ cron: expr, at: now.toISOString(), status: res.status });
            if (!res.ok) log(`cron "${expr}": scheduled handler answered ${res.status} ${text.slice(0, 200)}`);
            else if (!cronRuns.slice(0, -1).some((r) => r.cron === expr)) log(`cron "${expr}": fired at ${now.toISOString()} (${text.trim()}); fires on schedule from now on`);
          } catch (err) {
            log(`cron ${expr}: ${err.message}`);
          }
        }
      };
      const schedule = () => {
        const now = Date.now();
        cronTimer = setTimeout(() => {
          schedule();
          void fire();
        }, 60_000 - (now % 60_000) + 50);
        cronTimer.unref?.();
      };
      schedule();
      cleanups.push(() => clearTimeout(cronTimer));
    }

    return {
      url,
      port,
      adminToken,
      adminTokenSource,
      clickhouse: { url: clickhouseUrl, database, started: Boolean(startedClickHouse), kind: startedClickHouse ? (localKind === 'server' ? 'clickhouse-server' : 'embedded chDB') : 'external' },
      hyperdriveLocal: env[HYPERDRIVE_ENV] ? 'from ' + HYPERDRIVE_ENV : 'wrangler.toml localConnectionString',
      project,
      crons,
      cronRuns,
      get wranglerPid() {
        return wrangler.pid;
      },
      inspectorPort,
      /** The last few KB of wrangler's output (useful when quiet). */
      output: () => wrangler.tail(),
      clickhousePid: startedClickHouse?.pid ?? null,
      /** Resolves with the reason once the gateway is down for good (unsupervised: when wrangler exits). */
      exited,
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
