/**
 * Token-bucket arithmetic, pure: the global rate limit of the work queue (and of any client
 * that wants one). A bucket holds at most `burst` tokens and gains `perSecond` tokens a second;
 * every start spends one whole token, so in any window of `w` seconds at most
 * `burst + perSecond × w` starts happen.
 *
 * The state is never negative (no reservations on credit): a caller asks {@link waitMillis},
 * sleeps that long, and spends with {@link spend} at the time it actually starts. Late wake-ups
 * can only lower the rate, never raise it.
 *
 * @since 0.1.0
 */

/** @category models */
export interface Policy {
  /** Tokens gained per second; must be positive and finite. */
  readonly perSecond: number
  /** The most tokens the bucket holds (the largest burst); at least 1. */
  readonly burst: number
}

/** @category models */
export interface State {
  /** Tokens in the bucket at `at`, in `[0, burst]`. */
  readonly tokens: number
  /** Epoch ms of the last refill. */
  readonly at: number
}

// Refills are sums of fractions; a token a rounding error short of whole is whole.
const whole = 1 - 1e-9

/**
 * A full bucket at `now`.
 *
 * @category constructors
 */
export const full = (policy: Policy, now: number): State => ({ tokens: policy.burst, at: now })

/**
 * The bucket at `now`: what it held plus what it gained since, capped at `burst`. A clock that
 * went backwards refills nothing.
 *
 * @category computing
 */
export const refill = (policy: Policy, state: State, now: number): State => {
  const elapsed = Math.max(0, now - state.at)
  return { tokens: Math.min(policy.burst, state.tokens + (elapsed * policy.perSecond) / 1000), at: Math.max(now, state.at) }
}

/**
 * Milliseconds from `now` until the bucket holds one whole token (0 when it already does).
 * Rounded up, so after sleeping that long {@link spend} always succeeds.
 *
 * @category computing
 */
export const waitMillis = (policy: Policy, state: State, now: number): number => {
  const current = refill(policy, state, now)
  return current.tokens >= whole ? 0 : Math.ceil(((1 - current.tokens) * 1000) / policy.perSecond)
}

/**
 * Spend one token at `now`: the next state, or undefined when the bucket holds less than one.
 *
 * @category computing
 */
export const spend = (policy: Policy, state: State, now: number): State | undefined => {
  const current = refill(policy, state, now)
  return current.tokens >= whole ? { tokens: Math.max(0, current.tokens - 1), at: current.at } : undefined
}

/**
 * Whether a policy is usable: a positive, finite rate and a burst of at least one whole token.
 *
 * @category validating
 */
export const isValid = (policy: Policy): boolean =>
  Number.isFinite(policy.perSecond) && policy.perSecond > 0 && Number.isFinite(policy.burst) && policy.burst >= 1
