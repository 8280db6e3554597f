import { describe, expect, it } from 'vitest'
import { parseRetentionSpec } from '../src/retention-spec.js'

const refused = (spec: string) => parseRetentionSpec(spec)._unsafeUnwrapErr()

describe('parseRetentionSpec (--keep-backups, --keep-snapshots)', () => {
  it('reads a count, btrbk\'s matrix with an optional min=, and rotate-backups\' frequencies', () => {
    expect(parseRetentionSpec('10')._unsafeUnwrap()).toEqual({ keepLast: 10 })
    expect(parseRetentionSpec(' min=2d 24h 7d *y ')._unsafeUnwrap()).toEqual({ preserveMin: '2d', preserve: '24h 7d *y' })
    expect(parseRetentionSpec('daily=7 weekly=4 monthly=always relaxed prefer-recent')._unsafeUnwrap()).toEqual({ daily: 7, weekly: 4, monthly: 'always', strict: false, prefer: 'newest' })
    expect(parseRetentionSpec('monthly=12 quarterly=8 yearly=always')._unsafeUnwrap()).toEqual({ monthly: 12, quarterly: 8, yearly: 'always' })
    expect(parseRetentionSpec('min=1q 12m 8q *y')._unsafeUnwrap()).toEqual({ preserveMin: '1q', preserve: '12m 8q *y' })
  })
  it('refuses an empty policy, a frequency given twice and a word it does not know, naming them', () => {
    expect(refused('')).toMatchObject({ code: 'INVALID_POLICY', message: 'the retention policy is empty' })
    expect(refused('   ')).toMatchObject({ code: 'INVALID_POLICY', message: 'the retention policy is empty' })
    expect(refused('daily=2 daily=3')).toMatchObject({ code: 'INVALID_POLICY', message: 'retention "daily=2 daily=3": daily is given twice' })
    expect(refused('daily=7 often')).toMatchObject({ code: 'INVALID_POLICY', message: 'retention "daily=7 often": "often" is not <frequency>=<N|always>, relaxed or prefer-recent' })
    expect(refused('daily=7 fortnightly=2')).toMatchObject({ code: 'INVALID_POLICY', message: 'retention "daily=7 fortnightly=2": "fortnightly=2" is not <frequency>=<N|always>, relaxed or prefer-recent' })
    expect(refused('fortnightly=2')).toMatchObject({ code: 'INVALID_POLICY', message: 'retention "fortnightly=2": "fortnightly=2" is not <frequency>=<N|always>, relaxed or prefer-recent' })
    expect(refused('2h 3')).toMatchObject({ code: 'INVALID_POLICY', message: expect.stringContaining('preserve token "3"') as unknown })
    expect(refused('0')).toMatchObject({ code: 'INVALID_POLICY' })
  })
})
