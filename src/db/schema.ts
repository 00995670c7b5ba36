// Control plane in D1. drizzle-kit generates migrations/d1 from this file.
import { sqliteTable, text, integer, index } from 'drizzle-orm/sqlite-core';

export const projects = sqliteTable('projects', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  sessionGapMs: integer('session_gap_ms').notNull().default(1_800_000),
  createdAt: integer('created_at').notNull(),
});

export const clients = sqliteTable(
  'clients',
  {
    id: text('id').primaryKey(),
    projectId: text('project_id')
      .notNull()
      .references(() => projects.id),
    secretHash: text('secret_hash').notNull(),
    createdAt: integer('created_at').notNull(),
  },
  (t) => [index('clients_project_idx').on(t.projectId)],
);

/** One random salt per UTC day: device ids derived without `__deviceId` rotate daily. */
export const salts = sqliteTable('salts', {
  day: text('day').primaryKey(),
  salt: text('salt').notNull(),
  createdAt: integer('created_at').notNull(),
});
