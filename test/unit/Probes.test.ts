/**
 * The readiness registry: a failing check is a typed `NotReady` whose reason `/readyz` shows; a
 * check that does not answer within 5 s is not ready (virtual time); a registration ends with its
 * scope. The server: `/readyz` is 503 until a component has registered a check (the server starts
 * first), then follows the checks.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Scope } from "effect"
import { TestClock } from "effect/testing"
import { layer as probeServer, NotReady, notReady, Probes } from "../../src/observability/Probes.ts"
import { freePort } from "../support/local.ts"

describe("Probes", () => {
  it.effect("reports NotReady reasons and timeouts by name, and forgets a closed registration", () =>
    Effect.gen(function*() {
      const probes = yield* Probes
      yield* probes.addReadinessCheck("ok", Effect.void)
      yield* probes.addReadinessCheck("typed", notReady("no managed kubeconfig yet"))
      assert.instanceOf(yield* Effect.flip(notReady("x")), NotReady)
      yield* probes.addReadinessCheck("watches", notReady("watches not synced"))
      yield* probes.addReadinessCheck("hung", Effect.never)
      const scope = yield* Scope.make()
      yield* probes.addReadinessCheck("scoped", notReady("going away")).pipe(Scope.provide(scope))
      const fiber = yield* Effect.forkChild(probes.readiness)
      yield* TestClock.adjust("5 seconds")
      assert.deepStrictEqual(yield* Fiber.join(fiber), [
        { name: "typed", reason: "no managed kubeconfig yet" },
        { name: "watches", reason: "watches not synced" },
        { name: "hung", reason: "check timed out" },
        { name: "scoped", reason: "going away" }
      ])
      yield* Scope.close(scope, Exit.void)
      const after = yield* Effect.forkChild(probes.readiness)
      yield* TestClock.adjust("5 seconds")
      assert.deepStrictEqual((yield* Fiber.join(after)).map((f) => f.name), ["typed", "watches", "hung"])
    }).pipe(Effect.provide(Probes.layerNoServer)))

  it.live("/readyz is 503 while no check is registered, then 200 once the registered ones pass", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const readyz = Effect.promise(async () => {
        const answer = await fetch(`http://127.0.0.1:${port}/readyz?verbose`)
        return { status: answer.status, body: await answer.text() }
      })
      yield* Effect.gen(function*() {
        const starting = yield* readyz
        assert.strictEqual(starting.status, 503)
        assert.include(starting.body, "[-]startup failed: no component has registered its readiness checks yet")
        const probes = yield* Probes
        const scope = yield* Scope.make()
        yield* probes.addReadinessCheck("relay", Effect.void).pipe(Scope.provide(scope))
        assert.deepStrictEqual(yield* readyz, { status: 200, body: "[+]relay ok\nreadyz check passed\n" })
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual((yield* readyz).status, 503)
      }).pipe(Effect.provide(probeServer({ host: "127.0.0.1", port })))
    }))
})
