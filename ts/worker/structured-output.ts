// structured-output.ts: a worker's side of structured outputs. A request that carries a grammar
// (GenerateRequest.grammar) gets a matcher on the worker's grammar thread (ts/grammar); the
// matcher's masks reach the engine, which applies each one to the next token it samples.
//
//   1. open: the grammar is compiled (or found in the thread's cache) and the matcher fed the
//      tokens a migrated request already has; its first mask goes in with the engine request.
//   2. each output: its tokens go to the matcher (accept) as soon as the step hands them over;
//      the thread answers the next mask, which goes straight to the engine (setTokenMask) while
//      the engine runs the next forward pass. The engine waits at sampling only when the mask is
//      later than the forward pass.
//   3. the end (finish, abort, error): the matcher is closed.
// A matcher that fails (a token against the grammar, the thread lost) aborts the engine request,
// and the stream ends with that error.
import { NativeError, type Engine, type RequestOutput } from '../native/index.ts';
import { GrammarError, GrammarMatchers } from '../grammar/grammar-service.ts';
import type { EngineGenerateFn, GenerateFn } from './server.ts';

type Log = (level: 'debug' | 'info' | 'warn', msg: string) => void;

// The worker's matchers, on a thread started at the first constrained request.
export function grammarMatchersFor(engine: Engine, modelDir: string): () => GrammarMatchers {
  let matchers: GrammarMatchers | undefined;
  return () =>
    (matchers ??= new GrammarMatchers({
      modelDir,
      vocabSize: engine.info.model.vocabSize,
      stopTokenIds: [...engine.info.model.eosTokenIds],
    }));
}

export function withStructuredOutput(inner: EngineGenerateFn, engine: Engine, matchers: () => GrammarMatchers, log: Log): GenerateFn {
  return (body, signal) => {
    if (body.grammar === undefined) return inner(body, signal);
    return constrained(body, signal);
  };

  async function constrained(body: Parameters<GenerateFn>[0], signal: AbortSignal): Promise<AsyncIterable<RequestOutput>> {
    const reqId = body.requestId;
    const m = matchers();
    const own = new AbortController();
    let failure: string | undefined;
    // 1. The matcher and the first mask.
    let first: { mask: Int32Array; compileMs: number };
    try {
      first = await m.open(reqId, body.grammar!, body.outputTokenIds ?? [], (e) => {
        if ('mask' in e) {
          engine.setTokenMask(reqId, e.index, e.mask); // false: the request has ended meanwhile
        } else if ('error' in e) {
          failure = e.error;
          own.abort();
        }
      });
    } catch (err) {
      if (err instanceof GrammarError) throw new NativeError('ERR_REQUEST_INVALID', err.message);
      throw err;
    }
    if (first.compileMs > 0) log('debug', `${reqId}: grammar (${body.grammar!.kind}) compiled in ${first.compileMs.toFixed(1)} ms`);
    let stream: AsyncIterable<RequestOutput>;
    try {
      stream = inner(body, AbortSignal.any([signal, own.signal]), { tokenMask: first.mask });
    } catch (err) {
      m.close(reqId);
      throw err;
    }
    // 2. Each output's tokens to the matcher, 3. closed at the end.
    let outputs = body.outputTokenIds?.length ?? 0;
    return (async function* () {
      try {
        for await (const o of stream) {
          if (o.newTokenIds.length > 0 && !o.finishReason) {
            outputs += o.newTokenIds.length;
            m.accept(reqId, outputs, o.newTokenIds);
          }
          if (failure !== undefined && o.finishReason) throw new NativeError('ERR_INTERNAL', failure);
          yield o;
        }
      } finally {
        m.close(reqId);
      }
    })();
  }
}
