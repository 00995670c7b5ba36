// `npm start`: the whole gateway locally, in the foreground, until Ctrl-C.
import { startGateway } from './lib/gateway.mjs';
import { trackerSetup } from './lib/tracker-setup.mjs';

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
