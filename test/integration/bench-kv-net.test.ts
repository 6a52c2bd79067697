// bench-kv-net.test.ts: `npm run bench:kv-net` runs end to end at a small size and writes its
// result, the receiver's blocks checked against the sender's by the bench itself: over loopback,
// and over a veth pair between two network namespaces where this machine allows them (root, and
// `ip netns add` working; skipped with the reason otherwise). No figure is asserted: timing is
// the benchmark's business.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-kv-net-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function namespacesWhy(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root, so no network namespaces';
  const name = `kvnt${process.pid}`;
  const made = spawnSync('ip', ['netns', 'add', name]).status === 0;
  spawnSync('ip', ['netns', 'del', name]);
  return made ? undefined : '`ip netns add` failed on this machine';
}

function run(link: string) {
  const out = path.join(dir, `${link}.json`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/kv-net.ts', '--link', link, '--blocks', '1,3', '--rounds', '1', '--repeat', '2', '--out', out], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
  const result = JSON.parse(fs.readFileSync(out, 'utf8')) as { layout: { blockBytes: number }; cases: { blocks: number; bytes: number; bytesVerified: boolean; agent: { seconds: number[] }; raw: { seconds: number[] } }[] };
  expect(result.layout.blockBytes).toBe(2 * 16 * 16 * 8 * 64 * 2); // llama-3.2-1b at block size 16, bf16
  expect(result.cases.map((c) => [c.blocks, c.bytes, c.bytesVerified])).toEqual([
    [1, result.layout.blockBytes, true],
    [3, 3 * result.layout.blockBytes, true],
  ]);
  for (const c of result.cases) {
    expect(c.agent.seconds.length).toBeGreaterThan(0);
    expect(c.raw.seconds.length).toBe(c.agent.seconds.length);
  }
}

const why = namespacesWhy();

describe('bench:kv-net', () => {
  it('runs over loopback', () => run('loopback'));
  it.skipIf(why !== undefined)(why ? `runs over a veth pair (skipped: ${why})` : 'runs over a veth pair between two namespaces', () => run('veth'));
});
