// redis.ts: a private redis-server for the launcher (and tests) when no --redis-url is given.
//
// Owns: one redis-server child on 127.0.0.1 (and on alsoBind, an address of this host, when a
// leader serves other hosts), no persistence (`save ""`, `appendonly no`):
// its data lives and dies with it, which the planes are built for (leases are re-created,
// consumers are told to ask for replays). It requires a password (`requirepass`), 32 random
// bytes unless one is given: its whole configuration reaches redis-server on stdin (`redis-server
// -`), never on its command line, which every local user can read; `url` carries the password
// (redis://:PASSWORD@127.0.0.1:PORT), so it goes to children in their environment and is logged
// only through maskRedisUrl().
// Stays true: startPrivateRedis() resolves only once the server it started answers (INFO); a missing binary
// is one clear error; the server never outlives this process: it is killed when this process
// exits, and it is started through setpriv --pdeathsig KILL (util-linux) where that exists, so
// the kernel kills it even when this process is killed with SIGKILL.
// superviseRedis() restarts the server on its port, with the same password, when it dies (the
// planes reconnect and re-create their state by themselves), with backoff, and gives up after a
// few failed starts.
// Settings: port (0 / absent = a free one, retried up to 3 times if taken meanwhile; a given port
// is used as is, e.g. to restart a server on the same port), timeoutMs default 10000.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort } from './ports.ts';

export interface PrivateRedis {
  url: string; // redis://:PASSWORD@127.0.0.1:PORT: a secret (log maskRedisUrl(url))
  port: number;
  password: string;
  process: ChildProcess;
  stop(): Promise<void>; // SIGTERM, then resolves once it has exited
}

export interface PrivateRedisOptions {
  port?: number;
  alsoBind?: string; // an address of this host to listen on besides loopback, for other hosts (protected by the password)
  password?: string; // default: 32 random bytes, hex; [A-Za-z0-9_-] only
  redisServer?: string; // the binary, default `redis-server` on PATH
  timeoutMs?: number;
}

const HOST = '127.0.0.1';

// The process id of the server answering on the port (AUTH, then INFO server, over a raw
// socket), or undefined while none answers: tells our server from another one already on that
// port (which refuses our password, or answers with another pid).
function serverPid(port: number, password: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port });
    let reply = '';
    const done = (pid: number | undefined) => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(500, () => done(undefined));
    socket.once('error', () => done(undefined));
    socket.once('connect', () => socket.write(`AUTH ${password}\r\nINFO server\r\n`));
    socket.on('data', (d) => {
      reply += d.toString('latin1');
      if (/^-|\r\n-/.test(reply)) return done(undefined); // e.g. -WRONGPASS, -LOADING
      const m = /process_id:(\d+)/.exec(reply);
      if (m) done(Number(m[1]));
    });
  });
}

// The absolute path of an executable on PATH (or the path given, if it names one).
function onPath(bin: string): string | undefined {
  const isExe = (p: string) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (bin.includes('/')) return isExe(bin) ? bin : undefined;
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) if (dir && isExe(path.join(dir, bin))) return path.join(dir, bin);
  return undefined;
}

export function newRedisPassword(): string {
  return randomBytes(32).toString('hex');
}

async function startOn(port: number, password: string, opts: PrivateRedisOptions): Promise<PrivateRedis> {
  const bin = opts.redisServer ?? 'redis-server';
  if (!/^[A-Za-z0-9_-]{16,}$/.test(password)) throw new Error('a private Redis password must have 16 or more characters of [A-Za-z0-9_-]');
  // `-`: the configuration is read from stdin, so the password is on no command line.
  const bind = opts.alsoBind && opts.alsoBind !== HOST ? `${HOST} ${opts.alsoBind}` : HOST;
  const config = [`port ${port}`, `bind ${bind}`, 'save ""', 'appendonly no', 'protected-mode yes', 'daemonize no', 'loglevel warning', `requirepass "${password}"`];
  const exe = onPath(bin);
  if (!exe) throw new Error(`${bin} not found: install redis-server (e.g. apt-get install redis-server) or pass --redis-url`);
  const setpriv = onPath('setpriv');
  const child = setpriv
    ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', exe, '-'], { stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(exe, ['-'], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin!.on('error', () => {
    // it exited before reading its configuration: reported below with its output
  });
  child.stdin!.end(config.join('\n') + '\n');
  let output = ''; // read through shown(): a config error would quote the password's line
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const shown = () => output.split(password).join('***').trim();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const stop = async () => {
    process.off('exit', killOnExit);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };

  let spawnFailure: Error | undefined;
  child.once('error', (err: NodeJS.ErrnoException) => {
    process.off('exit', killOnExit);
    spawnFailure =
      err.code === 'ENOENT'
        ? new Error(`${bin} not found: install redis-server (e.g. apt-get install redis-server) or pass --redis-url`)
        : new Error(`could not start ${bin}: ${err.message}`);
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    if (spawnFailure) throw spawnFailure;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${bin} exited (${child.exitCode ?? child.signalCode}) on port ${port}: ${shown()}`);
    }
    if (child.pid !== undefined && (await serverPid(port, password)) === child.pid) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${bin} did not answer on port ${port} in time: ${shown()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `redis://:${password}@${HOST}:${port}`, port, password, process: child, stop };
}

export async function startPrivateRedis(opts: PrivateRedisOptions = {}): Promise<PrivateRedis> {
  const password = opts.password ?? newRedisPassword();
  if (opts.port) return startOn(opts.port, password, opts);
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOn(await freePort(HOST), password, opts);
    } catch (err) {
      lastError = err as Error;
      if (/not found|could not start/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError!;
}

export interface SupervisedRedis {
  url: string; // with the password, as PrivateRedis.url
  port: number;
  current(): PrivateRedis;
  stop(): Promise<void>;
}

// Restarts: the first at once, then 0.5 s, 1 s, 2 s ... (at most 10 s) while restarts keep
// failing; a server that answered again resets the count. After `maxFailedStarts` failed starts
// in a row, onGiveUp gets the last error and nothing more is tried.
export function superviseRedis(
  first: PrivateRedis,
  events: { onRestart(message: string): void; onGiveUp(err: Error): void },
  opts: PrivateRedisOptions & { maxFailedStarts?: number } = {},
): SupervisedRedis {
  let server = first;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const maxFailed = opts.maxFailedStarts ?? 3;
  const watch = (s: PrivateRedis) =>
    s.process.once('exit', (code, signal) => {
      if (stopped) return;
      events.onRestart(`redis-server on port ${first.port} exited (${signal ? `signal ${signal}` : `code ${code}`}); restarting it on the same port`);
      void restart(0);
    });
  const restart = async (failures: number) => {
    if (stopped) return;
    try {
      const s = await startOn(first.port, first.password, { ...opts, port: first.port });
      if (stopped) return void (await s.stop());
      server = s;
      watch(s);
      events.onRestart(`redis-server is back on port ${first.port} (empty: discovery, events and the prefill queue rebuild themselves)`);
    } catch (err) {
      if (failures + 1 >= maxFailed) return events.onGiveUp(new Error(`redis-server on port ${first.port} failed to restart ${failures + 1} times: ${(err as Error).message}`));
      timer = setTimeout(() => void restart(failures + 1), Math.min(10_000, 500 * 2 ** failures));
    }
  };
  watch(first);
  return {
    url: first.url,
    port: first.port,
    current: () => server,
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await server.stop();
    },
  };
}
