/**
 * The probe server every tether component runs on its `--health-probe-bind-address`:
 * `/healthz` (the process is alive), `/readyz` (every registered readiness check passes) and
 * `/metrics` (Prometheus text from Effect's metric registry).
 *
 * Components register readiness checks and scrape hooks on the {@link Probes} service instead of
 * serving their own routes, the way controller-runtime's manager aggregates health checks. A
 * scrape hook runs just before `/metrics` is rendered, which is how gauges such as "seconds until
 * the token expires" stay current between reconciles.
 *
 * @since 0.1.0
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Ref } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { createServer } from "node:http"
import type * as ListenAddress from "../domain/ListenAddress.ts"

/**
 * A readiness check: succeeds when ready, fails with a short reason (shown on `/readyz`) when not.
 *
 * @category models
 */
export type ReadinessCheck = Effect.Effect<void, string>

/** @category services */
export class Probes extends Context.Service<Probes, {
  /** Add a named readiness check; `/readyz` answers 200 only when all pass. */
  readonly addReadinessCheck: (name: string, check: ReadinessCheck) => Effect.Effect<void>
  /** Run `hook` before every `/metrics` scrape (keep it cheap and infallible). */
  readonly addScrapeHook: (hook: Effect.Effect<void>) => Effect.Effect<void>
  /** Evaluate every readiness check; the failures by name. */
  readonly readiness: Effect.Effect<ReadonlyArray<{ readonly name: string; readonly reason: string }>>
  /** Run the scrape hooks, then render the Prometheus text. */
  readonly scrape: Effect.Effect<string>
}>()("tether/observability/Probes") {
  /** The registry alone, without a server (embedders that serve their own routes). */
  static readonly layerNoServer = Layer.effect(
    Probes,
    Effect.gen(function*() {
      const checks = yield* Ref.make<ReadonlyArray<readonly [string, ReadinessCheck]>>([])
      const hooks = yield* Ref.make<ReadonlyArray<Effect.Effect<void>>>([])
      const readiness = Effect.gen(function*() {
        const all = yield* Ref.get(checks)
        const results = yield* Effect.forEach(all, ([name, check]) =>
          check.pipe(
            Effect.timeoutOrElse({ duration: "5 seconds", orElse: () => Effect.fail("check timed out") }),
            Effect.match({ onSuccess: () => undefined, onFailure: (reason) => ({ name, reason }) })
          ), { concurrency: "unbounded" })
        return results.filter((r) => r !== undefined)
      })
      const scrape = Effect.gen(function*() {
        for (const hook of yield* Ref.get(hooks)) yield* hook
        return yield* PrometheusMetrics.format()
      })
      return Probes.of({
        addReadinessCheck: (name, check) => Ref.update(checks, (all) => [...all, [name, check] as const]),
        addScrapeHook: (hook) => Ref.update(hooks, (all) => [...all, hook]),
        readiness,
        scrape
      })
    })
  )
}

const routes = HttpRouter.use(Effect.fn(function*(router) {
  const probes = yield* Probes
  yield* router.add("GET", "/healthz", HttpServerResponse.text("ok"))
  yield* router.add(
    "GET",
    "/readyz",
    Effect.map(probes.readiness, (failures) =>
      failures.length === 0
        ? HttpServerResponse.text("ok")
        : HttpServerResponse.text(failures.map((f) => `${f.name}: ${f.reason}`).join("\n") + "\n", { status: 503 }))
  )
  yield* router.add(
    "GET",
    "/metrics",
    Effect.map(probes.scrape, (body) =>
      HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" }))
  )
}))

/**
 * Serve the probes on `address`. Needs {@link Probes} (shared with the components that
 * register checks), so compose with `Layer.provideMerge(Probes.layerNoServer)`.
 *
 * @category layers
 */
export const layerServer = (address: ListenAddress.ListenAddress) =>
  HttpRouter.serve(routes, { disableLogger: true, disableListenLog: true }).pipe(
    Layer.provide(NodeHttpServer.layer(createServer, { port: address.port, ...(address.host ? { host: address.host } : {}) }))
  )

/**
 * The probe registry plus its server: what a component's composition root uses.
 *
 * @category layers
 */
export const layer = (address: ListenAddress.ListenAddress) =>
  layerServer(address).pipe(Layer.provideMerge(Probes.layerNoServer))
