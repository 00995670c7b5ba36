// Node side of the ClickHouse migration runner: reads migrations/clickhouse and applies them over HTTP.
import { readdirSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function readClickHouseMigrations(dir = join(root, 'migrations', 'clickhouse')) {
  return readdirSync(dir)
    .filter((f) => /^\d+_.+\.sql$/.test(f))
    .sort()
    .map((name) => ({ name, sql: readFileSync(join(dir, name), 'utf8') }));
}

async function post(url, database, sql, user = 'default', password = '') {
  const u = new URL(url);
  if (database) u.searchParams.set('database', database);
  const res = await fetch(u, {
    method: 'POST',
    body: sql,
    headers: { 'X-ClickHouse-User': user, 'X-ClickHouse-Key': password },
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`ClickHouse ${res.status}: ${text.slice(0, 500)}`);
  return text;
}

/** Creates the database if needed and applies every pending migration. Returns the names applied. */
export async function migrateClickHouse({ url, database = 'driftline', user, password }) {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(database)) throw new Error(`invalid database name ${database}`);
  await post(url, null, `CREATE DATABASE IF NOT EXISTS ${database}`, user, password);
  return applyClickHouseMigrations(
    {
      exec: (sql) => post(url, database, sql, user, password).then(() => undefined),
      rows: async (sql) =>
        (await post(url, database, `${sql} FORMAT JSONEachRow`, user, password))
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l)),
    },
    readClickHouseMigrations(),
  );
}

export function splitStatements(sql) {
  return sql
    .split('\n')
    .filter((line) => !line.trim().startsWith('--'))
    .join('\n')
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter(Boolean);
}

// 18.16 has no `ADD COLUMN IF NOT EXISTS`: a run that stopped between an ALTER and its
// schema_migrations row re-runs the ALTER, and the column it finds is the one it was about to add
// (DUPLICATE_COLUMN, code 15, on current servers; code 44 "column with this name already exists"
// on 18.16). One ALTER statement is applied whole, so nothing after the ADD COLUMN in it is missing.
async function execOnce(target, statement) {
  try {
    await target.exec(statement);
  } catch (err) {
    const message = String(err?.message);
    const duplicate = /Code: 15\b/.test(message) || (/Code: 44\b/.test(message) && /already exists/.test(message));
    if (/^ALTER\s+TABLE\s+\S+\s+ADD\s+COLUMN\b/i.test(statement) && duplicate) return;
    throw err;
  }
}

async function applyClickHouseMigrations(target, files) {
  await target.exec(
    'CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY name',
  );
  const done = new Set((await target.rows('SELECT name FROM schema_migrations')).map((r) => r.name));
  const applied = [];
  for (const file of files) {
    if (done.has(file.name)) continue;
    for (const statement of splitStatements(file.sql)) await execOnce(target, statement);
    // file names are checked against /^\d+_.+\.sql$/ and carry no quotes
    await target.exec(`INSERT INTO schema_migrations (name, applied_at) VALUES ('${file.name.replace(/[^A-Za-z0-9_.-]/g, '')}', now())`);
    applied.push(file.name);
  }
  return applied;
}
