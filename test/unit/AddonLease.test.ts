/**
 * The add-on health Lease on virtual time, over the in-memory Lease store and health checks the
 * test switches on and off:
 * - while healthy it renews every 60 s plus up to 25% jitter, with leaseDurationSeconds 60;
 * - when a check fails it stops writing at once, and says why once (not every period);
 * - when the checks pass again the next period renews;
 * - a failing write is retried next period and shows on the readiness probe;
 * - a write keeps what others put on the Lease;
 * - the first period waits for `firstPeriodAfter` (hosted-agent's token hand-off), at most one
 *   renew interval.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Deferred, Duration, Effect, Layer, Logger, Option, Random, Ref } from "effect"
import { TestClock } from "effect/testing"
import { AddonLease } from "../../src/addonagent/AddonLease.ts"
import { HealthChecks } from "../../src/addonagent/HealthChecks.ts"
import * as LeaseState from "../../src/domain/LeaseState.ts"
import * as KubeError from "../../src/kube/KubeError.ts"
import * as LeaseStore from "../../src/kube/LeaseStore.ts"
import { Probes } from "../../src/observability/Probes.ts"

const SECOND = 1000
const key = { namespace: "agent", name: "cluster-proxy" }
const options = { ...key, leaseDuration: Duration.seconds(60), renewInterval: Duration.seconds(60) }

interface World {
  readonly store: LeaseStore.LeaseStore["Service"]
  /** Virtual times of successful writes. */
  readonly writes: Array<number>
  readonly healthy: Ref.Ref<boolean>
  /** When true, every write fails as the apiserver being down would. */
  readonly broken: Ref.Ref<boolean>
  readonly logs: Array<string>
}

/** The heartbeat over an in-memory store that records its writes; returns the world and the service. */
const start = Effect.fn(function*(
  seed?: (store: LeaseStore.LeaseStore["Service"]) => Effect.Effect<unknown, KubeError.KubeError>,
  extra: { readonly firstPeriodAfter?: Effect.Effect<unknown> } = {}
) {
  const memory = LeaseStore.memory()
  if (seed !== undefined) yield* seed(memory)
  const writes: Array<number> = []
  const logs: Array<string> = []
  const healthy = yield* Ref.make(true)
  const broken = yield* Ref.make(false)
  const guard = <A>(write: Effect.Effect<A, KubeError.KubeError>) =>
    Effect.gen(function*() {
      if (yield* Ref.get(broken)) {
        return yield* new KubeError.KubeError({ cluster: "memory", operation: "update lease", reason: "Unavailable", detail: "apiserver down" })
      }
      const result = yield* write
      writes.push(yield* Clock.currentTimeMillis)
      return result
    })
  const store = LeaseStore.LeaseStore.of({
    ...memory,
    create: (k, spec) => guard(memory.create(k, spec)),
    replace: (previous, spec) => guard(memory.replace(previous, spec))
  })
  const checks = HealthChecks.layerFrom([{
    name: "proxy-agent",
    check: Effect.flatMap(Ref.get(healthy), (ok) => (ok ? Effect.void : Effect.fail("GET http://localhost:8093/readyz answered 503")))
  }])
  const context = yield* Layer.build(
    AddonLease.layer({ ...options, ...extra }).pipe(
      Layer.provideMerge(Probes.layerNoServer),
      Layer.provide(Layer.mergeAll(Layer.succeed(LeaseStore.LeaseStore, store), checks)),
      Layer.provide(Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))]))
    )
  )
  const world: World = { store, writes, healthy, broken, logs }
  return { world, lease: Context.get(context, AddonLease), probes: Context.get(context, Probes) }
})

/** Advance virtual time in one-second steps, so every timer fires at its own time (0: let started fibers run). */
const advance = (millis: number) =>
  Effect.gen(function*() {
    yield* TestClock.adjust(0)
    for (let t = 0; t < millis; t += SECOND) yield* TestClock.adjust(Duration.millis(Math.min(SECOND, millis - t)))
  })

const gaps = (times: ReadonlyArray<number>) => times.slice(1).map((t, i) => t - times[i]!)
const readLease = (world: World) => Effect.map(world.store.get(key), Option.getOrUndefined)
const warnings = (world: World, text: string) => world.logs.filter((line) => line.includes(text)).length

describe("AddonLease (TestClock)", () => {
  it.effect("creates the Lease at once and renews it every 60 s plus up to 25% jitter while healthy", () =>
    Effect.gen(function*() {
      const { lease, world } = yield* start()
      yield* advance(0)
      assert.deepStrictEqual(world.writes, [0], "the first renewal happens at start")
      yield* advance(20 * 60 * SECOND)
      const intervals = gaps(world.writes)
      assert.isAtLeast(intervals.length, 15)
      assert.isAtMost(intervals.length, 20)
      for (const gap of intervals) {
        assert.isAtLeast(gap, 60 * SECOND)
        assert.isAtMost(gap, 75 * SECOND + SECOND) // one step of slack for the 1 s stepping
      }
      assert.isTrue(intervals.some((gap) => gap > 61 * SECOND), "the jitter spreads renewals")
      const stored = yield* readLease(world)
      assert.strictEqual(stored?.spec.leaseDurationSeconds, 60)
      assert.strictEqual(stored?.spec.renewTime, LeaseState.formatMicroTime(world.writes.at(-1)!))
      assert.strictEqual(Option.getOrUndefined(yield* lease.last)?._tag, "Renewed")
    }))

  it.effect("waits for firstPeriodAfter before the first period, and at most one renew interval", () =>
    Effect.gen(function*() {
      const handOff = yield* Deferred.make<void>()
      const { world } = yield* start(undefined, { firstPeriodAfter: Deferred.await(handOff) })
      yield* advance(3 * SECOND)
      assert.deepStrictEqual(world.writes, [], "no period before the hand-off")
      yield* Deferred.succeed(handOff, undefined)
      yield* advance(0)
      assert.deepStrictEqual(world.writes, [3 * SECOND], "the first write follows the hand-off at once, not a period later")

      // A hand-off that never comes delays the first period by one renew interval, no more.
      const { world: never } = yield* start(undefined, { firstPeriodAfter: Effect.never })
      yield* advance(59 * SECOND)
      assert.deepStrictEqual(never.writes, [])
      yield* advance(SECOND)
      assert.deepStrictEqual(never.writes, [63 * SECOND])
    }))

  /** Stop on a failing check, warn once, resume on recovery; the bounds hold for any jitter draw. */
  const unhealthyThenRecovered = Effect.gen(function*() {
    const { lease, world } = yield* start()
    yield* advance(3 * 60 * SECOND)
    const before = world.writes.length
    assert.isAtLeast(before, 3)
    const version = (yield* readLease(world))?.resourceVersion

    yield* Ref.set(world.healthy, false)
    yield* advance(10 * 60 * SECOND)
    assert.strictEqual(world.writes.length, before, "no write while unhealthy")
    assert.strictEqual((yield* readLease(world))?.resourceVersion, version)
    const last = Option.getOrUndefined(yield* lease.last)
    assert.deepStrictEqual(last, { _tag: "Unhealthy", failures: [{ name: "proxy-agent", reason: "GET http://localhost:8093/readyz answered 503" }] })
    // About eight unhealthy periods, one warning naming the check and its reason.
    assert.strictEqual(warnings(world, "a health check failed"), 1)
    assert.isTrue(world.logs.some((line) => line.includes("proxy-agent: GET http://localhost:8093/readyz answered 503")))

    yield* Ref.set(world.healthy, true)
    const recovered = world.logs.length
    yield* advance(76 * SECOND)
    // One period is at most 75 s; a short one can fit a second renewal into the same window.
    assert.isAbove(world.writes.length, before, "renewed within one period of recovering")
    assert.isAtMost(world.writes.length, before + 2)
    assert.isTrue(world.logs.slice(recovered).some((line) => line.includes("the health checks pass again")))
    yield* advance(5 * 60 * SECOND)
    assert.isAtLeast(world.writes.length, before + 5)

    // Failing again is a new transition, so a new warning.
    yield* Ref.set(world.healthy, false)
    yield* advance(3 * 60 * SECOND)
    assert.strictEqual(warnings(world, "a health check failed"), 2)
  })

  /** Every jitter draw gives `draw`: 0 is the shortest pause (60 s), just under 1 the longest (75 s). */
  const everyDraw = (draw: number) =>
    Random.Random.of({ nextDoubleUnsafe: () => draw, nextIntUnsafe: () => Math.floor(draw * Number.MAX_SAFE_INTEGER) })

  it.effect("stops renewing as soon as a check fails, says why once, and resumes when healthy", () => unhealthyThenRecovered)
  it.effect("the same with the shortest pause every time", () => Effect.provideService(unhealthyThenRecovered, Random.Random, everyDraw(0)))
  it.effect("the same with the longest pause every time", () => Effect.provideService(unhealthyThenRecovered, Random.Random, everyDraw(0.9999)))

  it.effect("a failing write is retried next period, fails readiness meanwhile, and is logged once", () =>
    Effect.gen(function*() {
      const { probes, world } = yield* start()
      yield* advance(0)
      assert.deepStrictEqual(yield* probes.readiness, [])
      yield* Ref.set(world.broken, true)
      yield* advance(5 * 60 * SECOND)
      const failures = yield* probes.readiness
      assert.strictEqual(failures.length, 1)
      assert.strictEqual(failures[0]?.name, "addon-lease")
      assert.include(failures[0]?.reason ?? "", "Unavailable")
      assert.strictEqual(warnings(world, "cannot renew the add-on Lease"), 1)
      const writes = world.writes.length
      yield* Ref.set(world.broken, false)
      yield* advance(76 * SECOND)
      assert.isAbove(world.writes.length, writes, "the write is retried within one period")
      assert.isAtMost(world.writes.length, writes + 2)
      assert.deepStrictEqual(yield* probes.readiness, [])
    }))

  it.effect("keeps the labels, annotations and holder others put on the Lease", () =>
    Effect.gen(function*() {
      const { world } = yield* start((store) =>
        Effect.flatMap(store.create(key, { holderIdentity: "someone" }), (created) =>
          store.replace({ ...created, object: { ...created.object, metadata: { ...created.object.metadata, labels: { team: "infra" } } } }, created.spec))
      )
      yield* advance(61 * SECOND)
      const stored = yield* readLease(world)
      assert.isAtLeast(world.writes.length, 1)
      assert.strictEqual(stored?.object.metadata?.labels?.["team"], "infra")
      assert.strictEqual(stored?.spec.holderIdentity, "someone")
      assert.strictEqual(stored?.spec.leaseDurationSeconds, 60)
    }))
})
