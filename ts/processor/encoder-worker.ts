// encoder-worker.ts: one thread of the EncoderPool (encoder-pool.ts): loads the tokenizer of
// workerData.modelDir, says {ready: true}, then answers {id, text, addSpecialTokens} with
// {id, ids} (an Int32Array, transferred) or {id, error}.
import { parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer } from './tokenizer.js';

const port = parentPort!;
try {
  const tokenizer = await loadTokenizer((workerData as { modelDir: string }).modelDir);
  port.on('message', (m: { id: number; text: string; addSpecialTokens: boolean }) => {
    try {
      const ids = Int32Array.from(tokenizer.encode(m.text, { addSpecialTokens: m.addSpecialTokens }));
      port.postMessage({ id: m.id, ids }, [ids.buffer]);
    } catch (err) {
      port.postMessage({ id: m.id, error: (err as Error).message });
    }
  });
  port.postMessage({ ready: true });
} catch (err) {
  port.postMessage({ ready: false, error: (err as Error).message });
}
