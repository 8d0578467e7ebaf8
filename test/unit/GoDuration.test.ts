import { assert, describe, it } from "@effect/vitest"
import { Duration, Result, Schema } from "effect"
import * as GoDuration from "../../src/domain/GoDuration.ts"

const nanosOf = (text: string): bigint => Duration.toNanosUnsafe(Result.getOrThrow(GoDuration.parse(text)))

const failureOf = (text: string): string => {
  const result = GoDuration.parse(text)
  assert.isTrue(Result.isFailure(result), `expected ${JSON.stringify(text)} to be refused`)
  return Result.isFailure(result) ? result.failure.message : ""
}

describe("GoDuration", () => {
  describe("parsing", () => {
    it.each([
      ["24h", 24n * 3_600_000_000_000n],
      ["1h30m", 5_400_000_000_000n],
      ["90s", 90_000_000_000n],
      ["1.5h", 5_400_000_000_000n],
      ["500ms", 500_000_000n],
      ["10us", 10_000n],
      ["10µs", 10_000n],
      ["10μs", 10_000n],
      ["7ns", 7n],
      ["0", 0n],
      ["-0", 0n],
      ["+5s", 5_000_000_000n],
      [".5s", 500_000_000n],
      ["5.s", 5_000_000_000n],
      ["1h0m0s", 3_600_000_000_000n],
      ["1.000000001s", 1_000_000_001n],
      ["0.0000000009s", 0n],
      ["2562047h47m16.854775807s", (1n << 63n) - 1n]
    ] as const)("accepts %s", (text, nanos) => {
      assert.strictEqual(nanosOf(text), nanos)
    })

    it.each([
      ["", "invalid duration \"\": empty duration"],
      ["1d", "invalid duration \"1d\": unknown unit \"d\" (use ns, us, ms, s, m, h)"],
      ["h", "invalid duration \"h\": expected a number at \"h\""],
      ["-", "invalid duration \"-\": expected a number after the sign"],
      ["1h-5m", "invalid duration \"1h-5m\": expected a number at \"-5m\""],
      ["5", "invalid duration \"5\": missing unit (use ns, us, ms, s, m, h)"],
      ["1.5", "invalid duration \"1.5\": missing unit (use ns, us, ms, s, m, h)"],
      [".s", "invalid duration \".s\": expected a number at \".s\""],
      ["-1h", "invalid duration \"-1h\": negative durations are not allowed"],
      [" 1h", "invalid duration \" 1h\": expected a number at \" 1h\""],
      ["2562047h47m16.854775808s", "invalid duration \"2562047h47m16.854775808s\": out of range (at most 2562047h47m16.854775807s)"]
    ] as const)("refuses %j", (text, message) => {
      assert.strictEqual(failureOf(text), message)
    })
  })

  describe("formatting", () => {
    it.each([
      [Duration.hours(24), "24h0m0s", "24h"],
      [Duration.minutes(90), "1h30m0s", "1h30m"],
      [Duration.seconds(10), "10s", "10s"],
      [Duration.millis(500), "500ms", "500ms"],
      [Duration.millis(1500), "1.5s", "1.5s"],
      [Duration.seconds(65), "1m5s", "1m5s"],
      [Duration.seconds(3605), "1h0m5s", "1h5s"],
      [Duration.micros(10n), "10µs", "10µs"],
      [Duration.nanos(1500n), "1.5µs", "1.5µs"],
      [Duration.nanos(7n), "7ns", "7ns"],
      [Duration.zero, "0s", "0s"],
      [Duration.seconds(-90), "-1m30s", "-1m30s"],
      [Duration.infinity, "Infinity", "Infinity"]
    ] as const)("formats %s as Go does", (duration, go, short) => {
      assert.strictEqual(GoDuration.format(duration), go)
      assert.strictEqual(GoDuration.formatShort(duration), short)
    })

    it.prop(
      "format then parse gives the same duration",
      [Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }))],
      ([nanos]) => {
        const duration = Duration.nanos(BigInt(nanos))
        assert.strictEqual(nanosOf(GoDuration.format(duration)), BigInt(nanos))
        assert.strictEqual(nanosOf(GoDuration.formatShort(duration)), BigInt(nanos))
      }
    )

    it.prop(
      "format then parse round-trips whole seconds up to the TokenRequest maximum",
      [Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 ** 32 }))],
      ([seconds]) => {
        const duration = Duration.seconds(seconds)
        assert.isTrue(Duration.equals(Result.getOrThrow(GoDuration.parse(GoDuration.format(duration))), duration))
      }
    )
  })

  describe("schemas", () => {
    it("GoDurationFromString decodes Go syntax", () => {
      const decoded = Schema.decodeSync(GoDuration.GoDurationFromString)("1h30m")
      assert.isTrue(Duration.equals(decoded, Duration.minutes(90)))
    })

    it("GoDurationFromString explains a refusal", () => {
      const result = Schema.decodeResult(GoDuration.GoDurationFromString)("1d")
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) {
        assert.include(result.failure.message, "invalid duration \"1d\": unknown unit \"d\" (use ns, us, ms, s, m, h)")
      }
    })

    it("GoDurationFromString encodes with Go's String form", () => {
      assert.strictEqual(Schema.encodeSync(GoDuration.GoDurationFromString)(Duration.hours(24)), "24h0m0s")
    })
  })
})
