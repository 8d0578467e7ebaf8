/**
 * The probe server every tether component runs on its `--health-probe-bind-address`:
 * `/healthz` (the process is alive), `/readyz` (at least one readiness check registered, and all pass) and
 * `/metrics` (Prometheus text from Effect's metric registry).
 *
 * Components register readiness checks and scrape hooks on the {@link Probes} service instead of
 * serving their own routes, the way controller-runtime's manager aggregates health checks. A
 * scrape hook runs just before `/metrics` is rendered, which is how gauges such as "seconds until
 * the token expires" stay current between reconciles.
 *
 * @since 0.1.0
 */
import { NodeFileSystem, NodeHttpPlatform, NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Schema, type Scope } from "effect"
import { Etag, HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { createServer } from "node:http"
import * as ListenAddress from "../domain/ListenAddress.ts"

/**
 * A readiness check failed: `reason` is the short text `/readyz` shows. Not an error to retry
 * or stop on: the next probe asks again.
 *
 * @category errors
 */
export class NotReady extends Schema.TaggedError<NotReady>()("NotReady", {
  reason: Schema.String
}) {}

/**
 * Fail a readiness check with `reason`.
 *
 * @category constructors
 */
export const notReady = (reason: string): Effect.Effect<never, NotReady> => Effect.fail(new NotReady({ reason }))

/**
 * A readiness check: succeeds when ready, fails with {@link NotReady} when not.
 *
 * @category models
 */
export type ReadinessCheck = Effect.Effect<void, NotReady>

/**
 * The result of one readiness check; `reason` is set when it failed.
 *
 * @category models
 */
export interface CheckResult {
  readonly name: string
  readonly reason: string | undefined
}

/** @category services */
export class Probes extends Context.Service<Probes, {
  /**
   * Add a named readiness check for as long as the calling scope lives; `/readyz` answers 200
   * only when all pass. A component that is restarted registers its checks again without
   * leaving the old ones behind.
   */
  readonly addReadinessCheck: (name: string, check: ReadinessCheck) => Effect.Effect<void, never, Scope.Scope>
  /** Run `hook` before every `/metrics` scrape while the calling scope lives (keep it cheap and infallible). */
  readonly addScrapeHook: (hook: Effect.Effect<void>) => Effect.Effect<void, never, Scope.Scope>
  /** Evaluate every readiness check; each by name, in registration order. */
  readonly checks: Effect.Effect<ReadonlyArray<CheckResult>>
  /** Evaluate every readiness check; the failures by name. */
  readonly readiness: Effect.Effect<ReadonlyArray<{ readonly name: string; readonly reason: string }>>
  /** Run the scrape hooks, then render the Prometheus text. */
  readonly scrape: Effect.Effect<string>
}>()("tether/observability/Probes") {
  /** The registry alone, without a server (embedders that serve their own routes). */
  static readonly layerNoServer = Layer.sync(Probes, () => {
    // Registrations are keyed by identity, so two components may use the same check name.
    const checks = new Set<readonly [string, ReadinessCheck]>()
    const hooks = new Set<Effect.Effect<void>>()
    const register = <A>(set: Set<A>, entry: A) =>
      Effect.acquireRelease(Effect.sync(() => void set.add(entry)), () => Effect.sync(() => void set.delete(entry)))
    const allChecks = Effect.suspend(() => Effect.forEach([...checks], ([name, check]) =>
      check.pipe(
        Effect.timeoutOrElse({ duration: "5 seconds", orElse: () => notReady("check timed out") }),
        Effect.match({
          onSuccess: (): CheckResult => ({ name, reason: undefined }),
          onFailure: (failure): CheckResult => ({ name, reason: failure.reason })
        })
      ), { concurrency: "unbounded" }))
    return Probes.of({
      addReadinessCheck: (name, check) => register(checks, [name, check] as const),
      addScrapeHook: (hook) => register(hooks, hook),
      checks: allChecks,
      readiness: Effect.map(allChecks, (results) =>
        results.flatMap(({ name, reason }) => (reason === undefined ? [] : [{ name, reason }]))),
      scrape: Effect.suspend(() => Effect.andThen(Effect.forEach([...hooks], (hook) => hook, { discard: true }), PrometheusMetrics.format()))
    })
  })

  /**
   * A view of `probes` for one component of a process that runs several: its checks show on
   * `/readyz` as `<prefix>/<name>`.
   */
  static readonly prefixed = (probes: Probes["Service"], prefix: string): Probes["Service"] =>
    Probes.of({ ...probes, addReadinessCheck: (name, check) => probes.addReadinessCheck(`${prefix}/${name}`, check) })
}

const routes = HttpRouter.use(Effect.fn(function*(router) {
  const probes = yield* Probes
  yield* router.add("GET", "/healthz", HttpServerResponse.text("ok"))
  yield* router.add(
    "GET",
    "/readyz",
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const registered = yield* probes.checks
      // The server starts before the components it serves register their checks: until one has,
      // the process is starting, not ready (a kubelet would otherwise route traffic to a port
      // nothing listens on yet).
      const results: ReadonlyArray<CheckResult> = registered.length > 0
        ? registered
        : [{ name: "startup", reason: "no component has registered its readiness checks yet" }]
      const failures = results.filter((result) => result.reason !== undefined)
      const status = failures.length === 0 ? 200 : 503
      // `?verbose` lists every check, as the kube-apiserver does; otherwise only what fails.
      if (new URL(request.url, "http://probe").searchParams.has("verbose")) {
        const lines = results.map(({ name, reason }) => (reason === undefined ? `[+]${name} ok` : `[-]${name} failed: ${reason}`))
        return HttpServerResponse.text(`${lines.join("\n")}\nreadyz check ${status === 200 ? "passed" : "failed"}\n`, { status })
      }
      return status === 200
        ? HttpServerResponse.text("ok")
        : HttpServerResponse.text(failures.map((f) => `${f.name}: ${f.reason}`).join("\n") + "\n", { status })
    })
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
    // Not NodeHttpServer.layer: its platform services include a child-process spawner, which
    // would load node:child_process into every process (see layers/NodePlatform.ts).
    Layer.provide(Layer.mergeAll(
      NodeHttpServer.layerServer(createServer, { port: address.port, ...(address.host ? { host: address.host } : {}) }),
      NodeHttpPlatform.layer.pipe(Layer.provide(NodeFileSystem.layer)),
      Etag.layerWeak
    )),
    // platform-node's ServeError has no message of its own: say what could not listen, and why.
    Layer.catchTag("ServeError", (error) => {
      const cause = error.cause
      const message = cause instanceof Error ? cause.message : String(cause)
      return Layer.effectDiscard(Effect.fail(
        new ListenAddress.ListenError({
          message: `cannot listen on ${ListenAddress.format(address)} for the health probes: ${message}`,
          ...(ListenAddress.errorCode(cause) === undefined ? {} : { code: ListenAddress.errorCode(cause)! })
        })
      ))
    })
  )

/**
 * The probe registry plus its server: what a component's composition root uses.
 *
 * @category layers
 */
export const layer = (address: ListenAddress.ListenAddress) =>
  layerServer(address).pipe(Layer.provideMerge(Probes.layerNoServer))
