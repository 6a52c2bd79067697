// errors.ts: native failures as instances of one JS error class with a stable `code`
// (the StatusCode names of native/common/status.h, listed in addon.d.ts).
import type { NativeErrorCode } from './addon.js';

export class NativeError extends Error {
  constructor(
    readonly code: NativeErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'NativeError';
  }
}

// Runs a native call and rethrows what it throws as a NativeError (TypeErrors and the like
// from misuse keep their class).
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toNativeError(err);
  }
}

export function toNativeError(err: unknown): Error {
  const e = err as { code?: unknown; message?: unknown };
  if (e && typeof e.code === 'string' && e.code.startsWith('ERR_') && typeof e.message === 'string') {
    return new NativeError(e.code as NativeErrorCode, e.message);
  }
  return err instanceof Error ? err : new Error(String(err));
}

export function invalidArgument(message: string): NativeError {
  return new NativeError('ERR_INVALID_ARGUMENT', message);
}
