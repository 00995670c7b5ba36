// A TCP pass-through to a real server that can be cut and restored over a small HTTP control port:
// tests use it to make ClickHouse unreachable for a while without stopping the shared server.
import { createServer as createTcpServer, connect } from 'node:net';
import { createServer as createHttpServer } from 'node:http';

export async function startFaultProxy({ targetHost = '127.0.0.1', targetPort }) {
  let down = false;
  const sockets = new Set();
  const proxy = createTcpServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, targetHost);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const control = createHttpServer((req, res) => {
    if (req.url === '/down') {
      down = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    } else if (req.url === '/up') {
      down = false;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ down }));
  });
  const listen = (srv) => new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv.address().port)));
  const port = await listen(proxy);
  const controlPort = await listen(control);
  return {
    url: `http://127.0.0.1:${port}`,
    controlUrl: `http://127.0.0.1:${controlPort}`,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all([new Promise((r) => proxy.close(r)), new Promise((r) => control.close(r))]);
    },
  };
}
