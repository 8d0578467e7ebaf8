/**
 * The list+watch stream over a scripted transport on virtual time: it re-watches from the last
 * resourceVersion when the server closes a watch, lists again on 410 Gone, and on failures emits
 * Broken and retries after a jittered backoff.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Fiber, Schema, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as KubeError from "../../src/kube/KubeError.ts"
import * as Watch from "../../src/kube/Watch.ts"

const kubeError = (reason: KubeError.Reason) =>
  new KubeError.KubeError({ cluster: "test", operation: "watch things", reason, detail: reason })

type Step =
  | { readonly _tag: "Events"; readonly names: ReadonlyArray<string>; readonly end: Watch.WatchEnd }
  | { readonly _tag: "Fail"; readonly reason: KubeError.Reason }

/** A transport that plays `script` one watch call at a time, recording every call. */
const scripted = (script: Array<Step>) => {
  const calls: Array<string> = []
  let lists = 0
  const transport: Watch.Transport<string> = {
    list: Effect.sync(() => {
      lists++
      calls.push(`list`)
      return { items: [`item-${lists}`], resourceVersion: `rv-list-${lists}` }
    }),
    watch: (resourceVersion, emit) =>
      Effect.suspend(() => {
        calls.push(`watch@${resourceVersion}`)
        const step = script.shift()
        if (step === undefined) return Effect.never
        if (step._tag === "Fail") return Effect.fail(kubeError(step.reason))
        for (const name of step.names) emit({ _tag: "Modified", object: name })
        return Effect.succeed(step.end)
      })
  }
  return { calls, transport }
}

const collect = (stream: Stream.Stream<Watch.WatchEvent<string>>, n: number) =>
  Stream.runCollect(Stream.take(stream, n)).pipe(Effect.forkChild)

const tags = (events: ReadonlyArray<Watch.WatchEvent<string>>) =>
  events.map((e) => (e._tag === "Synced" ? `Synced:${e.items.join(",")}` : e._tag === "Broken" ? `Broken:${e.error.reason}` : `${e._tag}:${e.object}`))

describe("Watch.stream", () => {
  it.effect("lists, then watches from the list's resourceVersion and continues from the last one seen", () =>
    Effect.gen(function*() {
      const { calls, transport } = scripted([
        { _tag: "Events", names: ["a"], end: { _tag: "Closed", resourceVersion: "rv-7" } },
        { _tag: "Events", names: ["b"], end: { _tag: "Closed", resourceVersion: "rv-9" } }
      ])
      const fiber = yield* collect(Watch.stream(transport), 3)
      const events = yield* Fiber.join(fiber)
      assert.deepStrictEqual(tags(events), ["Synced:item-1", "Modified:a", "Modified:b"])
      assert.deepStrictEqual(calls.slice(0, 3), ["list", "watch@rv-list-1", "watch@rv-7"])
    }))

  it.effect("lists again when the resourceVersion is too old (410 Gone), without reporting Broken", () =>
    Effect.gen(function*() {
      const { calls, transport } = scripted([
        { _tag: "Events", names: [], end: { _tag: "Expired" } },
        { _tag: "Fail", reason: "Gone" }
      ])
      const events = yield* Fiber.join(yield* collect(Watch.stream(transport), 3))
      assert.deepStrictEqual(tags(events), ["Synced:item-1", "Synced:item-2", "Synced:item-3"])
      assert.deepStrictEqual(calls.slice(0, 5), ["list", "watch@rv-list-1", "list", "watch@rv-list-2", "list"])
    }))

  it.effect("reports Broken on a failure and retries after a jittered, growing backoff", () =>
    Effect.gen(function*() {
      const { transport } = scripted([
        { _tag: "Fail", reason: "Transport" },
        { _tag: "Fail", reason: "Unavailable" }
      ])
      // Record when each list happens, on virtual time.
      const listedAt: Array<number> = []
      const timed: Watch.Transport<string> = {
        ...transport,
        list: Effect.flatMap(Clock.currentTimeMillis, (now) => {
          listedAt.push(now)
          return transport.list
        })
      }
      const fiber = yield* collect(Watch.stream(timed, { initialBackoff: "1 second", maxBackoff: "30 seconds" }), 5)
      for (let step = 0; step < 400 && listedAt.length < 3; step++) yield* TestClock.adjust("10 millis")
      const events = yield* Fiber.join(fiber)
      assert.deepStrictEqual(tags(events), ["Synced:item-1", "Broken:Transport", "Synced:item-2", "Broken:Unavailable", "Synced:item-3"])
      const [first, second, third] = listedAt as [number, number, number]
      // 1 s then 2 s, each × [0.8, 1.2] (one 10 ms step of slack).
      assert.isTrue(second - first >= 800 && second - first <= 1210, `first retry after ${second - first} ms`)
      assert.isTrue(third - second >= 1600 && third - second <= 2410, `second retry after ${third - second} ms`)
    }))
})

describe("Watch.stream: a watch that silently stops", () => {
  /** A transport whose watches never end and never deliver (a frozen connection); lists and watch starts timed. */
  const frozen = () => {
    const listedAt: Array<number> = []
    const watches: Array<{ readonly at: number; readonly timeoutSeconds: number }> = []
    const transport: Watch.Transport<string> = {
      list: Effect.map(Clock.currentTimeMillis, (now) => {
        listedAt.push(now)
        return { items: [`item-${listedAt.length}`], resourceVersion: `rv-${listedAt.length}` }
      }),
      watch: (_resourceVersion, _emit, timeoutSeconds) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          watches.push({ at: now, timeoutSeconds })
          return Effect.never
        })
    }
    return { listedAt, watches, transport }
  }

  it.effect.prop(
    "is reported Broken and re-listed once it outlives its own server-side timeout by the grace, whatever the timeouts",
    { timeoutSeconds: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600 })), graceSeconds: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 60 })) },
    ({ graceSeconds, timeoutSeconds }) =>
      Effect.gen(function*() {
        const { listedAt, transport, watches } = frozen()
        const fiber = yield* collect(
          Watch.stream(transport, { watchTimeout: `${timeoutSeconds} seconds`, stallGrace: `${graceSeconds} seconds`, initialBackoff: "1 second" }),
          3
        )
        yield* TestClock.adjust("0 millis")
        assert.strictEqual(watches.length, 1)
        const first = watches[0]!
        // The server is asked for a jittered timeout in [base, base × 4/3].
        assert.isAtLeast(first.timeoutSeconds, timeoutSeconds)
        assert.isAtMost(first.timeoutSeconds, Math.ceil((timeoutSeconds * 4) / 3))
        const deadline = (first.timeoutSeconds + graceSeconds) * 1000
        // Not a moment before the deadline ...
        yield* TestClock.adjust(deadline - 1)
        assert.strictEqual(listedAt.length, 1, "re-listed before the deadline")
        // ... and at it: Broken, then a re-list after the first backoff (1 s ± 20%).
        yield* TestClock.adjust(1)
        yield* TestClock.adjust("1200 millis")
        const events = yield* Fiber.join(fiber)
        assert.deepStrictEqual(tags(events), ["Synced:item-1", "Broken:Transport", "Synced:item-2"])
        assert.isAtLeast(listedAt[1]! - listedAt[0]!, deadline + 800)
        assert.isAtMost(listedAt[1]! - listedAt[0]!, deadline + 1200)
      }),
    { arbitrary: { runs: 40 } }
  )

  it.effect("with the defaults, a frozen watch is re-listed within 30 s of the moment it froze", () =>
    Effect.gen(function*() {
      const { listedAt, transport } = frozen()
      const fiber = yield* collect(Watch.stream(transport), 3)
      yield* TestClock.adjust("30 seconds")
      const events = yield* Fiber.join(fiber)
      assert.deepStrictEqual(tags(events), ["Synced:item-1", "Broken:Transport", "Synced:item-2"])
      assert.isAtMost(listedAt[1]! - listedAt[0]!, 30_000)
    }))

  it.effect("a watch the server ends in time is re-watched, not reported", () =>
    Effect.gen(function*() {
      let watches = 0
      const transport: Watch.Transport<string> = {
        list: Effect.succeed({ items: ["item"], resourceVersion: "rv-0" }),
        // The server closes each watch after its timeout, with nothing to report.
        watch: (resourceVersion, _emit, timeoutSeconds) =>
          Effect.sleep(`${timeoutSeconds} seconds`).pipe(
            Effect.andThen(Effect.sync(() => ({ _tag: "Closed" as const, resourceVersion: `${resourceVersion}+${++watches}` })))
          )
      }
      const seen: Array<string> = []
      const fiber = yield* Watch.stream(transport).pipe(
        Stream.runForEach((event) => Effect.sync(() => seen.push(event._tag))),
        Effect.forkChild
      )
      yield* TestClock.adjust("10 minutes")
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(seen, ["Synced"])
      assert.isAtLeast(watches, 30)
    }))
})
