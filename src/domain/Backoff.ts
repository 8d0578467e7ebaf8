/**
 * Capped exponential backoff with jitter: the retry delays of the watches, the controller and
 * the supervisor. {@link delay} is pure (the caller passes the jitter draw); {@link next} draws it
 * from Effect's `Random`, so tests can pin it. One policy type and one formula for every retry
 * loop, so each is tested once.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Random from "effect/Random"

/** @category models */
export interface Policy {
  /** The first delay. */
  readonly initial: Duration.Duration
  /** No delay is longer than this (before jitter). */
  readonly max: Duration.Duration
  /** Each delay is multiplied by a factor in `[1 - jitter, 1 + jitter]`; default 0.2. */
  readonly jitter?: number
}

/** @category constructors */
export const policy = (initial: Duration.Input, max: Duration.Input, jitter = 0.2): Policy => ({
  initial: Duration.fromInputUnsafe(initial),
  max: Duration.fromInputUnsafe(max),
  jitter
})

/**
 * The delay before retry number `attempt` (0 for the first retry): `initial × 2^attempt`,
 * capped at `max`, times the jitter factor; `draw` is a uniform number in `[0, 1)`.
 *
 * @category computing
 */
export const delay = (policy: Policy, attempt: number, draw: number): Duration.Duration => {
  const jitter = policy.jitter ?? 0.2
  const base = Math.min(Duration.toMillis(policy.max), Duration.toMillis(policy.initial) * 2 ** Math.max(0, attempt))
  return Duration.millis(Math.round(base * (1 - jitter + 2 * jitter * draw)))
}

/**
 * The bounds of {@link delay} for `attempt`, for tests and documentation.
 *
 * @category computing
 */
export const bounds = (policy: Policy, attempt: number): { readonly min: number; readonly max: number } => {
  const jitter = policy.jitter ?? 0.2
  const base = Math.min(Duration.toMillis(policy.max), Duration.toMillis(policy.initial) * 2 ** Math.max(0, attempt))
  return { min: Math.round(base * (1 - jitter)), max: Math.round(base * (1 + jitter)) }
}

/**
 * {@link delay} with the jitter drawn from Effect's `Random`.
 *
 * @category computing
 */
export const next = (policy: Policy, attempt: number): Effect.Effect<Duration.Duration> =>
  Effect.map(Random.next, (draw) => delay(policy, attempt, draw))
