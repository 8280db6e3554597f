import { fileURLToPath } from 'node:url'
import { defineProject } from 'vitest/config'

// Projects do not inherit the root config: each package's vitest.config.ts merges this one.
// The @bb/source condition resolves sibling packages to their TypeScript source, so no build is
// needed before testing.
export default defineProject({
  ssr: { resolve: { conditions: ['@bb/source', 'import', 'default'] } },
  resolve: { conditions: ['@bb/source', 'import', 'default'] },
  // absolute: each project resolves a relative one from its own directory
  test: { include: ['test/**/*.test.ts'], testTimeout: 60_000, hookTimeout: 60_000, globalSetup: [fileURLToPath(new URL('vitest.state-root.ts', import.meta.url))] },
})
