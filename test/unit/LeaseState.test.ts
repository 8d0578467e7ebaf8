/**
 * Lease arithmetic: MicroTime formatting, the acquire/renew/wait decision with its two validity
 * bounds, and the specs written. Properties cover expiry boundaries and clock skew: whatever the
 * holder's clock says, a candidate never takes a Lease the holder still considers valid (within
 * the stated skew bound for the holder's-word rule, unconditionally for the observation rule), and
 * it always can once the bound has passed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Schema } from "effect"
import * as LeaseState from "../../src/domain/LeaseState.ts"

const SECOND = 1000
const DAY = 24 * 3600 * SECOND
const T0 = Date.UTC(2026, 4, 1, 12, 0, 0, 123)
const at = (ms: number) => LeaseState.formatMicroTime(ms)

const held = (holder: string, renewedAt: number, seconds = 15): LeaseState.LeaseSpec => ({
  holderIdentity: holder,
  leaseDurationSeconds: seconds,
  acquireTime: at(renewedAt - 60 * SECOND),
  renewTime: at(renewedAt),
  leaseTransitions: 3
})

// Arbitraries
const Epoch = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 253_402_300_799_999 })) // up to 9999-12-31
const Now = Schema.Int.check(Schema.isBetween({ minimum: DAY, maximum: 2 ** 42 }))
const DurationSeconds = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3600 }))
const AnySkew = Schema.Int.check(Schema.isBetween({ minimum: -DAY, maximum: DAY }))
const Delay = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 * 3600 * SECOND }))
const ShortDelay = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20 * SECOND }))
const ShortSeconds = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 30 }))
const Skew = Schema.Int.check(Schema.isBetween({ minimum: -30 * SECOND, maximum: 30 * SECOND }))

describe("LeaseState", () => {
  describe("MicroTime", () => {
    it("formats UTC with six fraction digits", () => {
      assert.strictEqual(LeaseState.formatMicroTime(0), "1970-01-01T00:00:00.000000Z")
      assert.strictEqual(LeaseState.formatMicroTime(T0), "2026-05-01T12:00:00.123000Z")
      assert.strictEqual(LeaseState.formatMicroTime(T0 + 0.9), "2026-05-01T12:00:00.123000Z")
    })

    it.each([
      { text: "2026-05-01T12:00:00.123456Z", expected: T0 },
      { text: "2026-05-01T12:00:00.123Z", expected: T0 },
      { text: "2026-05-01T12:00:00.123456789Z", expected: T0 },
      { text: "2026-05-01T12:00:00Z", expected: T0 - 123 },
      { text: "2026-05-01T14:00:00.123000+02:00", expected: T0 },
      { text: "2026-05-01T09:30:00.123000-02:30", expected: T0 },
      { text: "2026-05-01t12:00:00.123000z", expected: T0 },
      { text: "0001-01-01T00:00:00Z", expected: -62_135_596_800_000 }
    ])("parses $text", ({ expected, text }) => {
      assert.strictEqual(LeaseState.parseMicroTime(text), expected)
    })

    it.each(["", "now", "2026-05-01", "2026-05-01 12:00:00Z", "2026-05-01T12:00:00", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-05-01T24:00:00Z", "2026-05-01T12:00:60Z", "2026-05-01T12:00:00.Z"])(
      "rejects %j",
      (text) => {
        assert.isUndefined(LeaseState.parseMicroTime(text))
      }
    )

    it.prop("parse(format(t)) = t, in the apiserver's layout", { t: Epoch }, ({ t }) => {
      const text = LeaseState.formatMicroTime(t)
      assert.match(text, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/)
      assert.strictEqual(LeaseState.parseMicroTime(text), t)
    })
  })

  describe("decide", () => {
    it("a missing Lease, or one without a holder, is free", () => {
      for (const spec of [undefined, {}, { holderIdentity: "" }, { ...held("a", T0), holderIdentity: undefined }]) {
        assert.deepStrictEqual(LeaseState.decide({ spec, now: T0, identity: "me" }), { _tag: "Acquire", reason: "Free" })
      }
    })

    it("our own Lease is renewed, even long expired", () => {
      assert.deepStrictEqual(LeaseState.decide({ spec: held("me", T0 - DAY), now: T0, identity: "me" }), { _tag: "Renew" })
    })

    it("by the holder's word: valid until renewTime + duration, expired from then on", () => {
      const spec = held("other", T0)
      assert.deepStrictEqual(LeaseState.decide({ spec, now: T0 + 15 * SECOND - 1, identity: "me" }), {
        _tag: "Wait",
        holder: "other",
        until: T0 + 15 * SECOND
      })
      assert.deepStrictEqual(LeaseState.decide({ spec, now: T0 + 15 * SECOND, identity: "me" }), { _tag: "Acquire", reason: "Expired" })
    })

    it("by observation: counted from when we first saw the record, whatever renewTime says", () => {
      // The holder's clock is a day ahead; its renewTime alone would block us for a day.
      const spec = held("other", T0 + DAY)
      const observedAt = T0
      assert.deepStrictEqual(LeaseState.decide({ spec, now: T0 + 15 * SECOND - 1, identity: "me", observedAt }), {
        _tag: "Wait",
        holder: "other",
        until: T0 + 15 * SECOND
      })
      assert.strictEqual(LeaseState.decide({ spec, now: T0 + 15 * SECOND, identity: "me", observedAt })._tag, "Acquire")
      // A renewTime an hour old is not trusted without a skew bound: we just saw it.
      const stale = held("other", T0 - 3600 * SECOND)
      assert.strictEqual(LeaseState.decide({ spec: stale, now: T0, identity: "me", observedAt: T0 })._tag, "Wait")
    })

    it("with a skew bound, a long-dead holder is taken over at once", () => {
      const stale = held("other", T0 - 3600 * SECOND)
      assert.deepStrictEqual(
        LeaseState.decide({ spec: stale, now: T0, identity: "me", observedAt: T0, maxClockSkew: 5 * SECOND }),
        { _tag: "Acquire", reason: "Expired" }
      )
      const fresh = held("other", T0 - 12 * SECOND)
      assert.deepStrictEqual(
        LeaseState.decide({ spec: fresh, now: T0, identity: "me", observedAt: T0, maxClockSkew: 5 * SECOND }),
        { _tag: "Wait", holder: "other", until: T0 + 8 * SECOND }
      )
    })

    it("a zero, negative or missing duration is expired at once; a missing renewTime falls back to acquireTime", () => {
      for (const leaseDurationSeconds of [0, -5, undefined]) {
        const spec = { ...held("other", T0), leaseDurationSeconds }
        assert.strictEqual(LeaseState.decide({ spec, now: T0, identity: "me" })._tag, "Acquire")
      }
      const acquiredOnly = { holderIdentity: "other", leaseDurationSeconds: 10, acquireTime: at(T0) }
      assert.strictEqual(LeaseState.decide({ spec: acquiredOnly, now: T0 + 9 * SECOND, identity: "me" })._tag, "Wait")
      const noTimes = { holderIdentity: "other", leaseDurationSeconds: 10 }
      assert.strictEqual(LeaseState.decide({ spec: noTimes, now: T0, identity: "me" })._tag, "Acquire")
      assert.strictEqual(LeaseState.decide({ spec: noTimes, now: T0, identity: "me", observedAt: T0 })._tag, "Wait")
    })

    it.prop(
      "observation is safe under any clock skew: never Acquire while the holder's own clock says valid",
      { skew: AnySkew, seconds: DurationSeconds, seen: Delay, later: Delay, renewedAt: Now },
      ({ later, renewedAt, seconds, seen, skew }) => {
        // The holder writes its own clock reading; ours is `skew` behind it.
        const writtenOurClock = renewedAt - skew
        const observedAt = writtenOurClock + seen
        const now = observedAt + later
        const decision = LeaseState.decide({ spec: held("other", renewedAt, seconds), now, identity: "me", observedAt })
        const holderNow = now + skew
        if (decision._tag === "Acquire") assert.isAtLeast(holderNow, renewedAt + seconds * SECOND)
        else assert.strictEqual(decision._tag, "Wait")
      }
    )

    it.prop(
      "the holder's word is safe within the skew bound",
      { skew: Skew, extra: Skew, seconds: ShortSeconds, seen: ShortDelay, later: ShortDelay, renewedAt: Now },
      ({ extra, later, renewedAt, seconds, seen, skew }) => {
        const bound = Math.abs(skew) + Math.abs(extra) // any bound the actual skew respects
        const observedAt = renewedAt - skew + seen
        const now = observedAt + later
        const decision = LeaseState.decide({ spec: held("other", renewedAt, seconds), now, identity: "me", observedAt, maxClockSkew: bound })
        if (decision._tag === "Acquire") assert.isAtLeast(now + skew, renewedAt + seconds * SECOND)
      }
    )

    it.prop(
      "liveness: Acquire once a full duration has passed since the observation",
      { skew: AnySkew, seconds: DurationSeconds, seen: Delay, later: Delay, renewedAt: Now, bound: Schema.UndefinedOr(Delay) },
      ({ bound, later, renewedAt, seconds, seen, skew }) => {
        const observedAt = renewedAt - skew + seen
        const now = observedAt + seconds * SECOND + later
        const decision = LeaseState.decide({ spec: held("other", renewedAt, seconds), now, identity: "me", observedAt, maxClockSkew: bound })
        assert.deepStrictEqual(decision, { _tag: "Acquire", reason: "Expired" })
      }
    )

    it.prop(
      "the boundary is exact: Wait up to the millisecond before observation + duration, Acquire from it",
      { skew: AnySkew, seconds: DurationSeconds, renewedAt: Now, offset: Schema.Int.check(Schema.isBetween({ minimum: -3, maximum: 3 })) },
      ({ offset, renewedAt, seconds, skew }) => {
        const observedAt = renewedAt - skew
        const now = observedAt + seconds * SECOND + offset
        const decision = LeaseState.decide({ spec: held("other", renewedAt, seconds), now, identity: "me", observedAt })
        assert.strictEqual(decision._tag, offset >= 0 ? "Acquire" : "Wait")
      }
    )

    it.prop(
      "a Wait ends in the future, no later than observation + duration",
      { seconds: DurationSeconds, renewedAt: Now, seen: Delay, later: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3_600_000 })) },
      ({ later, renewedAt, seconds, seen }) => {
        const observedAt = renewedAt + seen
        const now = observedAt + later
        const decision = LeaseState.decide({ spec: held("other", renewedAt, seconds), now, identity: "me", observedAt, maxClockSkew: 0 })
        if (decision._tag === "Wait") {
          assert.isAbove(decision.until, now)
          assert.isAtMost(decision.until, observedAt + seconds * SECOND)
        } else assert.strictEqual(decision._tag, "Acquire")
      }
    )
  })

  describe("specs written", () => {
    const claim = { identity: "me", now: T0, leaseDurationSeconds: 15 }

    it("creating: holder, duration, both times now, no transitions", () => {
      assert.deepStrictEqual(LeaseState.acquire(undefined, claim), {
        holderIdentity: "me",
        leaseDurationSeconds: 15,
        acquireTime: "2026-05-01T12:00:00.123000Z",
        renewTime: "2026-05-01T12:00:00.123000Z",
        leaseTransitions: 0
      })
    })

    it("taking over from another holder, or a released Lease, counts a transition", () => {
      assert.strictEqual(LeaseState.acquire(held("other", T0 - DAY), claim).leaseTransitions, 4)
      assert.strictEqual(LeaseState.acquire(LeaseState.release(held("other", T0 - DAY)), claim).leaseTransitions, 4)
      assert.strictEqual(LeaseState.acquire(held("me", T0 - DAY), claim).leaseTransitions, 3)
    })

    it("renewing moves renewTime only", () => {
      const before = held("me", T0 - 10 * SECOND, 30)
      const after = LeaseState.renew(before, claim)
      assert.deepStrictEqual(after, { ...before, leaseDurationSeconds: 15, renewTime: at(T0) })
    })

    it("releasing clears the holder and keeps the rest, so anyone may take it at once", () => {
      const released = LeaseState.release(held("me", T0))
      assert.isUndefined(released.holderIdentity)
      assert.strictEqual(released.leaseTransitions, 3)
      assert.deepStrictEqual(LeaseState.decide({ spec: released, now: T0, identity: "other", observedAt: T0 }), { _tag: "Acquire", reason: "Free" })
    })

    it("a heartbeat writes renewTime and duration, keeping everything else", () => {
      assert.deepStrictEqual(LeaseState.heartbeat(undefined, { now: T0, leaseDurationSeconds: 60 }), { leaseDurationSeconds: 60, renewTime: at(T0) })
      const before = held("someone", T0 - DAY)
      assert.deepStrictEqual(LeaseState.heartbeat(before, { now: T0, leaseDurationSeconds: 60 }), { ...before, leaseDurationSeconds: 60, renewTime: at(T0) })
    })

    it("lease durations are whole seconds, rounded up, at least one", () => {
      assert.strictEqual(LeaseState.toLeaseDurationSeconds(Duration.seconds(60)), 60)
      assert.strictEqual(LeaseState.toLeaseDurationSeconds(Duration.millis(1500)), 2)
      assert.strictEqual(LeaseState.toLeaseDurationSeconds(Duration.millis(100)), 1)
    })

    it("the record key changes with every renewal and every holder change", () => {
      const spec = held("a", T0)
      assert.notStrictEqual(LeaseState.recordKey(spec), LeaseState.recordKey(LeaseState.renew(spec, { ...claim, identity: "a", now: T0 + 1 })))
      assert.notStrictEqual(LeaseState.recordKey(spec), LeaseState.recordKey({ ...spec, holderIdentity: "b" }))
      assert.strictEqual(LeaseState.recordKey(spec), LeaseState.recordKey({ ...spec }))
    })
  })
})
