// Starts private ClickHouse and Postgres instances for tests, benchmarks and `npm start`.
// Each instance lives in its own folder, listens on loopback only, and is stopped by the caller.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, existsSync, chownSync, chmodSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function which(cmd, extra = []) {
  for (const dir of [...(process.env.PATH ?? '').split(':'), ...extra]) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd);
  }
  return null;
}

export async function waitFor(check, { timeoutMs = 30_000, intervalMs = 100, what = 'service' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`${what} did not become ready in ${timeoutMs} ms${lastError ? `: ${lastError.message}` : ''}`);
}

export async function clickhouseAnswers(url) {
  try {
    const res = await fetch(new URL('/ping', url), { signal: AbortSignal.timeout(1000) });
    return res.ok;
  } catch {
    return false;
  }
}

/** The server's `version()`, e.g. `18.16.1` or `26.7.2.1`. */
export async function clickhouseVersion(url) {
  const res = await fetch(new URL('/?query=' + encodeURIComponent('SELECT version()'), url), { signal: AbortSignal.timeout(10_000) });
  const text = (await res.text()).trim();
  if (!res.ok) throw new Error(`ClickHouse at ${url} answered ${res.status}: ${text.slice(0, 300)}`);
  return text;
}

export function clickhouseServerInstalled() {
  return which('clickhouse-server', ['/usr/sbin', '/usr/bin']) !== null;
}

export const CLICKHOUSE_INSTALL_HINT =
  'clickhouse-server is not installed. Install it with: sudo apt-get update && sudo apt-get install -y clickhouse-server ' +
  '(or point CLICKHOUSE_URL at a running ClickHouse).';

/** Starts a private clickhouse-server with its data in `dir`; returns { url, stop }. */
export async function startClickHouse({ dir, port } = {}) {
  const bin = which('clickhouse-server', ['/usr/sbin', '/usr/bin']);
  if (!bin) throw new Error(CLICKHOUSE_INSTALL_HINT);
  const httpPort = port ?? (await freePort());
  const tcpPort = await freePort();
  const interPort = await freePort();
  mkdirSync(join(dir, 'data'), { recursive: true });
  for (const sub of ['tmp', 'user_files', 'format_schemas', 'log']) mkdirSync(join(dir, 'data', sub), { recursive: true });
  const d = join(dir, 'data');
  writeFileSync(
    join(dir, 'users.xml'),
    `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage>${process.env.CLICKHOUSE_QUERY_LOG === '1' ? '<log_queries>1</log_queries>' : ''}</default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`,
  );
  writeFileSync(
    join(dir, 'config.xml'),
    `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>${d}/log/server.log</log><errorlog>${d}/log/server.err.log</errorlog>
    <size>10M</size><count>2</count><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>${httpPort}</http_port>
  <tcp_port>${tcpPort}</tcp_port>
  <interserver_http_port>${interPort}</interserver_http_port>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <path>${d}/</path>
  <tmp_path>${d}/tmp/</tmp_path>
  <user_files_path>${d}/user_files/</user_files_path>
  <format_schema_path>${d}/format_schemas/</format_schema_path>
  <users_config>${dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>${process.env.CLICKHOUSE_QUERY_LOG === '1' ? `
  <query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></query_log>
  <part_log><database>system</database><table>part_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></part_log>` : ''}
</yandex>
`,
  );
  const child = spawn(bin, [`--config-file=${join(dir, 'config.xml')}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: false,
  });
  let stderr = '';
  child.stderr.on('data', (b) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  let exited = null;
  child.on('exit', (code) => {
    exited = code;
  });
  const url = `http://127.0.0.1:${httpPort}`;
  try {
    await waitFor(
      async () => {
        if (exited !== null) throw new Error(`clickhouse-server exited with ${exited}: ${stderr}`);
        return clickhouseAnswers(url);
      },
      { timeoutMs: 60_000, what: 'clickhouse-server' },
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    url,
    pid: child.pid,
    /** `force` kills at once: fine for throwaway test data, which is deleted anyway. */
    stop: async ({ force = false } = {}) => {
      if (exited !== null) return;
      child.kill(force ? 'SIGKILL' : 'SIGTERM');
      await new Promise((resolve) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          resolve();
        }, 10_000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    },
  };
}

function postgresBin(name) {
  const found = which(name);
  if (found) return found;
  for (const v of ['17', '16', '15', '14', '13']) {
    const p = `/usr/lib/postgresql/${v}/bin/${name}`;
    if (existsSync(p)) return p;
  }
  throw new Error(`${name} not found. Install Postgres with: sudo apt-get install -y postgresql (or set POSTGRES_URL).`);
}

/** Starts a throwaway Postgres cluster in `dir`; returns { url, stop }. Runs as `postgres` when we are root. */
export async function startPostgres({ dir }) {
  const initdb = postgresBin('initdb');
  const pgctl = postgresBin('pg_ctl');
  const port = await freePort();
  const asRoot = process.getuid?.() === 0;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  if (asRoot) {
    // the postgres user must be able to reach its folder through a private temp parent
    chmodSync(dirname(dir), 0o755);
    chmodSync(dir, 0o755);
  }
  const run = (bin, args) => {
    if (asRoot) {
      const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
      chownSync(dir, uid, gid);
      return explain(() => execFileSync('runuser', ['-u', 'postgres', '--', bin, ...args], { stdio: 'pipe', cwd: '/tmp' }));
    }
    return explain(() => execFileSync(bin, args, { stdio: 'pipe' }));
  };
  const explain = (fn) => {
    try {
      return fn();
    } catch (err) {
      throw new Error(`${err.message.split('\n')[0]}\n${err.stderr?.toString() ?? ''}`);
    }
  };
  const data = join(dir, 'pgdata');
  run(initdb, ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
  run(pgctl, [
    '-D', data, '-l', join(dir, 'postgres.log'), '-w', '-t', '60',
    '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off`,
    'start',
  ]);
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    port,
    stop: async () => {
      try {
        run(pgctl, ['-D', data, '-m', 'immediate', '-w', 'stop']);
      } catch {
        /* already stopped */
      }
    },
  };
}
