// prompts.ts (test helper): deterministic prompts of token ids, the same for every deployment a
// test compares.
export function promptTokens(seed: number, len: number): number[] {
  let x = seed * 7919 + 17;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 30000);
  });
}
