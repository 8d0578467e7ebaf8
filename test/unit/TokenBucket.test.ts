/**
 * The token bucket's arithmetic: a full bucket allows `burst` at once, the wait it names is
 * enough and not more, and greedy spending never exceeds `burst + perSecond × w` in any window.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import * as TokenBucket from "../../src/domain/TokenBucket.ts"

const PerSecond = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 200 }))
const Burst = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 20 }))
const Gaps = Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2000 }))).check(Schema.isMaxLength(60))

describe("TokenBucket", () => {
  it("a full bucket allows burst starts at once, then waits 1/perSecond for each", () => {
    const policy = { perSecond: 4, burst: 3 }
    let state = TokenBucket.full(policy, 0)
    for (let i = 0; i < 3; i++) state = TokenBucket.spend(policy, state, 0)!
    assert.strictEqual(TokenBucket.spend(policy, state, 0), undefined)
    assert.strictEqual(TokenBucket.waitMillis(policy, state, 0), 250)
    assert.strictEqual(TokenBucket.spend(policy, state, 249), undefined)
    assert.isDefined(TokenBucket.spend(policy, state, 250))
  })

  it("never holds more than burst, and a clock that goes back refills nothing", () => {
    const policy = { perSecond: 10, burst: 2 }
    const state = TokenBucket.refill(policy, { tokens: 0, at: 1000 }, 1_000_000)
    assert.strictEqual(state.tokens, 2)
    assert.deepStrictEqual(TokenBucket.refill(policy, { tokens: 0.5, at: 1000 }, 0), { tokens: 0.5, at: 1000 })
  })

  it("rejects a rate that is not positive or a burst below one token", () => {
    assert.isFalse(TokenBucket.isValid({ perSecond: 0, burst: 1 }))
    assert.isFalse(TokenBucket.isValid({ perSecond: Number.POSITIVE_INFINITY, burst: 1 }))
    assert.isFalse(TokenBucket.isValid({ perSecond: 1, burst: 0.5 }))
    assert.isTrue(TokenBucket.isValid({ perSecond: 0.5, burst: 1 }))
  })

  describe("properties", () => {
    it.prop(
      "after sleeping waitMillis a spend succeeds, and two milliseconds less is not enough",
      { perSecond: PerSecond, burst: Burst, tokens: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 0.999 })) },
      ({ burst, perSecond, tokens }) => {
        const policy = { perSecond, burst }
        const state = { tokens, at: 10_000 }
        const wait = TokenBucket.waitMillis(policy, state, 10_000)
        assert.isAbove(wait, 0)
        assert.isDefined(TokenBucket.spend(policy, state, 10_000 + wait))
        if (wait > 1) assert.isUndefined(TokenBucket.spend(policy, state, 10_000 + wait - 2))
      }
    )

    it.prop(
      "greedy callers that wait as told never start more than burst + perSecond × w in any window w",
      { perSecond: PerSecond, burst: Burst, gaps: Gaps },
      ({ burst, gaps, perSecond }) => {
        const policy = { perSecond, burst }
        let now = 0
        let state = TokenBucket.full(policy, now)
        const starts: Array<number> = []
        for (const gap of gaps) {
          now += gap
          now += TokenBucket.waitMillis(policy, state, now)
          state = TokenBucket.spend(policy, state, now)!
          assert.isDefined(state)
          starts.push(now)
        }
        for (let i = 0; i < starts.length; i++) {
          for (let j = i; j < starts.length; j++) {
            assert.isAtMost(j - i + 1, burst + (perSecond * (starts[j]! - starts[i]!)) / 1000 + 1e-6)
          }
        }
      }
    )
  })
})
