/**
 * The keyed work queue on virtual time. Properties over random scripts of adds, delayed adds,
 * reconcile durations and failures: one reconcile of a key at a time, at most `concurrency`
 * at once, reconcile starts within the token bucket, every add followed by a run, adds that
 * arrive before a run starts collapsing into it, retry delays within the backoff bounds and
 * a reset only after a quiet period.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Data, Duration, Effect, Schema } from "effect"
import { TestClock } from "effect/testing"
import * as Backoff from "../../src/domain/Backoff.ts"
import * as Controller from "../../src/kube/Controller.ts"
import * as WorkQueue from "../../src/kube/WorkQueue.ts"

class Boom extends Data.TaggedError("Boom")<{ readonly retryAfterSeconds?: number }> {}

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** One step of a script: at `at` ms, add `key` now or after `delay`. */
const Step = Schema.Struct({ at: int(0, 3000), key: int(0, 4), delay: Schema.optional(int(0, 2000)) })
const Script = Schema.Array(Step).check(Schema.isMinLength(1), Schema.isMaxLength(30))

interface Run {
  readonly key: string
  readonly start: number
  end: number
}

/** A log of adds and starts in the order they happened, for causality checks. */
type Event = { readonly _tag: "add" | "start"; readonly key: string; readonly at: number }

const world = (durations: ReadonlyArray<number>, fails: ReadonlyArray<boolean>) => {
  const runs: Array<Run> = []
  const log: Array<Event> = []
  let n = 0
  const reconcile = (key: string) =>
    Effect.gen(function*() {
      const i = n++
      const run: Run = { key, start: yield* Clock.currentTimeMillis, end: Number.POSITIVE_INFINITY }
      runs.push(run)
      log.push({ _tag: "start", key, at: run.start })
      yield* Effect.sleep(Duration.millis(durations[i % durations.length] ?? 0))
      run.end = yield* Clock.currentTimeMillis
      if (fails.length > 0 && fails[i % fails.length]) return yield* new Boom({})
      return Controller.awaitChange
    })
  return { runs, log, reconcile }
}

/** Let forked fibers run up to their next suspension before time moves again. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 10; i++) yield* Effect.yieldNow
})

/**
 * Play `script` against `queue` on virtual time, then let `tail` ms pass. The steps run on the
 * test's own fiber between clock adjustments, so each add is in before time moves on.
 */
const play = (
  queue: WorkQueue.WorkQueue,
  script: ReadonlyArray<typeof Step.Type>,
  log: Array<Event>,
  tail: number
) =>
  Effect.gen(function*() {
    const sorted = [...script].sort((a, b) => a.at - b.at)
    for (const step of sorted) {
      const now = yield* Clock.currentTimeMillis
      if (step.at > now) yield* TestClock.adjust(Duration.millis(step.at - now))
      const key = `k${step.key}`
      if (step.delay === undefined) {
        log.push({ _tag: "add", key, at: step.at })
        yield* queue.add(key)
      } else {
        yield* queue.addAfter(key, Duration.millis(step.delay))
      }
      yield* settle
    }
    yield* TestClock.adjust(Duration.millis(tail))
  })

const overlaps = (runs: ReadonlyArray<Run>, at: number) => runs.filter((r) => r.start <= at && at < r.end).length

describe("WorkQueue", () => {
  describe("properties", () => {
    it.effect.prop(
      "one run per key at a time, at most `concurrency` at once, starts within the rate limit, every add followed by a run",
      {
        script: Script,
        concurrency: int(1, 4),
        perSecond: int(1, 40),
        burst: int(1, 5),
        durations: Schema.Array(int(0, 400)).check(Schema.isMinLength(1), Schema.isMaxLength(8)),
        fails: Schema.Array(Schema.Boolean).check(Schema.isMaxLength(8))
      },
      ({ burst, concurrency, durations, fails, perSecond, script }) =>
        Effect.gen(function*() {
          const { log, reconcile, runs } = world(durations, fails)
          const queue = yield* WorkQueue.make({
            name: "prop",
            reconcile,
            concurrency,
            rateLimit: { perSecond, burst },
            backoff: Backoff.policy("100 millis", "1 second")
          })
          yield* play(queue, script, log, 60_000)

          const byKey = new Map<string, Array<Run>>()
          for (const run of runs) byKey.set(run.key, [...(byKey.get(run.key) ?? []), run])
          for (const [key, list] of byKey) {
            for (let i = 1; i < list.length; i++) {
              assert.isAtLeast(list[i]!.start, list[i - 1]!.end, `${key}: run ${i} started before run ${i - 1} ended`)
            }
          }
          for (const run of runs) assert.isAtMost(overlaps(runs, run.start), concurrency, `over ${concurrency} at ${run.start}`)

          const starts = runs.map((r) => r.start)
          for (let i = 0; i < starts.length; i++) {
            for (let j = i; j < starts.length; j++) {
              const allowed = burst + (perSecond * (starts[j]! - starts[i]!)) / 1000 + 1e-6
              assert.isAtMost(j - i + 1, allowed, `starts ${i}..${j} in ${starts[j]! - starts[i]!} ms`)
            }
          }

          // Liveness: after every add of a key, a run of that key starts (60 s of virtual time is plenty).
          log.forEach((event, i) => {
            if (event._tag !== "add") return
            const followed = log.slice(i + 1).some((later) => later._tag === "start" && later.key === event.key)
            assert.isTrue(followed, `add of ${event.key} at ${event.at} never followed by a run`)
          })
        }),
      { arbitrary: { runs: 60 } }
    )

    it.effect.prop(
      "adds before a run starts collapse into it: between two runs of a key there is always a fresh add",
      {
        script: Script.check(Schema.isMaxLength(40)),
        concurrency: int(1, 3),
        durations: Schema.Array(int(0, 300)).check(Schema.isMinLength(1), Schema.isMaxLength(8))
      },
      ({ concurrency, durations, script }) =>
        Effect.gen(function*() {
          const { log, reconcile } = world(durations, [])
          const queue = yield* WorkQueue.make({ name: "dedup", reconcile, concurrency })
          // Immediate adds only: a run then has no cause but an add.
          yield* play(queue, script.map(({ at, key }) => ({ at, key })), log, 10_000)
          const lastStart = new Map<string, number>()
          log.forEach((event, i) => {
            if (event._tag !== "start") return
            const since = lastStart.get(event.key) ?? -1
            const caused = log.slice(since + 1, i).some((e) => e._tag === "add" && e.key === event.key)
            assert.isTrue(caused, `run of ${event.key} at ${event.at} with no add since the previous run`)
            lastStart.set(event.key, i)
          })
          const adds = log.filter((e) => e._tag === "add").length
          const starts = log.filter((e) => e._tag === "start").length
          assert.isAtMost(starts, adds)
        }),
      { arbitrary: { runs: 60 } }
    )

    it.effect.prop(
      "delayed adds of many keys (one timer for all): each key runs at its earliest pending deadline, never before, never late",
      {
        steps: Schema.Array(Schema.Struct({ at: int(0, 3000), key: int(0, 40), delay: int(0, 2000) })).check(
          Schema.isMinLength(1),
          Schema.isMaxLength(60)
        )
      },
      ({ steps }) =>
        Effect.gen(function*() {
          const { log, reconcile } = world([0], [])
          // A worker for every key and no rate limit: a due key starts at once.
          const queue = yield* WorkQueue.make({ name: "deadlines", reconcile, concurrency: 41 })
          yield* play(queue, steps, log, 10_000)
          // The model: per key, the earliest pending deadline; a deadline at or before a step fires first.
          const sorted = [...steps].sort((a, b) => a.at - b.at)
          const pending = new Map<string, number>()
          const expected: Array<string> = []
          const fireUntil = (t: number) => {
            for (const [key, at] of [...pending].sort((a, b) => a[1] - b[1])) {
              if (at > t) continue
              expected.push(`${key}@${at}`)
              pending.delete(key)
            }
          }
          for (const step of sorted) {
            fireUntil(step.at)
            const key = `k${step.key}`
            const due = step.at + step.delay
            if (!pending.has(key) || due < pending.get(key)!) pending.set(key, due)
          }
          fireUntil(Number.POSITIVE_INFINITY)
          const actual = log.filter((e) => e._tag === "start").map((e) => `${e.key}@${e.at}`)
          assert.deepStrictEqual([...actual].sort(), [...expected].sort())
        }),
      { arbitrary: { runs: 60 } }
    )

    it.effect("a delayed add due now runs now, at any clock time (epoch 0 included)", () =>
      Effect.gen(function*() {
        const { log, reconcile } = world([0], [])
        const queue = yield* WorkQueue.make({ name: "due-now", reconcile, concurrency: 1 })
        yield* play(queue, [{ at: 0, key: 0, delay: 0 }, { at: 5, key: 1, delay: 0 }], log, 100)
        assert.deepStrictEqual(log.filter((e) => e._tag === "start").map((e) => `${e.key}@${e.at}`), ["k0@0", "k1@5"])
      }))

    it.effect.prop(
      "retries of a failing key come within the backoff bounds of each attempt",
      {
        initial: int(50, 2000),
        factor: int(1, 64),
        jitterPercent: int(0, 50),
        failures: int(1, 10),
        duration: int(0, 500)
      },
      ({ duration, factor, failures, initial, jitterPercent }) =>
        Effect.gen(function*() {
          const policy = Backoff.policy(Duration.millis(initial), Duration.millis(initial * factor), jitterPercent / 100)
          const fails = [...Array.from({ length: failures }, () => true), false]
          const { log, reconcile, runs } = world([duration], fails)
          // A long reset: no reset may happen inside this test's failures.
          const queue = yield* WorkQueue.make({ name: "backoff", reconcile, backoff: policy, resetAfter: "1 day" })
          yield* play(queue, [{ at: 0, key: 0 }], log, failures * (initial * factor * 1.5 + duration) + 1000)
          assert.strictEqual(runs.length, failures + 1, "each failure retried once, then the success ends it")
          for (let attempt = 0; attempt < failures; attempt++) {
            const gap = runs[attempt + 1]!.start - runs[attempt]!.end
            const { max, min } = Backoff.bounds(policy, attempt)
            assert.isAtLeast(gap, min - 1, `attempt ${attempt}`)
            assert.isAtMost(gap, max + 1, `attempt ${attempt}`)
          }
        }),
      { arbitrary: { runs: 40 } }
    )
  })

  describe("backoff", () => {
    it.effect("starts over after a quiet period, not after a success", () =>
      Effect.gen(function*() {
        const policy = Backoff.policy("1 second", "1 minute", 0)
        const script: Array<"fail" | "ok"> = ["fail", "fail", "ok", "fail", "ok", "fail"]
        const at: Array<number> = []
        const queue = yield* WorkQueue.make({
          name: "reset",
          backoff: policy,
          resetAfter: "10 seconds",
          reconcile: () =>
            Effect.gen(function*() {
              at.push(yield* Clock.currentTimeMillis)
              if (script.shift() === "fail") return yield* new Boom({})
              return Controller.awaitChange
            })
        })
        yield* queue.add("k")
        yield* TestClock.adjust("4 seconds")
        // fail at 0 (retry in 1 s), fail at 1 s (retry in 2 s), ok at 3 s.
        assert.deepStrictEqual(at, [0, 1000, 3000])
        yield* queue.add("k") // at 4 s, one second after the last retry was due: not quiet yet
        yield* TestClock.adjust("5 seconds")
        // fail at 4 s: the third attempt waits 4 s (no reset by the success at 3 s).
        assert.deepStrictEqual(at, [0, 1000, 3000, 4000, 8000])
        yield* TestClock.adjust("30 seconds")
        yield* queue.add("k") // at 39 s, 31 s after the last retry was due: quiet long enough
        yield* TestClock.adjust("500 millis")
        assert.deepStrictEqual(at.slice(5), [39_000])
        // The failure at 39 s starts over at 1 s (without the reset it would wait 8 s).
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(at.slice(5), [39_000, 40_000])
      }))

    it.effect("a server's Retry-After is a floor on the delay", () =>
      Effect.gen(function*() {
        const at: Array<number> = []
        let first = true
        const queue = yield* WorkQueue.make({
          name: "retry-after",
          reconcile: () =>
            Effect.gen(function*() {
              at.push(yield* Clock.currentTimeMillis)
              if (!first) return Controller.awaitChange
              first = false
              return yield* new Boom({ retryAfterSeconds: 20 })
            })
        })
        yield* queue.add("k")
        yield* TestClock.adjust("19 seconds")
        assert.deepStrictEqual(at, [0])
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(at, [0, 20_000])
      }))

    it.effect("a defect is retried like an error and does not stop the workers", () =>
      Effect.gen(function*() {
        const at: Array<number> = []
        const queue = yield* WorkQueue.make({
          name: "defect",
          concurrency: 1,
          backoff: Backoff.policy("1 second", "1 second", 0),
          reconcile: (key) =>
            Effect.gen(function*() {
              at.push(yield* Clock.currentTimeMillis)
              if (key === "bad" && at.length === 1) return yield* Effect.die("a bug")
              return Controller.awaitChange
            })
        })
        yield* queue.add("bad")
        yield* TestClock.adjust("10 millis")
        yield* queue.add("good")
        yield* TestClock.adjust("2 seconds")
        assert.deepStrictEqual(at, [0, 10, 1000])
      }))
  })

  describe("deadlines", () => {
    it.effect("the earliest pending deadline wins, and a run supersedes the one pending when it starts", () =>
      Effect.gen(function*() {
        const at: Array<number> = []
        let next: Controller.Action = Controller.requeueAfter("1 minute")
        const queue = yield* WorkQueue.make({
          name: "deadlines",
          reconcile: () => Effect.as(Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => at.push(now))), next)
        })
        yield* queue.addAfter("k", "10 seconds")
        yield* queue.addAfter("k", "30 seconds") // later: ignored
        yield* queue.addAfter("k", "5 seconds") // earlier: wins
        yield* TestClock.adjust("6 seconds")
        assert.deepStrictEqual(at, [5000])
        // The run at 5 s asked for 1 minute; an add at 10 s runs now and supersedes that deadline.
        next = Controller.awaitChange
        yield* TestClock.adjust("4 seconds")
        yield* queue.add("k")
        yield* TestClock.adjust("2 minutes")
        assert.deepStrictEqual(at, [5000, 10_000])
      }))

    it.effect("forget drops a pending run, a deadline and a running key's next deadline", () =>
      Effect.gen(function*() {
        const at: Array<string> = []
        const queue = yield* WorkQueue.make({
          name: "forget",
          concurrency: 1,
          reconcile: (key) =>
            Effect.gen(function*() {
              at.push(`${key}@${yield* Clock.currentTimeMillis}`)
              yield* Effect.sleep("1 second")
              return Controller.requeueAfter("5 seconds")
            })
        })
        yield* queue.add("a") // runs 0..1 s
        yield* queue.add("b") // waits for the one worker
        yield* queue.addAfter("c", "3 seconds")
        yield* TestClock.adjust("100 millis")
        yield* queue.forget("b")
        yield* queue.forget("c")
        yield* queue.forget("a") // running: it finishes but asks for nothing
        yield* TestClock.adjust("1 minute")
        assert.deepStrictEqual(at, ["a@0"])
        assert.strictEqual(yield* queue.depth, 0)
        yield* queue.add("b") // comes back
        yield* TestClock.adjust("500 millis")
        assert.deepStrictEqual(at, ["a@0", "b@60100"])
      }))

    it.effect("an add while the key runs leads to exactly one more run after it", () =>
      Effect.gen(function*() {
        const at: Array<number> = []
        const queue = yield* WorkQueue.make({
          name: "dirty",
          concurrency: 4,
          reconcile: () =>
            Effect.gen(function*() {
              at.push(yield* Clock.currentTimeMillis)
              yield* Effect.sleep("1 second")
              return Controller.awaitChange
            })
        })
        yield* queue.add("k")
        yield* TestClock.adjust("100 millis")
        for (let i = 0; i < 20; i++) yield* queue.add("k")
        assert.strictEqual(yield* queue.active, 1)
        yield* TestClock.adjust("10 seconds")
        assert.deepStrictEqual(at, [0, 1000])
      }))
  })
})
