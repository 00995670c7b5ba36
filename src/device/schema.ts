// The device object's SQLite tables, and its `meta` key-value table with a write-through cache.
// Table and column names are what objects in production hold: never rename them.

/**
 * Tables whose integer key an older layout declared AUTOINCREMENT: SQLite then writes a
 * `sqlite_sequence` row with every insert, a billed row write per table per call. Plain rowid keys
 * do: the dedup chunks need only a key above every row present (their age order); the outbox writes
 * its seqs itself, since SQLite would give a deleted top row's rowid again (see outbox-store.ts).
 */
const REKEYED_TABLES: Record<string, string> = {
  seen_chunks: `CREATE TABLE IF NOT EXISTS seen_chunks (id INTEGER PRIMARY KEY, seen_at_ms INTEGER NOT NULL, n INTEGER NOT NULL,
    fps BLOB NOT NULL, entries TEXT NOT NULL)`,
  outbox: `CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, ref TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '', body TEXT NOT NULL, payload TEXT, attempts INTEGER NOT NULL DEFAULT 0, base TEXT)`,
};

/**
 * The object's tables; every statement is idempotent, so it also completes an older layout. The
 * sessions' `end_ms` index is the session store's to keep or drop, by the device's gap (see
 * SessionStore.indexEnds).
 */
const SCHEMA_SQL = `
  ${REKEYED_TABLES.seen_chunks};
  CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL, ended INTEGER NOT NULL DEFAULT 0, merged_into TEXT, version INTEGER NOT NULL,
    live TEXT, live_v INTEGER);
  ${REKEYED_TABLES.outbox};
  CREATE INDEX IF NOT EXISTS outbox_session_idx ON outbox (ref) WHERE kind = 'session';
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

/**
 * `meta` keys older layouts wrote that nothing reads any more (a session version counter, a
 * small-chunk counter, a flush watermark now held in memory): deleted on an object's next call.
 */
export const RETIRED_META_KEYS = ['version', 'smallSeenChunks', 'flushAttemptedThrough'] as const;

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

/**
 * Creates the tables, or brings an older layout up to date (idempotent; run in a transaction).
 * `existing`: the object had tables already (a new one needs no look at older layouts). `extra`:
 * statements run with the schema's, in the same exec (the sessions' index for the device's gap).
 */
export function createOrUpgradeTables(sql: SqlStorage, existing: boolean, extra = ''): void {
  sql.exec(SCHEMA_SQL + extra);
  if (!existing) return;
  const rekeyed = new Set<string>();
  // The tables' statements as created, read at once.
  const ddlOf = new Map(
    sql.exec<{ name: string; sql: string }>("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN ('seen_chunks', 'outbox', 'sessions')").toArray().map((r) => [r.name, r.sql]),
  );
  const outboxDdl = ddlOf.get('outbox') ?? '';
  for (const [table, ddl] of Object.entries(REKEYED_TABLES)) {
    const found = ddlOf.get(table);
    if (found && dropAutoincrement(sql, table, ddl, found)) rekeyed.add(table);
  }
  // A dropped table takes its indexes with it.
  if (rekeyed.size) sql.exec(SCHEMA_SQL);
  // An outbox from before its event chunks kept their calls' shared fields apart gains the column
  // (NULL in the chunks it holds: their entries carry every field). A rebuilt one has it already.
  if (!rekeyed.has('outbox') && !/[(,]\s*base\s/i.test(outboxDdl)) sql.exec('ALTER TABLE outbox ADD COLUMN base TEXT');
  // Sessions from before a call's live state rode in its session row gain the two columns (NULL).
  const sessionsDdl = ddlOf.get('sessions');
  if (sessionsDdl && !/\blive_v\b/i.test(sessionsDdl)) sql.exec('ALTER TABLE sessions ADD COLUMN live TEXT; ALTER TABLE sessions ADD COLUMN live_v INTEGER');
}

/**
 * The largest object whose tables the rebuild below copies: it runs inside the first call's
 * transaction, so a larger object (a long-stalled outbox, a very busy device's dedup window) waits
 * for a later life in which it is smaller, and meanwhile keeps its AUTOINCREMENT keys. The size
 * SQLite reports is known without reading a row.
 */
export const REKEY_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Rebuilds an older layout's table without AUTOINCREMENT, every row and key kept (once per
 * object, inside the caller's transaction). Returns whether it did.
 */
function dropAutoincrement(sql: SqlStorage, table: string, ddl: string, existingDdl: string): boolean {
  if (!/\bAUTOINCREMENT\b/i.test(existingDdl)) return false;
  if (sql.databaseSize > REKEY_MAX_BYTES) return false;
  const rebuilt = `${table}_rekeyed`;
  sql.exec(`DROP TABLE IF EXISTS ${rebuilt}`);
  sql.exec(ddl.replace(`IF NOT EXISTS ${table} `, `${rebuilt} `));
  const columns = sql.exec(`SELECT * FROM ${table} LIMIT 0`).columnNames.join(', ');
  sql.exec(`INSERT INTO ${rebuilt} (${columns}) SELECT ${columns} FROM ${table}`);
  sql.exec(`DROP TABLE ${table}`);
  sql.exec(`ALTER TABLE ${rebuilt} RENAME TO ${table}`);
  return true;
}

/** SQLite's size of the object's whole database, in bytes. */
export function databaseBytes(sql: SqlStorage): number {
  return sql.databaseSize;
}

/**
 * Meta values as committed: the whole table is read in one SELECT on first use (a handful of small
 * keys), then served from memory (the object is single-threaded). Written through to storage, and
 * only when a value changes; the owner clears the cache whenever a transaction rolls back.
 */
export class MetaStore {
  /** Each key's value and the JSON stored for it; a missing key reads as null. */
  private cache: Map<string, { value: unknown; json: string }> | null = null;

  constructor(private readonly sql: SqlStorage) {}

  private load(): Map<string, { value: unknown; json: string }> {
    if (this.cache) return this.cache;
    const cache = new Map<string, { value: unknown; json: string }>();
    for (const r of this.sql.exec<{ key: string; value: string }>('SELECT key, value FROM meta')) cache.set(r.key, { value: JSON.parse(r.value), json: r.value });
    return (this.cache = cache);
  }

  get<T>(key: string): T | null {
    return (this.load().get(key)?.value ?? null) as T | null;
  }

  /** Writes `value` unless it is what the key holds already (null for a key never written). */
  set(key: string, value: unknown): void {
    const cache = this.load();
    const json = JSON.stringify(value);
    if ((cache.get(key)?.json ?? 'null') === json) return;
    this.sql.exec('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value', key, json);
    cache.set(key, { value, json });
  }

  /** Deletes those of `keys` the table holds (keys an older layout wrote). */
  drop(keys: readonly string[]): void {
    const cache = this.load();
    for (const key of keys) {
      if (!cache.has(key)) continue;
      this.sql.exec('DELETE FROM meta WHERE key = ?', key);
      cache.delete(key);
    }
  }

  /** Forgets what it holds in memory: after a rollback, or once storage is deleted. */
  clear(): void {
    this.cache = null;
  }
}
