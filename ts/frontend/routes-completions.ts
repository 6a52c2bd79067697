// routes-completions.ts: POST /v1/completions: a prompt (a string, token ids, or a batch of
// either) -> n choices per prompt (choice index = promptIndex * n + j, as vLLM) -> text_completion
// or its stream.
//
// Checks beyond the schema: the model name; fields that would change the answer and are not
// implemented (unsupported-fields.ts: 400 naming them); a structured output's grammar
// (structured-output.ts); token ids inside the vocabulary; echo works, but not together with
// logprobs (prompt logprobs are not computed by the engine: 400).
import type { FastifyPluginAsync } from 'fastify';
import { encodeCompletionPrompt, type TextTokenizer } from '../processor/index.ts';
import { checkChoices, checkModel, checkPromptSize, checkStopTokenIds, refuseWhenFull } from './context.ts';
import { ApiError } from './errors.ts';
import { Generation } from './generation.ts';
import { requestId } from './ids.ts';
import { CompletionShape } from './openai-shapes.ts';
import { planGeneration } from './request-params.ts';
import { completionSchema, type CompletionBody } from './schemas.ts';
import { serveGeneration } from './serve.ts';
import { grammarOf } from './structured-output.ts';
import { refuseUnsupportedFields } from './unsupported-fields.ts';

// OpenAI's legacy default for /v1/completions (vLLM's too).
const DEFAULT_MAX_TOKENS = 16;

export const completionRoutes: FastifyPluginAsync = async (app) => {
  const ctx = app.frontend;
  app.post<{ Body: CompletionBody }>('/v1/completions', { schema: { body: completionSchema } }, async (request, reply) => {
    const body = request.body;
    // 1. What the schema cannot say.
    checkModel(ctx, body.model);
    refuseUnsupportedFields(body, 'completions');
    if (body.echo && body.logprobs !== undefined && body.logprobs !== null) {
      throw new ApiError('ERR_UNSUPPORTED', 'echo together with logprobs (prompt logprobs) is not supported', 'echo');
    }
    const inputs = batchOf(body.prompt);
    checkChoices(ctx, inputs.length, body.n ?? 1, 'prompt');
    checkStopTokenIds(ctx, body.stop_token_ids);
    refuseWhenFull(ctx);
    const grammar = await grammarOf(ctx.grammar, body);
    // 2. The prompts.
    const param = (i: number) => (inputs.length > 1 ? `prompt[${i}]` : 'prompt');
    const prompts = await Promise.all(
      inputs.map(async (p, i) => {
        try {
          return await encodeCompletionPrompt(ctx.encoder, ctx.tokenizer, p, (text) => checkPromptSize(ctx, text, param(i)));
        } catch (err) {
          if (err instanceof ApiError) throw err;
          throw new ApiError('ERR_INVALID_REQUEST', (err as Error).message, param(i));
        }
      }),
    );
    // 3. The plan, and the response.
    const plan = planGeneration(body, {
      prompts,
      maxModelLen: ctx.maxModelLen,
      maxTokens: body.max_tokens,
      defaultMaxTokens: DEFAULT_MAX_TOKENS,
      logprobs: body.logprobs ?? undefined,
      promptWord: 'prompt',
      samplingDefaults: ctx.samplingDefaults, // no reasoning parser here: completions are text as generated
      grammar,
    });
    const id = requestId('cmpl');
    const shapeContext = {
      id,
      created: Math.floor(Date.now() / 1000),
      model: ctx.modelName,
      choices: prompts.length * plan.n,
      tokenizer: ctx.tokenizer,
      returnTokensAsIds: plan.returnTokensAsIds,
    };
    const echo = body.echo ? inputs.map((p) => echoText(ctx.tokenizer, p)) : null;
    return serveGeneration(request, reply, new Generation(ctx, plan, id), new CompletionShape(shapeContext, echo));
  });
};

// A prompt as a batch: a string or token ids are a batch of one.
function batchOf(prompt: CompletionBody['prompt']): (string | number[])[] {
  if (typeof prompt === 'string') return [prompt];
  if (typeof prompt[0] === 'number') return [prompt as number[]];
  return prompt as (string | number[])[];
}

function echoText(tokenizer: TextTokenizer, prompt: string | number[]): string {
  return typeof prompt === 'string' ? prompt : tokenizer.decode(prompt, { skipSpecialTokens: false });
}
