// ids.ts: OpenAI-style response ids (`chatcmpl-<32 hex>`, `cmpl-<32 hex>`); the engine requests of
// a response are `<id>-<choice index>`.
import { randomUUID } from 'node:crypto';

export function requestId(prefix: 'chatcmpl' | 'cmpl'): string {
  return `${prefix}-${randomUUID().replaceAll('-', '')}`;
}
