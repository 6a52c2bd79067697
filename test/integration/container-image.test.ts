// container-image.test.ts: the images build (Dockerfile; Dockerfile.cuda with
// KVSERVE_BUILD_CUDA_IMAGE=1, as NVIDIA's devel image is several GB) with the first container tool
// that works here (docker or podman with a reachable daemon or service, else buildah), and the
// CPU image starts the launcher (`--help`). Without one the build is skipped, never passed: the
// reason is in the test's title and in the line `npm test` ends with (KVSERVE_COVERAGE_FILE).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';

const BUILD_TIMEOUT_MS = 45 * 60_000;

// The first usable tool, or why none is.
function containerTool(): { tool?: 'docker' | 'podman' | 'buildah'; why: string } {
  const whys: string[] = [];
  for (const tool of ['docker', 'podman', 'buildah'] as const) {
    const r = spawnSync(tool, tool === 'buildah' ? ['version'] : ['info'], { encoding: 'utf8', timeout: 30_000 });
    if (r.error) {
      whys.push(`${tool}: ${(r.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not installed' : r.error.message}`);
    } else if (r.status === 0) {
      return { tool, why: '' };
    } else {
      const line = `${r.stderr}\n${r.stdout}`.split('\n').find((l) => /error|cannot|denied/i.test(l)) ?? `exit code ${r.status}`;
      whys.push(`${tool}: ${line.trim()}`);
    }
  }
  return { why: `no container tool works here (${whys.join('; ')})` };
}

function record(line: string): void {
  const file = process.env.KVSERVE_COVERAGE_FILE;
  if (file) fs.appendFileSync(file, `${line}\n`);
}

const { tool, why } = containerTool();
const cuda = process.env.KVSERVE_BUILD_CUDA_IMAGE === '1';
const build = (file: string, tag: string) =>
  spawnSync(tool!, [tool === 'buildah' ? 'bud' : 'build', '-f', file, '-t', tag, '.'], { encoding: 'utf8', timeout: BUILD_TIMEOUT_MS, maxBuffer: 256 << 20 });
const tail = (r: ReturnType<typeof spawnSync>) => `${String(r.stdout)}\n${String(r.stderr)}`.split('\n').slice(-30).join('\n');

if (!tool) record(`skipped\tcontainer image build\t${why}`);
else if (!cuda) record('skipped\tCUDA container image build\tset KVSERVE_BUILD_CUDA_IMAGE=1 to build it');

describe.skipIf(!tool)(tool ? `container images (${tool})` : `container images (skipped: ${why})`, () => {
  it('the CPU image builds and its entry point is the launcher', () => {
    const r = build('Dockerfile', 'kvserve:test');
    expect(r.status, tail(r)).toBe(0);
    record('exercised\tcontainer image build');
    if (tool === 'buildah') return; // buildah builds; running it is podman's
    const help = spawnSync(tool!, ['run', '--rm', 'kvserve:test', '--help'], { encoding: 'utf8', timeout: 120_000 });
    expect(help.status, tail(help)).toBe(0);
    expect(help.stdout).toContain('Usage: npm run start -- [flags]');
  }, BUILD_TIMEOUT_MS);

  it.skipIf(!cuda)(cuda ? 'the CUDA image builds' : 'the CUDA image builds (skipped: set KVSERVE_BUILD_CUDA_IMAGE=1)', () => {
    const r = build('Dockerfile.cuda', 'kvserve:test-cuda');
    expect(r.status, tail(r)).toBe(0);
    record('exercised\tCUDA container image build');
  }, BUILD_TIMEOUT_MS);
});
