// A legacy import's rows as ClickHouse reads them: each translated row straight to its TabSeparated
// lines of `events`, `legacy_id_map` and `event_payloads`.
import { tsvField } from '../clickhouse/client';
import type { LegacyImportParams } from './params';
import type { LegacyRow } from './source';
import { legacyColumnsJson, legacyIdentity } from './translate';

/**
 * A step's imported rows as they are written: their ids and times (for the existence checks), and
 * each table's TabSeparated text, one line per row in the rows' order (TabSeparated escapes line
 * feeds, so line i is row i).
 */
export interface EncodedRows {
  ids: string[];
  createdAtMs: number[];
  events: string;
  maps: string;
  payloads: string;
}

export const IMPORT_EVENT_COLUMNS = [
  'id',
  'project_id',
  'device_id',
  'session_id',
  'profile_id',
  'type',
  'name',
  'created_at_ms',
  'received_at_ms',
  'synced_at_ms',
  'properties',
  'ref_id',
  'ip',
  'country',
  'region',
  'city',
  'timezone',
  'latitude',
  'longitude',
] as const;
export const IMPORT_MAP_COLUMNS = ['dataset', 'legacy_id', 'new_id', 'project_id', 'created_at_ms'] as const;
export const IMPORT_PAYLOAD_COLUMNS = ['id', 'project_id', 'created_at_ms', 'received_at_ms', 'payload'] as const;

/** An event line's last fields: no ref_id, ip or place (six empty fields), no coordinates (NULL). */
const NO_REF_PLACE_OR_COORDINATES = '\t\t\t\t\t\t\\N\t\\N\n';

/**
 * The encoder of one step's rows, imported at `importedAtMs`: each row straight to its three
 * TabSeparated lines, the same rows as translateRow's (test/legacy-rows.test.ts holds them equal).
 * TabSeparated rather than JSONEachRow: no field names, and the properties and payload JSON only
 * escaped where they hold a backslash, never quoted again; both cheaper to make here and for
 * ClickHouse to read. `add` throws UnusableLegacyRow as translateRow does, and adds nothing then.
 */
export class ImportEncoder {
  private readonly ids: string[] = [];
  private readonly createdAtMs: number[] = [];
  private lines = { events: [] as string[], maps: [] as string[], payloads: [] as string[] };
  private readonly project: string;
  private readonly dataset: string;
  private readonly afterDevice: string;
  private readonly receivedSynced: string;
  private readonly keys = new Map<string, string>();

  constructor(
    private readonly p: Pick<LegacyImportParams, 'projectId' | 'dataset' | 'source'>,
    private readonly importedAtMs: number,
  ) {
    this.project = tsvField(p.projectId);
    this.dataset = tsvField(p.dataset);
    // The fields between the device and the time: no session or profile, a track named by the source.
    this.afterDevice = `\t\ttrack\t${tsvField(p.source.name)}`;
    this.receivedSynced = `${importedAtMs}\t${importedAtMs}`;
  }

  get length(): number {
    return this.ids.length;
  }

  add(row: LegacyRow): void {
    const { legacyId, createdAtMs, deviceId, id } = legacyIdentity(this.p, row);
    const { payload, properties } = legacyColumnsJson(row, this.p.source, this.keys);
    const { project } = this;
    this.ids.push(id);
    this.createdAtMs.push(createdAtMs);
    const device = tsvField(deviceId);
    this.lines.events.push([id, project, device, this.afterDevice, createdAtMs, this.receivedSynced, tsvField(properties), NO_REF_PLACE_OR_COORDINATES].join('\t'));
    this.lines.maps.push([this.dataset, tsvField(legacyId), id, project, `${createdAtMs}\n`].join('\t'));
    this.lines.payloads.push([id, project, createdAtMs, this.importedAtMs, `${tsvField(payload)}\n`].join('\t'));
  }

  /** The rows added, each table's lines as one text; the encoder starts empty again. */
  finish(): EncodedRows {
    const { events, maps, payloads } = this.lines;
    this.lines = { events: [], maps: [], payloads: [] };
    return { ids: this.ids.splice(0), createdAtMs: this.createdAtMs.splice(0), events: events.join(''), maps: maps.join(''), payloads: payloads.join('') };
  }
}
