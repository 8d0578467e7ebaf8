/**
 * A keyed work queue for controllers that serve many keys: the many-pair credential
 * controller's scheduler. {@link Controller.run} serves a handful of keys with one worker;
 * this queue adds bounded concurrency, delayed re-adds and a global rate limit.
 *
 * Guarantees:
 * - A key is never reconciled twice at once. A key added while it is being reconciled is
 *   reconciled once more after the run ends (the run may have read the world before the change).
 * - Adds collapse: any number of adds of a key that has not started yet lead to one run.
 * - At most `concurrency` reconciles run at once, and reconcile starts obey the token bucket of
 *   `rateLimit` (at most `burst + perSecond × w` starts in any `w` seconds).
 * - A failed reconcile (error or defect) is retried after {@link Backoff.delay} for the key's
 *   attempt number, or the server's Retry-After (`retryAfterSeconds` on the error) when longer.
 *   The attempt number only resets after a quiet period: `resetAfter` without a failure, counted
 *   from when the last retry was due. A key that alternates failure and success keeps backing off.
 * - Delayed re-adds keep the earliest deadline. A run supersedes the deadline pending when it
 *   starts: the run reads the world and returns the next one ({@link Controller.Action}).
 * - Waiting keys cost no fiber or timer each: one heap of deadlines and one timer for the earliest.
 *
 * Keys are strings, safe to log (names, never credentials). Reconcile reads no event payload.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Duration, Effect, Exit, Fiber, Metric, Queue, Random } from "effect"
import * as Backoff from "../domain/Backoff.ts"
import * as TokenBucket from "../domain/TokenBucket.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { Action } from "./Controller.ts"
import * as RateLimit from "./RateLimit.ts"

/** @category models */
export interface Options<E, R> {
  /** Name for metrics and logs. */
  readonly name: string
  readonly reconcile: (key: string) => Effect.Effect<Action, E, R>
  /** Reconciles running at once; default 4. */
  readonly concurrency?: number | undefined
  /** Retry delays after failures; default 800 ms doubling to 30 s, jitter ±20 %. */
  readonly backoff?: Backoff.Policy | undefined
  /** Quiet time after which a key's attempt number starts over; default 120 s. */
  readonly resetAfter?: Duration.Input | undefined
  /** Global limit on reconcile starts; none when absent. */
  readonly rateLimit?: TokenBucket.Policy | undefined
}

/** @category models */
export interface WorkQueue {
  /** Reconcile `key` as soon as a worker (and the rate limit) allows. */
  readonly add: (key: string) => Effect.Effect<void>
  /** Reconcile `key` after `after`, unless an earlier deadline is already pending. */
  readonly addAfter: (key: string, after: Duration.Input) => Effect.Effect<void>
  /**
   * Drop `key`: its pending run, deadline and failure history. A run in progress finishes and
   * schedules nothing; a later add brings the key back.
   */
  readonly forget: (key: string) => Effect.Effect<void>
  /** Keys waiting to start. */
  readonly depth: Effect.Effect<number>
  /** Keys being reconciled now. */
  readonly active: Effect.Effect<number>
}

/** The default retry policy (client-go's reflector, as kube-rs documents it). @category constructors */
export const defaultBackoff: Backoff.Policy = Backoff.policy("800 millis", "30 seconds", 0.2)

type Phase = "idle" | "queued" | "starting" | "running"

interface Entry {
  phase: Phase
  /** Added while running: run again after. */
  dirty: boolean
  /** Forgotten while starting or running: schedule nothing after. */
  forgotten: boolean
  failures: number
  /** When the last retry was due (epoch ms); the quiet period counts from here. */
  retryDueAt: number
  /** The pending deadline (epoch ms), if any. */
  deadline: number | undefined
}

/** A deadline in the heap; stale once its entry's deadline is no longer `at`. */
interface Due {
  readonly at: number
  readonly key: string
}

/**
 * Start the workers in the current scope and return the queue. Closing the scope interrupts
 * the workers, the running reconciles and the pending deadlines.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<E, R>(options: Options<E, R>) {
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 4))
  const policy = options.backoff ?? defaultBackoff
  const resetAfter = Duration.toMillis(Duration.fromInputUnsafe(options.resetAfter ?? "120 seconds"))
  const limit = options.rateLimit
  if (limit !== undefined && !TokenBucket.isValid(limit)) {
    return yield* Effect.die(new Error(`work queue ${options.name}: rate limit needs perSecond > 0 and burst >= 1`))
  }
  const controller = options.name
  const scope = yield* Effect.scope
  const ready = yield* Queue.unbounded<string>()
  const entries = new Map<string, Entry>()
  let waiting = 0
  let running = 0

  const depthGauge = Metric.withAttributes(Metrics.workqueueDepth, { controller })
  const publishDepth = Effect.suspend(() => Metric.update(depthGauge, waiting))

  const entry = (key: string): Entry => {
    let found = entries.get(key)
    if (found === undefined) {
      found = { phase: "idle", dirty: false, forgotten: false, failures: 0, retryDueAt: 0, deadline: undefined }
      entries.set(key, found)
    }
    return found
  }

  const enqueue = (key: string, e: Entry) => {
    e.phase = "queued"
    waiting++
    Queue.offerUnsafe(ready, key)
  }

  const add = (key: string) =>
    Effect.suspend(() => {
      const e = entry(key)
      e.forgotten = false
      switch (e.phase) {
        case "idle":
          enqueue(key, e)
          return publishDepth
        case "running":
          e.dirty = true
          return Effect.void
        default:
          // Not started yet: that run will read the world after this change.
          return Effect.void
      }
    })

  // Deadlines: one min-heap and one timer fiber for all keys, armed for the earliest, so that
  // 1,000 keys waiting for their refresh hold no fiber or timer each. Superseded deadlines stay
  // in the heap and are skipped when they come up (their entry's deadline has moved).
  const heap: Array<Due> = []
  const push = (due: Due) => {
    heap.push(due)
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (heap[parent]!.at <= due.at) break
      heap[i] = heap[parent]!
      i = parent
    }
    heap[i] = due
  }
  const pop = (): Due | undefined => {
    const top = heap[0]
    const last = heap.pop()
    if (top === undefined || last === undefined || heap.length === 0) return top
    let i = 0
    while (true) {
      const left = 2 * i + 1
      if (left >= heap.length) break
      const child = left + 1 < heap.length && heap[left + 1]!.at < heap[left]!.at ? left + 1 : left
      if (heap[child]!.at >= last.at) break
      heap[i] = heap[child]!
      i = child
    }
    heap[i] = last
    return top
  }
  const live = (due: Due) => entries.get(due.key)?.deadline === due.at
  /** Drop superseded deadlines once they outnumber the live ones (a key re-armed earlier many times). */
  const compact = () => {
    if (heap.length < 64 || heap.length < 2 * entries.size) return
    const kept = heap.filter(live)
    heap.length = 0
    for (const due of kept) push(due)
  }

  let armed: { readonly at: number; readonly fiber: Fiber.Fiber<void> } | undefined
  const arm: Effect.Effect<void> = Effect.gen(function*() {
    while (heap.length > 0 && !live(heap[0]!)) pop()
    const next = heap[0]
    if (next === undefined || (armed !== undefined && armed.at <= next.at)) return
    const previous = armed
    const now = yield* Clock.currentTimeMillis
    armed = { at: next.at, fiber: yield* Effect.forkIn(Effect.andThen(Effect.sleep(Duration.millis(Math.max(0, next.at - now))), fire), scope) }
    if (previous !== undefined) yield* Fiber.interrupt(previous.fiber)
  })
  const fire: Effect.Effect<void> = Effect.gen(function*() {
    armed = undefined
    const now = yield* Clock.currentTimeMillis
    while (heap.length > 0 && heap[0]!.at <= now) {
      const due = pop()!
      if (!live(due)) continue
      entries.get(due.key)!.deadline = undefined
      yield* add(due.key)
    }
    yield* arm
  })

  const cancelTimer = (e: Entry) => Effect.sync(() => void (e.deadline = undefined))

  const addAfter = (key: string, after: Duration.Input) =>
    Effect.gen(function*() {
      const delay = Math.max(0, Duration.toMillis(Duration.fromInputUnsafe(after)))
      const now = yield* Clock.currentTimeMillis
      const e = entry(key)
      e.forgotten = false
      if (e.deadline !== undefined && e.deadline <= now + delay) return
      e.deadline = now + delay
      compact()
      push({ at: e.deadline, key })
      yield* arm
    })

  const forget = (key: string) =>
    Effect.gen(function*() {
      const e = entries.get(key)
      if (e === undefined) return
      yield* cancelTimer(e)
      e.dirty = false
      e.failures = 0
      if (e.phase === "idle" || e.phase === "queued") {
        // A queued key's slot in `ready` is skipped when taken: its entry is gone.
        if (e.phase === "queued") waiting--
        entries.delete(key)
        return yield* publishDepth
      }
      e.forgotten = true
    })

  // The bucket is shared by all workers.
  const admit: Effect.Effect<void> = limit === undefined ? Effect.void : yield* RateLimit.gate(limit)

  /** The retry delay for a failure of `e` at `now`; counts the attempt. */
  const retryDelay = Effect.fnUntraced(function*(e: Entry, now: number, error: unknown) {
    if (e.failures > 0 && now - e.retryDueAt >= resetAfter) e.failures = 0
    const attempt = e.failures++
    const draw = yield* Random.next
    const hint = (error as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds
    const floor = typeof hint === "number" && Number.isFinite(hint) && hint > 0 ? hint * 1000 : 0
    const delay = Math.max(floor, Duration.toMillis(Backoff.delay(policy, attempt, draw)))
    e.retryDueAt = now + delay
    return delay
  })

  const finish = Effect.fnUntraced(function*(key: string, e: Entry, outcome: Exit.Exit<Action, E>, seconds: number) {
    yield* Metric.update(Metric.withAttributes(Metrics.reconcileTime, { controller }), seconds)
    if (e.forgotten) {
      e.phase = "idle"
      entries.delete(key)
      return
    }
    if (Exit.isFailure(outcome)) {
      const delay = yield* retryDelay(e, yield* Clock.currentTimeMillis, Cause.squash(outcome.cause))
      yield* Metric.update(Metric.withAttributes(Metrics.reconcileTotal, { controller, result: "error" }), 1)
      yield* Metric.update(Metric.withAttributes(Metrics.reconcileErrorsTotal, { controller }), 1)
      yield* Metric.update(Metric.withAttributes(Metrics.workqueueRetriesTotal, { controller }), 1)
      yield* Effect.logWarning("reconcile failed; will retry").pipe(
        Effect.annotateLogs({ controller, key, retryIn: Duration.format(Duration.millis(delay)), error: Cause.pretty(outcome.cause) })
      )
      yield* addAfter(key, Duration.millis(delay))
    } else {
      const action = outcome.value
      const result = action._tag === "RequeueAfter" ? "requeue_after" : "success"
      yield* Metric.update(Metric.withAttributes(Metrics.reconcileTotal, { controller, result }), 1)
      if (action._tag === "RequeueAfter") yield* addAfter(key, action.after)
    }
    if (e.dirty) {
      e.dirty = false
      enqueue(key, e)
      yield* publishDepth
    } else {
      e.phase = "idle"
    }
  })

  const work = Effect.fnUntraced(function*(key: string) {
    const e = entries.get(key)
    // A stale slot: the key was forgotten, or already taken by another worker.
    if (e === undefined || e.phase !== "queued") return
    e.phase = "starting"
    waiting--
    yield* publishDepth
    yield* admit
    if (e.forgotten) {
      e.phase = "idle"
      entries.delete(key)
      return
    }
    e.phase = "running"
    running++
    yield* cancelTimer(e)
    const started = yield* Clock.currentTimeMillis
    // Exit, not Result: a defect in one reconcile must not stop the worker.
    const outcome = yield* Effect.exit(options.reconcile(key))
    running--
    yield* finish(key, e, outcome, ((yield* Clock.currentTimeMillis) - started) / 1000)
  })

  for (let i = 0; i < concurrency; i++) {
    yield* Queue.take(ready).pipe(Effect.flatMap(work), Effect.forever, Effect.forkIn(scope))
  }

  return {
    add,
    addAfter,
    forget,
    depth: Effect.sync(() => waiting),
    active: Effect.sync(() => running)
  } satisfies WorkQueue as WorkQueue
})
