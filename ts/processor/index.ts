// index.ts: the processor's public API. The processor sits between the HTTP frontend and the
// engine workers: request input -> prompt token ids (tokenizer, chat-template, prompt), streamed
// token ids -> text deltas and finish (detokenizer, stop-strings, reasoning-parser,
// output-processor); the model's sampling defaults (generation-config).
export { ProcessorError, processorErrorStatus, type ProcessorErrorCode } from './errors.js';
export {
  TextTokenizer,
  byteEncodingOf,
  loadTokenizer,
  type ByteEncoding,
  type DecodeOptions,
  type EncodeOptions,
  type SpecialToken,
  type TokenizerSources,
} from './tokenizer.js';
export {
  HermesExtractor,
  Llama3JsonExtractor,
  NamedCallExtractor,
  RequiredCallsExtractor,
  autoCallExtractor,
  isToolCallParserName,
  toolCallParserNames,
  unknownToolCallParserMessage,
  type ToolCallExtractor,
  type ToolCallParserName,
  type ToolCallPiece,
  type ToolCallSplit,
} from './tool-call-parser.js';
export { ChatTemplate, type ChatMessage, type ChatRole, type ChatTextPart, type RenderOptions } from './chat-template.js';
export { chatPrompt, completionPromptTokenIds, encodeChatPrompt, encodeCompletionPrompt, type ChatPrompt, type PromptEncoder } from './prompt.js';
export { BodyParseError, EncoderPool, PromptTooLongError, type EncoderPoolOptions, type PromptScreen, type PromptSize } from './encoder-pool.js';
export { IncrementalDetokenizer, type DetokenizerOptions } from './detokenizer.js';
export { StopStringMatcher, maxStopStrings, type StopFeedResult, type StopStringOptions } from './stop-strings.js';
export {
  OutputProcessor,
  usageOf,
  type EngineFinishReason,
  type FinishReason,
  type OutputDelta,
  type OutputProcessorOptions,
  type Usage,
} from './output-processor.js';
export {
  createReasoningParser,
  isReasoningParserName,
  reasoningMarkers,
  reasoningParserNames,
  unknownReasoningParserMessage,
  type ReasoningParser,
  type ReasoningParserName,
  type ReasoningSplit,
} from './reasoning-parser.js';
export {
  loadSamplingDefaults,
  describeSamplingDefaults,
  type GenerationConfigSetting,
  type LoadedSamplingDefaults,
  type SamplingDefaults,
} from './generation-config.js';
