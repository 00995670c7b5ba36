// The Cloudflare bill per million events from what the gateway does per event: Workers requests and
// CPU, Durable Object requests, duration and rows written, Queue operations, at published prices.

/**
 * Paid-plan usage prices (beyond the monthly allowances and the $5 subscription, which this model
 * leaves out: it prices the marginal million events), as published on the pages named, read on
 * 2026-11-30.
 */
export const PRICES = {
  readOn: '2026-11-30',
  workersRequestsPerMillion: 0.3, // developers.cloudflare.com/workers/platform/pricing/ (Standard)
  workersCpuMsPerMillion: 0.02,
  doRequestsPerMillion: 0.15, // developers.cloudflare.com/durable-objects/platform/pricing/ (RPC calls and alarm invocations)
  doGbSecondsPerMillion: 12.5, // duration at 128 MB per active object
  doRowsWrittenPerMillion: 1.0, // SQLite storage backend
  queueOperationsPerMillion: 0.4, // developers.cloudflare.com/queues/platform/pricing/ (per 64 KB written, read or deleted)
};

const DO_MEMORY_GB = 128 / 1024;
/** Queues bill each 64 KB (KB = 1000 bytes) of a message, about 100 bytes of metadata included. */
export const queueOperationsPerMessage = (bytes) => 3 * Math.max(1, Math.ceil((bytes + 100) / 64_000));

/**
 * `perEvent`: counts per event — workersRequests, workersCpuMs, doRequests, doActiveSeconds,
 * doRowsWritten, queueOperations. Returns the dollars per million events, per line and in total.
 */
export function costPerMillion(perEvent, prices = PRICES) {
  // a count per event × 1e6 events × (price per 1e6 units) / 1e6 = count per event × price
  const lines = {
    'Workers requests': perEvent.workersRequests * prices.workersRequestsPerMillion,
    'Workers CPU': perEvent.workersCpuMs * prices.workersCpuMsPerMillion,
    'Durable Object requests': perEvent.doRequests * prices.doRequestsPerMillion,
    'Durable Object duration': perEvent.doActiveSeconds * DO_MEMORY_GB * prices.doGbSecondsPerMillion,
    'Durable Object rows written': perEvent.doRowsWritten * prices.doRowsWrittenPerMillion,
    'Queue operations': perEvent.queueOperations * prices.queueOperationsPerMillion,
  };
  const total = Object.values(lines).reduce((a, b) => a + b, 0);
  return { lines, total };
}

/** The model as a table: the count per million events behind each line, and its dollars. */
export function printCost(perEvent, { measured, estimated }, log = console.log) {
  const { lines, total } = costPerMillion(perEvent);
  const units = {
    'Workers requests': `${fmt(perEvent.workersRequests * 1e6)} requests`,
    'Workers CPU': `${fmt(perEvent.workersCpuMs * 1e6)} CPU-ms`,
    'Durable Object requests': `${fmt(perEvent.doRequests * 1e6)} requests`,
    'Durable Object duration': `${fmt(perEvent.doActiveSeconds * 1e6 * DO_MEMORY_GB)} GB-s`,
    'Durable Object rows written': `${fmt(perEvent.doRowsWritten * 1e6)} rows`,
    'Queue operations': `${fmt(perEvent.queueOperations * 1e6)} operations`,
  };
  log(`  estimated Cloudflare bill per million events (Paid-plan usage prices read ${PRICES.readOn}; allowances and the $5 plan left out):`);
  for (const [k, usd] of Object.entries(lines)) log(`    ${k.padEnd(28)} ${units[k].padStart(22)}   $${usd.toFixed(4)}`);
  log(`    ${'total'.padEnd(28)} ${''.padStart(22)}   $${total.toFixed(4)}`);
  log(`    measured: ${measured}`);
  log(`    estimated: ${estimated}`);
  return total;
}

const fmt = (n) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1));
