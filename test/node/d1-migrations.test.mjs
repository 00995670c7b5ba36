// The D1 migrations on existing data, in SQLite (what D1 runs): legacy datasets kept per name become
// per (project, dataset) without losing a completion or a held event.
import { readdirSync, readFileSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';

const DIR = new URL('../../migrations/d1/', import.meta.url);
const files = readdirSync(DIR)
  .filter((f) => /^\d{4}_.+\.sql$/.test(f))
  .sort();

/** Applies the migrations named from `from` (inclusive) to `until` (exclusive). */
function migrate(db, { from = '', until = '\uffff' } = {}) {
  for (const f of files) if (f >= from && f < until) db.exec(readFileSync(new URL(f, DIR), 'utf8'));
}

describe('D1 migrations', () => {
  it('0005 gives each project its own legacy datasets: completion from its succeeded imports, counts from its held rows', () => {
    const next = files.find((f) => f.startsWith('0005_'));
    expect(next).toBeDefined();
    const db = new DatabaseSync(':memory:');
    migrate(db, { until: next });

    const job = db.prepare(
      `INSERT INTO jobs (id, type, state, params, created_at, ended_at, last_update_at) VALUES (?, 'legacy_import', ?, ?, 0, ?, 0)`,
    );
    const params = (projectId, dataset) => JSON.stringify({ type: 'legacy_import', projectId, dataset });
    job.run('j1', 'succeeded', params('A', 'citylens'), 1000);
    job.run('j2', 'succeeded', params('A', 'citylens'), 5000); // a re-run: A's first completion counts
    job.run('j3', 'succeeded', params('B', 'citylens'), 2000);
    job.run('j4', 'running', params('C', 'citylens'), null);
    job.run('j5', 'failed', params('D', 'fleetone'), 1600);
    const flag = db.prepare('INSERT INTO legacy_datasets (dataset, initial_migration_completed_at) VALUES (?, ?)');
    flag.run('citylens', 900);
    flag.run('fleetone', 1500); // no succeeded import explains it: the project that ran one keeps it
    flag.run('orphan', 1700); // no job at all: nobody can be given it
    const hold = db.prepare(
      `INSERT INTO held_legacy_events (dataset, legacy_id, project_id, device_id, gap_ms, event, held_at) VALUES (?, ?, ?, 'd', 1800000, '{}', 0)`,
    );
    hold.run('citylens', '1', 'C');
    hold.run('citylens', '2', 'C');
    hold.run('fleetone', '1', 'E');

    migrate(db, { from: next });
    expect(db.prepare('SELECT project_id, dataset, initial_migration_completed_at AS at, held FROM legacy_datasets ORDER BY project_id, dataset').all()).toEqual([
      { project_id: 'A', dataset: 'citylens', at: 1000, held: 0 },
      { project_id: 'B', dataset: 'citylens', at: 2000, held: 0 },
      { project_id: 'C', dataset: 'citylens', at: null, held: 2 },
      { project_id: 'D', dataset: 'fleetone', at: 1500, held: 0 },
      { project_id: 'E', dataset: 'fleetone', at: null, held: 1 },
    ]);
    expect(db.prepare(`SELECT count(*) AS n FROM held_legacy_events`).get().n).toBe(3);
    const indexes = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'held_legacy_events'`).all().map((r) => r.name);
    expect(indexes).toEqual(['held_legacy_events_project_dataset_idx']);
    // The key is the pair now: the same name in another project is another row.
    db.prepare(`INSERT INTO legacy_datasets (project_id, dataset) VALUES ('F', 'citylens')`).run();
    expect(() => db.prepare(`INSERT INTO legacy_datasets (project_id, dataset) VALUES ('F', 'citylens')`).run()).toThrow(/UNIQUE/);
  });
});
