// A real PostgreSQL from Debian's packages for one chatd of the browser tests, as the
// Rust harness starts one (tests/common/postgres.rs): initdb in a temporary directory
// (superuser `chatd`, a SCRAM password), `postgres` on a free loopback port and a
// socket directory of its own, then createdb. PostgreSQL refuses to run as root, so
// as root it runs as `nobody` through setpriv, which execs: the child's pid is the
// postmaster's. `stop()` shuts it down by that pid and removes the directory; a
// process exit takes down whatever a failed test left running.

import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { existsSync, readdirSync, rmSync, statfsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

const PG_USER = 'chatd';
const PG_DB = 'chat';
const PG_START_TIMEOUT_MS = 30_000;
/** /dev/shm must have this much free to hold the clusters (Docker's default 64 MiB would not). */
const SHM_MIN_FREE = 1 << 30;

/** The newest /usr/lib/postgresql/N/bin holding postgres and initdb, or null. */
export function postgresBin() {
  let versions;
  try {
    versions = readdirSync('/usr/lib/postgresql');
  } catch {
    return null;
  }
  const found = versions
    .filter((v) => /^\d+$/.test(v))
    .map((v) => ({ version: Number(v), bin: path.join('/usr/lib/postgresql', v, 'bin') }))
    .filter(({ bin }) => existsSync(path.join(bin, 'postgres')) && existsSync(path.join(bin, 'initdb')))
    .sort((a, b) => a.version - b.version);
  return found.length ? found[found.length - 1].bin : null;
}

const isRoot = () => process.getuid?.() === 0;

/** /dev/shm when it is a roomy memory file system, else the temp dir: initdb writes less to a busy disk. */
function parentDir() {
  try {
    const st = statSync('/dev/shm');
    const fs = statfsSync('/dev/shm');
    if (st.isDirectory() && (st.mode & 0o1777) === 0o1777 && fs.bavail * fs.bsize >= SHM_MIN_FREE) return '/dev/shm';
  } catch {
    // No /dev/shm: the temp dir.
  }
  return tmpdir();
}

/** [program, args] that run `program` as the unprivileged server user when we are root. */
function asServerUser(program, args) {
  if (!isRoot()) return [program, args];
  return ['setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', program, ...args]];
}

function run(program, args, options = {}) {
  return new Promise((resolve, reject) => {
    execFile(program, args, { timeout: PG_START_TIMEOUT_MS, ...options }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${program} ${args.join(' ')}: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Servers still running, stopped at exit if a test did not. */
const running = new Set();
process.once('exit', () => {
  for (const pg of running) pg.stopNow();
});

/** Servers started so far: every other one is given to chatd by its Unix socket. */
let started = 0;

/**
 * initdb, start, createdb. Resolves to { url, password, dir, stop(), logs() }; `url` is
 * the TCP URL or the Unix-socket one, in turn.
 */
export async function startPostgres() {
  const bin = postgresBin();
  if (!bin) throw new Error('PostgreSQL is not installed (Debian package postgresql)');
  const dir = await mkdtemp(path.join(parentDir(), 'chatd-e2e-pg-'));
  const data = path.join(dir, 'data');
  const sock = path.join(dir, 'sock');
  const password = `pw-${crypto.randomBytes(12).toString('hex')}`;
  await writeFile(path.join(dir, 'pwfile'), `${password}\n`);
  await mkdir(sock);
  // The temp dir is 0700: the server user must own it to get in.
  if (isRoot()) await run('chown', ['-R', 'nobody:nogroup', dir]);
  const env = { ...process.env, HOME: dir };
  const [initdb, initdbArgs] = asServerUser(path.join(bin, 'initdb'), [
    '-D', data, '-U', PG_USER, '-E', 'UTF8', '--no-locale', '--no-sync', '--wal-segsize=1',
    '--auth=scram-sha-256', `--pwfile=${path.join(dir, 'pwfile')}`,
  ]);
  await run(initdb, initdbArgs, { env });

  launch: for (let attempt = 0; ; attempt += 1) {
    const port = await freePort();
    const [postgres, postgresArgs] = asServerUser(path.join(bin, 'postgres'), [
      '-D', data, '-k', sock, '-p', String(port),
      '-c', 'listen_addresses=127.0.0.1', '-c', 'shared_buffers=16MB', '-c', 'max_connections=40',
    ]);
    const proc = spawn(postgres, postgresArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    for (const stream of [proc.stdout, proc.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        log += chunk;
      });
    }
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    const pg = {
      dir,
      password,
      url: started++ % 2 === 0
        ? `postgres://${PG_USER}@127.0.0.1:${port}/${PG_DB}`
        : `postgres://${PG_USER}@/${PG_DB}?host=${sock}&port=${port}`,
      logs: () => log,
      /** Synchronous, for the exit hook: SIGKILL the postmaster and remove the directory. */
      stopNow() {
        running.delete(pg);
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
      },
      /** SIGQUIT (immediate shutdown, backends included), SIGKILL after 10 s; then removes the directory. */
      async stop() {
        running.delete(pg);
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGQUIT');
          const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
          await exited;
          clearTimeout(timer);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
    running.add(pg);

    // Ready once createdb gets through; "starting up" refusals are retried.
    const clientEnv = { ...env, PGPASSWORD: password };
    const deadline = Date.now() + PG_START_TIMEOUT_MS;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        // A port found free may be taken by another process before postgres binds it
        // (tests run in parallel): try another.
        if (log.includes('Address already in use') && attempt < 10) {
          running.delete(pg);
          continue launch;
        }
        await pg.stop();
        throw new Error(`postgres exited before accepting connections:\n${log}`);
      }
      try {
        await run(path.join(bin, 'createdb'), ['-h', sock, '-p', String(port), '-U', PG_USER, PG_DB], { env: clientEnv });
        return pg;
      } catch (err) {
        if (Date.now() > deadline) {
          await pg.stop();
          throw new Error(`postgres did not accept within ${PG_START_TIMEOUT_MS} ms: ${err.message}\n${log}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }
}
