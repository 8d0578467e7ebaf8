/**
 * Polling for integration tests: retry a check every `interval` until it succeeds or `timeout`
 * passes. Bounded in time by construction; on timeout the last reason is reported.
 */
import { Data, Duration, Effect, Schedule } from "effect"

/** A condition that does not hold yet. */
export class NotYet extends Data.TaggedError("NotYet")<{ readonly what: string }> {
  override get message() {
    return `not yet: ${this.what}`
  }
}

export interface Options {
  readonly timeout?: Duration.Input
  readonly interval?: Duration.Input
}

export const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, options: Options = {}): Effect.Effect<A, E | NotYet, R> => {
  const timeout = Duration.fromInputUnsafe(options.timeout ?? "20 seconds")
  let last = "no attempt finished"
  return check.pipe(
    Effect.tapError((error) => Effect.sync(() => void (last = error instanceof NotYet ? error.what : String(error)))),
    Effect.retry(Schedule.spaced(options.interval ?? "100 millis")),
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () => Effect.fail(new NotYet({ what: `${last} (gave up after ${Duration.format(timeout)})` }))
    })
  )
}

/** Poll `effect` until its value satisfies `predicate`; the value. */
export const until = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  predicate: (a: A) => boolean,
  what: string,
  options: Options = {}
): Effect.Effect<A, E | NotYet, R> =>
  eventually(Effect.filterOrFail(effect, predicate, () => new NotYet({ what })), options)

/** Fail unless `ok`; for use inside `eventually`. */
export const expect = (ok: boolean, what: string): Effect.Effect<void, NotYet> =>
  ok ? Effect.void : Effect.fail(new NotYet({ what }))

/** Poll a synchronous condition (a socket's state, a counter) until it holds. */
export const holds = (check: () => boolean, what: string, options: Options = {}): Effect.Effect<void, NotYet> =>
  eventually(Effect.suspend(() => expect(check(), what)), options)
