// --reasoning-parser and --generation-config through the real launcher: refused when wrong (a bad
// generation_config.json before any worker starts), and reaching the frontend when right (the
// real engine on the tiny model: a greedy temperature from generation_config.json makes two
// seeds give the same answer; --generation-config vllm does not).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { freePort, launch, runLauncher, type Launched } from '../helpers/launcher.ts';

let tmp: string;
let tinyDir: string;

// The tiny model with another generation_config.json (the other files linked).
function modelWith(name: string, generationConfig: string): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(tinyDir)) if (f !== 'generation_config.json') fs.symlinkSync(path.join(tinyDir, f), path.join(dir, f));
  fs.writeFileSync(path.join(dir, 'generation_config.json'), generationConfig);
  return dir;
}

beforeAll(async () => {
  tinyDir = (await ensureModel('tiny-llama')).dir;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-launch-reasoning-'));
});

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('refused at start', () => {
  it('--help lists both flags', async () => {
    const r = await runLauncher(['--help']);
    expect(r.code).toBe(0);
    expect(r.output).toContain('--reasoning-parser NAME');
    expect(r.output).toContain('--generation-config auto|vllm|DIR');
  });

  it('an unknown reasoning parser, listing the known ones', async () => {
    const r = await runLauncher(['--reasoning-parser', 'qwen3']);
    expect(r.code).toBe(2);
    expect(r.output).toContain("--reasoning-parser: unknown reasoning parser 'qwen3'; known parsers: deepseek_r1");
  });

  it('a --generation-config that is neither auto, vllm nor a directory', async () => {
    const r = await runLauncher(['--generation-config', path.join(tmp, 'nowhere')]);
    expect(r.code).toBe(2);
    expect(r.output).toContain('--generation-config must be auto, vllm or a directory holding a generation_config.json');
  });

  it('a bad generation_config.json value, naming the file and the key, before any worker starts', async () => {
    const dir = modelWith('bad', JSON.stringify({ temperature: 'hot' }));
    const r = await runLauncher(['--model', dir, '--http-port', String(await freePort())]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`${path.join(dir, 'generation_config.json')}: "temperature" must be a number, got "hot"`);
    expect(r.output).not.toContain('worker-0');
  });
});

describe('reaching the frontend', () => {
  let dir: string;
  beforeAll(() => {
    dir = modelWith('greedy', JSON.stringify({ bos_token_id: 128000, eos_token_id: 128009, do_sample: false, temperature: 0 }));
  });

  type Answer = { choices: { message: { content: string | null; reasoning_content?: string | null }; finish_reason: string }[] };
  const chat = async (server: Launched, extra: Record<string, unknown>): Promise<Answer> => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'Think, then answer.' }], max_tokens: 8, ignore_eos: true, ...extra }),
    });
    expect(res.status).toBe(200);
    return (await res.json()) as Answer;
  };
  // The frontend's log lines come through their own pipe, and may follow the launcher's "ready:".
  const logged = async (server: Launched, line: string): Promise<string> => {
    for (let i = 0; i < 100 && !server.output().includes(line); i++) await new Promise((r) => setTimeout(r, 50));
    return server.output();
  };
  const textOf = (a: Answer) => `${a.choices[0].message.reasoning_content ?? ''}|${a.choices[0].message.content ?? ''}`;

  it('auto with --reasoning-parser deepseek_r1: the model temperature applies, the answer is split', async () => {
    const server = await launch(['--model', dir, '--served-model-name', 'tiny', '--reasoning-parser', 'deepseek_r1', '--http-port', String(await freePort())]);
    try {
      const defaults = `generation config: sampling defaults from ${path.join(dir, 'generation_config.json')} for requests that leave them unset: temperature=0`;
      expect(await logged(server, defaults)).toContain(defaults);
      expect(await logged(server, 'reasoning parser deepseek_r1')).toContain('reasoning parser deepseek_r1');
      const a = await chat(server, { seed: 1 });
      const b = await chat(server, { seed: 2 });
      // Random weights never write </think>: all reasoning, no content.
      expect(typeof a.choices[0].message.reasoning_content).toBe('string');
      expect(a.choices[0].message.reasoning_content!.length).toBeGreaterThan(0);
      expect(a.choices[0].message.content).toBeNull();
      expect(textOf(a)).toBe(textOf(b)); // greedy, whatever the seed
      const c = await chat(server, { seed: 1, temperature: 1 });
      const d = await chat(server, { seed: 2, temperature: 1 });
      expect(textOf(c)).not.toBe(textOf(d)); // the request's own temperature wins
    } finally {
      await server.stop();
    }
  });

  it('--generation-config vllm: no defaults, so two seeds answer differently', async () => {
    const server = await launch(['--model', dir, '--served-model-name', 'tiny', '--generation-config', 'vllm', '--http-port', String(await freePort())]);
    try {
      expect(await logged(server, 'generation config: none (--generation-config vllm)')).toContain('generation config: none (--generation-config vllm)');
      const a = await chat(server, { seed: 1 });
      const b = await chat(server, { seed: 2 });
      expect(a.choices[0].message).not.toHaveProperty('reasoning_content');
      expect(textOf(a)).not.toBe(textOf(b));
    } finally {
      await server.stop();
    }
  });
});
