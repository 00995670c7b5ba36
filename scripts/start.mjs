// `npm start`: the whole gateway locally, in the foreground, until Ctrl-C.
import { startGateway } from './lib/gateway.mjs';

let gateway;
let stopping = false;
const starting = new AbortController();

async function shutdown(signal, code = 0) {
  if (stopping) return;
  stopping = true;
  console.log(`\n${signal}: stopping the gateway...`);
  if (!gateway) {
    starting.abort(); // startGateway stops what it already started, then throws
    return;
  }
  await gateway.stop();
  console.log('stopped.');
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => void shutdown(signal));

try {
  gateway = await startGateway({ writeDevVars: true, signal: starting.signal, supervise: true });
} catch (err) {
  if (stopping) {
    console.log('stopped.');
    process.exit(0);
  }
  console.error(`\nnpm start failed: ${err.message}`);
  process.exit(1);
}

const { url, project, adminToken, adminTokenSource, clickhouse, crons } = gateway;

/** What to paste into each tracker app to send the demo project positions (README, "Tracker apps"). */
function trackerSetup(base, { clientId, clientSecret }) {
  const pair = `${clientId}:${clientSecret}`;
  const token = encodeURIComponent(pair);
  const overlandLink = `overland://setup?url=${encodeURIComponent(`${base}/ingest/overland`)}&token=${token}&device_id=phone-1`;
  return `
Tracker apps (a phone must reach this machine: use its LAN address or a tunnel instead of localhost):
  Overland        Receiver Endpoint   ${base}/ingest/overland
                  Access Token        ${pair}
                  Device ID           phone-1
                  or open on the phone ${overlandLink}
  OwnTracks       Mode HTTP, URL      ${base}/ingest/owntracks
                  Username            ${clientId}
                  Password            ${clientSecret}
                  Device ID           phone-1
  Traccar Client  Server URL          ${base}/ingest/traccar?token=${token}
                  Device identifier   phone-1
  OsmAnd          Online tracking web address
                  ${base}/ingest/traccar?id=phone-1&lat={0}&lon={1}&timestamp={2}&hdop={3}&altitude={4}&speed={5}&bearing={6}&speedUnit=ms&token=${token}
  Positions:      curl -sS '${base}/v1/events?deviceId=phone-1' -H 'openpanel-client-id: ${clientId}' -H 'openpanel-client-secret: ${clientSecret}'`;
}
const sample = JSON.stringify({
  events: [{ type: 'track', payload: { name: 'hello', properties: { __deviceId: 'device-1', speedKmh: 42 } } }],
});
console.log(`
Driftline is running at ${url}

  ClickHouse   ${clickhouse.url} (database ${clickhouse.database}${clickhouse.started ? `, ${clickhouse.kind} started by npm start` : ''})
  Admin token  ${adminToken}   (${adminTokenSource})
  Crons        ${crons.length ? crons.map((c) => `"${c}"`).join(', ') + ' fired on schedule' : 'none'}
  Legacy DB    ${gateway.hyperdriveLocal}

Demo project ${project.id}${project.reused ? ' (reused from .data/demo-project.json)' : ''}
  client id      ${project.clientId}
  client secret  ${project.clientSecret}

Send an event:
  curl -sS -X POST ${url}/track/batch \\
    -H 'content-type: application/json' \\
    -H 'openpanel-client-id: ${project.clientId}' \\
    -H 'openpanel-client-secret: ${project.clientSecret}' \\
    -d '${sample}'

Read it back (about a second later):
  curl -sS '${url}/v1/events?deviceId=device-1' \\
    -H 'openpanel-client-id: ${project.clientId}' \\
    -H 'openpanel-client-secret: ${project.clientSecret}'

OpenPanel SDK: new OpenPanel({ clientId: '${project.clientId}', clientSecret: '<secret>', apiUrl: '${url}' })
${trackerSetup(url, project)}
Ctrl-C stops everything.
`);

const why = await gateway.exited;
if (!stopping) {
  console.error(`The gateway is down for good (${why}); stopping.`);
  await shutdown('exit', 1);
}
