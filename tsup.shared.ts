import { defineConfig, type Options } from 'tsup'
import ts from 'typescript'

// TS 6 rejects the baseUrl that tsup's dts step injects (tsup#1388); TS 5.x rejects the '6.0'
// value (TS5103), so the workaround is applied only under TS >= 6.
const ts6 = Number(ts.versionMajorMinor.split('.')[0]) >= 6 ? { ignoreDeprecations: '6.0' } : {}

export const definePackage = (entry: Record<string, string>, extra: Options = {}) =>
  defineConfig({
    entry,
    format: ['esm'],
    target: 'node20',
    platform: 'node',
    clean: true,
    sourcemap: true,
    // composite tsconfigs make tsup's dts step fail with TS6307 (tsup#571)
    dts: { compilerOptions: { composite: false, ...ts6 } },
    ...extra,
  })
