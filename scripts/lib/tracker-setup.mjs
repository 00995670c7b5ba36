// What `npm start` prints for the tracker apps: the URL and settings to paste into each one.

/** What to paste into each tracker app to send the demo project positions (README, "Tracker apps"). */
export function trackerSetup(base, { clientId, clientSecret }) {
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
