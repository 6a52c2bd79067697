// routes-chat.ts: POST /v1/chat/completions: messages -> the model's chat template -> prompt
// token ids -> n choices (Generation) -> chat.completion or chat.completion.chunk stream.
//
// With --reasoning-parser, each choice's answer is split into reasoning_content and content
// (ts/processor/reasoning-parser.ts), unless a grammar constrains it (then it is all content).
//
// Checks beyond the schema: the model name; fields that would change the answer and are not
// implemented (unsupported-fields.ts: 400 naming them); a structured output's grammar
// (structured-output.ts: response_format, guided_*, 400 when XGrammar refuses it); tools
// (tools.ts: tool_choice, and the tool-call parser that reads calls out of the answer);
// top_logprobs only with logprobs: true (as OpenAI); message roles and content parts (the
// processor's chat template, which names the field at fault).
import type { FastifyPluginAsync } from 'fastify';
import { encodeChatPrompt, ProcessorError, type ChatMessage } from '../processor/index.ts';
import { checkChoices, checkModel, checkPromptSize, checkStopTokenIds, refuseWhenFull } from './context.ts';
import { ApiError } from './errors.ts';
import { Generation } from './generation.ts';
import { ChatShape } from './openai-shapes.ts';
import { requestId } from './ids.ts';
import { planGeneration } from './request-params.ts';
import { chatCompletionSchema, type ChatCompletionBody } from './schemas.ts';
import { serveGeneration } from './serve.ts';
import { grammarOf } from './structured-output.ts';
import { planTools } from './tools.ts';
import { refuseUnsupportedFields } from './unsupported-fields.ts';

export const chatRoutes: FastifyPluginAsync = async (app) => {
  const ctx = app.frontend;
  app.post<{ Body: ChatCompletionBody }>('/v1/chat/completions', { schema: { body: chatCompletionSchema } }, async (request, reply) => {
    const body = request.body;
    // 1. What the schema cannot say.
    checkModel(ctx, body.model);
    refuseUnsupportedFields(body, 'chat');
    if ((body.top_logprobs ?? 0) > 0 && !body.logprobs) {
      throw new ApiError('ERR_INVALID_REQUEST', 'top_logprobs requires logprobs to be true', 'top_logprobs');
    }
    checkChoices(ctx, 1, body.n ?? 1, 'messages');
    checkStopTokenIds(ctx, body.stop_token_ids);
    if (ctx.chatTemplate instanceof ProcessorError) throw ctx.chatTemplate;
    const tools = planTools(body, ctx.tools, ctx.chatTemplate.rendersTools);
    refuseWhenFull(ctx);
    const grammar = await grammarOf(ctx.grammar, body, tools.grammar);
    // 2. The prompt.
    const { promptTokenIds } = await encodeChatPrompt(
      ctx.encoder,
      ctx.chatTemplate,
      body.messages as unknown as ChatMessage[],
      {
        addGenerationPrompt: body.add_generation_prompt ?? true,
        templateKwargs: body.chat_template_kwargs ?? undefined,
        ...(tools.templateTools ? { tools: tools.templateTools } : {}),
      },
      (text) => checkPromptSize(ctx, text, 'messages'),
    );
    // 3. The plan, and the response.
    const plan = planGeneration(body, {
      prompts: [promptTokenIds],
      maxModelLen: ctx.maxModelLen,
      maxTokens: body.max_completion_tokens ?? body.max_tokens,
      defaultMaxTokens: Infinity,
      logprobs: body.logprobs ? (body.top_logprobs ?? 0) : undefined,
      promptWord: 'messages',
      samplingDefaults: ctx.samplingDefaults,
      // A grammar applies from the first token: a constrained answer has no reasoning to split off.
      reasoningParser: grammar ? undefined : ctx.reasoningParser,
      grammar,
    });
    const id = requestId('chatcmpl');
    const shape = new ChatShape({
      id,
      created: Math.floor(Date.now() / 1000),
      model: ctx.modelName,
      choices: plan.n,
      tokenizer: ctx.tokenizer,
      returnTokensAsIds: plan.returnTokensAsIds,
      ...(tools.extractor ? { tools: { extractor: tools.extractor, finishAsToolCalls: tools.finishAsToolCalls } } : {}),
    });
    return serveGeneration(request, reply, new Generation(ctx, plan, id), shape);
  });
};
