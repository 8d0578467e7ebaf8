import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Result, Schema } from "effect"
import * as RefreshPolicy from "../../src/domain/RefreshPolicy.ts"

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const YEAR = 365 * 24 * HOUR
const T0 = Date.UTC(2026, 0, 2, 3, 4, 5)

const lifetime = (issuedAt: number, ttl: number): RefreshPolicy.TokenLifetime => ({ issuedAt, expiresAt: issuedAt + ttl })
const settings = (refreshBefore: number): RefreshPolicy.RefreshSettings => ({ refreshBefore: Duration.millis(refreshBefore) })

// Arbitraries
const IssuedAt = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 ** 42 }))
const Ttl = Schema.Int.check(Schema.isBetween({ minimum: 10 * MINUTE, maximum: YEAR }))
const UnitInterval = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThan(1))

describe("RefreshPolicy", () => {
  describe("decisions", () => {
    it.each([
      // 24h token, default 1h margin: 80% of the TTL comes first.
      { name: "24h/1h refreshes at 80%", ttl: 24 * HOUR, refreshBefore: HOUR, point: 19.2 * HOUR },
      { name: "24h/12h refreshes 12h before expiry", ttl: 24 * HOUR, refreshBefore: 12 * HOUR, point: 12 * HOUR },
      { name: "60m/0 refreshes at 80%", ttl: 60 * MINUTE, refreshBefore: 0, point: 48 * MINUTE },
      // Server shortened a 24h request to 1h while the margin stays 1h: floor at half the TTL.
      { name: "1h returned with a 1h margin refreshes at half", ttl: HOUR, refreshBefore: HOUR, point: 30 * MINUTE },
      { name: "1h returned with a 2h margin refreshes at half", ttl: HOUR, refreshBefore: 2 * HOUR, point: 30 * MINUTE }
    ])("$name", ({ point, refreshBefore, ttl }) => {
      assert.strictEqual(RefreshPolicy.refreshPoint(lifetime(T0, ttl), settings(refreshBefore)), T0 + point)
    })

    it("schedules in whole milliseconds, so a deadline is never slept as 0 ms and re-checked in a loop", () => {
      const l = { issuedAt: 283_656_794, expiresAt: 283_656_794 + 86_400_000 }
      const at = RefreshPolicy.scheduledRefreshAt(l, settings(HOUR), 0.387_883_78)
      assert.isTrue(Number.isInteger(at))
      assert.deepStrictEqual(RefreshPolicy.decide({ now: at, lifetime: l, settings: settings(HOUR), jitterFraction: 0.387_883_78 }), RefreshPolicy.RefreshDecision.Refresh({ reason: "DueForRotation" }))
    })

    it("jitter moves the schedule earlier by at most 10s", () => {
      const l = lifetime(T0, 24 * HOUR)
      const s = settings(HOUR)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, s, 0), T0 + 19.2 * HOUR)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, s, 0.5), T0 + 19.2 * HOUR - 5_000)
    })

    it("jitter is at most a tenth of a short TTL", () => {
      const l = lifetime(T0, 60_000)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, settings(0), 0.5), T0 + 48_000 - 3_000)
    })

    it("out-of-range jitter draws are clamped", () => {
      const l = lifetime(T0, 24 * HOUR)
      const s = settings(HOUR)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, s, 7), T0 + 19.2 * HOUR - 10_000)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, s, -1), T0 + 19.2 * HOUR)
      assert.strictEqual(RefreshPolicy.scheduledRefreshAt(l, s, Number.NaN), T0 + 19.2 * HOUR)
    })

    const l60 = lifetime(T0, 60 * MINUTE)
    it.each([
      { name: "10 of 60 minutes waits", now: T0 + 10 * MINUTE, expected: { _tag: "Wait", until: T0 + 48 * MINUTE } },
      { name: "50 of 60 minutes refreshes", now: T0 + 50 * MINUTE, expected: { _tag: "Refresh", reason: "DueForRotation" } },
      { name: "exactly at the point refreshes", now: T0 + 48 * MINUTE, expected: { _tag: "Refresh", reason: "DueForRotation" } },
      { name: "at expiry is expired", now: T0 + 60 * MINUTE, expected: { _tag: "Refresh", reason: "Expired" } },
      { name: "past expiry is expired", now: T0 + 2 * HOUR, expected: { _tag: "Refresh", reason: "Expired" } },
      { name: "a clock before issue refreshes", now: T0 - 1, expected: { _tag: "Refresh", reason: "ClockBeforeIssue" } },
      { name: "at issue waits", now: T0, expected: { _tag: "Wait", until: T0 + 48 * MINUTE } }
    ])("$name", ({ expected, now }) => {
      const decision = RefreshPolicy.decide({ now, lifetime: l60, settings: settings(0), jitterFraction: 0 })
      assert.deepStrictEqual({ ...decision }, expected)
    })

    it("isExpired is true from the expiry on", () => {
      assert.isFalse(RefreshPolicy.isExpired(T0 + 60 * MINUTE - 1, l60))
      assert.isTrue(RefreshPolicy.isExpired(T0 + 60 * MINUTE, l60))
    })
  })

  describe("properties", () => {
    it.prop(
      "the refresh point lies strictly between issue and expiry",
      { iat: IssuedAt, ttl: Ttl, margin: UnitInterval },
      ({ iat, margin, ttl }) => {
        const point = RefreshPolicy.refreshPoint(lifetime(iat, ttl), settings(Math.floor(margin * ttl)))
        assert.isTrue(point > iat && point < iat + ttl, `point ${point} outside (${iat}, ${iat + ttl})`)
      }
    )

    it.prop(
      "the scheduled time is within the jitter band below the refresh point",
      { iat: IssuedAt, ttl: Ttl, margin: UnitInterval, jitter: UnitInterval },
      ({ iat, jitter, margin, ttl }) => {
        const l = lifetime(iat, ttl)
        const s = settings(Math.floor(margin * ttl))
        const point = RefreshPolicy.refreshPoint(l, s)
        const scheduled = RefreshPolicy.scheduledRefreshAt(l, s, jitter)
        assert.isTrue(scheduled <= point)
        // Rounding down to whole milliseconds may add at most 1 ms.
        assert.isTrue(scheduled >= point - Math.min(10_000, ttl / 10) - 1)
      }
    )

    it.prop(
      "a TTL shortened below refreshBefore still schedules after 40% of it (no refresh loop)",
      { iat: IssuedAt, ttl: Ttl, excess: UnitInterval, jitter: UnitInterval },
      ({ excess, iat, jitter, ttl }) => {
        const l = lifetime(iat, ttl)
        const s = settings(ttl + Math.floor(excess * 10 * ttl))
        assert.isTrue(RefreshPolicy.scheduledRefreshAt(l, s, jitter) >= iat + 0.4 * ttl)
        const fresh = RefreshPolicy.decide({ now: iat, lifetime: l, settings: s, jitterFraction: jitter })
        assert.strictEqual(fresh._tag, "Wait")
      }
    )

    it.effect.prop(
      "any time before issue means refresh",
      { iat: IssuedAt, ttl: Ttl, before: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: YEAR })), jitter: UnitInterval },
      ({ before, iat, jitter, ttl }) =>
        Effect.sync(() => {
          const decision = RefreshPolicy.decide({ now: iat - before, lifetime: lifetime(iat, ttl), settings: settings(0), jitterFraction: jitter })
          assert.deepStrictEqual({ ...decision }, { _tag: "Refresh", reason: "ClockBeforeIssue" })
        })
    )

    it.prop(
      "a Wait always ends in the future and never after expiry",
      { iat: IssuedAt, ttl: Ttl, margin: UnitInterval, jitter: UnitInterval, at: UnitInterval },
      ({ at, iat, jitter, margin, ttl }) => {
        const l = lifetime(iat, ttl)
        const now = iat + Math.floor(at * ttl * 1.2)
        const decision = RefreshPolicy.decide({ now, lifetime: l, settings: settings(Math.floor(margin * ttl)), jitterFraction: jitter })
        if (decision._tag === "Wait") {
          assert.isTrue(decision.until > now)
          assert.isTrue(decision.until < l.expiresAt)
        } else {
          assert.isTrue(now >= RefreshPolicy.scheduledRefreshAt(l, settings(Math.floor(margin * ttl)), jitter))
        }
      }
    )
  })

  describe("settings", () => {
    it("accepts the defaults", () => {
      const result = RefreshPolicy.validateSettings({ tokenExpiration: Duration.hours(24), refreshBefore: Duration.hours(1) })
      assert.isTrue(Result.isSuccess(result))
    })

    it.each([
      { tokenExpiration: Duration.minutes(10), refreshBefore: Duration.zero },
      { tokenExpiration: Duration.seconds(2 ** 32), refreshBefore: Duration.hours(1) },
      { tokenExpiration: Duration.hours(1), refreshBefore: Duration.minutes(59) }
    ])("accepts the limits (%#)", (input) => {
      assert.isTrue(Result.isSuccess(RefreshPolicy.validateSettings(input)))
    })

    it.each([
      {
        input: { tokenExpiration: Duration.hours(1), refreshBefore: Duration.hours(2) },
        flag: "--refresh-before",
        message: "--refresh-before (2h) must be shorter than --token-expiration (1h)"
      },
      {
        input: { tokenExpiration: Duration.hours(1), refreshBefore: Duration.hours(1) },
        flag: "--refresh-before",
        message: "--refresh-before (1h) must be shorter than --token-expiration (1h)"
      },
      {
        input: { tokenExpiration: Duration.hours(1), refreshBefore: Duration.seconds(-1) },
        flag: "--refresh-before",
        message: "--refresh-before (-1s) must not be negative"
      },
      {
        input: { tokenExpiration: Duration.minutes(5), refreshBefore: Duration.zero },
        flag: "--token-expiration",
        message: "--token-expiration (5m) must be at least 10m, the TokenRequest minimum"
      },
      {
        input: { tokenExpiration: Duration.seconds(2 ** 32 + 1), refreshBefore: Duration.zero },
        flag: "--token-expiration",
        message: "--token-expiration (1193046h28m17s) must be at most 1193046h28m16s (2^32 seconds), the TokenRequest maximum"
      }
    ] as const)("refuses: $message", ({ flag, input, message }) => {
      const result = RefreshPolicy.validateSettings(input)
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) {
        assert.strictEqual(result.failure.flag, flag)
        assert.strictEqual(result.failure.message, message)
      }
    })

    it("expirationSeconds truncates to whole seconds", () => {
      assert.strictEqual(RefreshPolicy.expirationSeconds(Duration.millis(86_400_999)), 86_400)
    })

    it("lifetimeFromTokenRequest prefers the server's expiry", () => {
      assert.deepStrictEqual(
        RefreshPolicy.lifetimeFromTokenRequest({ now: T0, expirationTimestamp: T0 + HOUR, tokenExpiration: Duration.hours(24) }),
        { issuedAt: T0, expiresAt: T0 + HOUR }
      )
      assert.deepStrictEqual(
        RefreshPolicy.lifetimeFromTokenRequest({ now: T0, expirationTimestamp: undefined, tokenExpiration: Duration.hours(24) }),
        { issuedAt: T0, expiresAt: T0 + 24 * HOUR }
      )
    })
  })

  describe("mint limit", () => {
    const Gaps = Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3 * MINUTE }))).check(Schema.isMaxLength(60))
    it.effect.prop(
      "mints taken whenever allowed never exceed the burst in any window, and a refusal names the first free moment",
      { gaps: Gaps, burst: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 6 })) },
      ({ burst, gaps }) =>
        Effect.sync(() => {
          const limit: RefreshPolicy.MintLimit = { burst, window: Duration.minutes(5) }
          const minted: Array<number> = []
          let now = T0
          for (const gap of gaps) {
            now += gap
            const allowedAt = RefreshPolicy.nextMintAllowedAt(minted, now, limit)
            if (allowedAt <= now) {
              minted.push(now)
            } else {
              // Refused only when the window is full, and allowed again exactly when it frees up.
              assert.strictEqual(minted.filter((at) => at > now - 5 * MINUTE).length, burst)
              assert.isAtMost(RefreshPolicy.nextMintAllowedAt(minted, allowedAt, limit), allowedAt)
              assert.isAbove(RefreshPolicy.nextMintAllowedAt(minted, allowedAt - 1, limit), allowedAt - 1)
            }
          }
          for (let i = burst; i < minted.length; i++) assert.isAtLeast(minted[i]! - minted[i - burst]!, 5 * MINUTE)
        })
    )

    it("mints recorded in the future (the clock leapt back) never block a refresh", () => {
      const limit = RefreshPolicy.defaultMintLimit
      const future = [T0 + HOUR, T0 + HOUR + 1, T0 + HOUR + 2, T0 + HOUR + 3, T0 + HOUR + 4]
      assert.strictEqual(RefreshPolicy.nextMintAllowedAt(future, T0, limit), T0)
    })
  })
})
