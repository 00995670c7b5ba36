// The device object's SQLite tables, and its `meta` key-value table with a write-through cache.
// Table and column names are what objects in production hold: never rename them.

/** The object's tables; every statement is idempotent, so it also completes an older layout. */
const SCHEMA_SQL = `
  CREATE TABLE IF NOT EXISTS seen_chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, seen_at_ms INTEGER NOT NULL, n INTEGER NOT NULL,
    fps BLOB NOT NULL, entries TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL, ended INTEGER NOT NULL DEFAULT 0, merged_into TEXT, version INTEGER NOT NULL);
  CREATE INDEX IF NOT EXISTS sessions_end_idx ON sessions (end_ms);
  CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ref TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '', body TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 0);
  CREATE INDEX IF NOT EXISTS outbox_session_idx ON outbox (ref) WHERE kind = 'session';
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

/** Bound parameters per statement, well under SQLite's limit, for `IN (...)` lists. */
export const PARAMS_PER_STATEMENT = 90;

/** `?, ?, …` for `n` bound values. */
export const marks = (n: number) => Array.from({ length: n }, () => '?').join(',');

export function tableExists(sql: SqlStorage, name: string): boolean {
  return sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name).toArray().length > 0;
}

/**
 * Tables are created on first write, so probing an unknown device leaves no storage behind: an
 * object has its schema once `meta` exists.
 */
export function hasTables(sql: SqlStorage): boolean {
  return tableExists(sql, 'meta');
}

/** Creates the tables, or brings an older layout up to date (idempotent). */
export function createOrUpgradeTables(sql: SqlStorage): void {
  sql.exec(SCHEMA_SQL);
}

/** SQLite's size of the object's whole database, in bytes. */
export function databaseBytes(sql: SqlStorage): number {
  return sql.databaseSize;
}

/**
 * Meta values as committed: read once, then served from memory (the object is single-threaded).
 * Written through to storage; the owner clears the cache whenever a transaction rolls back.
 */
export class MetaStore {
  private readonly cache = new Map<string, unknown>();

  constructor(private readonly sql: SqlStorage) {}

  get<T>(key: string): T | null {
    if (this.cache.has(key)) return this.cache.get(key) as T | null;
    const row = this.sql.exec<{ value: string }>('SELECT value FROM meta WHERE key = ?', key).toArray()[0];
    const value = row ? (JSON.parse(row.value) as T) : null;
    this.cache.set(key, value);
    return value;
  }

  set(key: string, value: unknown): void {
    if (this.cache.has(key) && JSON.stringify(this.cache.get(key)) === JSON.stringify(value)) return;
    this.sql.exec('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value', key, JSON.stringify(value));
    this.cache.set(key, value);
  }

  /** Forgets what it holds in memory: after a rollback, or once storage is deleted. */
  clear(): void {
    this.cache.clear();
  }
}
