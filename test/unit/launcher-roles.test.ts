// launcher-roles.test.ts: --role and the flags of a deployment over several hosts, as parseFlags
// reads them: what each role starts, the addresses, and the refusals (each naming its flag).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { firstNonLoopbackIPv4, parseFlags, refuseUnimplemented } from '../../ts/launcher/flags.ts';

const SECRET = 'unit-test-cluster-secret-0123';
const REDIS = 'redis://:pw@10.1.2.3:6390';
const saved = { ...process.env };

beforeEach(() => {
  delete process.env.KVSERVE_REDIS_URL;
  delete process.env.KVSERVE_CLUSTER_SECRET;
  delete process.env.KVSERVE_API_KEY;
});
afterEach(() => {
  process.env = { ...saved };
});

describe('--role', () => {
  it('is leader by default, as before: loopback, no remote prefill without prefill workers', () => {
    const f = parseFlags([]);
    expect(f).toMatchObject({ role: 'leader', workers: 1, prefillWorkers: 0, remotePrefill: false, advertiseHost: '127.0.0.1' });
    expect(parseFlags(['--prefill-workers', '1']).remotePrefill).toBe(true);
    expect(parseFlags(['--decode-workers', '1', '--remote-prefill']).remotePrefill).toBe(true);
  });

  it('starts only workers on a worker node, decode ones with --remote-prefill', () => {
    const f = parseFlags(['--role', 'worker', '--redis-url', REDIS, '--cluster-secret', SECRET, '--advertise-host', '10.1.2.4', '--workers', '2']);
    expect(f).toMatchObject({ role: 'worker', workers: 2, prefillWorkers: 0, remotePrefill: false, advertiseHost: '10.1.2.4' });
    const d = parseFlags(['--role', 'worker', '--redis-url', REDIS, '--cluster-secret', SECRET, '--advertise-host', '10.1.2.4', '--remote-prefill', '--max-local-prefill-length', '64']);
    expect(d).toMatchObject({ remotePrefill: true, maxLocalPrefillLength: 64 });
  });

  it('advertises the first non-loopback IPv4 address by default on a worker node', () => {
    const found = firstNonLoopbackIPv4();
    process.env.KVSERVE_REDIS_URL = REDIS;
    process.env.KVSERVE_CLUSTER_SECRET = SECRET;
    if (found) expect(parseFlags(['--role', 'prefill']).advertiseHost).toBe(found);
    else expect(() => parseFlags(['--role', 'prefill'])).toThrow(/no non-loopback IPv4 address to publish; give --advertise-host/);
  });

  it('starts one prefill worker on a prefill node unless told more, and no decode worker', () => {
    const f = parseFlags(['--role', 'prefill', '--redis-url', REDIS, '--cluster-secret', SECRET, '--advertise-host', '10.1.2.5']);
    expect(f).toMatchObject({ workers: 0, prefillWorkers: 1, remotePrefill: true });
    expect(parseFlags(['--role', 'prefill', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--prefill-workers', '3', '--prefill-tp', '2'])).toMatchObject({ prefillWorkers: 3, prefillTp: 2 });
  });

  it('starts no engine on a frontend node, whose block size is its workers\' unless given', () => {
    const f = parseFlags(['--role', 'frontend', '--redis-url', 'redis://127.0.0.1:6379', '--router', 'kv']);
    expect(f).toMatchObject({ workers: 0, prefillWorkers: 0, blockSizeGiven: false, router: 'kv' });
    expect(parseFlags(['--role', 'frontend', '--redis-url', 'redis://127.0.0.1:6379', '--block-size', '32']).blockSizeGiven).toBe(true);
  });

  it.each([
    [['--role', 'worker', '--advertise-host', '127.0.0.1'], /--role worker joins an existing deployment: give --redis-url/],
    [['--role', 'worker', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--prefill-workers', '1'], /--prefill-workers does not apply to --role worker/],
    [['--role', 'worker', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--http-port', '9000', '--api-key', 'k'], /--http-port, --api-key do not apply to --role worker/],
    [['--role', 'worker', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--workers', '0'], /--workers must be in \[1, 256\], got 0/],
    [['--role', 'prefill', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--remote-prefill'], /--remote-prefill does not apply to --role prefill/],
    [['--role', 'prefill', '--redis-url', REDIS, '--advertise-host', '127.0.0.1', '--redis-port', '1'], /--redis-port does not apply to --role prefill/],
    [['--role', 'frontend', '--redis-url', REDIS, '--cluster-secret', SECRET, '--advertise-host', '10.1.2.6'], /--advertise-host does not apply to --role frontend/],
    [['--role', 'frontend', '--redis-url', REDIS], /--role frontend with a Redis on 10\.1\.2\.3, another host/],
    [['--role', 'worker', '--redis-url', REDIS, '--advertise-host', '10.1.2.4'], /--advertise-host 10\.1\.2\.4 is not loopback.*--cluster-secret/],
    [['--advertise-host', '10.1.2.4', '--cluster-secret', SECRET], /--redis-password-file FILE/],
    [['--advertise-host', '10.1.2.4'], /--advertise-host 10\.1\.2\.4 is not loopback/],
    [['--advertise-host', 'bad host'], /--advertise-host must be an IP address or a host name/],
    [['--redis-port', '7000'], /--redis-port configures the leader's private redis-server, which this mode does not start/],
    [['--workers', '0'], /--workers 0: a leader without workers/],
    [['--decode-workers', '1', '--max-prefill-queue-size', '3'], /add --prefill-workers N \(or --remote-prefill/],
  ])('refuses %j', (args, message) => {
    expect(() => parseFlags(args)).toThrow(message);
  });

  it('takes the Redis URL and the secret from the environment', () => {
    process.env.KVSERVE_REDIS_URL = REDIS;
    process.env.KVSERVE_CLUSTER_SECRET = SECRET;
    const f = parseFlags(['--role', 'worker', '--advertise-host', '10.1.2.4']);
    expect(f).toMatchObject({ redisUrl: REDIS, clusterSecret: SECRET });
  });

  it('lets a leader serve other hosts with its Redis password in a file', () => {
    const f = parseFlags(['--workers', '0', '--advertise-host', '10.1.2.3', '--cluster-secret', SECRET, '--redis-port', '6390', '--redis-password-file', 'pw']);
    expect(f).toMatchObject({ workers: 0, advertiseHost: '10.1.2.3', redisPort: 6390 });
    expect(f.redisPasswordFile).toMatch(/\/pw$/);
  });
});

describe('tensor parallelism', () => {
  it('--prefill-tp needs prefill workers; any TP split of decode and prefill workers is taken (on CPU and CUDA alike)', () => {
    expect(() => refuseUnimplemented(parseFlags(['--worker-tp', '2']))).not.toThrow();
    expect(() => refuseUnimplemented(parseFlags(['--decode-workers', '1', '--prefill-workers', '4', '--decode-tp', '4', '--prefill-tp', '1']))).not.toThrow();
    expect(() => refuseUnimplemented(parseFlags(['--prefill-tp', '2']))).toThrow(/--prefill-tp applies to prefill workers: add --prefill-workers N/);
  });
});
