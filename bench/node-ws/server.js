// Reference peer for chatbench's raw mode: a plain `ws` broadcast server over HTTPS.
// Every text frame a client sends goes to every connected client, the sender included.
// Usage: node server.js CERT_PEM KEY_PEM   (prints "listening on https://127.0.0.1:PORT")
'use strict';

const fs = require('fs');
const https = require('https');
const { WebSocketServer } = require('ws');

const [certFile, keyFile] = process.argv.slice(2);
if (!certFile || !keyFile) {
  console.error('usage: node server.js CERT_PEM KEY_PEM');
  process.exit(2);
}

const server = https.createServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
  // The suites in chatd's order, the server's choice: handshakes and records compare
  // like with like.
  ciphers: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:'
    + 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305',
  honorCipherOrder: true,
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      client.send(data, { binary: isBinary });
    }
  });
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening on https://127.0.0.1:${server.address().port}`);
});

const stop = () => {
  for (const client of wss.clients) client.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
