// redis.ts: a private redis-server for the launcher (and tests) when no --redis-url is given.
//
// Owns: one redis-server child on 127.0.0.1, no persistence (`--save ''`, `--appendonly no`):
// its data lives and dies with it, which the planes are built for (leases are re-created,
// consumers are told to ask for replays).
// Stays true: startPrivateRedis() resolves only once the server it started answers (INFO); a missing binary
// is one clear error; the child is killed when this process exits, so it never outlives us.
// Settings: port (0 / absent = a free one, retried up to 3 times if taken meanwhile; a given port
// is used as is, e.g. to restart a server on the same port), timeoutMs default 10000.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { freePort } from './ports.ts';

export interface PrivateRedis {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>; // SIGTERM, then resolves once it has exited
}

export interface PrivateRedisOptions {
  port?: number;
  redisServer?: string; // the binary, default `redis-server` on PATH
  timeoutMs?: number;
}

const HOST = '127.0.0.1';

// The process id of the server answering on the port (INFO server over a raw socket), or
// undefined while none answers: tells our server from another one already on that port.
function serverPid(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port });
    let reply = '';
    const done = (pid: number | undefined) => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(500, () => done(undefined));
    socket.once('error', () => done(undefined));
    socket.once('connect', () => socket.write('INFO server\r\n'));
    socket.on('data', (d) => {
      reply += d.toString('latin1');
      if (reply.startsWith('-')) return done(undefined); // e.g. -LOADING
      const m = /process_id:(\d+)/.exec(reply);
      if (m) done(Number(m[1]));
    });
  });
}

async function startOn(port: number, opts: PrivateRedisOptions): Promise<PrivateRedis> {
  const bin = opts.redisServer ?? 'redis-server';
  const args = ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', '--daemonize', 'no', '--loglevel', 'warning'];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
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
      throw new Error(`${bin} exited (${child.exitCode ?? child.signalCode}) on port ${port}: ${output.trim()}`);
    }
    if (child.pid !== undefined && (await serverPid(port)) === child.pid) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${bin} did not answer on port ${port} in time: ${output.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `redis://${HOST}:${port}`, port, process: child, stop };
}

export async function startPrivateRedis(opts: PrivateRedisOptions = {}): Promise<PrivateRedis> {
  if (opts.port) return startOn(opts.port, opts);
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOn(await freePort(HOST), opts);
    } catch (err) {
      lastError = err as Error;
      if (/not found|could not start/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError!;
}
