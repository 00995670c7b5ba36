// Applies pending ClickHouse migrations to CLICKHOUSE_URL (database CLICKHOUSE_DATABASE, default driftline).
import { migrateClickHouse } from './lib/clickhouse-migrate.mjs';

const url = process.env.CLICKHOUSE_URL;
if (!url) {
  console.error('set CLICKHOUSE_URL (and CLICKHOUSE_USER / CLICKHOUSE_PASSWORD / CLICKHOUSE_DATABASE as needed)');
  process.exit(2);
}
const applied = await migrateClickHouse({
  url,
  database: process.env.CLICKHOUSE_DATABASE || 'driftline',
  user: process.env.CLICKHOUSE_USER || 'default',
  password: process.env.CLICKHOUSE_PASSWORD || '',
});
console.log(applied.length ? `applied: ${applied.join(', ')}` : 'ClickHouse schema is up to date');
