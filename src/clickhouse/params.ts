// Typed query parameters for servers without native `{name:Type}` support (ClickHouse < 19.x).
// Values are checked against their declared type and rendered as literals; anything else throws.

export type ParamValue = string | number | bigint | boolean | null | ParamValue[];
export type QueryParams = Record<string, ParamValue>;

const PLACEHOLDER = /\{([A-Za-z_][A-Za-z0-9_]*):([A-Za-z0-9_(), ]+)\}/g;
const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

export function quoteString(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t').replace(/\0/g, '\\0')}'`;
}

function renderLiteral(type: string, value: ParamValue, name: string): string {
  const t = type.trim();
  const array = /^Array\((.+)\)$/.exec(t);
  if (array) {
    if (!Array.isArray(value)) throw new TypeError(`parameter ${name} must be an array`);
    return `[${value.map((v) => renderLiteral(array[1]!, v, name)).join(',')}]`;
  }
  const nullable = /^Nullable\((.+)\)$/.exec(t);
  if (nullable) return value === null ? 'NULL' : renderLiteral(nullable[1]!, value, name);
  if (value === null || Array.isArray(value)) throw new TypeError(`parameter ${name} must be a scalar ${t}`);
  if (/^U?Int(8|16|32|64)$/.test(t)) {
    const s = typeof value === 'bigint' ? value.toString() : typeof value === 'number' && Number.isSafeInteger(value) ? String(value) : typeof value === 'string' && /^-?\d+$/.test(value) ? value : null;
    if (s === null) throw new TypeError(`parameter ${name} must be an integer`);
    if (t.startsWith('U') && s.startsWith('-')) throw new TypeError(`parameter ${name} must be unsigned`);
    return s;
  }
  if (/^Float(32|64)$/.test(t)) {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw new TypeError(`parameter ${name} must be a finite number`);
    return String(value);
  }
  if (t === 'UUID') {
    if (typeof value !== 'string' || !UUID_RE.test(value)) throw new TypeError(`parameter ${name} must be a UUID`);
    return `toUUID(${quoteString(value)})`;
  }
  if (t === 'String') {
    if (typeof value !== 'string') throw new TypeError(`parameter ${name} must be a string`);
    return quoteString(value);
  }
  if (t === 'UInt8' || t === 'Bool') return value ? '1' : '0';
  throw new TypeError(`parameter type ${t} is not supported`);
}

/** Replaces each `{name:Type}` placeholder with a checked literal. */
export function bindParams(sql: string, params: QueryParams): string {
  return sql.replace(PLACEHOLDER, (_m, name: string, type: string) => {
    if (!(name in params)) throw new TypeError(`missing query parameter ${name}`);
    return renderLiteral(type, params[name]!, name);
  });
}

/** A value in the text form of a `param_<name>` URL parameter (what the HTTP interface parses). */
export function formatParam(value: ParamValue): string {
  if (value === null) return '\\N';
  if (Array.isArray(value)) return `[${value.map((v) => (typeof v === 'string' ? quoteString(v) : v === null ? 'NULL' : formatParam(v))).join(',')}]`;
  if (typeof value === 'boolean') return value ? '1' : '0';
  if (typeof value === 'string') return value.replace(/[\\\t\n\r']/g, (c) => PARAM_ESCAPES[c]!);
  return String(value);
}
const PARAM_ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r', "'": "\\'" };
