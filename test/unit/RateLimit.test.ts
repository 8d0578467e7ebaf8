/**
 * The rate-limit gate on virtual time (the work queue's starts and the process's API requests
 * wait at it): concurrent callers arriving at random times are let through no faster than
 * `burst + perSecond × w` in any window `w`, every one of them is let through, and callers that
 * all arrive at once are not held longer than the bucket requires. The client wrapper sends every
 * request but the watches through the gate, once.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, Schema, Stream } from "effect"
import { TestClock } from "effect/testing"
import type { KubeClient } from "../../src/kube/KubeClient.ts"
import * as RateLimit from "../../src/kube/RateLimit.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** The most of `times` (sorted) in a window `[t, t + w]`, against the bound, for every pair of times. */
const withinBucket = (times: ReadonlyArray<number>, perSecond: number, burst: number) => {
  for (let i = 0; i < times.length; i++) {
    for (let j = i; j < times.length; j++) {
      assert.isAtMost(j - i + 1, burst + (perSecond * (times[j]! - times[i]!)) / 1000 + 1e-6, `${j - i + 1} in ${times[j]! - times[i]!} ms`)
    }
  }
}

describe("RateLimit", () => {
  describe("properties", () => {
    it.effect.prop(
      "callers arriving at random times: all let through, never more than burst + perSecond × w in any window",
      { perSecond: int(1, 50), burst: int(1, 10), arrivals: Schema.Array(int(0, 3000)).check(Schema.isMinLength(1), Schema.isMaxLength(40)) },
      ({ arrivals, burst, perSecond }) =>
        Effect.gen(function*() {
          const admit = yield* RateLimit.gate({ perSecond, burst })
          const passed: Array<number> = []
          const fibers = yield* Effect.forEach(arrivals, (at) =>
            Effect.forkChild(
              Effect.sleep(Duration.millis(at)).pipe(
                Effect.andThen(admit),
                Effect.andThen(Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => void passed.push(now))))
              )
            ))
          // Long enough for everyone: the last arrival plus a full bucket's worth of waiting.
          yield* TestClock.adjust(Duration.millis(3000 + Math.ceil((arrivals.length * 1000) / perSecond) + 1000))
          yield* Effect.forEach(fibers, Fiber.join, { discard: true })
          assert.strictEqual(passed.length, arrivals.length)
          withinBucket([...passed].sort((a, b) => a - b), perSecond, burst)
        })
    )

    it.effect.prop(
      "callers all at once: the first burst pass at once, then one every 1/perSecond, no later",
      { perSecond: int(1, 50), burst: int(1, 10), callers: int(1, 40) },
      ({ burst, callers, perSecond }) =>
        Effect.gen(function*() {
          const admit = yield* RateLimit.gate({ perSecond, burst })
          const passed: Array<number> = []
          const fibers = yield* Effect.forEach(Array.from({ length: callers }), () =>
            Effect.forkChild(Effect.andThen(admit, Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => void passed.push(now))))))
          yield* TestClock.adjust(Duration.millis(Math.ceil((callers * 1000) / perSecond) + 1000))
          yield* Effect.forEach(fibers, Fiber.join, { discard: true })
          const sorted = [...passed].sort((a, b) => a - b)
          assert.strictEqual(sorted.length, callers)
          withinBucket(sorted, perSecond, burst)
          for (let k = 0; k < callers; k++) {
            // The k-th caller (0-based) needs k + 1 - burst tokens refilled; rounding costs at most a millisecond each.
            const due = Math.max(0, ((k + 1 - burst) * 1000) / perSecond)
            assert.isAtMost(sorted[k]!, Math.ceil(due) + k + 1, `caller ${k}`)
          }
        })
    )
  })

  it.effect("a timer that fires a millisecond early by the clock does not let a caller through without a token", () =>
    Effect.gen(function*() {
      // Node's timers and Date.now() are different clocks: a 20 ms sleep can end 19 ms later by
      // Date.now(). Here every sleep ends a millisecond early.
      let now = 0
      const early: Clock.Clock = {
        currentTimeMillisUnsafe: () => now,
        currentTimeMillis: Effect.sync(() => now),
        currentTimeNanosUnsafe: () => BigInt(now) * 1_000_000n,
        currentTimeNanos: Effect.sync(() => BigInt(now) * 1_000_000n),
        monotonicTimeNanosUnsafe: () => BigInt(now) * 1_000_000n,
        monotonicTimeNanos: Effect.sync(() => BigInt(now) * 1_000_000n),
        sleep: (duration) =>
          Effect.sync(() => {
            const ms = Duration.toMillis(duration)
            now += ms > 1 ? ms - 1 : ms
          })
      }
      const [perSecond, burst] = [50, 2]
      const passed = yield* Effect.gen(function*() {
        const admit = yield* RateLimit.gate({ perSecond, burst })
        const times: Array<number> = []
        for (let k = 0; k < 30; k++) {
          yield* admit
          times.push(now)
        }
        return times
      }).pipe(Effect.provideService(Clock.Clock, early))
      assert.strictEqual(passed.length, 30)
      withinBucket(passed, perSecond, burst)
    }))

  it("limitRequests: every request method waits at the gate once; watches and closing connections do not", () => {
    const calls: Array<string> = []
    const fake = new Proxy({} as Record<string, unknown>, {
      get: (_, name) => {
        if (name === "cluster" || name === "server") return String(name)
        if (name === "closeConnections") return Effect.sync(() => void calls.push("closeConnections"))
        return (..._args: Array<unknown>) => String(name).startsWith("watch") ? Stream.empty : Effect.sync(() => void calls.push(String(name)))
      }
    }) as unknown as KubeClient
    const limited = RateLimit.limitRequests(fake, Effect.sync(() => void calls.push("admit")))
    const unlimited = new Set(["cluster", "server", "closeConnections"])
    const requests = Object.keys(limited).filter((name) => !unlimited.has(name) && !name.startsWith("watch"))
    assert.isAtLeast(requests.length, 15)
    for (const name of requests) {
      calls.length = 0
      Effect.runSync((limited as unknown as Record<string, (...args: Array<unknown>) => Effect.Effect<unknown>>)[name]!("a", "b", "c"))
      assert.deepStrictEqual(calls, ["admit", name], name)
    }
    for (const name of ["watchSecrets", "watchAllSecrets", "watchCustomObjects", "watchAllCustomObjects"] as const) {
      calls.length = 0
      Effect.runSync(Stream.runDrain((limited as unknown as Record<string, (...args: Array<unknown>) => Stream.Stream<unknown>>)[name]!("a", "b")))
      assert.deepStrictEqual(calls, [], name)
    }
    calls.length = 0
    Effect.runSync(limited.closeConnections)
    assert.deepStrictEqual(calls, ["closeConnections"], "closeConnections is passed through, not admitted")
  })
})
