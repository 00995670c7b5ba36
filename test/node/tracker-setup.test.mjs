// `npm start` prints, next to the demo project, what to paste into each tracker app.
import { describe, expect, it } from 'vitest';
import { trackerSetup } from '../../scripts/lib/tracker-setup.mjs';

describe('tracker app setup', () => {
  it('names each app with its URL and credentials, and a URL-encoded Overland setup link', () => {
    const text = trackerSetup('http://127.0.0.1:8787', { clientId: 'cid-1', clientSecret: 's3c:r/t' });
    expect(text).toContain('http://127.0.0.1:8787/ingest/overland');
    expect(text).toContain('http://127.0.0.1:8787/ingest/owntracks');
    expect(text).toContain('http://127.0.0.1:8787/ingest/traccar?token=cid-1%3As3c%3Ar%2Ft');
    expect(text).toContain('Access Token        cid-1:s3c:r/t');
    expect(text).toContain('overland://setup?url=http%3A%2F%2F127.0.0.1%3A8787%2Fingest%2Foverland&token=cid-1%3As3c%3Ar%2Ft&device_id=phone-1');
    // OsmAnd sends m/s: its URL says so, with the placeholders the app fills in.
    expect(text).toMatch(/ingest\/traccar\?id=phone-1&lat=\{0\}&lon=\{1\}.*speedUnit=ms/);
    for (const app of ['Overland', 'OwnTracks', 'Traccar Client', 'OsmAnd']) expect(text).toContain(app);
  });
});
