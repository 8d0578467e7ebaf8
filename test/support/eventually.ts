/**
 * Polling for integration tests: retry `check` every `interval` until it succeeds or `timeout`
 * passes, then fail with the last error. Bounded in time by construction.
 */
import { Duration, Effect, Schedule } from "effect"

export const eventually = <A, E, R>(
  check: Effect.Effect<A, E, R>,
  options: { readonly timeout?: Duration.Input; readonly interval?: Duration.Input } = {}
): Effect.Effect<A, E | Error, R> =>
  check.pipe(
    Effect.retry(Schedule.spaced(options.interval ?? "100 millis")),
    Effect.timeoutOrElse({
      duration: options.timeout ?? "20 seconds",
      orElse: () => Effect.fail(new Error(`condition not met within ${Duration.format(Duration.fromInputUnsafe(options.timeout ?? "20 seconds"))}`))
    })
  )

/** Fail unless `ok`; for use inside `eventually`. */
export const expect = (ok: boolean, what: string): Effect.Effect<void, Error> =>
  ok ? Effect.void : Effect.fail(new Error(`not yet: ${what}`))
