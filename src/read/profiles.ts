// A profile's current state, folded from its stored operations (see src/profiles/fold.ts).
import type { ClickHouse } from '../clickhouse/client';
import { foldProfile, type Profile } from '../profiles/fold';

export async function readProfile(ch: ClickHouse, projectId: string, profileId: string): Promise<Profile | null> {
  const rows = await ch.query<{ id: string; type: string; created_at_ms: number; properties: string }>(
    `SELECT toString(id) AS id, type, created_at_ms, properties
       FROM profile_ops
      WHERE project_id = {projectId:String} AND profile_id = {profileId:String}
      LIMIT 1 BY id`,
    { projectId, profileId },
  );
  return foldProfile(
    rows.map((r) => ({ id: r.id, type: r.type, createdAtMs: Number(r.created_at_ms), properties: JSON.parse(r.properties) as Record<string, unknown> })),
  );
}
