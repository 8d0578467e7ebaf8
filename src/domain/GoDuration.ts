/**
 * Go's `time.Duration` text form, so tether's flags read like the Go provisioner's
 * (`--token-expiration=24h`, `--refresh-before=1h30m`, `--sync-interval=90s`).
 *
 * `parse` follows `time.ParseDuration` (units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`;
 * decimal fractions; a bare `0`), except that negative durations are refused because no
 * flag of ours has a meaning for them. `format` reproduces `Duration.String()`.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Result, Schema, SchemaIssue, SchemaTransformation } from "effect"

/**
 * A duration text that is not a valid, non-negative Go duration. The message quotes the
 * input (durations are flag values, never secrets) and says what to write instead.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidDuration extends Schema.TaggedError<InvalidDuration>()("InvalidDuration", {
  input: Schema.String,
  problem: Schema.String
}) {
  override get message(): string {
    return `invalid duration ${JSON.stringify(this.input)}: ${this.problem}`
  }
}

const unitHint = "(use ns, us, ms, s, m, h)"

const NANOS_PER_UNIT: Readonly<Record<string, bigint>> = {
  ns: 1n,
  us: 1_000n,
  "µs": 1_000n, // U+00B5 MICRO SIGN
  "μs": 1_000n, // U+03BC GREEK SMALL LETTER MU
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n
}

/** Go keeps durations in an int64 of nanoseconds; anything larger does not exist there. */
const MAX_NANOS = (1n << 63n) - 1n

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= "0" && c <= "9"

/**
 * Parses Go duration syntax into a `Duration`.
 *
 * **Gotchas**
 *
 * - A bare number is refused (`"5"`: missing unit) except `"0"`, as in Go.
 * - `"-0"` is zero and accepted; any other negative value is refused.
 * - `d` (days) is not a Go unit; `24h` is.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parse = (text: string): Result.Result<Duration.Duration, InvalidDuration> => {
  const fail = (problem: string) => Result.fail(new InvalidDuration({ input: text, problem }))
  let s = text
  let negative = false
  if (s.startsWith("-") || s.startsWith("+")) {
    negative = s.startsWith("-")
    s = s.slice(1)
  }
  if (s === "0") return Result.succeed(Duration.zero)
  if (s === "") return fail(text === "" ? "empty duration" : "expected a number after the sign")

  let total = 0n
  while (s !== "") {
    // The number: digits, optionally "." and more digits, at least one digit overall.
    let i = 0
    while (isDigit(s[i])) i++
    const whole = s.slice(0, i)
    let fraction = ""
    if (s[i] === ".") {
      const start = ++i
      while (isDigit(s[i])) i++
      fraction = s.slice(start, i)
    }
    if (whole === "" && fraction === "") {
      return fail(`expected a number at ${JSON.stringify(s)}`)
    }
    s = s.slice(i)

    // The unit: everything up to the next number. Go also stops at a digit or "."; stopping at
    // a sign too only changes the message ("1h-5m": a sign inside, not an unknown unit "h-").
    let j = 0
    while (j < s.length && s[j] !== "." && s[j] !== "-" && s[j] !== "+" && !isDigit(s[j])) j++
    const unit = s.slice(0, j)
    s = s.slice(j)
    if (unit === "") return fail(`missing unit ${unitHint}`)
    const scale = NANOS_PER_UNIT[unit]
    if (scale === undefined) return fail(`unknown unit ${JSON.stringify(unit)} ${unitHint}`)

    total += BigInt(whole === "" ? "0" : whole) * scale
    if (fraction !== "") {
      // Exact integer arithmetic; sub-nanosecond remainders are dropped, as Go does.
      total += (BigInt(fraction) * scale) / 10n ** BigInt(fraction.length)
    }
    if (total > MAX_NANOS) return fail("out of range (at most 2562047h47m16.854775807s)")
  }
  if (negative && total > 0n) return fail("negative durations are not allowed")
  return Result.succeed(Duration.nanos(total))
}

const trimFraction = (digits: string): string => {
  const trimmed = digits.replace(/0+$/, "")
  return trimmed === "" ? "" : `.${trimmed}`
}

/** `value / 10^places` written the way Go's `fmtFrac` + `fmtInt` do. */
const decimal = (value: bigint, places: number): string => {
  const divisor = 10n ** BigInt(places)
  const frac = (value % divisor).toString().padStart(places, "0")
  return `${value / divisor}${trimFraction(frac)}`
}

const formatNanos = (nanos: bigint, compact: boolean): string => {
  if (nanos < 0n) return `-${formatNanos(-nanos, compact)}`
  if (nanos === 0n) return "0s"
  if (nanos < 1_000n) return `${nanos}ns`
  if (nanos < 1_000_000n) return `${decimal(nanos, 3)}µs`
  if (nanos < 1_000_000_000n) return `${decimal(nanos, 6)}ms`
  const hours = nanos / 3_600_000_000_000n
  const minutes = (nanos / 60_000_000_000n) % 60n
  const secondsNanos = nanos % 60_000_000_000n
  const seconds = `${decimal(secondsNanos, 9)}s`
  if (compact) {
    const parts = [hours > 0n ? `${hours}h` : "", minutes > 0n ? `${minutes}m` : "", secondsNanos > 0n ? seconds : ""]
    return parts.join("")
  }
  if (hours > 0n) return `${hours}h${minutes}m${seconds}`
  if (minutes > 0n) return `${minutes}m${seconds}`
  return seconds
}

const nanosOf = (duration: Duration.Duration): bigint | undefined =>
  Duration.isFinite(duration) ? Duration.toNanosUnsafe(duration) : undefined

/**
 * Go's `Duration.String()`: `24h0m0s`, `1h30m0s`, `10s`, `1.5s`, `500ms`, `10µs`, `0s`.
 *
 * **Gotchas**
 *
 * - Microseconds print as `µs` (U+00B5), as in Go; `parse` reads it back.
 * - Infinite durations have no Go form and print as `Infinity` / `-Infinity`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (duration: Duration.Duration): string => {
  const nanos = nanosOf(duration)
  return nanos === undefined ? (Duration.isNegative(duration) ? "-Infinity" : "Infinity") : formatNanos(nanos, false)
}

/**
 * Like `format` but leaves out zero hour, minute and second parts (`2h`, `1h30m`, `1h5s`),
 * which is how people write flags; used in validation messages. Still valid Go syntax.
 *
 * @since 0.1.0
 * @category formatting
 */
export const formatShort = (duration: Duration.Duration): string => {
  const nanos = nanosOf(duration)
  return nanos === undefined ? format(duration) : formatNanos(nanos, true)
}

/**
 * Schema decoding a Go duration string into a `Duration` (and encoding with `format`),
 * for `Flag.withSchema` of `effect/cli` and for configuration.
 *
 * @since 0.1.0
 * @category schemas
 */
export const GoDurationFromString = Schema.String.pipe(
  Schema.decodeTo(
    Schema.Duration,
    SchemaTransformation.transformEffect({
      decode: (text: string, options) =>
        Result.match(parse(text), {
          onSuccess: Effect.succeed,
          onFailure: (error) =>
            Effect.fail(new SchemaIssue.InvalidValue({ message: error.message }, text, options))
        }),
      encode: (duration: Duration.Duration, options) =>
        Duration.isFinite(duration)
          ? Effect.succeed(format(duration))
          : Effect.fail(
            new SchemaIssue.InvalidValue({ message: "an infinite duration has no Go form" }, duration, options)
          )
    })
  )
)
