// A project's fleet rules: its overrides (D1 `projects.fleet_rules`) over the defaults. The
// recompute analyses each project's fixes under its own rules; the reads apply them too; a change
// re-derives the project's history through a `fleet_recompute` job written with it.
import { inArray } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { clickhouse } from '../clickhouse/client';
import { fleetReadRules, getConfig } from '../config';
import { projects } from '../db/schema';
import type { Env } from '../env';
import { sendCreatedJob } from '../jobs/actions';
import { createJobStatement } from '../jobs/store';
import type { FleetRecomputeParams } from './recompute';
import { analysisRulesKey, applyOverrides, DEFAULT_FLEET_RULES, FleetRulesOverridesSchema, type FleetRules, type FleetRulesOverrides } from './rules';
import { positionTimeRange } from './store';

/** Positions reach the gateway at most this old (older history comes by import, which recomputes after itself). */
const LIVE_HISTORY_MS = 6 * 86_400_000;
/** Times up to a minute ahead are clamped to receipt: the job's window reaches that far. */
const FUTURE_MS = 60_000;
/** Concurrent changes of one project's rules: each retries its compare-and-set this often. */
const SET_ATTEMPTS = 5;

/**
 * The stored overrides of a project. Only validated overrides are stored; should a later version
 * bound a rule more tightly, a stored value outside the new bound is still applied (and logged):
 * silently falling back to the default would change the analysis without a recompute.
 */
function parseStored(projectId: string, text: string | null): FleetRulesOverrides {
  if (text === null || text === '') return {};
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    console.error(JSON.stringify({ msg: 'stored fleet rules are not JSON; the defaults apply', projectId, error: String(err) }));
    return {};
  }
  const parsed = FleetRulesOverridesSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  console.error(JSON.stringify({ msg: 'stored fleet rules are outside the current bounds; applied as stored', projectId, error: parsed.error.message }));
  const known = new Set(Object.keys(DEFAULT_FLEET_RULES));
  const kept: Record<string, number> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) if (known.has(k) && typeof v === 'number' && Number.isFinite(v) && v >= 0) kept[k] = v;
  return kept as FleetRulesOverrides;
}

/** The stored text of each of `projectIds` that exists (null: no overrides). */
async function storedTexts(db: D1Database, projectIds: readonly string[]): Promise<Map<string, string | null>> {
  const ids = [...new Set(projectIds)];
  const out = new Map<string, string | null>();
  // D1 binds at most 100 parameters a statement.
  for (let i = 0; i < ids.length; i += 90) {
    const rows = await drizzle(db)
      .select({ id: projects.id, fleetRules: projects.fleetRules })
      .from(projects)
      .where(inArray(projects.id, ids.slice(i, i + 90)))
      .all();
    for (const r of rows) out.set(r.id, r.fleetRules);
  }
  return out;
}

/** Statements reading the stored rules of `projectIds` (to ride in a D1 batch with others; `analysisRulesFrom` reads their answers). */
export function rulesStatements(db: D1Database, projectIds: readonly string[]): D1PreparedStatement[] {
  const ids = [...new Set(projectIds)];
  const out: D1PreparedStatement[] = [];
  for (let i = 0; i < ids.length; i += 90) {
    const part = ids.slice(i, i + 90);
    out.push(db.prepare(`SELECT id, fleet_rules FROM projects WHERE id IN (${part.map((_, k) => `?${k + 1}`).join(', ')})`).bind(...part));
  }
  return out;
}

/** The analysis rules of each of `projectIds` from the answers of rulesStatements (the defaults for a project not found). */
export function analysisRulesFrom(projectIds: readonly string[], results: readonly D1Result[]): Map<string, FleetRules> {
  const texts = new Map<string, string | null>();
  for (const r of results) for (const row of r.results as Array<{ id: string; fleet_rules: string | null }>) texts.set(row.id, row.fleet_rules);
  return new Map(projectIds.map((id) => [id, applyOverrides(DEFAULT_FLEET_RULES, parseStored(id, texts.get(id) ?? null))]));
}

/** The rules each project's fixes are analysed under (the defaults for a project not found). */
export async function analysisRules(db: D1Database, projectIds: readonly string[]): Promise<Map<string, FleetRules>> {
  const texts = await storedTexts(db, projectIds);
  return new Map(projectIds.map((id) => [id, applyOverrides(DEFAULT_FLEET_RULES, parseStored(id, texts.get(id) ?? null))]));
}

/** The project's overrides, or null when there is no such project. */
export async function projectOverrides(db: D1Database, projectId: string): Promise<FleetRulesOverrides | null> {
  const texts = await storedTexts(db, [projectId]);
  return texts.has(projectId) ? parseStored(projectId, texts.get(projectId)!) : null;
}

/**
 * The rules the read routes apply for a project: the defaults, the deployment's offline delay
 * (`FLEET_OFFLINE_AFTER_S`), then the project's overrides.
 */
export async function readRules(env: Env, projectId: string): Promise<FleetRules> {
  return applyOverrides(fleetReadRules(env), (await projectOverrides(env.DB, projectId)) ?? {});
}

/** The rules in force for a project with these overrides. */
export const rulesInForce = (env: Env, overrides: FleetRulesOverrides): FleetRules => applyOverrides(fleetReadRules(env), overrides);

const analysisKey = (o: FleetRulesOverrides) => analysisRulesKey(applyOverrides(DEFAULT_FLEET_RULES, o));

/**
 * Replaces the project's overrides (`{}` returns it to the defaults); null when there is no such
 * project. When the analysis changes (any rule but `offlineAfterS`), a `fleet_recompute` job over
 * the project's positions is written in the same D1 batch as the rules (a compare-and-set on the
 * text read, retried when another change came first), so stored rules never wait for a job that
 * was not created. The job covers the stored positions and any a consumer may still be analysing
 * under the old rules (recent ones, up to a minute ahead); passes that start after the change read
 * the new rules.
 */
export async function setProjectRules(env: Env, projectId: string, next: FleetRulesOverrides): Promise<{ recomputeJobId: string | null } | null> {
  const nextText = Object.keys(next).length ? JSON.stringify(next) : null;
  for (let attempt = 0; attempt < SET_ATTEMPTS; attempt++) {
    const texts = await storedTexts(env.DB, [projectId]);
    if (!texts.has(projectId)) return null;
    const beforeText = texts.get(projectId)!;
    const changed = analysisKey(parseStored(projectId, beforeText)) !== analysisKey(next);
    const update = env.DB.prepare('UPDATE projects SET fleet_rules = ?1 WHERE id = ?2 AND fleet_rules IS ?3').bind(nextText, projectId, beforeText);
    if (!changed) {
      const r = await update.run();
      if (r.meta.changes === 1) return { recomputeJobId: null };
      continue;
    }
    // Read before anything is written: with ClickHouse down the answer is 503 and nothing changed.
    const range = await positionTimeRange(clickhouse(getConfig(env).clickhouse), projectId);
    const now = Date.now();
    const params: FleetRecomputeParams = {
      projectId,
      sinceMs: Math.min(range?.fromMs ?? Infinity, now - LIVE_HISTORY_MS),
      untilMs: Math.max(range?.toMs ?? -Infinity, now + FUTURE_MS),
      reason: 'rules',
    };
    const jobId = crypto.randomUUID();
    const job = createJobStatement(env.DB, jobId, 'fleet_recompute', params, now, {
      sql: 'EXISTS (SELECT 1 FROM projects WHERE id = ?5 AND fleet_rules IS ?6)',
      binds: [projectId, nextText],
    });
    const [updated, created] = await env.DB.batch([update, job]);
    if (updated!.meta.changes !== 1) continue;
    if (created!.meta.changes !== 1) throw new Error(`fleet rules of ${projectId} stored without their recompute job`);
    await sendCreatedJob(env, jobId, 'fleet_recompute');
    return { recomputeJobId: jobId };
  }
  throw new RulesContendedError(projectId);
}

/** The project's rules kept changing under a change: the client may read them and retry. */
export class RulesContendedError extends Error {
  override name = 'RulesContendedError';
  constructor(readonly projectId: string) {
    super(`the fleet rules of ${projectId} changed ${SET_ATTEMPTS} times while this change was applied; read them and retry`);
  }
}
