// Starts the real chatd binary for a test: a temporary directory with its own config,
// database, certificate and JWT secret, port 0 (or a given port, for restarts), and
// the address read from the `listening on https://HOST:PORT` line. With
// E2E_DATABASE=postgres (or CHATD_TEST_DATABASE=postgres) the database is a PostgreSQL
// of the directory's own, started with its first chatd and kept across restarts in the
// same directory until removeDir.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startPostgres } from './postgres.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');

/** The chatd binary (the Makefile passes the one it just built). */
export const chatdBin = process.env.E2E_CHATD_BIN || path.join(repoRoot, 'target/debug/chatd');

/** Where screenshots and other artifacts go. */
export const outDir = process.env.E2E_OUT || path.join(repoRoot, 'target/e2e');

const STARTUP_TIMEOUT_MS = 20_000;

/** `sqlite` (the default) or `postgres`. */
export const database = (() => {
  const value = process.env.E2E_DATABASE || process.env.CHATD_TEST_DATABASE || 'sqlite';
  if (value !== 'sqlite' && value !== 'postgres') {
    throw new Error(`E2E_DATABASE=${value}: expected sqlite or postgres`);
  }
  return value;
})();

/** Each data directory's PostgreSQL, kept across restarts of chatd in it. */
const postgresOf = new Map();

/** Settings that keep the tests fast and independent of the rate limits meant for production. */
const TEST_CONFIG = {
  host: '127.0.0.1',
  cert_file: 'cert.pem',
  key_file: 'key.pem',
  secret_file: 'jwt.secret',
  db_path: 'chatd.db',
  public_dir: path.join(repoRoot, 'public'),
  log_level: 'warn',
  access_log: 'false',
  http_rate_per_ip: '1000/s burst 1000',
  login_rate_per_ip: '1000/s burst 1000',
  password_hashes_per_sec: '1000',
  db_synchronous: 'normal',
};

/** A fresh data directory for one server (kept across restarts of it). */
export async function dataDir() {
  return mkdtemp(path.join(tmpdir(), 'chatd-e2e-'));
}

/**
 * Starts chatd in `dir` with `config` on top of the test defaults. Resolves once it
 * listens: { url, port, dir, proc, kill(), stop(), logs() }.
 */
export async function startChatd({ dir, port = 0, config = {} } = {}) {
  const dataDirectory = dir || (await dataDir());
  const extraEnv = {};
  const databaseConfig = {};
  if (database === 'postgres' && config.database === undefined) {
    if (!postgresOf.has(dataDirectory)) postgresOf.set(dataDirectory, await startPostgres());
    const pg = postgresOf.get(dataDirectory);
    databaseConfig.database = pg.url;
    extraEnv.CHATD_DATABASE_PASSWORD = pg.password;
  }
  const settings = { ...TEST_CONFIG, port: String(port), ...databaseConfig, ...config };
  const confPath = path.join(dataDirectory, 'chatd.conf');
  await writeFile(confPath, Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');

  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CHATD_') && k !== 'RUST_LOG' && k !== 'SECRET_KEY') env[k] = v;
  }
  Object.assign(env, extraEnv);
  const proc = spawn(chatdBin, ['--config', confPath], { cwd: dataDirectory, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));

  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`chatd did not start within ${STARTUP_TIMEOUT_MS} ms\n${stderr}`));
    }, STARTUP_TIMEOUT_MS);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      stdout += chunk;
      const m = /listening on https:\/\/(\S+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${chatdBin}: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`chatd exited (${code ?? signal}) before listening\n${stderr}`));
    });
  });

  const url = `https://${address}`;
  return {
    url,
    port: Number(new URL(url).port),
    dir: dataDirectory,
    proc,
    logs: () => stderr,
    /** SIGKILL, as in a crash; resolves once the process is gone. */
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
    /** SIGTERM (graceful), SIGKILL if it takes more than 5 s. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Removes a data directory, and stops and removes its PostgreSQL (after chatd is gone). */
export async function removeDir(dir) {
  const pg = postgresOf.get(dir);
  postgresOf.delete(dir);
  await pg?.stop();
  await rm(dir, { recursive: true, force: true });
}
