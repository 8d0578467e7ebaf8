/**
 * Rendezvous assignment and the published-view rule: one owner per key whatever the order,
 * minimal movement on join and leave, an even spread, live members from Leases, and never two
 * members allowed to run one key.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import * as LeaseState from "../../src/domain/LeaseState.ts"
import * as Sharding from "../../src/domain/Sharding.ts"

const Name = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,20}$/))
const Keys = Schema.Array(Name).check(Schema.isMinLength(1), Schema.isMaxLength(200))
const Members = Schema.Array(Name).check(Schema.isMinLength(1), Schema.isMaxLength(8))

const distinct = (names: ReadonlyArray<string>) => [...new Set(names)]

describe("Sharding", () => {
  describe("assignment", () => {
    it.prop(
      "every key has exactly one owner among the members, whatever their order or duplicates",
      { keys: Keys, members: Members },
      ({ keys, members }) => {
        const reversed = [...members, ...members].reverse()
        for (const key of keys) {
          const owner = Sharding.owner(key, members)
          assert.include(members, owner)
          assert.strictEqual(Sharding.owner(key, reversed), owner)
        }
        const assigned = Sharding.assign(keys, distinct(members))
        const all = [...assigned.values()].flat()
        assert.strictEqual(all.length, keys.length)
      }
    )

    it.prop(
      "a joining member only takes keys (to itself); a leaving member's keys are the only ones that move",
      { keys: Keys, members: Members, newcomer: Name },
      ({ keys, members, newcomer }) => {
        const before = distinct(members.filter((m) => m !== newcomer))
        if (before.length === 0) return
        const after = [...before, newcomer]
        for (const key of keys) {
          const was = Sharding.owner(key, before)
          const is = Sharding.owner(key, after)
          if (was !== is) assert.strictEqual(is, newcomer, `${key} moved from ${was} to ${is}`)
        }
        const leaving = before[0]!
        const rest = before.slice(1)
        if (rest.length === 0) return
        for (const key of keys) {
          const was = Sharding.owner(key, before)
          if (was !== leaving) assert.strictEqual(Sharding.owner(key, rest), was, `${key} moved though ${was} stayed`)
        }
      }
    )

    it("no members, no owner", () => {
      assert.isUndefined(Sharding.owner("k", []))
    })

    it("spreads 1,000 pairs over 2 to 5 replicas within 20% of the fair share", () => {
      const keys = Array.from({ length: 1000 }, (_, i) => `cluster-${i}/cluster-proxy`)
      for (let n = 2; n <= 5; n++) {
        const members = Array.from({ length: n }, (_, i) => `tether-credential-controller-7d9f8-${i}`)
        const fair = 1000 / n
        for (const [member, owned] of Sharding.assign(keys, members)) {
          assert.isAtLeast(owned.length, fair * 0.8, `${member} of ${n}`)
          assert.isAtMost(owned.length, fair * 1.2, `${member} of ${n}`)
        }
      }
    })

    it("scores are pinned: a changed hash would split keys between old and new replicas in a rolling upgrade", () => {
      assert.strictEqual(Sharding.score("cluster1/cluster-proxy", "replica-a"), 6346411410143980)
      assert.strictEqual(Sharding.score("cluster1/cluster-proxy", "replica-b"), 6283478778600945)
      assert.isBelow(Sharding.score("cluster1/cluster-proxy", "replica-a"), 2 ** 53)
    })
  })

  describe("membership", () => {
    const now = Date.UTC(2026, 0, 1)
    const spec = (holder: string | undefined, renewedAgo: number, seconds = 15): LeaseState.LeaseSpec => ({
      holderIdentity: holder,
      leaseDurationSeconds: seconds,
      renewTime: LeaseState.formatMicroTime(now - renewedAgo)
    })

    it("a member is live while its own Lease is held and unexpired from when it was first seen", () => {
      const members: Array<Sharding.Member> = [
        { identity: "a", spec: spec("a", 1000), view: ["a"], observedAt: now - 1000 },
        { identity: "b", spec: spec("b", 1000), view: ["b"], observedAt: now - 16_000 }, // seen unchanged for too long
        { identity: "c", spec: spec(undefined, 0), view: ["c"], observedAt: now }, // released
        { identity: "d", spec: spec("someone-else", 0), view: ["d"], observedAt: now } // not its own
      ]
      assert.deepStrictEqual(Sharding.live(members, now).map((m) => m.identity), ["a"])
    })

    it("reads and writes views, and an unreadable view claims every key", () => {
      assert.strictEqual(Sharding.formatView(["b", "a", "b"]), "a,b")
      assert.deepStrictEqual(Sharding.parseView("b,a"), ["a", "b"])
      assert.deepStrictEqual(Sharding.parseView(""), [])
      assert.isUndefined(Sharding.parseView("a,,b"))
      assert.isUndefined(Sharding.parseView("A"))
      assert.isTrue(Sharding.claims("any", { identity: "x", view: undefined }))
    })

    it.prop(
      "with any published views, no key is runnable by two members that each read the other's view",
      { keys: Keys, members: Members, views: Schema.Array(Members) },
      ({ keys, members, views }) => {
        const ids = distinct(members)
        const published = ids.map((identity, i) => ({ identity, view: Sharding.view([identity, ...(views[i] ?? ids)]) }))
        for (const key of keys) {
          const runners = published.filter((self) =>
            Sharding.mayRun(key, self.identity, self.view, published.filter((o) => o.identity !== self.identity))
          )
          assert.isAtMost(runners.length, 1, `${key}: ${runners.map((r) => r.identity).join(", ")}`)
        }
      }
    )

    it.prop(
      "once every member has published the same view, every key is runnable by exactly one member",
      { keys: Keys, members: Members },
      ({ keys, members }) => {
        const ids = Sharding.view(members)
        for (const key of keys) {
          const runners = ids.filter((self) =>
            Sharding.mayRun(key, self, ids, ids.filter((o) => o !== self).map((identity) => ({ identity, view: ids })))
          )
          assert.strictEqual(runners.length, 1, key)
        }
      }
    )
  })
})
