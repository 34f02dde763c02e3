// Node-side clients for the tests: the HTTPS JSON API and a minimal WebSocket client
// (enough of RFC 6455 for chatd's JSON text frames), both accepting the self-signed
// certificate. Used to act as another user while the browser is disconnected.

import crypto from 'node:crypto';
import https from 'node:https';
import tls from 'node:tls';

/** One API call: resolves { status, body } (body parsed as JSON when possible). */
export function apiCall(base, method, path, { body, token } = {}) {
  const url = new URL(path, base);
  const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
  const headers = {};
  if (payload) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(payload.length);
  }
  if (token) headers.authorization = `Bearer ${token}`;
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, rejectUnauthorized: false, agent: false, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        text += c;
      });
      res.on('end', () => {
        let parsed = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // Not JSON.
        }
        resolve({ status: res.statusCode, body: parsed });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', reject);
    req.end(payload);
  });
}

export async function registerUser(base, username, password) {
  const r = await apiCall(base, 'POST', '/register', { body: { username, password } });
  if (r.status !== 201) throw new Error(`register ${username}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function loginUser(base, username, password) {
  const r = await apiCall(base, 'POST', '/login', { body: { username, password } });
  if (r.status !== 200) throw new Error(`login ${username}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.token;
}

/**
 * Opens a chat WebSocket with the token as a subprotocol, like the page does.
 * Resolves once the welcome frame is in: { welcome, request(type, fields), frames, close() }.
 */
export async function connectChat(base, token, { timeoutMs = 10_000 } = {}) {
  const { hostname, port } = new URL(base);
  const socket = tls.connect({ host: hostname, port: Number(port), rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  socket.setNoDelay(true);
  const key = crypto.randomBytes(16).toString('base64');
  const frames = [];
  const waiters = new Set();
  let buffer = Buffer.alloc(0);
  let upgraded = false;
  let closed = null;

  const notify = () => {
    for (const w of waiters) w();
  };

  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('WebSocket handshake timed out')), timeoutMs);
    socket.once('secureConnect', () => {
      socket.write(
        `GET /ws HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n` +
          `Sec-WebSocket-Protocol: chat.v1, bearer.${token}\r\n\r\n`,
      );
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!upgraded) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffer.subarray(0, end).toString('latin1');
        buffer = buffer.subarray(end + 4);
        if (!/^HTTP\/1\.1 101 /.test(head)) {
          clearTimeout(timer);
          reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
          socket.destroy();
          return;
        }
        upgraded = true;
      }
      parseFrames();
      if (frames.length && frames[0].type === 'welcome') {
        clearTimeout(timer);
        resolve(frames[0]);
      }
    });
    socket.on('close', () => {
      closed = closed || { code: 1006 };
      notify();
    });
  });

  function parseFrames() {
    for (;;) {
      if (buffer.length < 2) return;
      const opcode = buffer[0] & 0x0f;
      let len = buffer[1] & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (buffer.length < 4) return;
        len = buffer.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (buffer.length < 10) return;
        len = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (buffer.length < offset + len) return;
      const payload = buffer.subarray(offset, offset + len);
      buffer = buffer.subarray(offset + len);
      if (opcode === 1) frames.push(JSON.parse(payload.toString('utf8')));
      else if (opcode === 9) writeFrame(0xa, payload);
      else if (opcode === 8) {
        closed = { code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005 };
        socket.end();
      }
      notify();
    }
  }

  function writeFrame(opcode, payload) {
    const mask = crypto.randomBytes(4);
    const len = payload.length;
    const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len]) : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 0xff]);
    const masked = Buffer.from(payload);
    for (let i = 0; i < masked.length; i += 1) masked[i] ^= mask[i % 4];
    socket.write(Buffer.concat([head, mask, masked]));
  }

  /** Resolves with the first frame (from `from` on) matching `pred`, or rejects after the timeout. */
  function waitFrame(pred, { from = 0, timeout = timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = frames.slice(from).find(pred);
        if (found) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        } else if (closed) {
          waiters.delete(check);
          clearTimeout(timer);
          reject(new Error(`WebSocket closed (${closed.code})`));
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error('no matching frame in time'));
      }, timeout);
      waiters.add(check);
      check();
    });
  }

  const welcome = await ready;
  let nextRef = 0;
  return {
    welcome,
    frames,
    waitFrame,
    async request(type, fields = {}) {
      nextRef += 1;
      const ref = `n${nextRef}`;
      const from = frames.length;
      writeFrame(1, Buffer.from(JSON.stringify({ ...fields, type, ref })));
      const reply = await waitFrame((f) => f.type === 'reply' && f.ref === ref, { from });
      if (!reply.ok) throw new Error(`${type}: ${reply.error.code}: ${reply.error.message}`);
      return reply.data;
    },
    close() {
      if (!closed) writeFrame(8, Buffer.from([0x03, 0xe8]));
      socket.end();
    },
  };
}
