#!/usr/bin/env node
// worker-ready.mjs: the readiness probe of a worker or prefill node in a container
// (deploy/k8s/: an exec probe, `node scripts/worker-ready.mjs`). Exit 0 when this container runs
// at least one worker process and every one answers GET /ready with 200; else exit 1 with one
// line saying why.
// A worker's HTTP port is a free port the launcher picks, so a probe cannot name it up front:
// this script finds the worker processes of its PID namespace (the container's: its launcher's
// children) in /proc, each started as `node ... ts/worker/main.ts --config JSON`, and reads the
// host and port from that JSON (the launcher fixes both before it starts the worker; the config
// carries no secret). It asks only those addresses; /ready needs no cluster secret.
// Settings: --min N (default 1): fewer worker processes than N is not ready (e.g. --workers N of
// the node, so a worker between a crash and its restart counts); --timeout-ms T (default 1000)
// per request; --parent PID: only the workers whose parent process is PID (a launcher's), for a
// machine where other deployments run too.
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { min: { type: 'string', default: '1' }, 'timeout-ms': { type: 'string', default: '1000' }, parent: { type: 'string' } },
});
const min = Number(values.min);
const timeoutMs = Number(values['timeout-ms']);
const parent = values.parent === undefined ? undefined : Number(values.parent);

// A process's parent pid: the field after the parenthesised name in /proc/PID/stat.
function parentOf(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

// The {host, port} of every worker process in this PID namespace (of --parent's, if given).
function workerAddresses() {
  const found = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let argv;
    try {
      argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (parent !== undefined && parentOf(pid) !== parent) continue;
    } catch {
      continue; // gone meanwhile
    }
    const entry = argv.findIndex((a) => a.endsWith('ts/worker/main.ts'));
    if (entry < 0 || argv[entry + 1] !== '--config') continue;
    try {
      const config = JSON.parse(argv[entry + 2]);
      if (typeof config.host === 'string' && Number.isInteger(config.port) && config.port > 0) found.push({ pid: Number(pid), host: config.host, port: config.port });
    } catch {
      // not a config this script reads
    }
  }
  return found;
}

function ready({ host, port }) {
  return new Promise((resolve) => {
    const req = http.get({ host, port, path: '/ready', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 ? undefined : `${host}:${port} answered ${res.statusCode}`);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', (err) => resolve(`${host}:${port}: ${err.message}`));
  });
}

const workers = workerAddresses();
if (workers.length < min) {
  console.log(`not ready: ${workers.length} worker process(es) running, ${min} wanted`);
  process.exit(1);
}
const why = (await Promise.all(workers.map(ready))).filter((w) => w !== undefined);
if (why.length > 0) {
  console.log(`not ready: ${why.join('; ')}`);
  process.exit(1);
}
console.log(`ready: ${workers.map((w) => `${w.host}:${w.port}`).join(', ')}`);
