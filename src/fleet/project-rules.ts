// A project's fleet rules: its overrides (D1 `projects.fleet_rules`) over the defaults. The
// recompute analyses each project's fixes under its own rules; the reads apply them too.
import { eq, inArray } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { fleetReadRules } from '../config';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { analysisRulesKey, applyOverrides, DEFAULT_FLEET_RULES, FleetRulesOverridesSchema, type FleetRules, type FleetRulesOverrides } from './rules';

/** The stored overrides of a project; a row that no longer parses counts as none (and is logged). */
function parseStored(projectId: string, text: string | null): FleetRulesOverrides {
  if (text === null || text === '') return {};
  try {
    return FleetRulesOverridesSchema.parse(JSON.parse(text));
  } catch (err) {
    console.error(JSON.stringify({ msg: 'stored fleet rules do not parse; the defaults apply', projectId, error: String(err) }));
    return {};
  }
}

/** The overrides of each of `projectIds` that exists (an empty object for one without any). */
export async function readOverrides(db: D1Database, projectIds: readonly string[]): Promise<Map<string, FleetRulesOverrides>> {
  const ids = [...new Set(projectIds)];
  const out = new Map<string, FleetRulesOverrides>();
  // D1 binds at most 100 parameters a statement.
  for (let i = 0; i < ids.length; i += 90) {
    const rows = await drizzle(db)
      .select({ id: projects.id, fleetRules: projects.fleetRules })
      .from(projects)
      .where(inArray(projects.id, ids.slice(i, i + 90)))
      .all();
    for (const r of rows) out.set(r.id, parseStored(r.id, r.fleetRules));
  }
  return out;
}

/** The rules each project's fixes are analysed under (the defaults for a project not found). */
export async function analysisRules(db: D1Database, projectIds: readonly string[]): Promise<Map<string, FleetRules>> {
  const overrides = await readOverrides(db, projectIds);
  return new Map(projectIds.map((id) => [id, applyOverrides(DEFAULT_FLEET_RULES, overrides.get(id) ?? {})]));
}

/** The project's overrides, or null when there is no such project. */
export async function projectOverrides(db: D1Database, projectId: string): Promise<FleetRulesOverrides | null> {
  return (await readOverrides(db, [projectId])).get(projectId) ?? null;
}

/**
 * Replaces the project's overrides (`{}` returns it to the defaults). Answers whether the analysis
 * changed (the rules behind trips, track and mileage; `offlineAfterS` only changes the live status),
 * or null when there is no such project.
 */
export async function replaceOverrides(db: D1Database, projectId: string, next: FleetRulesOverrides): Promise<{ analysisChanged: boolean } | null> {
  const before = await projectOverrides(db, projectId);
  if (before === null) return null;
  const stored = Object.keys(next).length ? JSON.stringify(next) : null;
  await drizzle(db).update(projects).set({ fleetRules: stored }).where(eq(projects.id, projectId)).run();
  const key = (o: FleetRulesOverrides) => analysisRulesKey(applyOverrides(DEFAULT_FLEET_RULES, o));
  return { analysisChanged: key(before) !== key(next) };
}

/**
 * The rules the read routes apply for a project: the defaults, the deployment's offline delay
 * (`FLEET_OFFLINE_AFTER_S`), then the project's overrides.
 */
export async function readRules(env: Env, projectId: string): Promise<FleetRules> {
  return applyOverrides(fleetReadRules(env), (await projectOverrides(env.DB, projectId)) ?? {});
}
