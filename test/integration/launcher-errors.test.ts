// A fatal start-up error, from the launcher or from a child, ends in one line on stderr,
// `kvserve: error: <message>`, and a non-zero exit code, without a stack trace; --log-level
// debug adds the stack. Real launcher processes (test/helpers/launcher.ts).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { freePort, runLauncher } from '../helpers/launcher.ts';

const STACK_FRAME = /^\s+at /m;

let fooModel: string; // the tiny model with architectures ["FooForCausalLM"]

beforeAll(async () => {
  const dir = (await ensureModel('tiny-llama')).dir;
  fooModel = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-foo-arch-'));
  for (const f of fs.readdirSync(dir)) {
    if (f === 'config.json') continue;
    fs.symlinkSync(path.join(dir, f), path.join(fooModel, f));
  }
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(fooModel, 'config.json'), JSON.stringify({ ...config, architectures: ['FooForCausalLM'] }, null, 2));
});

afterAll(() => {
  if (fooModel) fs.rmSync(fooModel, { recursive: true, force: true });
});

// The lines of the launcher's output that carry the error.
const errorLines = (output: string) => output.split('\n').filter((l) => l.startsWith('kvserve: error: '));

describe('fatal start-up errors', () => {
  it('an unsupported architecture (refused in the worker): one line naming it, exit 1, no stack', async () => {
    const { code, output } = await runLauncher(['--model', fooModel, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB']);
    expect(code).toBe(1);
    const lines = errorLines(output);
    expect(lines, output).toHaveLength(1);
    expect(lines[0]).toMatch(/worker-0: architecture 'FooForCausalLM' is not supported/);
    expect(output.split('\n').filter((l) => l.includes('FooForCausalLM')), output).toHaveLength(1);
    expect(output).not.toMatch(STACK_FRAME);
  });

  it('--log-level debug adds the stack behind it', async () => {
    const { code, output } = await runLauncher(['--model', fooModel, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--log-level', 'debug']);
    expect(code).toBe(1);
    expect(errorLines(output)).toHaveLength(1);
    expect(output).toMatch(STACK_FRAME);
  });

  it('a port in use: one line naming the port, exit 1, before any worker starts', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '0.0.0.0', resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const { code, output } = await runLauncher(['--model', fooModel, '--http-port', String(port)]);
      expect(code).toBe(1);
      expect(errorLines(output)).toEqual([expect.stringMatching(new RegExp(`--http-port ${port} .*already in use`))]);
      expect(output).not.toMatch(/worker-0/);
      expect(output).not.toMatch(STACK_FRAME);
    } finally {
      blocker.close();
    }
  });

  it('a missing model directory and a bad flag: one line each, exit 1 and 2', async () => {
    const missing = await runLauncher(['--model', '/nonexistent/kvserve-model'], { HF_HUB_CACHE: '/tmp/kvserve-empty-hub' });
    expect(missing.code).toBe(1);
    expect(errorLines(missing.output), missing.output).toHaveLength(1);
    expect(missing.output).not.toMatch(STACK_FRAME);

    const bad = await runLauncher(['--bogus']);
    expect(bad.code).toBe(2);
    expect(errorLines(bad.output)).toEqual([expect.stringMatching(/bogus/)]);
    expect(bad.output).not.toMatch(STACK_FRAME);
  });
});
