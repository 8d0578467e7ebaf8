/**
 * The TokenReview chain with scripted clusters: order, fall-through only on a recognised
 * rejection, fail closed otherwise, and the cache (answers and refusals kept for the TTL,
 * failures to ask not kept, one review per token at a time, a review outliving the caller that
 * started it, tokens never in messages).
 */
import type { V1TokenReview } from "@kubernetes/client-node"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Redacted } from "effect"
import { TestClock } from "effect/testing"
import * as HttpHeaders from "../../src/domain/HttpHeaders.ts"
import type * as Impersonation from "../../src/domain/Impersonation.ts"
import { KubeError } from "../../src/kube/KubeError.ts"
import * as TokenReviewChain from "../../src/serviceproxy/TokenReviewChain.ts"

type Script = (token: string) => Effect.Effect<V1TokenReview["status"], KubeError>

/** A cluster that answers by `script` and counts its reviews. */
const cluster = (source: Impersonation.Source, script: Script) => {
  const calls: Array<string> = []
  const provider: TokenReviewChain.Provider = {
    source,
    createTokenReview: (review) =>
      Effect.suspend(() => {
        const token = review.spec.token ?? ""
        calls.push(token)
        return Effect.map(script(token), (status) => ({ ...review, ...(status === undefined ? {} : { status }) }))
      })
  }
  return { provider, calls }
}

const user = (username: string) => ({ authenticated: true, user: { username, groups: ["g"] } })
const rejected = { error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]", user: {} }
const transportError = (cluster: string) =>
  new KubeError({ cluster, operation: "create tokenreview", reason: "Unauthorized", status: 401, detail: "Unauthorized" })

const token = (value: string) => Redacted.make(value)

describe("TokenReviewChain", () => {
  it.effect("asks the managed cluster first, then the hub, and says which one vouched", () =>
    Effect.gen(function*() {
      const managed = cluster("managed", (t) => Effect.succeed(t === "m" ? user("system:serviceaccount:a:b") : rejected))
      const hub = cluster("hub", (t) => Effect.succeed(t === "h" ? user("system:serviceaccount:c:d") : rejected))
      const chain = yield* TokenReviewChain.make([managed.provider, hub.provider], { cacheTtl: 0 })
      const fromManaged = yield* chain.authenticate(token("m"))
      assert.strictEqual(fromManaged.source, "managed")
      assert.strictEqual(fromManaged.user.username, "system:serviceaccount:a:b")
      assert.deepStrictEqual(hub.calls, [], "the hub is not asked when the managed cluster knows the token")
      const fromHub = yield* chain.authenticate(token("h"))
      assert.strictEqual(fromHub.source, "hub")
      const neither = yield* Effect.flip(chain.authenticate(token("x")))
      assert.strictEqual(neither.reason, "NotAuthenticated")
      assert.strictEqual(neither.message, "authentication failed: token is neither valid for the managed cluster nor the hub cluster")
      const none = yield* Effect.flip(chain.authenticate(undefined))
      assert.strictEqual(none.reason, "NoToken")
    }))

  it.effect("fails closed on an unrecognised status.error, an answer without a status or a failed call: the next cluster is not asked", () =>
    Effect.gen(function*() {
      const hub = cluster("hub", () => Effect.succeed(user("would-have-passed")))
      for (const script of [
        (() => Effect.succeed({ error: "etcd cluster is unavailable", user: {} })) as Script,
        (() => Effect.succeed({ error: "some error", authenticated: true, user: { username: "u" } })) as Script,
        // A 200 whose body is no TokenReview answer (no status) is not a rejection either.
        (() => Effect.void) as Script,
        (() => Effect.fail(transportError("managed"))) as Script
      ]) {
        const managed = cluster("managed", script)
        const chain = yield* TokenReviewChain.make([managed.provider, hub.provider], { cacheTtl: "10 seconds" })
        const error = yield* Effect.flip(chain.authenticate(token("t")))
        assert.strictEqual(error.reason, "ReviewFailed")
        assert.strictEqual(error.message, "managed cluster authentication failed: the TokenReview did not succeed")
      }
      assert.deepStrictEqual(hub.calls, [])
      const failingHub = cluster("hub", () => Effect.fail(transportError("hub")))
      const chain = yield* TokenReviewChain.make(
        [cluster("managed", () => Effect.succeed(rejected)).provider, failingHub.provider],
        { cacheTtl: 0 }
      )
      assert.strictEqual((yield* Effect.flip(chain.authenticate(token("t")))).message, "hub cluster authentication failed: the TokenReview did not succeed")
    }))

  it.effect("uses the configured rejection patterns", () =>
    Effect.gen(function*() {
      const managed = cluster("managed", () => Effect.succeed({ error: "Token has expired", user: {} }))
      const hub = cluster("hub", () => Effect.succeed(user("h")))
      const strict = yield* TokenReviewChain.make([managed.provider, hub.provider], { cacheTtl: 0 })
      assert.strictEqual((yield* Effect.flip(strict.authenticate(token("t")))).reason, "ReviewFailed")
      const lenient = yield* TokenReviewChain.make([managed.provider, hub.provider], { cacheTtl: 0, errorPatterns: ["token has expired"] })
      assert.strictEqual((yield* lenient.authenticate(token("t"))).source, "hub")
    }))

  it.effect("caches answers and refusals for the TTL, but not failures to ask", () =>
    Effect.gen(function*() {
      let down = true
      const managed = cluster("managed", (t) =>
        t === "flaky" && down ? Effect.fail(transportError("managed")) : Effect.succeed(t === "good" ? user("u") : rejected))
      const chain = yield* TokenReviewChain.make([managed.provider], { cacheTtl: "10 seconds" })
      for (let i = 0; i < 3; i++) {
        yield* chain.authenticate(token("good"))
        yield* Effect.flip(chain.authenticate(token("bad")))
      }
      assert.deepStrictEqual(managed.calls, ["good", "bad"])
      yield* TestClock.adjust("11 seconds")
      yield* chain.authenticate(token("good"))
      assert.deepStrictEqual(managed.calls, ["good", "bad", "good"])

      assert.strictEqual((yield* Effect.flip(chain.authenticate(token("flaky")))).reason, "ReviewFailed")
      down = false
      assert.strictEqual((yield* Effect.flip(chain.authenticate(token("flaky")))).reason, "NotAuthenticated")
      assert.deepStrictEqual(managed.calls.filter((t) => t === "flaky").length, 2)
    }))

  it.effect("shares one review among concurrent callers with the same token", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const managed = cluster("managed", () => Effect.as(Deferred.await(gate), user("u")))
      const chain = yield* TokenReviewChain.make([managed.provider], { cacheTtl: "10 seconds" })
      const fibers = yield* Effect.forEach([1, 2, 3], () => Effect.forkChild(chain.authenticate(token("same"))))
      yield* Effect.yieldNow
      yield* Deferred.succeed(gate, undefined)
      const results = yield* Effect.forEach(fibers, Fiber.join)
      assert.deepStrictEqual(results.map((r) => r.user.username), ["u", "u", "u"])
      assert.strictEqual(managed.calls.length, 1)
    }))

  it.effect("a caller that forgets its token and leaves does not spoil the review others wait on", () =>
    Effect.gen(function*() {
      // The managed cluster rejects the token once the gate opens; only then is the hub asked,
      // so the token is read again after the first caller has gone.
      const gate = yield* Deferred.make<void>()
      const managed = cluster("managed", () => Effect.as(Deferred.await(gate), rejected))
      const hub = cluster("hub", (t) => Effect.succeed(t === "shared" ? user("u") : rejected))
      const chain = yield* TokenReviewChain.make([managed.provider, hub.provider], { cacheTtl: "10 seconds" })
      // The first caller starts the review, then is interrupted and wipes its token, as the
      // request paths do (HttpHeaders.forgetToken).
      const first = token("shared")
      const leaving = yield* Effect.forkChild(chain.authenticate(first).pipe(Effect.ensuring(Effect.sync(() => HttpHeaders.forgetToken(first)))))
      yield* Effect.yieldNow
      const staying = yield* Effect.forkChild(chain.authenticate(token("shared")))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(leaving)
      assert.throws(() => Redacted.value(first))
      yield* Deferred.succeed(gate, undefined)
      assert.strictEqual((yield* Fiber.join(staying)).user.username, "u")
      assert.deepStrictEqual([...managed.calls, ...hub.calls], ["shared", "shared"])
    }))

  it.effect("reviews a token in use again ahead of expiry, in the background, and never answers past the TTL", () =>
    Effect.gen(function*() {
      let gate = yield* Deferred.make<void>()
      let answer: Script = () => Effect.succeed(user("u"))
      const managed = cluster("managed", (t) => Effect.andThen(Deferred.await(gate), answer(t)))
      const chain = yield* TokenReviewChain.make([managed.provider], { cacheTtl: "10 seconds" })
      yield* Deferred.succeed(gate, undefined)
      yield* chain.authenticate(token("t"))
      /** Let the background review run until `done` holds (bounded: it must hold within a few turns). */
      const settled = (done: () => boolean) =>
        Effect.gen(function*() {
          for (let turn = 0; turn < 50 && !done(); turn++) yield* Effect.yieldNow
          assert.isTrue(done())
        })
      const known = () => chain.known("t")

      // Before the last quarter of the TTL a lookup only reads.
      yield* TestClock.adjust("7 seconds")
      assert.isTrue(known() !== undefined && Exit.isSuccess(known()!))
      assert.strictEqual(managed.calls.length, 1)
      // In it, a lookup starts one review and keeps answering meanwhile; further lookups start no other.
      gate = yield* Deferred.make<void>()
      yield* TestClock.adjust("1 second")
      assert.isTrue(Exit.isSuccess(known()!))
      yield* settled(() => managed.calls.length === 2)
      assert.isTrue(Exit.isSuccess(known()!))
      assert.strictEqual(managed.calls.length, 2)
      // Its answer counts from when it was asked (8 s): valid past the first answer's expiry (10 s), not past 18 s.
      yield* Deferred.succeed(gate, undefined)
      yield* TestClock.adjust("3 seconds")
      yield* settled(() => known() !== undefined)
      yield* TestClock.adjust("7 seconds")
      assert.isUndefined(known())
      assert.strictEqual(managed.calls.length, 2)

      // A refresh that fails outright keeps the answer until its TTL ends and is retried a tenth of a TTL later, not per lookup.
      yield* chain.authenticate(token("t"))
      assert.strictEqual(managed.calls.length, 3)
      answer = () => Effect.fail(transportError("managed"))
      yield* TestClock.adjust("8 seconds")
      known()
      yield* settled(() => managed.calls.length === 4)
      for (let i = 0; i < 3; i++) assert.isTrue(Exit.isSuccess(known()!))
      yield* Effect.yieldNow
      assert.strictEqual(managed.calls.length, 4)
      yield* TestClock.adjust("1 second")
      known()
      yield* settled(() => managed.calls.length === 5)
      yield* TestClock.adjust("1 second")
      assert.isUndefined(known())

      // A refusal from the refresh replaces the answer as soon as it comes.
      answer = () => Effect.succeed(user("u"))
      yield* chain.authenticate(token("t"))
      answer = () => Effect.succeed(rejected)
      yield* TestClock.adjust("8 seconds")
      known()
      yield* settled(() => known() !== undefined && Exit.isFailure(known()!))
      assert.strictEqual(Exit.isFailure(known()!) ? "refused" : "accepted", "refused")
    }))

  it.effect("bounds a review in time and never puts the token in a message", () =>
    Effect.gen(function*() {
      const secret = "very-secret-token-value"
      const slow = cluster("managed", () => Effect.never)
      const chain = yield* TokenReviewChain.make([slow.provider], { cacheTtl: 0, reviewTimeout: "2 seconds" })
      const fiber = yield* Effect.forkChild(Effect.flip(chain.authenticate(token(secret))))
      yield* TestClock.adjust("3 seconds")
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error.reason, "ReviewFailed")
      const echoing = cluster("managed", (t) => Effect.succeed({ error: `bad token ${t}`, user: {} }))
      const other = yield* TokenReviewChain.make([echoing.provider], { cacheTtl: 0 })
      const refused = yield* Effect.flip(other.authenticate(token(secret)))
      assert.notInclude(refused.message, secret)
    }))
})
