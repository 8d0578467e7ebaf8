/**
 * The supervisor on virtual time, with components the test makes fail:
 * - a component that fails after starting is restarted, alone, after a delay within the
 *   backoff's bounds, growing with each failure and reset after a long healthy run;
 * - `/readyz` names the failing component and why, and passes again once it runs;
 * - a defect counts as a failure like any other, and a restart count shows in the metric;
 * - a component that cannot start the first time fails the run with its name, and the others
 *   are stopped; so does a restart failing with a terminal error (a real EADDRINUSE);
 * - interruption stops the components in reverse order;
 * - checks registered by a component are withdrawn when it stops, so restarts do not pile them up.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Layer, Logger, Queue, Schema } from "effect"
import { TestClock } from "effect/testing"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Supervisor from "../../src/agent/Supervisor.ts"
import * as Backoff from "../../src/domain/Backoff.ts"
import * as ListenAddress from "../../src/domain/ListenAddress.ts"
import * as Server from "../../src/http/Server.ts"
import { Probes } from "../../src/observability/Probes.ts"

class Boom extends Schema.TaggedError<Boom>()("Boom", { message: Schema.String }) {}

const backoff = Backoff.policy("1 second", "1 minute")

/** A component whose every life the test can end: `kill(message)` fails the running life. */
const killable = (name: string, log: Array<string>) =>
  Effect.gen(function*() {
    const kills = yield* Queue.unbounded<string>()
    const component: Supervisor.Component<Probes> = {
      name,
      start: Effect.gen(function*() {
        log.push(`start ${name}`)
        const probes = yield* Probes
        yield* probes.addReadinessCheck(`${name}/self`, Effect.void)
        yield* Effect.addFinalizer(() => Effect.sync(() => void log.push(`stop ${name}`)))
      }).pipe(Effect.as(Effect.flatMap(Queue.take(kills), (message) => Effect.fail(new Boom({ message })))))
    }
    return { component, kill: (message: string) => Queue.offer(kills, message) }
  })

const quiet = Logger.layer([])

/** Advance virtual time in 100 ms steps so every timer fires at its own time. */
const advance = (millis: number) =>
  Effect.gen(function*() {
    yield* TestClock.adjust(0)
    for (let t = 0; t < millis; t += 100) yield* TestClock.adjust(Duration.millis(Math.min(100, millis - t)))
  })

const starts = (log: ReadonlyArray<string>, name: string) => log.filter((line) => line === `start ${name}`).length

describe("Supervisor", () => {
  it.effect("restarts only the failed component, after a backoff within bounds, and /readyz says which", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const a = yield* killable("relay", log)
      const b = yield* killable("lease", log)
      const probes = yield* Probes
      yield* Effect.forkScoped(Supervisor.run([a.component, b.component], { backoff }))
      yield* advance(0)
      assert.deepStrictEqual(yield* probes.readiness, [])
      assert.deepStrictEqual((yield* probes.checks).map((c) => c.name), ["relay", "lease", "relay/self", "lease/self"])

      yield* a.kill("listener closed")
      yield* advance(0)
      const failures = yield* probes.readiness
      assert.deepStrictEqual(failures, [{ name: "relay", reason: "restarting after a failure (attempt 1): listener closed" }])
      assert.include(log, "stop relay")
      assert.notInclude(log, "stop lease")
      // No restart before the shortest delay, one by the longest.
      const first = Backoff.bounds(backoff, 0)
      yield* advance(first.min - 100)
      assert.strictEqual(starts(log, "relay"), 1)
      yield* advance(first.max - first.min + 200)
      assert.strictEqual(starts(log, "relay"), 2)
      assert.strictEqual(starts(log, "lease"), 1)
      assert.deepStrictEqual(yield* probes.readiness, [])
      // The withdrawn check of the first life is gone: one self-check per component.
      assert.strictEqual((yield* probes.checks).filter((c) => c.name === "relay/self").length, 1)

      // A second failure soon after waits about twice as long.
      yield* a.kill("again")
      yield* advance(0)
      const second = Backoff.bounds(backoff, 1)
      yield* advance(second.min - 100)
      assert.strictEqual(starts(log, "relay"), 2)
      yield* advance(second.max - second.min + 200)
      assert.strictEqual(starts(log, "relay"), 3)

      // After a long healthy run, the next failure restarts after the first delay again.
      yield* advance(Duration.toMillis(Duration.minutes(3)))
      yield* a.kill("much later")
      yield* advance(first.max + 100)
      assert.strictEqual(starts(log, "relay"), 4)
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))

  it.effect("a defect in a running component is a failure like any other and is counted", () =>
    Effect.gen(function*() {
      const probes = yield* Probes
      let lives = 0
      const defective: Supervisor.Component<never> = {
        name: "provisioner",
        start: Effect.sync(() => {
          lives++
          return lives === 1 ? Effect.die(new Error("bug in the loop")) : Effect.never
        })
      }
      yield* Effect.forkScoped(Supervisor.run([defective], { backoff }))
      yield* advance(0)
      assert.deepStrictEqual(yield* probes.readiness, [{ name: "provisioner", reason: "restarting after a failure (attempt 1): bug in the loop" }])
      yield* advance(Backoff.bounds(backoff, 0).max + 100)
      assert.strictEqual(lives, 2)
      assert.deepStrictEqual(yield* probes.readiness, [])
      const text = yield* probes.scrape
      assert.match(text, /tether_component_restarts_total\{component="provisioner"\} 1/)
      assert.match(text, /tether_component_up\{component="provisioner"\} 1/)
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))

  it.effect("a component that cannot start the first time fails the run, and the others stop", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const good = yield* killable("provisioner", log)
      const broken: Supervisor.Component<never> = {
        name: "service-proxy",
        start: Effect.fail(new Boom({ message: "cannot listen on :7443: address already in use" }))
      }
      const exit = yield* Effect.exit(Effect.scoped(Supervisor.run([good.component, broken], { backoff })))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const error = exit.cause.reasons.find((r) => r._tag === "Fail")
        assert.deepStrictEqual(
          error?._tag === "Fail" ? error.error : undefined,
          new Supervisor.ComponentStartError({ component: "service-proxy", message: "cannot listen on :7443: address already in use" })
        )
      }
      assert.deepStrictEqual(log, ["start provisioner", "stop provisioner"])
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))

  it.effect("a failed restart is retried, not fatal", () =>
    Effect.gen(function*() {
      const probes = yield* Probes
      let lives = 0
      const flaky: Supervisor.Component<never> = {
        name: "apiserver-proxy",
        start: Effect.suspend(() => {
          lives++
          if (lives === 1) return Effect.succeed(Effect.fail(new Boom({ message: "listener closed" })))
          if (lives === 2) return Effect.fail(new Boom({ message: "address already in use" }))
          return Effect.succeed(Effect.never)
        })
      }
      const fiber = yield* Effect.forkScoped(Supervisor.run([flaky], { backoff }))
      yield* advance(Backoff.bounds(backoff, 0).max + 100)
      assert.strictEqual(lives, 2)
      assert.deepStrictEqual(yield* probes.readiness, [{
        name: "apiserver-proxy",
        reason: "restarting after a failure (attempt 2): address already in use"
      }])
      yield* advance(Backoff.bounds(backoff, 1).max + 100)
      assert.strictEqual(lives, 3)
      assert.deepStrictEqual(yield* probes.readiness, [])
      assert.isUndefined(fiber.pollUnsafe())
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))

  it.effect("a restart that fails for good (its port taken meanwhile) ends the run; the listen error says it is terminal", () =>
    Effect.gen(function*() {
      // Another process takes the port while the component is down: a real EADDRINUSE.
      const squatter = Net.createServer()
      yield* Effect.callback<void>((resume) => void squatter.listen(0, "127.0.0.1", () => resume(Effect.void)))
      yield* Effect.addFinalizer(() => Effect.sync(() => void squatter.close()))
      const port = (squatter.address() as Net.AddressInfo).port
      const taken = yield* Effect.flip(Server.listen(Http.createServer(), { host: "127.0.0.1", port }))
      assert.strictEqual(taken.code, "EADDRINUSE")
      assert.isFalse(taken.retryable)
      assert.isTrue(new ListenAddress.ListenError({ message: "the listener closed" }).retryable)
      let lives = 0
      const relay: Supervisor.Component<never> = {
        name: "service-relay",
        start: Effect.suspend(() => {
          lives++
          return lives === 1
            ? Effect.succeed(Effect.fail(new ListenAddress.ListenError({ message: "the listener on :8000 closed" })))
            : Effect.fail(taken)
        })
      }
      const exit = yield* Effect.exit(Effect.scoped(Effect.gen(function*() {
        const fiber = yield* Effect.forkScoped(Supervisor.run([relay], { backoff }))
        yield* advance(Backoff.bounds(backoff, 0).max + 100)
        return yield* Fiber.join(fiber)
      })))
      assert.strictEqual(lives, 2)
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const error = exit.cause.reasons.find((r) => r._tag === "Fail")
        assert.deepStrictEqual(
          error?._tag === "Fail" ? error.error : undefined,
          new Supervisor.ComponentStartError({ component: "service-relay", message: taken.message })
        )
      }
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))

  it.effect("interruption stops the components in reverse order", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const names = ["provisioner", "addon-lease", "apiserver-proxy", "service-proxy"]
      const components = yield* Effect.forEach(names, (name) => Effect.map(killable(name, log), (k) => k.component))
      const fiber = yield* Effect.forkScoped(Effect.scoped(Supervisor.run(components, { backoff })))
      yield* advance(0)
      assert.strictEqual(log.length, names.length)
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(log.filter((line) => line.startsWith("stop")), names.map((n) => `stop ${n}`).reverse())
    }).pipe(Effect.provide(Layer.merge(Probes.layerNoServer, quiet))))
})

describe("Backoff", () => {
  it("doubles from the initial delay up to the cap", () => {
    const policy = Backoff.policy("1 second", "1 minute")
    assert.deepStrictEqual(Backoff.bounds(policy, 0), { min: 800, max: 1200 })
    assert.deepStrictEqual(Backoff.bounds(policy, 3), { min: 6400, max: 9600 })
    assert.deepStrictEqual(Backoff.bounds(policy, 20), { min: 48000, max: 72000 })
  })

  it.prop(
    "every delay lies within its attempt's bounds, and never shrinks as attempts grow (same draw)",
    [
      Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 60 })),
      Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 0.999999 })),
      Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600_000 }))
    ],
    ([attempt, draw, initial]) => {
      const policy = Backoff.policy(Duration.millis(initial), Duration.millis(initial * 50))
      const millis = Duration.toMillis(Backoff.delay(policy, attempt, draw))
      const { max, min } = Backoff.bounds(policy, attempt)
      assert.isAtLeast(millis, min)
      assert.isAtMost(millis, max)
      assert.isAtMost(millis, Duration.toMillis(Backoff.delay(policy, attempt + 1, draw)))
    }
  )
})
