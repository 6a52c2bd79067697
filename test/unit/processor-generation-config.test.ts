// generation_config.json -> the sampling defaults of requests that leave them unset
// (--generation-config auto | vllm | DIR), and what planGeneration makes of them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BULK_CHOICES, planGeneration, type PlanOptions } from '../../ts/frontend/request-params.ts';
import { ProcessorError, describeSamplingDefaults, loadSamplingDefaults } from '../../ts/processor/index.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-genconfig-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

let n = 0;
function modelDir(files: Record<string, unknown>): string {
  const dir = path.join(root, `m${n++}`);
  fs.mkdirSync(dir);
  for (const [name, json] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), typeof json === 'string' ? json : JSON.stringify(json));
  return dir;
}

// DeepSeek-R1-Distill-Llama-8B's generation_config.json.
const r1 = { _from_model_config: true, bos_token_id: 128000, eos_token_id: 128001, do_sample: true, temperature: 0.6, top_p: 0.95, transformers_version: '4.46.3' };

describe('loadSamplingDefaults', () => {
  it('auto: takes the five sampling keys, and max_new_tokens as the max_tokens cap', () => {
    const dir = modelDir({ 'generation_config.json': { ...r1, top_k: 20, min_p: 0.05, repetition_penalty: 1.1, max_new_tokens: 512 } });
    const loaded = loadSamplingDefaults('auto', dir);
    expect(loaded.defaults).toEqual({ temperature: 0.6, topP: 0.95, topK: 20, minP: 0.05, repetitionPenalty: 1.1, maxTokens: 512 });
    expect(loaded.source).toBe(path.join(dir, 'generation_config.json'));
    expect(describeSamplingDefaults(loaded)).toBe(
      `generation config: sampling defaults from ${loaded.source} for requests that leave them unset: temperature=0.6, top_p=0.95, top_k=20, ` +
        'min_p=0.05, repetition_penalty=1.1, max_new_tokens (caps max_tokens)=512 (--generation-config vllm turns them off)',
    );
  });

  it('leaves every other key alone, do_sample: false included (vLLM still samples at the temperature)', () => {
    const dir = modelDir({ 'generation_config.json': { do_sample: false, temperature: 0.7, num_beams: 4, max_length: 100, pad_token_id: 0 } });
    expect(loadSamplingDefaults('auto', dir).defaults).toEqual({ temperature: 0.7 });
  });

  it("does not apply values equal to transformers' defaults, and says so for top_k 50", () => {
    const dir = modelDir({ 'generation_config.json': { temperature: 1.0, top_p: 1.0, top_k: 50, repetition_penalty: 1.0, min_p: null } });
    const loaded = loadSamplingDefaults('auto', dir);
    expect(loaded.defaults).toEqual({});
    expect(loaded.notApplied).toEqual(["top_k=50 (transformers' default, which vLLM does not apply either)"]);
    expect(describeSamplingDefaults(loaded)).toContain('no sampling defaults in');
    expect(describeSamplingDefaults(loaded)).toContain('not applied: top_k=50');
  });

  it('falls back to config.json without a generation_config.json; nothing without either', () => {
    expect(loadSamplingDefaults('auto', modelDir({ 'config.json': { architectures: ['LlamaForCausalLM'], temperature: 0.5 } })).defaults).toEqual({ temperature: 0.5 });
    expect(loadSamplingDefaults('auto', modelDir({}))).toMatchObject({ defaults: {}, source: null });
  });

  it('vllm: none, whatever the file says', () => {
    const loaded = loadSamplingDefaults('vllm', modelDir({ 'generation_config.json': r1 }));
    expect(loaded).toMatchObject({ defaults: {}, source: null });
    expect(describeSamplingDefaults(loaded)).toContain('--generation-config vllm');
  });

  it("a directory: its generation_config.json, not the model's; refused when it has none", () => {
    const other = modelDir({ 'generation_config.json': { temperature: 0.3 } });
    expect(loadSamplingDefaults(other, modelDir({ 'generation_config.json': r1 })).defaults).toEqual({ temperature: 0.3 });
    const empty = modelDir({});
    expect(() => loadSamplingDefaults(empty, empty)).toThrow(`--generation-config ${empty}: ${path.join(empty, 'generation_config.json')} not found`);
  });

  it('refuses a bad value naming the file and the key', () => {
    const bad: [Record<string, unknown>, string][] = [
      [{ temperature: '0.6' }, '"temperature" must be a number, got "0.6"'],
      [{ temperature: 3 }, '"temperature" must be in [0, 2], got 3'],
      [{ top_p: 0 }, '"top_p" must be in (0, 1], got 0'],
      [{ top_k: 2.5 }, '"top_k" must be an integer, got 2.5'],
      [{ top_k: -2 }, '"top_k" must be in [-1, inf), got -2'],
      [{ min_p: 1.5 }, '"min_p" must be in [0, 1], got 1.5'],
      [{ repetition_penalty: 0 }, '"repetition_penalty" must be in (0, 2], got 0'],
      [{ max_new_tokens: 0 }, '"max_new_tokens" must be in [1, inf), got 0'],
      [{ top_p: true }, '"top_p" must be a number, got true'],
    ];
    for (const [json, message] of bad) {
      const dir = modelDir({ 'generation_config.json': json });
      const file = path.join(dir, 'generation_config.json');
      expect(() => loadSamplingDefaults('auto', dir)).toThrow(`${file}: ${message}`);
      expect(() => loadSamplingDefaults('auto', dir)).toThrow(ProcessorError);
    }
    const broken = modelDir({ 'generation_config.json': '{"temperature": ' });
    expect(() => loadSamplingDefaults('auto', broken)).toThrow(`${path.join(broken, 'generation_config.json')}: cannot be read as JSON`);
    const array = modelDir({ 'generation_config.json': [] });
    expect(() => loadSamplingDefaults('auto', array)).toThrow('must hold a JSON object');
  });
});

describe('planGeneration with sampling defaults', () => {
  const opts = (extra: Partial<PlanOptions> = {}): PlanOptions => ({
    prompts: [[1, 2, 3]],
    maxModelLen: 100,
    maxTokens: undefined,
    defaultMaxTokens: Infinity,
    logprobs: undefined,
    promptWord: 'messages',
    ...extra,
  });
  const defaults = { temperature: 0.6, topP: 0.95, topK: 20, minP: 0.05, repetitionPenalty: 1.1 };

  it('fills what the request leaves unset or null, keeps what it sets', () => {
    expect(planGeneration({}, opts({ samplingDefaults: defaults })).sampling).toMatchObject(defaults);
    const own = planGeneration({ temperature: 0, top_p: 0.5, top_k: null, min_p: 0, repetition_penalty: 1 }, opts({ samplingDefaults: defaults })).sampling;
    expect(own).toMatchObject({ temperature: 0, topP: 0.5, topK: 20, minP: 0, repetitionPenalty: 1 });
  });

  it('without defaults the neutral values', () => {
    expect(planGeneration({}, opts()).sampling).toMatchObject({ temperature: 1, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1 });
  });

  it('max_new_tokens caps max_tokens, given or not, after the context checks', () => {
    expect(planGeneration({}, opts({ samplingDefaults: { maxTokens: 10 } })).maxTokens).toEqual([10]);
    expect(planGeneration({}, opts({ samplingDefaults: { maxTokens: 1000 } })).maxTokens).toEqual([97]);
    expect(planGeneration({}, opts({ maxTokens: 50, samplingDefaults: { maxTokens: 10 } })).maxTokens).toEqual([10]);
    expect(planGeneration({}, opts({ maxTokens: 5, samplingDefaults: { maxTokens: 10 } })).maxTokens).toEqual([5]);
    expect(() => planGeneration({ min_tokens: 20 }, opts({ samplingDefaults: { maxTokens: 10 } }))).toThrow('min_tokens (20) must be at most max_tokens (10)');
  });

  it('the reasoning parser reaches the output options only when the route passes it', () => {
    expect(planGeneration({}, opts({ reasoningParser: 'deepseek_r1' })).output.reasoningParser).toBe('deepseek_r1');
    expect(planGeneration({}, opts()).output.reasoningParser).toBeUndefined();
  });

  it('gives the engine priority 1 to bulk requests (more than BULK_CHOICES choices) unless the request names one', () => {
    expect(planGeneration({}, opts()).sampling.priority).toBeUndefined();
    expect(planGeneration({ n: BULK_CHOICES }, opts()).sampling.priority).toBeUndefined();
    expect(planGeneration({ n: BULK_CHOICES + 1 }, opts()).sampling.priority).toBe(1);
    const prompts = Array.from({ length: BULK_CHOICES + 1 }, () => [1, 2, 3]);
    expect(planGeneration({}, opts({ prompts })).sampling.priority).toBe(1);
    expect(planGeneration({ n: 2 }, opts({ prompts: [[1], [2], [3]] })).sampling.priority).toBe(1);
    expect(planGeneration({ n: 128, priority: 0 }, opts()).sampling.priority).toBeUndefined();
    expect(planGeneration({ priority: -3 }, opts()).sampling.priority).toBe(-3);
    expect(planGeneration({ n: 128, priority: null }, opts()).sampling.priority).toBe(1);
  });
});
