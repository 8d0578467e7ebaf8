/**
 * Lease membership on virtual time with an in-memory Lease store shared by the replicas:
 * replicas that join split the keys with every key served by exactly one; a replica cut off
 * stops before the others take over, and they take over within a lease duration and a round;
 * a replica that leaves hands its keys over at the others' next round. At every sampled instant
 * no key is allowed to two replicas.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as Membership from "../../src/controller/Membership.ts"
import * as Sharding from "../../src/domain/Sharding.ts"

const keys = Array.from({ length: 200 }, (_, i) => `cluster-${i}/cluster-proxy`)
const leaseDuration = 15_000
const renewInterval = 2_000

interface Replica {
  readonly identity: string
  readonly membership: Membership.Membership["Service"]
  readonly scope: Scope.Closeable
  readonly quiesced: Array<number>
  partitioned: boolean
}

const start = (memory: ReturnType<typeof Membership.memory>, identity: string) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const replica: { -readonly [K in keyof Replica]: Replica[K] } = {
      identity,
      membership: undefined as unknown as Replica["membership"],
      scope,
      quiesced: [],
      partitioned: false
    }
    replica.membership = yield* Membership.make(
      {
        namespace: "tether",
        group: "credential-controller",
        identity,
        leaseDuration: Duration.millis(leaseDuration),
        renewInterval: Duration.millis(renewInterval),
        jitter: 0,
        quiesce: (keep) =>
          Effect.gen(function*() {
            const dropped = keys.filter((k) => !keep(k))
            replica.quiesced.push(dropped.length)
            // What is being stopped must not be allowed to start again meanwhile.
            for (const key of dropped) {
              if (replica.membership !== undefined) assert.isFalse(yield* replica.membership.allows(key), `${key} while quiescing`)
            }
          })
      },
      memory.store(() => replica.partitioned)
    ).pipe(Scope.provide(scope))
    return replica as Replica
  })

/** Who may run each key now. */
const owners = (replicas: ReadonlyArray<Replica>) =>
  Effect.gen(function*() {
    const snapshots = yield* Effect.forEach(replicas, (r) => r.membership.snapshot)
    return keys.map((key) => replicas.filter((r, i) => Membership.allows(snapshots[i]!, r.identity, key)).map((r) => r.identity))
  })

/** Advance `total` ms in steps, checking after each that no key has two runners. */
const watch = (replicas: ReadonlyArray<Replica>, total: number, step = 250) =>
  Effect.gen(function*() {
    for (let t = 0; t < total; t += step) {
      yield* TestClock.adjust(Duration.millis(step))
      const now = yield* owners(replicas)
      now.forEach((runners, i) => assert.isAtMost(runners.length, 1, `${keys[i]} allowed to ${runners.join(" and ")}`))
    }
  })

const everyKeyOnce = (replicas: ReadonlyArray<Replica>) =>
  Effect.gen(function*() {
    const now = yield* owners(replicas)
    now.forEach((runners, i) => assert.strictEqual(runners.length, 1, `${keys[i]}: ${runners.join(", ") || "nobody"}`))
    return now
  })

describe("Membership", () => {
  it.effect("replicas that join split the keys by rendezvous hashing, each key to exactly one", () =>
    Effect.gen(function*() {
      const memory = Membership.memory()
      const a = yield* start(memory, "replica-a")
      yield* watch([a], 3_000)
      yield* everyKeyOnce([a])
      const b = yield* start(memory, "replica-b")
      const c = yield* start(memory, "replica-c")
      yield* watch([a, b, c], 3 * renewInterval)
      const split = yield* everyKeyOnce([a, b, c])
      const expected = Sharding.assign(keys, ["replica-a", "replica-b", "replica-c"])
      for (const r of [a, b, c]) {
        assert.deepStrictEqual(keys.filter((_, i) => split[i]![0] === r.identity), expected.get(r.identity))
      }
      // a gave keys away when b and c joined: it quiesced them before publishing.
      assert.isTrue(a.quiesced.some((n) => n > 0))
    }))

  it.effect("a replica cut off stops before the others take over, and they do within a lease duration and two rounds", () =>
    Effect.gen(function*() {
      const memory = Membership.memory()
      const a = yield* start(memory, "replica-a")
      const b = yield* start(memory, "replica-b")
      yield* watch([a, b], 3 * renewInterval)
      yield* everyKeyOnce([a, b])
      b.partitioned = true
      yield* watch([a, b], leaseDuration)
      // b fenced itself: it allows nothing and quiesced everything.
      assert.strictEqual((yield* owners([b])).filter((r) => r.length > 0).length, 0)
      assert.strictEqual(b.quiesced.at(-1), keys.length)
      yield* watch([a, b], 2 * renewInterval)
      yield* everyKeyOnce([a])
      // b comes back: it gets its share again, never overlapping with a.
      b.partitioned = false
      yield* watch([a, b], 3 * renewInterval)
      yield* everyKeyOnce([a, b])
    }))

  it.effect("a replica that leaves releases its Lease; the others take its keys at their next round", () =>
    Effect.gen(function*() {
      const memory = Membership.memory()
      const a = yield* start(memory, "replica-a")
      const b = yield* start(memory, "replica-b")
      yield* watch([a, b], 3 * renewInterval)
      yield* everyKeyOnce([a, b])
      yield* Scope.close(b.scope, Exit.void)
      assert.strictEqual(b.quiesced.at(-1), keys.length)
      assert.strictEqual(memory.leases.get("tether/credential-controller-replica-b")?.spec?.holderIdentity, undefined)
      yield* watch([a], 2 * renewInterval + 500)
      yield* everyKeyOnce([a])
    }))

  it("while a new view is being applied, only keys owned under both the old and the new view are allowed", () => {
    const old = ["replica-a"]
    const next = ["replica-a", "replica-b"]
    // b has published a view in which it claims nothing yet, so only narrowing holds a's lost keys back.
    const snapshot: Membership.Snapshot = { published: old, narrowedTo: next, others: [{ identity: "replica-b", view: ["replica-a"] }] }
    for (const key of keys) {
      const stays = Sharding.owner(key, next) === "replica-a"
      assert.strictEqual(Membership.allows(snapshot, "replica-a", key), stays, key)
      assert.isTrue(Membership.allows({ ...snapshot, narrowedTo: undefined }, "replica-a", key))
    }
    assert.isFalse(Membership.allows({ published: undefined, narrowedTo: undefined, others: [] }, "replica-a", keys[0]!))
  })

  it.effect("bad options fail with a clear error", () =>
    Effect.gen(function*() {
      const memory = Membership.memory()
      const attempt = (overrides: Partial<Membership.Options>) =>
        Membership.make({
          namespace: "tether",
          group: "credential-controller",
          identity: "replica-a",
          leaseDuration: "15 seconds",
          renewInterval: "2 seconds",
          quiesce: () => Effect.void,
          ...overrides
        }, memory.store()).pipe(Effect.flip, Effect.map((e) => e.message))
      assert.match(yield* attempt({ identity: "Replica_A" }), /identity "Replica_A" must be a DNS subdomain name/)
      assert.match(yield* attempt({ renewInterval: "10 seconds" }), /must fit at least twice into the lease duration/)
      assert.match(yield* attempt({ namespace: "" }), /namespace is required/)
    }))
})
