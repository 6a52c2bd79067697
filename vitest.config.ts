import { defineConfig } from 'vitest/config';

// Tests start real processes and run a real engine on 2 cores: generous timeouts, and files
// run one at a time so timing-sensitive ones (none assert on timing) do not starve each other.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    pool: 'forks',
    globalSetup: ['test/helpers/coverage-setup.ts'],
  },
});
