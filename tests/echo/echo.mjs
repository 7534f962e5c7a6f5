// The echo upstream of docker-compose.yml: answers every request with what it received, as
// JSON {"method", "path", "headers", "body"}, the same contract as the Rust tests' echo
// (tests/src/echo.rs), so transformations are visible. `x-echo-status: N` sets the status and
// `x-echo-body: TEXT` replaces the JSON with TEXT.
//
//   node echo.mjs            HOST (default 0.0.0.0), PORT (default 8080)

import * as http from 'node:http';

const HOST = process.env.HOST || '0.0.0.0';
const PORT = Number(process.env.PORT || 8080);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const status = Number(req.headers['x-echo-status']) || 200;
    const fixed = req.headers['x-echo-body'];
    if (fixed !== undefined) {
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(fixed);
      return;
    }
    // Node joins a repeated header with ", "; the Rust echo joins with ",".
    const headers = Object.fromEntries(
      Object.entries(req.headers).map(([name, value]) => [name, [].concat(value).join(',')]),
    );
    const body = JSON.stringify({
      method: req.method,
      path: req.url,
      headers,
      body: Buffer.concat(chunks).toString('utf8'),
    });
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(status === 204 || status === 304 ? undefined : body);
  });
});

server.listen(PORT, HOST, () => console.error(`echo upstream on ${HOST}:${PORT}`));
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
