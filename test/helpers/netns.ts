// netns.ts (test helper): "hosts" made of Linux network namespaces, for tests of a deployment
// over several hosts. Root only; netnsUnavailable() says why they cannot be made here.
//
// Layout: a switch namespace holds a bridge; every host namespace has one veth pair to it (its
// end `eth0`-like, named <tag><i>a, with ADDRESS/24, and loopback up), and the test process's own
// namespace gets one too (<tag>ra, .254), so the test reaches every host at its address and
// nothing else. linkDown/linkUp pull and put back a host's cable (its port on the switch).
// Processes start in a host with their own UTS namespace and the host's name as hostname, so a
// transfer agent (which tells hosts apart by hostname and boot id) sees other hosts as remote and
// moves KV over TCP, as between machines.
// Names are unique per run (the pid and a count in the tag); destroy() kills what runs in the namespaces and
// deletes them, which deletes the veth pairs too, and never throws.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';

export interface NetHost {
  name: string;
  ns: string;
  address: string;
  port: string; // its port on the switch, in the switch namespace
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.error?.message ?? r.stderr.trim()}`);
}

// Why namespaces cannot be made here, or undefined when they can (tried with a throwaway pair).
export function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root, so no network namespaces';
  const tag = `kvp${process.pid % 100000}`;
  try {
    ip(['netns', 'add', `${tag}n`]);
    ip(['link', 'add', `${tag}a`, 'type', 'veth', 'peer', 'name', `${tag}b`]);
    ip(['link', 'set', `${tag}b`, 'netns', `${tag}n`]);
    ip(['-n', `${tag}n`, 'link', 'add', `${tag}br`, 'type', 'bridge']);
    return spawnSync('unshare', ['--uts', 'true']).status === 0 ? undefined : 'unshare --uts fails here';
  } catch (err) {
    return `this machine does not allow network namespaces with veth pairs and a bridge (${(err as Error).message})`;
  } finally {
    spawnSync('ip', ['link', 'del', `${tag}a`]);
    spawnSync('ip', ['netns', 'del', `${tag}n`]);
  }
}

let made = 0; // Hosts made by this process: part of the names and the subnet, so two never clash

export class Hosts {
  private readonly n = made++ % 10;
  readonly tag = `kv${process.pid % 100000}${this.n}`;
  readonly subnet = `10.${200 + (process.pid % 50)}.${(((process.pid >> 6) % 25) * 10 + this.n) % 250}`;
  readonly hosts = new Map<string, NetHost>();
  private readonly sw = `${this.tag}sw`;
  private readonly procs: ChildProcess[] = [];

  constructor(names: string[]) {
    try {
      ip(['netns', 'add', this.sw]);
      ip(['-n', this.sw, 'link', 'add', 'br0', 'type', 'bridge']);
      ip(['-n', this.sw, 'link', 'set', 'br0', 'up']);
      names.forEach((name, i) => {
        const host: NetHost = { name, ns: `${this.tag}${name}`, address: `${this.subnet}.${i + 1}`, port: `${this.tag}${i}b` };
        ip(['netns', 'add', host.ns]);
        this.hosts.set(name, host);
        ip(['-n', host.ns, 'link', 'set', 'lo', 'up']);
        this.wire(`${this.tag}${i}a`, host.port, host.ns);
        ip(['-n', host.ns, 'addr', 'add', `${host.address}/24`, 'dev', `${this.tag}${i}a`]);
        ip(['-n', host.ns, 'link', 'set', `${this.tag}${i}a`, 'up']);
      });
      this.wire(`${this.tag}ra`, `${this.tag}rb`, undefined);
      ip(['addr', 'add', `${this.subnet}.254/24`, 'dev', `${this.tag}ra`]);
      ip(['link', 'set', `${this.tag}ra`, 'up']);
    } catch (err) {
      this.destroy();
      throw err;
    }
  }

  // A veth pair: `inner` in ns (the test's namespace when undefined), `port` on the bridge.
  private wire(inner: string, port: string, ns: string | undefined): void {
    ip(['link', 'add', inner, 'type', 'veth', 'peer', 'name', port]);
    if (ns) ip(['link', 'set', inner, 'netns', ns]);
    ip(['link', 'set', port, 'netns', this.sw]);
    ip(['-n', this.sw, 'link', 'set', port, 'master', 'br0']);
    ip(['-n', this.sw, 'link', 'set', port, 'up']);
  }

  get(name: string): NetHost {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  // Runs command in the host, with the host's name as hostname (a UTS namespace of its own).
  spawn(name: string, command: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): ChildProcess {
    const h = this.get(name);
    const proc = spawn('ip', ['netns', 'exec', h.ns, 'unshare', '--uts', 'sh', '-c', `hostname ${h.name} && exec "$0" "$@"`, command, ...args], {
      cwd,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.procs.push(proc);
    return proc;
  }

  // Output of a command run in the host (e.g. ss).
  run(name: string, args: string[]): string {
    const r = spawnSync('ip', ['netns', 'exec', this.get(name).ns, ...args], { encoding: 'utf8' });
    return `${r.stdout ?? ''}${r.stderr ?? ''}`;
  }

  linkDown(name: string): void {
    ip(['-n', this.sw, 'link', 'set', this.get(name).port, 'down']);
  }

  linkUp(name: string): void {
    ip(['-n', this.sw, 'link', 'set', this.get(name).port, 'up']);
  }

  destroy(): void {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (const h of this.hosts.values()) {
      const pids = spawnSync('ip', ['netns', 'pids', h.ns], { encoding: 'utf8' }).stdout ?? '';
      for (const pid of pids.split(/\s+/).filter((p) => /^\d+$/.test(p))) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
    for (const h of this.hosts.values()) spawnSync('ip', ['netns', 'del', h.ns]);
    spawnSync('ip', ['link', 'del', `${this.tag}ra`]);
    spawnSync('ip', ['netns', 'del', this.sw]);
  }
}
