// grammar-thread.ts: the thread that owns one XGrammar instance (grammar-service.ts starts it).
//
// workerData: {modelDir, vocabSize, stopTokenIds} for a matcher thread (compiles against the
// model's vocabulary and runs matchers), or {} for a checking thread (parses specs only). Then:
//   {id, op: 'check', spec}                 -> {id} | {id, error}
//   {id, op: 'open', reqId, spec, prior}    -> {id, mask, compileMs} | {id, error}
//       compiles the spec (cached by specKey), makes the request's matcher, feeds it the tokens
//       the request already has (a migrated request's) and answers the mask of its next token
//   {op: 'accept', reqId, index, tokens}    -> {reqId, index, mask} | {reqId, index, done: true}
//                                              | {reqId, index, error}
//       feeds the request's new output tokens; index = its output count after them, the output
//       the mask is for; done: the matcher took a stop token (nothing more to sample)
//   {op: 'close', reqId}                    (no answer)
// Masks are Int32Arrays of ceil(vocabSize / 32) words (bit t % 32 of word t / 32: token t is
// allowed), transferred. After XGrammar aborted a call the answer to that call carries
// {poisoned: true} and the thread answers nothing more: the service replaces it.
import { parentPort, workerData } from 'node:worker_threads';
import type * as XG from '@mlc-ai/web-xgrammar';
import { compileSpec, guarded, loadXGrammar, parseSpec, poisoned, XGrammarError } from './xgrammar.ts';
import { specKey, type GrammarSpec } from './spec.ts';
import { loadGrammarVocabulary } from './vocabulary.ts';

interface Setup {
  modelDir?: string;
  vocabSize?: number;
  stopTokenIds?: number[];
  cacheSize?: number;
}

type Task =
  | { id: number; op: 'check'; spec: GrammarSpec }
  | { id: number; op: 'open'; reqId: string; spec: GrammarSpec; prior: number[] }
  | { op: 'accept'; reqId: string; index: number; tokens: number[] }
  | { op: 'close'; reqId: string };

const port = parentPort!;
const setup = workerData as Setup;
const xg = loadXGrammar();
let compiler: XG.GrammarCompiler | undefined;
const compiled = new Map<string, XG.CompiledGrammar>(); // by specKey, least recently used first
const matchers = new Map<string, XG.GrammarMatcher>();
const cacheSize = setup.cacheSize ?? 64;

async function compiledFor(spec: GrammarSpec): Promise<{ grammar: XG.CompiledGrammar; compileMs: number }> {
  const key = specKey(spec);
  const hit = compiled.get(key);
  if (hit) {
    compiled.delete(key);
    compiled.set(key, hit);
    return { grammar: hit, compileMs: 0 };
  }
  const t0 = performance.now();
  const grammar = await compileSpec(xg, compiler!, spec);
  const compileMs = performance.now() - t0;
  compiled.set(key, grammar);
  if (compiled.size > cacheSize) {
    const [oldest, old] = compiled.entries().next().value as [string, XG.CompiledGrammar];
    compiled.delete(oldest);
    old.dispose();
  }
  return { grammar, compileMs };
}

async function open(t: Extract<Task, { op: 'open' }>): Promise<void> {
  const { grammar, compileMs } = await compiledFor(t.spec);
  const matcher = await guarded('structured output', () => xg.GrammarMatcher.createGrammarMatcher(grammar));
  for (const [i, token] of t.prior.entries()) {
    if (!matcher.acceptToken(token)) {
      matcher.dispose();
      throw new XGrammarError(`structured output: token ${token} (output ${i}) does not follow the grammar`);
    }
  }
  const mask = await matcher.getNextTokenBitmask();
  matchers.set(t.reqId, matcher);
  port.postMessage({ id: t.id, mask, compileMs }, [mask.buffer as ArrayBuffer]);
}

async function accept(t: Extract<Task, { op: 'accept' }>): Promise<void> {
  const matcher = matchers.get(t.reqId);
  if (!matcher) return; // closed meanwhile
  for (const token of t.tokens) {
    if (!matcher.acceptToken(token)) {
      port.postMessage({ reqId: t.reqId, index: t.index, error: `structured output: token ${token} does not follow the grammar` });
      return;
    }
  }
  if (matcher.isTerminated()) {
    port.postMessage({ reqId: t.reqId, index: t.index, done: true });
    return;
  }
  const mask = await matcher.getNextTokenBitmask();
  port.postMessage({ reqId: t.reqId, index: t.index, mask }, [mask.buffer as ArrayBuffer]);
}

async function run(t: Task): Promise<void> {
  try {
    switch (t.op) {
      case 'check':
        (await parseSpec(xg, t.spec)).dispose();
        port.postMessage({ id: t.id });
        break;
      case 'open':
        await open(t);
        break;
      case 'accept':
        await accept(t);
        break;
      case 'close':
        matchers.get(t.reqId)?.dispose();
        matchers.delete(t.reqId);
        break;
    }
  } catch (err) {
    // The answer to the failed call says whether the thread is still usable.
    const tail = poisoned ? { poisoned: true } : {};
    if ('id' in t) port.postMessage({ id: t.id, error: (err as Error).message, ...tail });
    else if (t.op === 'accept') port.postMessage({ reqId: t.reqId, index: t.index, error: (err as Error).message, ...tail });
  }
  if (poisoned) port.close();
}

// Tasks run one at a time, in order (a matcher's tokens must be fed in order).
let queue: Promise<void> = Promise.resolve();
try {
  if (setup.modelDir !== undefined) {
    const vocab = await loadGrammarVocabulary(setup.modelDir, setup.vocabSize!);
    const info = await xg.TokenizerInfo.createTokenizerInfo(vocab.tokens, vocab.kind, vocab.prependSpace, setup.vocabSize, setup.stopTokenIds);
    compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
  } else {
    await xg.Grammar.builtinJSONGrammar(); // loads the WebAssembly
  }
  port.on('message', (t: Task) => {
    queue = queue.then(() => run(t));
  });
  port.postMessage({ ready: true });
} catch (err) {
  port.postMessage({ ready: false, error: (err as Error).message });
}
