// encoder-worker.ts: one thread of the EncoderPool (encoder-pool.ts): loads the tokenizer of
// workerData.modelDir, says {ready: true}, then answers
//   {id, kind: 'encode', text, addSpecialTokens}  with {id, ids} (an Int32Array, transferred)
//   {id, kind: 'json', bytes, screen?, maxTokenBytes}
//                                                 with {id, value}, {id, code, error} for bytes
//                                                 that are not UTF-8 or not JSON, or {id, tooLong}
//                                                 for a prompt that cannot fit (screenPrompt)
// or {id, error} when the task itself failed.
import { parentPort, workerData } from 'node:worker_threads';
import { BodyParseError, parseJsonBytes, screenPrompt, type PromptScreen } from './encoder-pool.js';
import { loadTokenizer } from './tokenizer.js';

type Task = { id: number; kind: 'encode'; text: string; addSpecialTokens: boolean } | { id: number; kind: 'json'; bytes: Uint8Array; screen?: PromptScreen; maxTokenBytes: number };

const port = parentPort!;
try {
  const tokenizer = await loadTokenizer((workerData as { modelDir: string }).modelDir);
  port.on('message', (m: Task) => {
    try {
      if (m.kind === 'json') {
        const value = parseJsonBytes(m.bytes);
        const tooLong = m.screen && screenPrompt(value, m.screen, m.maxTokenBytes);
        port.postMessage(tooLong ? { id: m.id, tooLong } : { id: m.id, value });
        return;
      }
      const ids = Int32Array.from(tokenizer.encode(m.text, { addSpecialTokens: m.addSpecialTokens }));
      port.postMessage({ id: m.id, ids }, [ids.buffer]);
    } catch (err) {
      if (err instanceof BodyParseError) port.postMessage({ id: m.id, code: err.code, error: err.message });
      else port.postMessage({ id: m.id, error: (err as Error).message });
    }
  });
  port.postMessage({ ready: true });
} catch (err) {
  port.postMessage({ ready: false, error: (err as Error).message });
}
