/**
 * The keyed controller on virtual time: start and resync, requeue-after, a burst of triggers
 * collapsing into one run, backoff that grows and resets (also when attempts outlast it),
 * Retry-After as a floor, `retryBy` as a ceiling, a timer that fires early waited out, and a
 * defect that does not stop the loop.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Data, Duration, Effect, Queue, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as Controller from "../../src/kube/Controller.ts"

class Boom extends Data.TaggedError("Boom")<{ readonly retryAfterSeconds?: number; readonly retryBy?: number }> {}

const runs = () => {
  const at: Array<number> = []
  const record = Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => void at.push(now)))
  return { at, record }
}

/** Let forked fibers run up to their first suspension before time moves. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 10; i++) yield* Effect.yieldNow
})

const advance = (total: number, step = 100) =>
  Effect.gen(function*() {
    for (let t = 0; t < total; t += step) yield* TestClock.adjust(Duration.millis(step))
  })

/**
 * A clock whose timers fire up to 3 ms early by its own time, as Node's can by `Date.now()` (they
 * start from the event loop's cached time); sleeping moves its time at once.
 */
const earlyClock = (start: number) => {
  const time = { now: start }
  const nanos = () => BigInt(time.now) * 1_000_000n
  const clock: Clock.Clock = {
    currentTimeMillisUnsafe: () => time.now,
    currentTimeMillis: Effect.sync(() => time.now),
    currentTimeNanosUnsafe: nanos,
    currentTimeNanos: Effect.sync(nanos),
    monotonicTimeNanosUnsafe: nanos,
    monotonicTimeNanos: Effect.sync(nanos),
    sleep: (duration) =>
      Effect.andThen(
        Effect.sync(() => {
          const millis = Duration.toMillis(duration)
          time.now += millis - Math.min(3, Math.floor(millis / 2))
        }),
        Effect.yieldNow
      )
  }
  return { clock, time }
}

describe("Controller.run", () => {
  it.effect("reconciles at start and at requeue-after deadlines; the resync only fills silences", () =>
    Effect.gen(function*() {
      const { at, record } = runs()
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.never,
        resyncInterval: "10 seconds",
        reconcile: () => Effect.as(record, Controller.requeueAfter("3 seconds"))
      }).pipe(Effect.forkScoped)
      yield* settle
      yield* advance(10_000)
      // 0 (start), 3, 6, 9 (requeue): every reconcile pushes the resync back, so it never fires.
      assert.deepStrictEqual(at, [0, 3000, 6000, 9000])
    }))

  it.effect("the fail-safe resync counts from the last reconcile, whatever triggered it", () =>
    Effect.gen(function*() {
      const { at, record } = runs()
      const triggers = yield* Queue.unbounded<string>()
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.fromQueue(triggers),
        resyncInterval: "10 seconds",
        reconcile: () => Effect.as(record, Controller.awaitChange)
      }).pipe(Effect.forkScoped)
      yield* settle
      yield* advance(7_000)
      yield* Queue.offer(triggers, "k")
      yield* settle
      yield* advance(25_000)
      assert.deepStrictEqual(at, [0, 7000, 17000, 27000])
    }))

  it.effect("retries come after the backoff measured from each failure, also when attempts outlast it", () =>
    Effect.gen(function*() {
      const started: Array<number> = []
      const failed: Array<number> = []
      const triggers = yield* Queue.unbounded<string>()
      let calls = 0
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.fromQueue(triggers),
        resyncInterval: "10 minutes",
        initialBackoff: "2 seconds",
        reconcile: () =>
          Effect.gen(function*() {
            calls++
            if (calls === 1) return Controller.requeueAfter("5 seconds")
            started.push(yield* Clock.currentTimeMillis)
            // A TokenRequest hanging on a 10 s connect timeout.
            yield* Effect.sleep("10 seconds")
            failed.push(yield* Clock.currentTimeMillis)
            return yield* new Boom({})
          })
      }).pipe(Effect.forkScoped)
      yield* settle
      // A trigger at 1 s starts an attempt while the 5 s requeue timer is still pending.
      yield* advance(1000)
      yield* Queue.offer(triggers, "k")
      yield* advance(120_000)
      assert.isAtLeast(failed.length, 4)
      for (let i = 1; i < started.length && i < 5; i++) {
        const gap = started[i]! - failed[i - 1]!
        const base = 2000 * 2 ** (i - 1)
        assert.isTrue(gap >= base * 0.8 - 100 && gap <= base * 1.2 + 100, `retry ${i} came ${gap} ms after the failure (backoff ${base} ms)`)
      }
    }))

  it.effect("a retryBy hint caps the backoff (a token's expiry is looked at when it comes)", () =>
    Effect.gen(function*() {
      const { at, record } = runs()
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.never,
        resyncInterval: "1 hour",
        initialBackoff: "1 minute",
        reconcile: () =>
          Effect.andThen(record, () =>
            at.length === 1 ? Effect.fail(new Boom({ retryAfterSeconds: 120, retryBy: 7_000 })) : Effect.succeed(Controller.awaitChange))
      }).pipe(Effect.forkScoped)
      yield* settle
      yield* advance(20_000)
      assert.deepStrictEqual(at, [0, 7000])
    }))

  it.effect("collapses a burst of triggers into one reconcile", () =>
    Effect.gen(function*() {
      const { at, record } = runs()
      const triggers = yield* Queue.unbounded<string>()
      yield* Controller.run({
        name: "t",
        keys: [],
        triggers: Stream.fromQueue(triggers),
        resyncInterval: "1 hour",
        reconcile: () => Effect.as(Effect.andThen(Effect.sleep("50 millis"), record), Controller.awaitChange)
      }).pipe(Effect.forkScoped)
      yield* Queue.offer(triggers, "k")
      yield* settle
      for (let i = 0; i < 20; i++) yield* Queue.offer(triggers, "k") // while the first run is busy
      yield* advance(1000, 10)
      assert.strictEqual(at.length, 2, "the running reconcile plus one for the whole burst")
    }))

  it.effect("backs off exponentially with jitter, resets on success, honours Retry-After, survives defects", () =>
    Effect.gen(function*() {
      const { at, record } = runs()
      const script: Array<"fail" | "ok" | "slow-down" | "die"> = ["fail", "fail", "fail", "ok", "slow-down", "die", "ok"]
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.never,
        resyncInterval: "1 hour",
        initialBackoff: "1 second",
        reconcile: () =>
          Effect.andThen(record, () => {
            const next = script.shift() ?? "ok"
            switch (next) {
              case "fail":
                return Effect.fail(new Boom({}))
              case "slow-down":
                return Effect.fail(new Boom({ retryAfterSeconds: 30 }))
              case "die":
                return Effect.die("a bug")
              case "ok":
                return Effect.succeed(Controller.requeueAfter("1 second"))
            }
          })
      }).pipe(Effect.forkScoped)
      yield* advance(60_000)
      const gaps = at.slice(1, 7).map((t, i) => t - at[i]!)
      const within = (gap: number, base: number) => gap >= base * 0.8 - 100 && gap <= base * 1.2 + 100
      assert.isTrue(within(gaps[0]!, 1000), `1st retry ${gaps[0]}`)
      assert.isTrue(within(gaps[1]!, 2000), `2nd retry ${gaps[1]}`)
      assert.isTrue(within(gaps[2]!, 4000), `3rd retry ${gaps[2]}`)
      assert.strictEqual(gaps[3], 1000, "success: requeue after 1 s")
      assert.isTrue(gaps[4]! >= 30_000, `Retry-After honoured (${gaps[4]})`)
      assert.isTrue(within(gaps[5]!, 2000), `backoff reset after success, then a defect retried like an error (${gaps[5]})`)
    }))

  it.effect("a timer that fires early by the clock is waited out: a retryBy deadline is never met a few ms short", () => {
    const { clock, time } = earlyClock(1_000_000)
    return Effect.gen(function*() {
      const deadline = time.now + 500
      const at: Array<number> = []
      yield* Controller.run({
        name: "t",
        keys: ["k"],
        triggers: Stream.never,
        resyncInterval: "1 hour",
        reconcile: () =>
          Effect.flatMap(Clock.currentTimeMillis, (t) => {
            at.push(t)
            return at.length === 1 ? Effect.fail(new Boom({ retryBy: deadline })) : Effect.succeed(Controller.awaitChange)
          })
      }).pipe(Effect.forkScoped)
      for (let i = 0; i < 100 && at.length < 2; i++) yield* Effect.yieldNow
      assert.isAtLeast(at.length, 2)
      assert.isAtLeast(at[1]!, deadline, `woken ${deadline - at[1]!} ms before the deadline`)
      assert.isAtMost(at[1]! - deadline, 3)
    }).pipe(Effect.provideService(Clock.Clock, clock))
  })
})
