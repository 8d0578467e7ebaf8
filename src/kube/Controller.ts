/**
 * A level-triggered, deadline-scheduled controller loop for keyed work.
 *
 * The shape is controller-runtime's: triggers (watch events, timers) only mark a key dirty; a
 * worker runs `reconcile(key)`, which reads the world, acts, and returns the next {@link Action}.
 * A key is never reconciled twice at once, a burst of triggers for one key collapses into one
 * run, and a failed reconcile is retried with capped, jittered exponential backoff
 * ({@link Backoff}) that resets on success.
 *
 * Each key has at most one timer, set when its reconcile ends: the requeue-after deadline, the
 * backoff delay after a failure, or else the fail-safe resync. A reconcile cancels the key's
 * pending timer when it starts, so a timer can never fire during a long attempt and re-queue the
 * key behind it (which made retries follow failures at once instead of after the backoff), and
 * every reconcile, whatever started it, pushes the resync back.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Duration, Effect, Exit, Fiber, Metric, Queue, Stream } from "effect"
import * as Backoff from "../domain/Backoff.ts"
import * as Metrics from "../observability/Metrics.ts"

/** What to do after a reconcile. @category models */
export type Action =
  | { readonly _tag: "RequeueAfter"; readonly after: Duration.Duration }
  | { readonly _tag: "AwaitChange" }

/** @category constructors */
export const requeueAfter = (after: Duration.Input): Action => ({
  _tag: "RequeueAfter",
  after: Duration.fromInputUnsafe(after)
})

/** @category constructors */
export const awaitChange: Action = { _tag: "AwaitChange" }

/** @category models */
export interface Options<K, E, R> {
  /** Name for metrics and logs. */
  readonly name: string
  readonly reconcile: (key: K) => Effect.Effect<Action, E, R>
  /** Keys to (re)reconcile; typically watch events mapped to keys. */
  readonly triggers: Stream.Stream<K, never, R>
  /** Keys reconciled at start. */
  readonly keys: ReadonlyArray<K>
  /** Fail-safe resync: a key is reconciled again when nothing else ran it for this long. */
  readonly resyncInterval: Duration.Input
  /** First retry delay after a failed reconcile (default 2 s). */
  readonly initialBackoff?: Duration.Input
  /** Longest retry delay (default: the resync interval). */
  readonly maxBackoff?: Duration.Input
  /** A string for the key in logs; keys must be safe to log. */
  readonly describe?: (key: K) => string
}

/**
 * Hints a reconcile error may carry (read structurally, so any error type can):
 * - `retryAfterSeconds`: the server asked us to wait this long (429/503 Retry-After); a floor.
 * - `retryBy`: epoch ms by which the key must be looked at again whatever the backoff says (a
 *   token's expiry, when the outcome changes); a ceiling, and it wins over the floor.
 *
 * @category models
 */
export interface RetryHints {
  readonly retryAfterSeconds?: number | undefined
  readonly retryBy?: number | undefined
}

/** The retry delay for a failure: the backoff, raised to Retry-After, capped by `retryBy`. @category computing */
export const retryDelay = (backoff: Duration.Duration, error: unknown, now: number): Duration.Duration => {
  const hints = (typeof error === "object" && error !== null ? error : {}) as { retryAfterSeconds?: unknown; retryBy?: unknown }
  const floor = typeof hints.retryAfterSeconds === "number" && Number.isFinite(hints.retryAfterSeconds)
    ? hints.retryAfterSeconds * 1000
    : 0
  let millis = Math.max(floor, Duration.toMillis(backoff))
  if (typeof hints.retryBy === "number" && Number.isFinite(hints.retryBy)) millis = Math.min(millis, Math.max(0, hints.retryBy - now))
  return Duration.millis(Math.ceil(millis))
}

/** The retry backoff a controller with these options uses (2 s doubling, capped at the resync by default). @category computing */
export const retryPolicy = (options: Pick<Options<unknown, unknown, unknown>, "initialBackoff" | "maxBackoff" | "resyncInterval">): Backoff.Policy =>
  Backoff.policy(options.initialBackoff ?? "2 seconds", options.maxBackoff ?? options.resyncInterval)

/** How early by the Clock a timer may fire and still be waited out (beyond it, the clock was set back: go on). */
const earlyFireSlack = 1_000

/**
 * Sleep until `deadline` (epoch ms by the Clock). Node starts a timer from the event loop's cached
 * time, so it can fire a few ms early by `Date.now()`; a reconcile woken just before a deadline
 * (a token's expiry) would find it not yet due and spend a retry, so the rest is waited out.
 */
const sleepUntil = (deadline: number): Effect.Effect<void> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) => {
    const left = deadline - now
    if (left <= 0) return Effect.void
    return Effect.andThen(Effect.sleep(Duration.millis(left)), Effect.flatMap(Clock.currentTimeMillis, (then) => {
      const rest = deadline - then
      return rest > 0 && rest <= earlyFireSlack ? sleepUntil(deadline) : Effect.void
    }))
  })

/**
 * Run the controller until interrupted. Reconcile failures never end it: they are logged,
 * counted, and retried with backoff.
 *
 * @category running
 */
export const run = Effect.fnUntraced(function*<K, E, R>(options: Options<K, E, R>) {
  const dirty = yield* Queue.unbounded<K>()
  const queued = new Set<K>()
  const timers = new Map<K, Fiber.Fiber<void>>()
  const failures = new Map<K, number>()
  const describe = options.describe ?? String
  const resync = Duration.fromInputUnsafe(options.resyncInterval)
  const policy = retryPolicy(options)
  const controller = options.name

  const enqueue = (key: K) =>
    Effect.sync(() => {
      if (queued.has(key)) return
      queued.add(key)
      Queue.offerUnsafe(dirty, key)
    })

  const cancelTimer = Effect.fnUntraced(function*(key: K) {
    const previous = timers.get(key)
    timers.delete(key)
    if (previous !== undefined) yield* Fiber.interrupt(previous)
  })

  const schedule = Effect.fnUntraced(function*(key: K, after: Duration.Duration) {
    yield* cancelTimer(key)
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(Duration.min(after, resync))
    const timer = yield* sleepUntil(deadline).pipe(Effect.andThen(enqueue(key)), Effect.forkScoped)
    timers.set(key, timer)
  })

  const work = Effect.fnUntraced(function*(key: K) {
    queued.delete(key)
    // This run decides the next wake-up; an older timer must not re-queue the key behind it.
    yield* cancelTimer(key)
    const started = yield* Clock.currentTimeMillis
    // Exit, not Result: a defect in one reconcile must not stop the controller either.
    const outcome = yield* Effect.exit(options.reconcile(key))
    const ended = yield* Clock.currentTimeMillis
    yield* Metric.update(Metric.withAttributes(Metrics.reconcileTime, { controller }), (ended - started) / 1000)
    if (Exit.isFailure(outcome)) {
      const attempt = failures.get(key) ?? 0
      failures.set(key, attempt + 1)
      const delay = retryDelay(yield* Backoff.next(policy, attempt), Cause.squash(outcome.cause), ended)
      yield* Metric.update(Metric.withAttributes(Metrics.reconcileTotal, { controller, result: "error" }), 1)
      yield* Metric.update(Metric.withAttributes(Metrics.reconcileErrorsTotal, { controller }), 1)
      yield* Effect.logWarning("reconcile failed; will retry").pipe(
        Effect.annotateLogs({ key: describe(key), retryIn: Duration.format(delay), error: Cause.pretty(outcome.cause) })
      )
      return yield* schedule(key, delay)
    }
    failures.delete(key)
    const action = outcome.value
    const result = action._tag === "RequeueAfter" ? "requeue_after" : "success"
    yield* Metric.update(Metric.withAttributes(Metrics.reconcileTotal, { controller, result }), 1)
    yield* schedule(key, action._tag === "RequeueAfter" ? action.after : resync)
  })

  yield* Stream.runForEach(options.triggers, enqueue).pipe(Effect.forkScoped)
  yield* Effect.forEach(options.keys, enqueue)
  return yield* Queue.take(dirty).pipe(Effect.flatMap(work), Effect.forever)
}, Effect.scoped)
