/**
 * When to replace the managed ServiceAccount token. A pure decision over the token's
 * lifetime, the settings, the current time and a jitter draw, all passed in, so it is
 * deterministic and property-tested (the kubelet token manager's `requiresRefresh`, with
 * the clock and the randomness moved out).
 *
 * The algorithm:
 * - `ttl = exp − iat`, where `exp` is the expiry the server returned (issuers may shorten
 *   the requested validity) and `iat` the time the token was issued.
 * - The refresh point is `min(exp − refreshBefore, iat + 0.8·ttl)`: the configured margin,
 *   but never later than 80% of the lifetime (the kubelet rule).
 * - It is floored at `iat + 0.5·ttl`. Without the floor a server that returns a TTL shorter
 *   than `refreshBefore` (EKS shortening tokens, managed-serviceaccount issue 119) gives a
 *   refresh point at or before issue time, so every new token is "due" at once: a refresh
 *   loop hammering TokenRequest.
 * - The scheduled time is the refresh point minus `jitterFraction · min(10s, 0.1·ttl)`, so
 *   replicas and restarts spread out, and jitter never moves a refresh after the point.
 * - Refresh at once if the clock reads before `iat` (it leapt back; the lifetime can no
 *   longer be trusted), if the token expired, or if the scheduled time has come.
 * - Otherwise wait until the scheduled time.
 *
 * @since 0.1.0
 */
import { Data, Duration, Result, Schema } from "effect"
import * as GoDuration from "./GoDuration.ts"

/**
 * A token's validity window in epoch milliseconds.
 *
 * @since 0.1.0
 * @category models
 */
export interface TokenLifetime {
  readonly issuedAt: number
  readonly expiresAt: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface RefreshSettings {
  readonly refreshBefore: Duration.Duration
}

/**
 * Settings that passed `validateSettings`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ValidatedSettings extends RefreshSettings {
  readonly tokenExpiration: Duration.Duration
}

/**
 * Upper bound of the jitter subtracted from the refresh point (the kubelet's `maxJitter`).
 *
 * @since 0.1.0
 * @category constants
 */
export const maxJitter: Duration.Duration = Duration.seconds(10)

/**
 * TokenRequest refuses `expirationSeconds` below this ("may not specify a duration less than 10 minutes").
 *
 * @since 0.1.0
 * @category constants
 */
export const minTokenExpiration: Duration.Duration = Duration.minutes(10)

/**
 * TokenRequest refuses `expirationSeconds` above 2^32.
 *
 * @since 0.1.0
 * @category constants
 */
export const maxTokenExpiration: Duration.Duration = Duration.seconds(2 ** 32)

const ttlOf = (lifetime: TokenLifetime): number => lifetime.expiresAt - lifetime.issuedAt

/**
 * The unjittered moment the token should be replaced (epoch ms).
 *
 * @since 0.1.0
 * @category decisions
 */
export const refreshPoint = (lifetime: TokenLifetime, settings: RefreshSettings): number => {
  const ttl = ttlOf(lifetime)
  const byMargin = lifetime.expiresAt - Duration.toMillis(settings.refreshBefore)
  const byFraction = lifetime.issuedAt + 0.8 * ttl
  const floor = lifetime.issuedAt + 0.5 * ttl
  return Math.max(Math.min(byMargin, byFraction), floor)
}

/**
 * The refresh point moved earlier by up to `min(maxJitter, 0.1·ttl)`, in whole milliseconds
 * (rounded down): a fractional deadline would be slept as 0 ms and re-checked in a hot loop.
 * `jitterFraction` comes from the caller's `Random` and belongs to `[0, 1)`; values outside
 * are clamped so a bad draw can never schedule past the refresh point.
 *
 * @since 0.1.0
 * @category decisions
 */
export const scheduledRefreshAt = (
  lifetime: TokenLifetime,
  settings: RefreshSettings,
  jitterFraction: number
): number => {
  const fraction = Number.isFinite(jitterFraction) ? Math.min(Math.max(jitterFraction, 0), 1) : 0
  const jitterSpan = Math.max(0, Math.min(Duration.toMillis(maxJitter), 0.1 * ttlOf(lifetime)))
  return Math.floor(refreshPoint(lifetime, settings) - fraction * jitterSpan)
}

/**
 * Whether a token must no longer be served. Distinct from "due for refresh": between the two
 * a stale but valid token keeps being served while refreshes fail.
 *
 * @since 0.1.0
 * @category decisions
 */
export const isExpired = (now: number, lifetime: TokenLifetime): boolean => now >= lifetime.expiresAt

/**
 * @since 0.1.0
 * @category models
 */
export type RefreshReason = "ClockBeforeIssue" | "Expired" | "DueForRotation"

/**
 * @since 0.1.0
 * @category models
 */
export type RefreshDecision = Data.TaggedEnum<{
  /** Request a new token now. */
  Refresh: { readonly reason: RefreshReason }
  /** Keep the current token; look again at `until` (epoch ms, always later than `now`). */
  Wait: { readonly until: number }
}>

/**
 * Constructors and matchers for `RefreshDecision`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const RefreshDecision = Data.taggedEnum<RefreshDecision>()

/**
 * Refresh or wait. Reasons are checked in this order: `ClockBeforeIssue`, `Expired`,
 * `DueForRotation`.
 *
 * @since 0.1.0
 * @category decisions
 */
export const decide = (input: {
  readonly now: number
  readonly lifetime: TokenLifetime
  readonly settings: RefreshSettings
  readonly jitterFraction: number
}): RefreshDecision => {
  const { jitterFraction, lifetime, now, settings } = input
  if (now < lifetime.issuedAt) return RefreshDecision.Refresh({ reason: "ClockBeforeIssue" })
  if (isExpired(now, lifetime)) return RefreshDecision.Refresh({ reason: "Expired" })
  const until = scheduledRefreshAt(lifetime, settings, jitterFraction)
  if (now >= until) return RefreshDecision.Refresh({ reason: "DueForRotation" })
  return RefreshDecision.Wait({ until })
}

/**
 * How many tokens may be minted in a sliding window. Every TokenRequest makes a new valid
 * credential, so whatever drives refreshes (a deletion storm, a writer fighting over the
 * Secret, a source that keeps changing) must not turn into a stream of them.
 *
 * @since 0.1.0
 * @category models
 */
export interface MintLimit {
  readonly burst: number
  readonly window: Duration.Duration
}

/**
 * Five tokens per five minutes: a rotation plus a few source changes pass, a storm does not.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultMintLimit: MintLimit = { burst: 5, window: Duration.minutes(5) }

/**
 * The earliest time (epoch ms) another token may be minted, given when the previous ones were
 * (`history`, epoch ms, any order); `now` or earlier means at once. Mints recorded in the
 * future (the clock leapt back) are ignored, so a clock jump never blocks a needed refresh.
 *
 * @since 0.1.0
 * @category decisions
 */
export const nextMintAllowedAt = (history: ReadonlyArray<number>, now: number, limit: MintLimit): number => {
  const window = Duration.toMillis(limit.window)
  const recent = history.filter((at) => at <= now && at > now - window).sort((a, b) => a - b)
  const burst = Math.max(1, Math.floor(limit.burst))
  if (recent.length < burst) return now
  return recent[recent.length - burst]! + window
}

/**
 * The lifetime of a token just returned by TokenRequest. The server's expiry wins (issuers
 * may return a different validity than requested); when it is absent the requested
 * `tokenExpiration` is assumed. `issuedAt` is the caller's clock at issue time.
 *
 * @since 0.1.0
 * @category constructors
 */
export const lifetimeFromTokenRequest = (input: {
  readonly now: number
  readonly expirationTimestamp: number | undefined
  readonly tokenExpiration: Duration.Duration
}): TokenLifetime => ({
  issuedAt: input.now,
  expiresAt: input.expirationTimestamp !== undefined && input.expirationTimestamp > 0
    ? input.expirationTimestamp
    : input.now + Duration.toMillis(input.tokenExpiration)
})

/**
 * `TokenRequest.spec.expirationSeconds` for a validated `--token-expiration` (whole seconds,
 * truncated as Go's `int64(d.Seconds())`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const expirationSeconds = (tokenExpiration: Duration.Duration): number =>
  Math.floor(Duration.toSeconds(tokenExpiration))

/**
 * Flag values that cannot work together. Terminal: the process must be restarted with other flags.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidRefreshSettings extends Schema.TaggedError<InvalidRefreshSettings>()("InvalidRefreshSettings", {
  flag: Schema.Literals(["--token-expiration", "--refresh-before"]),
  message: Schema.String
}) {}

/**
 * Checks `--token-expiration` and `--refresh-before` against TokenRequest's limits and
 * each other. `refreshBefore < tokenExpiration` matters: otherwise every fresh token is
 * already due (defect 4 of the Go prototype).
 *
 * @since 0.1.0
 * @category validation
 */
export const validateSettings = (input: {
  readonly tokenExpiration: Duration.Duration
  readonly refreshBefore: Duration.Duration
}): Result.Result<ValidatedSettings, InvalidRefreshSettings> => {
  const { refreshBefore, tokenExpiration } = input
  const show = GoDuration.formatShort
  const fail = (flag: InvalidRefreshSettings["flag"], message: string) =>
    Result.fail(new InvalidRefreshSettings({ flag, message }))
  if (Duration.isLessThan(tokenExpiration, minTokenExpiration)) {
    return fail(
      "--token-expiration",
      `--token-expiration (${show(tokenExpiration)}) must be at least ${
        show(minTokenExpiration)
      }, the TokenRequest minimum`
    )
  }
  if (Duration.isGreaterThan(tokenExpiration, maxTokenExpiration)) {
    return fail(
      "--token-expiration",
      `--token-expiration (${show(tokenExpiration)}) must be at most ${
        show(maxTokenExpiration)
      } (2^32 seconds), the TokenRequest maximum`
    )
  }
  if (Duration.isNegative(refreshBefore)) {
    return fail("--refresh-before", `--refresh-before (${show(refreshBefore)}) must not be negative`)
  }
  if (!Duration.isLessThan(refreshBefore, tokenExpiration)) {
    return fail(
      "--refresh-before",
      `--refresh-before (${show(refreshBefore)}) must be shorter than --token-expiration (${show(tokenExpiration)})`
    )
  }
  return Result.succeed({ tokenExpiration, refreshBefore })
}
