/**
 * A level-triggered, deadline-scheduled controller loop for keyed work.
 *
 * The shape is controller-runtime's: triggers (watch events, timers) only mark a key dirty; a
 * worker runs `reconcile(key)`, which reads the world, acts, and returns the next {@link Action}.
 * A key is never reconciled twice at once, a burst of triggers for one key collapses into one
 * run, and a failed reconcile is retried with capped, jittered exponential backoff that resets on
 * success. A long fail-safe resync re-queues every known key even when nothing else fires.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Duration, Effect, Exit, Fiber, Metric, Queue, Random, Stream } from "effect"
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
  /** Keys reconciled at start and on every resync. */
  readonly keys: ReadonlyArray<K>
  /** Fail-safe resync period. */
  readonly resyncInterval: Duration.Input
  /** First retry delay after a failed reconcile (default 2 s). */
  readonly initialBackoff?: Duration.Input
  /** Longest retry delay (default: the resync interval). */
  readonly maxBackoff?: Duration.Input
  /** A string for the key in logs; keys must be safe to log. */
  readonly describe?: (key: K) => string
}

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
  const initial = Duration.toMillis(Duration.fromInputUnsafe(options.initialBackoff ?? "2 seconds"))
  const max = Duration.toMillis(Duration.fromInputUnsafe(options.maxBackoff ?? options.resyncInterval))
  const controller = options.name

  const enqueue = (key: K) =>
    Effect.sync(() => {
      if (queued.has(key)) return
      queued.add(key)
      Queue.offerUnsafe(dirty, key)
    })

  const schedule = Effect.fnUntraced(function*(key: K, after: Duration.Duration) {
    const previous = timers.get(key)
    if (previous !== undefined) yield* Fiber.interrupt(previous)
    const timer = yield* Effect.sleep(after).pipe(Effect.andThen(enqueue(key)), Effect.forkScoped)
    timers.set(key, timer)
  })

  /** Exponential backoff per key; a server's Retry-After (`retryAfterSeconds` on the error) is a floor. */
  const backoff = Effect.fnUntraced(function*(key: K, error: unknown) {
    const attempt = failures.get(key) ?? 0
    failures.set(key, attempt + 1)
    const jitter = yield* Random.nextBetween(0.8, 1.2)
    const hint = (error as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds
    const floor = typeof hint === "number" && Number.isFinite(hint) ? hint * 1000 : 0
    return Duration.millis(Math.round(Math.max(floor, Math.min(max, initial * 2 ** attempt) * jitter)))
  })

  const work = Effect.fnUntraced(function*(key: K) {
    queued.delete(key)
    const started = yield* Clock.currentTimeMillis
    // Exit, not Result: a defect in one reconcile must not stop the controller either.
    const outcome = yield* Effect.exit(options.reconcile(key))
    const elapsed = ((yield* Clock.currentTimeMillis) - started) / 1000
    yield* Metric.update(Metric.withAttributes(Metrics.reconcileTime, { controller }), elapsed)
    if (Exit.isFailure(outcome)) {
      const delay = yield* backoff(key, Cause.squash(outcome.cause))
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
    if (action._tag === "RequeueAfter") yield* schedule(key, action.after)
  })

  yield* Stream.runForEach(options.triggers, enqueue).pipe(Effect.forkScoped)
  yield* Effect.forEach(options.keys, enqueue).pipe(
    Effect.andThen(Effect.sleep(Duration.fromInputUnsafe(options.resyncInterval))),
    Effect.forever,
    Effect.forkScoped
  )
  return yield* Queue.take(dirty).pipe(Effect.flatMap(work), Effect.forever)
}, Effect.scoped)
