// bad-inputs.ts (test helper): the matrix of bad requests every OpenAI entry point must answer
// with a 4xx and the OpenAI error body {"error": {"message", "type", "param", "code"}}: used
// against the app in-process (frontend-errors.test.ts) and against the real launcher.

export interface BadInputCase {
  name: string;
  url?: string; // default: chat completions
  body?: unknown; // JSON-encoded unless raw is set
  raw?: string | Buffer;
  contentType?: string;
  status: number;
  param?: string | null;
  code?: string;
  message?: RegExp;
}

export function badInputCases(model: string, maxModelLen: number): BadInputCase[] {
  const MODEL = model;
  const MAX_MODEL_LEN = maxModelLen;
  const user = [{ role: 'user', content: 'Hi' }];
  const chatBody = (extra: Record<string, unknown>) => ({ model: MODEL, messages: user, max_tokens: 4, ...extra });
  const completionBody = (extra: Record<string, unknown>) => ({ model: MODEL, prompt: 'Hi', max_tokens: 4, ...extra });
  const longPrompt = Array.from({ length: MAX_MODEL_LEN + 200 }, () => 1000);

  return [
    { name: 'malformed JSON', raw: '{"model": "tiny", "messages": [', status: 400, code: 'invalid_json' },
    { name: 'empty body', raw: '', status: 400, code: 'empty_body' },
    { name: 'wrong content type', raw: 'hello', contentType: 'text/plain', status: 415, code: 'unsupported_media_type' },
    { name: 'invalid UTF-8', raw: Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), status: 400, code: 'invalid_utf8' },
    { name: 'body is an array', body: [1, 2], status: 400 },
    { name: 'body is null', raw: 'null', status: 400 },
    { name: 'messages missing', body: { model: MODEL }, status: 400, param: 'messages' },
    { name: 'messages empty', body: chatBody({ messages: [] }), status: 400, param: 'messages' },
    { name: 'messages not an array', body: chatBody({ messages: 'hi' }), status: 400, param: 'messages' },
    { name: 'unknown role', body: chatBody({ messages: [{ role: 'wizard', content: 'x' }] }), status: 400, param: 'messages[0].role' },
    { name: 'message without role', body: chatBody({ messages: [{ content: 'x' }] }), status: 400, param: 'messages[0].role' },
    { name: 'content of the wrong type', body: chatBody({ messages: [{ role: 'user', content: 42 }] }), status: 400, param: 'messages[0].content' },
    { name: 'image content part', body: chatBody({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }), status: 400 },
    { name: 'temperature too high', body: chatBody({ temperature: 3 }), status: 400, param: 'temperature' },
    { name: 'temperature a string', body: chatBody({ temperature: 'hot' }), status: 400, param: 'temperature' },
    { name: 'top_p 0', body: chatBody({ top_p: 0 }), status: 400, param: 'top_p' },
    { name: 'top_p above 1', body: chatBody({ top_p: 1.5 }), status: 400, param: 'top_p' },
    { name: 'top_k -2', body: chatBody({ top_k: -2 }), status: 400, param: 'top_k' },
    { name: 'min_p above 1', body: chatBody({ min_p: 2 }), status: 400, param: 'min_p' },
    { name: 'presence_penalty 3', body: chatBody({ presence_penalty: 3 }), status: 400, param: 'presence_penalty' },
    { name: 'frequency_penalty -3', body: chatBody({ frequency_penalty: -3 }), status: 400, param: 'frequency_penalty' },
    { name: 'repetition_penalty 0', body: chatBody({ repetition_penalty: 0 }), status: 400, param: 'repetition_penalty' },
    { name: 'repetition_penalty 2.5', body: chatBody({ repetition_penalty: 2.5 }), status: 400, param: 'repetition_penalty' },
    { name: 'n 0', body: chatBody({ n: 0 }), status: 400, param: 'n' },
    { name: 'n 129', body: chatBody({ n: 129 }), status: 400, param: 'n' },
    { name: 'n 1.5', body: chatBody({ n: 1.5 }), status: 400, param: 'n' },
    { name: '129 prompts', url: '/v1/completions', body: completionBody({ prompt: Array.from({ length: 129 }, () => 'Hi') }), status: 400, param: 'prompt', message: /129 completions .* at most 128 per request/ },
    { name: '20 prompts times n 7', url: '/v1/completions', body: completionBody({ prompt: Array.from({ length: 20 }, () => 'Hi'), n: 7 }), status: 400, param: 'prompt' },
    { name: 'n 100 times 2 prompts', url: '/v1/completions', body: completionBody({ prompt: ['Hi', 'Ho'], n: 100 }), status: 400, param: 'n' },
    { name: 'stop token id outside the vocabulary', url: '/v1/completions', body: completionBody({ stop_token_ids: [1, 999999999] }), status: 400, param: 'stop_token_ids[1]' },
    { name: 'max_tokens 0', body: chatBody({ max_tokens: 0 }), status: 400, param: 'max_tokens' },
    { name: 'max_tokens a string', body: chatBody({ max_tokens: '5' }), status: 400, param: 'max_tokens' },
    {
      name: 'huge max_tokens',
      body: chatBody({ max_tokens: 1_000_000_000 }),
      status: 400,
      code: 'context_length_exceeded',
      message: new RegExp(`maximum context length is ${MAX_MODEL_LEN} tokens.*1000000000 in the completion`),
    },
    {
      name: 'over-long prompt',
      url: '/v1/completions',
      body: completionBody({ prompt: longPrompt, max_tokens: undefined }),
      status: 400,
      code: 'context_length_exceeded',
      message: new RegExp(`maximum context length is ${MAX_MODEL_LEN} tokens.*${longPrompt.length} input tokens`),
    },
    { name: 'unknown model', body: chatBody({ model: 'gpt-17' }), status: 404, code: 'model_not_found', param: 'model' },
    { name: 'too many stop strings', body: chatBody({ stop: Array.from({ length: 33 }, (_, i) => `s${i}`) }), status: 400, param: 'stop' },
    { name: 'empty stop string', body: chatBody({ stop: '' }), status: 400, param: 'stop' },
    { name: 'empty stop string in a list', body: chatBody({ stop: ['ok', ''] }), status: 400, param: 'stop' },
    { name: 'top_logprobs 21', body: chatBody({ logprobs: true, top_logprobs: 21 }), status: 400, param: 'top_logprobs' },
    { name: 'top_logprobs without logprobs', body: chatBody({ top_logprobs: 2 }), status: 400, param: 'top_logprobs' },
    { name: 'chat logprobs not a boolean', body: chatBody({ logprobs: 3 }), status: 400, param: 'logprobs' },
    { name: 'seed not an integer', body: chatBody({ seed: 1.5 }), status: 400, param: 'seed' },
    { name: 'stream not a boolean', body: chatBody({ stream: 'yes' }), status: 400, param: 'stream' },
    { name: 'min_tokens above max_tokens', body: chatBody({ min_tokens: 10 }), status: 400, param: 'min_tokens' },
    // Structured outputs and tools the server cannot honour: refused by name, never ignored.
    { name: 'response_format structural_tag', body: chatBody({ response_format: { type: 'structural_tag' } }), status: 400, param: 'response_format.type', code: 'unsupported_parameter' },
    { name: 'tools with tool_choice auto and no parser', body: chatBody({ tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] }), status: 400, param: 'tool_choice', message: /--enable-auto-tool-choice/ },
    { name: 'tool_choice required without tools', body: chatBody({ tool_choice: 'required' }), status: 400, param: 'tool_choice' },
    { name: 'guided_choice empty', body: chatBody({ guided_choice: [] }), status: 400, param: 'guided_choice' },
    { name: 'guided_json keyword not enforced', url: '/v1/completions', body: completionBody({ guided_json: { type: 'integer', multipleOf: 3 } }), status: 400, param: 'guided_json', message: /multipleOf/ },
    // Fields that would change the answer and are not implemented: refused by name, never ignored.
    { name: 'logit_bias', body: chatBody({ logit_bias: { '42': 100 } }), status: 400, param: 'logit_bias', code: 'unsupported_parameter' },
    { name: 'best_of 2', url: '/v1/completions', body: completionBody({ best_of: 2 }), status: 400, param: 'best_of', code: 'unsupported_parameter' },
    { name: 'suffix', url: '/v1/completions', body: completionBody({ suffix: 'end' }), status: 400, param: 'suffix', code: 'unsupported_parameter' },
    { name: 'include_reasoning false', body: chatBody({ include_reasoning: false }), status: 400, param: 'include_reasoning', code: 'unsupported_parameter' },
    { name: 'completions logprobs 21', url: '/v1/completions', body: completionBody({ logprobs: 21 }), status: 400, param: 'logprobs' },
    { name: 'completions prompt missing', url: '/v1/completions', body: { model: MODEL }, status: 400, param: 'prompt' },
    { name: 'completions empty prompt list', url: '/v1/completions', body: completionBody({ prompt: [] }), status: 400, param: 'prompt' },
    { name: 'completions prompt an object', url: '/v1/completions', body: completionBody({ prompt: { text: 'x' } }), status: 400, param: 'prompt' },
    { name: 'token id outside the vocabulary', url: '/v1/completions', body: completionBody({ prompt: [1, 999_999_999] }), status: 400, param: 'prompt' },
    { name: 'echo with logprobs', url: '/v1/completions', body: completionBody({ echo: true, logprobs: 1 }), status: 400, param: 'echo' },
    { name: 'unknown route', url: '/v1/embeddings', body: { input: 'x' }, status: 404, code: 'not_found' },
  ];
}

// Requests that are not HTTP fastify can route (found by bench/fuzz-http.ts): Node's parser
// refuses them, or they lack what HTTP/1.1 requires; written as raw bytes on a socket, they must
// still get the OpenAI error body (Node's and fastify's defaults answer in shapes of their own).
export interface BadHttpCase {
  name: string;
  raw: string; // the bytes sent, latin1 ("HOST" is replaced by the server's host:port)
  status: number;
  code: string;
}

export function badHttpCases(): BadHttpCase[] {
  const body = '{"model":"x","prompt":"Hi","max_tokens":1}';
  const post = (headers: string, b = body) =>
    `POST /v1/completions HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n${headers}\r\n${b}`;
  return [
    { name: 'unknown method', raw: `FOO /v1/completions HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n`, status: 400, code: 'invalid_http' },
    { name: 'NUL in a header value', raw: post(`Content-Type: application/json\0\r\nContent-Length: ${body.length}\r\n`), status: 400, code: 'invalid_http' },
    { name: 'content-length and chunked', raw: post(`Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n`, '0\r\n\r\n'), status: 400, code: 'invalid_http' },
    { name: 'content-length not a number', raw: post('Content-Type: application/json\r\nContent-Length: abc\r\n'), status: 400, code: 'invalid_http' },
    { name: 'bad chunk size', raw: post('Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n', 'zz\r\n'), status: 400, code: 'invalid_http' },
    { name: 'headers over the size limit', raw: post(`X-Big: ${'y'.repeat(20_000)}\r\nContent-Length: 0\r\n`, ''), status: 431, code: 'headers_too_large' },
    { name: 'no Host header', raw: `POST /v1/completions HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`, status: 400, code: 'invalid_http' },
    { name: 'URL that does not decode', raw: `GET /v1/%zz HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n`, status: 400, code: 'invalid_http' },
  ];
}

// Sends raw bytes to host:port and resolves with the status and body of the reply, read until
// the server closes the connection.
export async function sendRawHttp(host: string, port: number, raw: string): Promise<{ status: number; body: string }> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host, port }, () => socket.write(Buffer.from(raw.replaceAll('HOST', `${host}:${port}`), 'latin1')));
    socket.setTimeout(10_000, () => socket.destroy(new Error('no reply in 10 s')));
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', (err) => (chunks.length ? undefined : reject(err)));
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const end = text.indexOf('\r\n\r\n');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (!m || end < 0) return reject(new Error(`no HTTP reply: ${JSON.stringify(text.slice(0, 200))}`));
      resolve({ status: Number(m[1]), body: text.slice(end + 4) });
    });
  });
}
