/**
 * Lease membership on a real apiserver: two replicas write their labelled member Leases with
 * their views, split the keys with each key to exactly one, and when one leaves the other takes
 * all keys within two rounds; a Lease of another group is not a member.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as Membership from "../../src/controller/Membership.ts"
import * as Sharding from "../../src/domain/Sharding.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"

const keys = Array.from({ length: 100 }, (_, i) => `cluster-${i}/cluster-proxy`)

describe.skipIf(noApiserver)("Membership (real apiserver)", () => {
  let scope: Scope.Closeable
  let server: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    server = await Effect.runPromise(Apiserver.make({ name: "membership" }).pipe(Scope.provide(scope)))
  }, 120_000)
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.live("two replicas split the keys; when one leaves the other serves them all", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(server, "tether")
      const client = ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(server) })
      // A Lease of another group with a live holder must not count.
      yield* client.createLease("tether", {
        metadata: { name: "other-x", labels: { [Membership.groupLabel]: "other" } },
        spec: { holderIdentity: "x", leaseDurationSeconds: 3600 }
      })
      const join = (identity: string, replicaScope: Scope.Scope) =>
        Membership.make({
          namespace: "tether",
          group: "credential-controller",
          identity,
          leaseDuration: "6 seconds",
          renewInterval: "1 second",
          quiesce: () => Effect.void
        }, Membership.fromClient(client)).pipe(Scope.provide(replicaScope))
      const scopeA = yield* Scope.make()
      const scopeB = yield* Scope.make()
      const a = yield* join("replica-a", scopeA)
      const b = yield* join("replica-b", scopeB)

      const runners = Effect.gen(function*() {
        const [sa, sb] = [yield* a.snapshot, yield* b.snapshot]
        return keys.map((key) =>
          [Membership.allows(sa, "replica-a", key) ? "replica-a" : "", Membership.allows(sb, "replica-b", key) ? "replica-b" : ""]
            .filter((x) => x !== "")
        )
      })
      const expected = Sharding.assign(keys, ["replica-a", "replica-b"])
      const split = (now: ReadonlyArray<ReadonlyArray<string>>) =>
        now.every((r, i) => r.length === 1 && r[0] === Sharding.owner(keys[i]!, ["replica-a", "replica-b"]))
      yield* until(runners, split, "each key allowed to exactly its rendezvous owner", { timeout: "20 seconds" })
      assert.isAbove(expected.get("replica-a")!.length, 0)
      assert.isAbove(expected.get("replica-b")!.length, 0)

      const lease = yield* client.getLease("tether", "credential-controller-replica-a")
      assert.strictEqual(lease.spec?.holderIdentity, "replica-a")
      assert.strictEqual(lease.metadata?.labels?.[Membership.groupLabel], "credential-controller")
      assert.strictEqual(lease.metadata?.annotations?.[Sharding.viewAnnotation], "replica-a,replica-b")

      yield* Scope.close(scopeB, Exit.void)
      const released = yield* client.getLease("tether", "credential-controller-replica-b")
      assert.isUndefined(released.spec?.holderIdentity)
      // Within less than the 6 s lease duration: the released Lease is not waited out.
      yield* until(runners, (now) => now.every((r) => r.length === 1 && r[0] === "replica-a"), "replica-a serves every key", {
        timeout: "5 seconds"
      })
      yield* Scope.close(scopeA, Exit.void)
    }), 60_000)
})
