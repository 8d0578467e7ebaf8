/**
 * The checks that decide whether the add-on agent heartbeats its health Lease.
 *
 * OCM reads the add-on as available while the Lease is renewed, so renewing must mean "this
 * add-on works", not merely "this process runs". Two checks are built in:
 * - `proxy-agent`: an HTTP GET of the proxy-agent's readiness URL (by default
 *   `http://localhost:8093/readyz`; the containers share the pod network) answers 2xx;
 * - `managed-token` (hosted mode): the bearer token of the managed kubeconfig file is not
 *   expired and not expiring within a margin. The file is read on every run (it is a mounted
 *   Secret the provisioner rotates), the JWT `exp` is decoded without verification, and the
 *   token itself never leaves this module: failures say how long is left, never what it is.
 *
 * Every check runs with a timeout; all run at once.
 *
 * @since 0.1.0
 */
import { Clock, Context, Duration, Effect, FileSystem, Layer, Option, Redacted, Schema } from "effect"
import { HttpClient } from "effect/http"
import * as GoDuration from "../domain/GoDuration.ts"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as TokenExpiry from "../domain/TokenExpiry.ts"
import { GeneratedKubeconfig } from "../kube/GeneratedKubeconfig.ts"

/**
 * A health check failed: `reason` is the short text the Lease heartbeat logs and the metric's
 * check stands for. Not retried by itself: the next heartbeat runs the check again.
 *
 * @category errors
 */
export class Unhealthy extends Schema.TaggedError<Unhealthy>()("Unhealthy", {
  reason: Schema.String
}) {}

/** @category constructors */
export const unhealthy = (reason: string): Effect.Effect<never, Unhealthy> => Effect.fail(new Unhealthy({ reason }))

/**
 * One named check: succeeds when healthy, fails with {@link Unhealthy} when not (an embedder's
 * check may still fail with a bare reason string).
 *
 * @category models
 */
export interface HealthCheck {
  readonly name: string
  readonly check: Effect.Effect<void, Unhealthy | string>
}

/** A failed check. @category models */
export interface Failure {
  readonly name: string
  readonly reason: string
}

/** Which built-in checks to run. @category models */
export interface Options {
  /** The proxy-agent readiness URL; undefined turns the check off. */
  readonly proxyAgentReadinessUrl: string | undefined
  /** The managed kubeconfig (hosted mode); undefined turns the token check off. */
  readonly managedKubeconfig: string | undefined
  /** Fail when less than this is left of the managed token. */
  readonly tokenFreshnessMargin: Duration.Duration
  /** Bound on each check; default 5 seconds. */
  readonly timeout?: Duration.Input
}

/** @category services */
export class HealthChecks extends Context.Service<HealthChecks, {
  /** The names of the configured checks. */
  readonly names: ReadonlyArray<string>
  /** Run every check; the failures, empty when healthy. */
  readonly run: Effect.Effect<ReadonlyArray<Failure>>
}>()("tether/addonagent/HealthChecks") {
  /** The built-in checks; needs an `HttpClient` and a `FileSystem`. */
  static readonly layer = (options: Options) =>
    Layer.effect(
      HealthChecks,
      Effect.gen(function*() {
        const checks: Array<HealthCheck> = []
        if (options.proxyAgentReadinessUrl !== undefined) checks.push(yield* httpReadiness("proxy-agent", options.proxyAgentReadinessUrl))
        if (options.managedKubeconfig !== undefined) {
          checks.push(yield* managedTokenFreshness("managed-token", options.managedKubeconfig, options.tokenFreshnessMargin))
        }
        return fromChecks(checks, options.timeout)
      })
    )

  /** Given checks (embedders, tests). */
  static readonly layerFrom = (checks: ReadonlyArray<HealthCheck>, timeout?: Duration.Input) =>
    Layer.succeed(HealthChecks, fromChecks(checks, timeout))
}

/**
 * The service over a list of checks, each bounded by `timeout` (default 5 seconds).
 *
 * @category constructors
 */
export const fromChecks = (checks: ReadonlyArray<HealthCheck>, timeout: Duration.Input = "5 seconds"): HealthChecks["Service"] => {
  const limit = Duration.fromInputUnsafe(timeout)
  return HealthChecks.of({
    names: checks.map((c) => c.name),
    run: Effect.forEach(checks, ({ check, name }) =>
      check.pipe(
        Effect.timeoutOrElse({ duration: limit, orElse: () => unhealthy(`no answer within ${GoDuration.formatShort(limit)}`) }),
        Effect.match({
          onSuccess: () => undefined,
          onFailure: (failure): Failure => ({ name, reason: typeof failure === "string" ? failure : failure.reason })
        })
      ), { concurrency: "unbounded" }).pipe(Effect.map((results) => results.filter((r) => r !== undefined)))
  })
}

/**
 * GET `url`; healthy on any 2xx answer.
 *
 * @category constructors
 */
export const httpReadiness = Effect.fnUntraced(function*(name: string, url: string) {
  const client = yield* HttpClient.HttpClient
  const check = client.get(url).pipe(
    Effect.mapError((error) => new Unhealthy({ reason: `GET ${url} failed: ${error.message}` })),
    Effect.flatMap((response) =>
      // Drain the body so the connection can be reused.
      Effect.ignore(response.text).pipe(
        Effect.andThen(
          response.status >= 200 && response.status < 300 ? Effect.void : unhealthy(`GET ${url} answered ${response.status}`)
        )
      )
    )
  )
  return { name, check } satisfies HealthCheck
})

const seconds = (millis: number) => GoDuration.formatShort(Duration.seconds(Math.floor(millis / 1000)))

/**
 * The bearer token of the kubeconfig at `path` (inline `token`, or `tokenFile` relative to the
 * kubeconfig's folder) has at least `margin` left. A JWT without `exp` never expires and passes;
 * a token whose expiry cannot be read fails, since the provisioner always writes JWTs.
 *
 * @category constructors
 */
export const managedTokenFreshness = Effect.fnUntraced(function*(name: string, path: string, margin: Duration.Duration) {
  const fs = yield* FileSystem.FileSystem
  const read = (file: string, what: string) =>
    fs.readFileString(file).pipe(Effect.mapError((error) => new Unhealthy({ reason: `cannot read ${what} ${file}: ${error.message}` })))
  const token = Effect.gen(function*() {
    const text = yield* read(path, "the managed kubeconfig")
    const bearer = yield* Effect.fromResult(Kubeconfig.readBearerToken(text)).pipe(
      Effect.mapError((error) => new Unhealthy({ reason: `the managed kubeconfig ${path}: ${error.message}` }))
    )
    if (bearer._tag === "Inline") return bearer.token
    // The file wins; the inline token beside it serves while the file cannot be read (client-go).
    const file = read(Kubeconfig.resolveReference(path, bearer.path), "the managed token file")
    const inline = bearer.inline
    return Redacted.make(
      (yield* inline === undefined ? file : Effect.orElseSucceed(file, () => Redacted.value(inline))).trim()
    )
  })
  return tokenFreshness(name, token, margin, `the managed kubeconfig ${path}`)
})

/**
 * The kubeconfig the provisioner in the same process hands over ({@link GeneratedKubeconfig})
 * holds a token with at least `margin` left; fails while there is none yet.
 *
 * @category constructors
 */
export const generatedTokenFreshness = Effect.fnUntraced(function*(name: string, margin: Duration.Duration) {
  const generated = yield* GeneratedKubeconfig
  const token = Effect.gen(function*() {
    const current = yield* generated.current
    if (Option.isNone(current)) return yield* unhealthy("no managed kubeconfig yet")
    const bearer = yield* Effect.fromResult(Kubeconfig.readBearerToken(Redacted.value(current.value))).pipe(
      Effect.mapError((error) => new Unhealthy({ reason: `the generated managed kubeconfig: ${error.message}` }))
    )
    if (bearer._tag === "Inline") return bearer.token
    // In process there is no mounted file: the inline token beside a tokenFile is the one.
    if (bearer.inline !== undefined) return bearer.inline
    return yield* unhealthy("the generated managed kubeconfig refers to a token file")
  })
  return tokenFreshness(name, token, margin, "the generated managed kubeconfig")
})

/**
 * The token `token` reads has at least `margin` left; `where` names it in failures, which say
 * how long is left, never what the token is.
 *
 * @category constructors
 */
export const tokenFreshness = (
  name: string,
  token: Effect.Effect<Redacted.Redacted<string>, Unhealthy>,
  margin: Duration.Duration,
  where: string
): HealthCheck & { readonly check: Effect.Effect<void, Unhealthy> } => ({
  name,
  check: Effect.gen(function*() {
    const expiresAt = yield* Effect.fromResult(TokenExpiry.readExpiry(yield* token)).pipe(
      Effect.mapError((error) => new Unhealthy({ reason: `${where}: ${error.message}` }))
    )
    const now = yield* Clock.currentTimeMillis
    const state = TokenExpiry.freshness(expiresAt, now, Duration.toMillis(margin))
    switch (state._tag) {
      case "Expired":
        return yield* unhealthy(`the managed token expired ${seconds(state.ago)} ago`)
      case "Expiring":
        return yield* unhealthy(
          `the managed token expires in ${seconds(state.remaining)}, within the freshness margin of ${GoDuration.formatShort(margin)}`
        )
      case "Fresh":
      case "NoExpiry":
        return
    }
  })
})
