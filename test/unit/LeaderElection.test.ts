/**
 * Leader election on virtual time over one in-memory Lease shared by several candidates:
 * - never two leaders at any sampled instant, also when the leader is cut off from the
 *   apiserver (it steps down before anyone else takes over);
 * - a closed candidate releases the Lease and another takes over within one retry period;
 * - `whileLeader` runs work only while leading;
 * - options that cannot work are refused.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Option, Ref, Result, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as KubeError from "../../src/kube/KubeError.ts"
import * as LeaderElection from "../../src/kube/LeaderElection.ts"
import * as LeaseStore from "../../src/kube/LeaseStore.ts"

const key = { namespace: "ns", name: "tether-leader" }
const settings = { ...key, leaseDuration: "15 seconds", renewInterval: "2 seconds" } as const

/** A view of the shared store that can be cut off (every call fails) by setting `cut`. */
const partitionable = (store: LeaseStore.LeaseStore["Service"], cut: Ref.Ref<boolean>): LeaseStore.LeaseStore["Service"] => {
  const guard = <A>(call: Effect.Effect<A, KubeError.KubeError>) =>
    Effect.flatMap(Ref.get(cut), (isCut) =>
      isCut
        ? Effect.fail(new KubeError.KubeError({ cluster: "memory", operation: "lease call", reason: "Transport", detail: "ECONNREFUSED" }))
        : call)
  return LeaseStore.LeaseStore.of({
    cluster: "memory",
    get: (k) => guard(store.get(k)),
    create: (k, spec) => guard(store.create(k, spec)),
    replace: (previous, spec) => guard(store.replace(previous, spec))
  })
}

/** Start a candidate in its own scope; close the scope to stop it. */
const candidate = Effect.fn(function*(identity: string, store: LeaseStore.LeaseStore["Service"], extra: Partial<LeaderElection.Options> = {}) {
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    LeaderElection.LeaderElection.layerNoDeps({ ...settings, identity, ...extra }).pipe(
      Layer.provide(Layer.succeed(LeaseStore.LeaseStore, store))
    ),
    scope
  )
  return { election: Context.get(context, LeaderElection.LeaderElection), scope }
})

const holderOf = (store: LeaseStore.LeaseStore["Service"]) =>
  Effect.map(store.get(key), (lease) => Option.getOrUndefined(lease)?.spec.holderIdentity)

/** Step virtual time by 100 ms, checking after each step that at most one candidate leads. */
const run = (millis: number, elections: ReadonlyArray<LeaderElection.LeaderElection["Service"]>) =>
  Effect.gen(function*() {
    yield* TestClock.adjust(0)
    for (let t = 0; t < millis; t += 100) {
      yield* TestClock.adjust(100)
      const leading = yield* Effect.forEach(elections, (e) => e.isLeader)
      assert.isAtMost(leading.filter(Boolean).length, 1, `two leaders at +${t + 100} ms`)
    }
  })

describe("LeaderElection (TestClock)", () => {
  it.effect("one candidate creates the Lease, leads, renews, and releases it on close", () =>
    Effect.gen(function*() {
      const store = LeaseStore.memory()
      const { election, scope } = yield* candidate("a", store)
      yield* run(0, [election])
      assert.isTrue(yield* election.isLeader)
      const first = Option.getOrThrow(yield* store.get(key))
      assert.deepStrictEqual(
        { holder: first.spec.holderIdentity, duration: first.spec.leaseDurationSeconds, transitions: first.spec.leaseTransitions },
        { holder: "a", duration: 15, transitions: 0 }
      )
      yield* run(10_000, [election])
      const renewed = Option.getOrThrow(yield* store.get(key))
      assert.notStrictEqual(renewed.spec.renewTime, first.spec.renewTime)
      assert.strictEqual(renewed.spec.acquireTime, first.spec.acquireTime)
      yield* Scope.close(scope, Exit.void)
      assert.isFalse(yield* election.isLeader)
      assert.isUndefined(yield* holderOf(store))
    }))

  it.effect("two candidates: exactly one leads; when it closes, the other takes over within one retry period", () =>
    Effect.gen(function*() {
      const store = LeaseStore.memory()
      const a = yield* candidate("a", store)
      const b = yield* candidate("b", store)
      yield* run(30_000, [a.election, b.election])
      const leaders = [yield* a.election.isLeader, yield* b.election.isLeader]
      assert.deepStrictEqual(leaders.filter(Boolean).length, 1)
      const [leader, follower] = leaders[0] ? [a, b] : [b, a]
      assert.strictEqual(yield* holderOf(store), leader.election.identity)

      yield* Scope.close(leader.scope, Exit.void)
      // Released: the follower takes it on its next retry, at most 2 s × 1.2 later.
      yield* run(2_500, [follower.election])
      assert.isTrue(yield* follower.election.isLeader)
      const lease = Option.getOrThrow(yield* store.get(key))
      assert.strictEqual(lease.spec.holderIdentity, follower.election.identity)
      assert.strictEqual(lease.spec.leaseTransitions, 1)
      yield* Scope.close(follower.scope, Exit.void)
    }))

  it.effect("a leader cut off from the apiserver steps down before the other candidate takes over", () =>
    Effect.gen(function*() {
      const store = LeaseStore.memory()
      const cutA = yield* Ref.make(false)
      const a = yield* candidate("a", partitionable(store, cutA))
      yield* run(0, [a.election])
      const b = yield* candidate("b", store)
      yield* run(10_000, [a.election, b.election])
      assert.isTrue(yield* a.election.isLeader)

      yield* Ref.set(cutA, true)
      const lostAt: Array<number> = []
      const gainedAt: Array<number> = []
      for (let t = 0; t < 30_000; t += 100) {
        yield* run(100, [a.election, b.election])
        if (lostAt.length === 0 && !(yield* a.election.isLeader)) lostAt.push(t)
        if (gainedAt.length === 0 && (yield* b.election.isLeader)) gainedAt.push(t)
      }
      assert.strictEqual(lostAt.length, 1, "a noticed the loss")
      assert.strictEqual(gainedAt.length, 1, "b took over")
      assert.isAtMost(lostAt[0]!, 15_000, "a steps down within the lease duration of its last renewal")
      assert.isBelow(lostAt[0]!, gainedAt[0]!)
      // b counts the duration from when it saw a's last renewal (up to one jittered retry, 2.4 s,
      // after it), and takes the Lease on its first retry after that: at most 15 + 2 × 2.4 s, plus
      // this loop's 100 ms step.
      assert.isAtMost(gainedAt[0]!, 15_000 + 2 * 2_400 + 100, "b takes over within a duration and two retries")
      assert.strictEqual(yield* holderOf(store), "b")

      // Reconnected, a sees b's Lease and stays a follower.
      yield* Ref.set(cutA, false)
      yield* run(10_000, [a.election, b.election])
      assert.isFalse(yield* a.election.isLeader)
      assert.isTrue(yield* b.election.isLeader)
    }))

  it.effect("whileLeader runs the work while leading and interrupts it on loss", () =>
    Effect.gen(function*() {
      const store = LeaseStore.memory()
      const cut = yield* Ref.make(false)
      const a = yield* candidate("a", partitionable(store, cut))
      const running = yield* Ref.make(0)
      const starts = yield* Ref.make(0)
      const work = Effect.acquireRelease(
        Effect.andThen(Ref.update(starts, (n) => n + 1), Ref.update(running, (n) => n + 1)),
        () => Ref.update(running, (n) => n - 1)
      ).pipe(Effect.andThen(Effect.never), Effect.scoped)
      const fiber = yield* Effect.forkChild(a.election.whileLeader(work))
      yield* run(5_000, [a.election])
      assert.strictEqual(yield* Ref.get(running), 1)
      yield* run(10_000, [a.election])
      assert.strictEqual(yield* Ref.get(starts), 1, "renewals do not restart the work")
      yield* Ref.set(cut, true)
      yield* run(16_000, [a.election])
      assert.isFalse(yield* a.election.isLeader)
      assert.strictEqual(yield* Ref.get(running), 0, "interrupted on loss")
      yield* Ref.set(cut, false)
      yield* run(5_000, [a.election])
      assert.strictEqual(yield* Ref.get(running), 1)
      assert.strictEqual(yield* Ref.get(starts), 2)
      yield* Fiber.interrupt(fiber)
    }))

  it.effect("without a skew bound a fresh candidate waits a full duration on an abandoned Lease; with one it takes it at once", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.UTC(2026, 0, 1))
      const store = LeaseStore.memory()
      yield* store.create(key, { holderIdentity: "gone", leaseDurationSeconds: 15, renewTime: "2025-12-31T23:00:00.000000Z" })
      const patient = yield* candidate("a", store)
      yield* run(14_000, [patient.election])
      assert.isFalse(yield* patient.election.isLeader)
      // The first retry after the 15 s runs out comes at most one jittered period (2.4 s) later.
      yield* run(3_500, [patient.election])
      assert.isTrue(yield* patient.election.isLeader)
      yield* Scope.close(patient.scope, Exit.void)

      const store2 = LeaseStore.memory()
      yield* store2.create(key, { holderIdentity: "gone", leaseDurationSeconds: 15, renewTime: "2025-12-31T23:00:00.000000Z" })
      const quick = yield* candidate("a", store2, { maxClockSkew: "5 seconds" })
      yield* run(0, [quick.election])
      assert.isTrue(yield* quick.election.isLeader)
    }))

  it("refuses options that cannot work", () => {
    const bad = (options: Partial<LeaderElection.Options>) =>
      Result.isFailure(LeaderElection.validate({ ...settings, identity: "a", ...options }))
    assert.isFalse(bad({}))
    assert.isTrue(bad({ identity: "" }))
    assert.isTrue(bad({ name: "" }))
    assert.isTrue(bad({ leaseDuration: 0 }))
    assert.isTrue(bad({ renewInterval: 0 }))
    assert.isTrue(bad({ renewInterval: "15 seconds" }))
    assert.isTrue(bad({ renewInterval: "13 seconds" }), "13 s × 1.2 jitter reaches past 15 s")
    assert.isFalse(bad({ renewInterval: "13 seconds", jitter: 0 }))
    assert.isTrue(bad({ jitter: 2 }))
    const failure = LeaderElection.validate({ ...settings, identity: "a", renewInterval: "20 seconds" })
    assert.include(Result.isFailure(failure) ? failure.failure.message : "", "must be shorter than the lease duration")
  })

  it.effect("the layer fails to build on bad options", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(candidate("a", LeaseStore.memory(), { renewInterval: "1 minute" }))
      assert.isTrue(Exit.isFailure(exit))
    }))

  it.effect("a lost creation race is not an error: the loser follows", () =>
    Effect.gen(function*() {
      const store = LeaseStore.memory()
      const [a, b] = yield* Effect.all([candidate("a", store), candidate("b", store)], { concurrency: "unbounded" })
      yield* run(1_000, [a.election, b.election])
      const leading = [yield* a.election.isLeader, yield* b.election.isLeader]
      assert.strictEqual(leading.filter(Boolean).length, 1)
    }))
})
