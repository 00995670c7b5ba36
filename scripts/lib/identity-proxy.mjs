// An HTTP pass-through to a real ClickHouse that never lets it compress an answer (it drops the
// client's Accept-Encoding), as a proxy or an older server in front of it may: tests use it to take
// the path where the Worker compresses an archive chunk itself.
import { createServer, request } from 'node:http';

export async function startIdentityProxy({ targetHost = '127.0.0.1', targetPort }) {
  const server = createServer((req, res) => {
    const headers = { ...req.headers };
    delete headers['accept-encoding'];
    const upstream = request({ host: targetHost, port: targetPort, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`identity proxy: ${err.message}`);
    });
    req.pipe(upstream);
  });
  const port = await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
