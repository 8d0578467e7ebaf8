/**
 * The service relay: a plain-HTTP server on the managed cluster that carries requests from the
 * hosted service-proxy (arriving through the managed kube-apiserver's `services/proxy`) to the
 * in-cluster Service named by the `Cluster-Proxy-*` headers.
 *
 * Per request, in this order:
 * 0. a repeated `Host`, `Authorization` or `Cluster-Proxy-*` routing or credential header is
 *    400 (read from the raw headers: Node would keep one and drop the rest);
 * 1. authenticate the caller ({@link CallerAuthenticator}); a refusal is 401 `unauthorized` and
 *    nothing is forwarded, not even a DNS lookup;
 * 2. route ({@link ServiceRouting.route}); a refusal is 400 with the reason;
 * 3. resolve the Service host ({@link ServiceResolver}); failure is 502;
 * 4. forward with the client's own `Authorization` restored and every `Cluster-Proxy-*`,
 *    `Impersonate-*` and hop-by-hop header removed ({@link RelayHeaders.forwardRawHeaders}, and
 *    {@link RelayHeaders.forwardHeaders} for upgrades).
 *
 * Bodies stream both ways with back-pressure (no buffering), so a watch, a log follow or a
 * large upload costs a few buffers of memory. Upgrades (WebSocket, SPDY for exec and
 * port-forward) are authenticated and routed the same way, then the two sockets are spliced.
 * Upstream connections are pooled; https backends are verified against the system roots plus
 * `additionalServiceCa`, under the Service host name even though the connection goes to the
 * resolved address.
 *
 * The relay is an admission policy over the shared HTTP core (`src/http`): {@link Server}
 * listens, forwards (undici fast path for plain requests, `node:http` for upgrades) and shuts
 * down. Admission is synchronous when the caller's TokenReview and the Service's address are
 * cached (nearly always); a cache miss runs the same admission as an Effect.
 *
 * When the upstream fails the client gets 502 `bad gateway` and nothing else: backend
 * addresses and error texts go to the log, not to the caller. Request paths, header values and
 * tokens are never logged.
 *
 * Closing the layer's scope stops accepting connections, lets in-flight requests finish for
 * `shutdownTimeout`, then cuts what is left.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Exit, Layer, Metric, Redacted, Result, Schema } from "effect"
import type * as Http from "node:http"
import * as HttpHeaders from "../domain/HttpHeaders.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"
import * as RequestPath from "../domain/RequestPath.ts"
import * as RelayHeaders from "../domain/RelayHeaders.ts"
import * as ServiceRouting from "../domain/ServiceRouting.ts"
import * as Admission from "../http/Admission.ts"
import * as Answers from "../http/Answers.ts"
import type * as Forwarder from "../http/Forwarder.ts"
import * as Server from "../http/Server.ts"
import * as Trust from "../http/Trust.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { NotReady } from "../observability/Probes.ts"
import { CallerAuthenticator } from "./CallerAuthenticator.ts"
import { ServiceResolver } from "./ServiceResolver.ts"

/** @category models */
export interface Options {
  /** Where to listen (`:7444`). Port 0 picks a free port; see {@link ServiceRelay} `address`. */
  readonly listen: ListenAddress.ListenAddress
  /**
   * A PEM file of extra CAs for https backends. A missing file is logged and skipped (the chart
   * mounts an optional ConfigMap); a file that is not PEM certificates fails startup.
   */
  readonly additionalServiceCa?: string | undefined
  /** Largest accepted request (and upstream response) header block, in bytes (default 64 KiB). */
  readonly maxHeaderSize?: number
  /** Time allowed to receive the request headers (default 5 seconds). */
  readonly headersTimeout?: Duration.Input
  /**
   * Time allowed to receive a whole request, body included (default: none, uploads may be long
   * and the Go relay had no limit either).
   */
  readonly requestTimeout?: Duration.Input
  /** How long in-flight requests may run on after shutdown starts (default 5 seconds). */
  readonly shutdownTimeout?: Duration.Input
  /** Upstream TCP connect timeout (default 30 seconds). */
  readonly dialTimeout?: Duration.Input
  /** Upstream TLS handshake timeout (default 10 seconds). */
  readonly tlsHandshakeTimeout?: Duration.Input
  /** An idle upstream connection is closed after this long (default 90 seconds). */
  readonly idleConnectionTimeout?: Duration.Input
}

/**
 * The relay cannot start.
 *
 * @category errors
 */
export class ServiceRelayError extends Schema.TaggedError<ServiceRelayError>()("ServiceRelayError", {
  reason: Schema.Literals(["Config", "Listen", "ServiceCa"]),
  message: Schema.String
}) {}

/** @category services */
export class ServiceRelay extends Context.Service<ServiceRelay, {
  /** The bound address (the real port when `listen` asked for port 0). */
  readonly address: { readonly host: string; readonly port: number }
  /** Succeeds while the relay accepts connections. */
  readonly readiness: Effect.Effect<void, NotReady>
}>()("tether/relay/ServiceRelay") {
  /** Serve until the layer's scope closes. Needs {@link CallerAuthenticator} and {@link ServiceResolver}. */
  static readonly layer = (options: Options) => Layer.effect(ServiceRelay, make(options))
}

type Label = ServiceRouting.MetricScheme

const unauthorized = Admission.refusal<Label>(401, "unauthorized", "unknown")

/**
 * Start the relay in the current scope. Needs {@link CallerAuthenticator} and
 * {@link ServiceResolver}.
 *
 * @category constructors
 */
export const make = Effect.fn("ServiceRelay.make")(function*(options: Options) {
  const authenticator = yield* CallerAuthenticator
  const resolver = yield* ServiceResolver
  const serviceCa = yield* Trust.loadServiceCa(options.additionalServiceCa).pipe(
    Effect.mapError((error) => new ServiceRelayError({ reason: "ServiceCa", message: error.message }))
  )
  const trust: Forwarder.Trust = { key: "service", ca: [...Trust.systemRoots(), ...serviceCa], rejectUnauthorized: true }

  // Labelled metric handles, built once: the label sets are closed and small.
  const counters = new Map<string, Metric.Metric<number, unknown>>()
  const durations = new Map<string, Metric.Metric<number, unknown>>()
  const counterFor = (scheme: Label, result: "success" | "error") => {
    const key = `${scheme}/${result}`
    let metric = counters.get(key)
    if (metric === undefined) {
      metric = Metric.withAttributes(Metrics.serviceRelayRequestsTotal, { scheme, result })
      counters.set(key, metric)
    }
    return metric
  }
  const durationFor = (scheme: Label) => {
    let metric = durations.get(scheme)
    if (metric === undefined) {
      metric = Metric.withAttributes(Metrics.serviceRelayRequestDuration, { scheme })
      durations.set(scheme, metric)
    }
    return metric
  }
  const context = yield* Effect.context<never>()
  const record = (scheme: Label, status: number, startedAt: number, headAt: number) => {
    counterFor(scheme, status < 400 ? "success" : "error").updateUnsafe(1, context)
    durationFor(scheme).updateUnsafe((headAt - startedAt) / 1000, context)
  }

  /** Route and resolve, once the caller is authenticated. */
  const routeAndResolve = (req: Http.IncomingMessage, upgrade: boolean): Admission.Admission<Label> => {
    const routed = ServiceRouting.route(req.headers)
    if (Result.isFailure(routed)) {
      const scheme = routed.failure.reason === "MissingHeader"
        ? "unknown"
        : ServiceRouting.metricScheme(HttpHeaders.values(req.headers, ServiceRouting.headerNames.proto)[0])
      return Admission.refusal(400, routed.failure.message, scheme)
    }
    const target = routed.success
    const path = RequestPath.requestPath(req.url)
    if (path === undefined) return Admission.refusal(400, "invalid request target", target.proto)
    const admit = (address: string): Admission.Admitted<Label> =>
      Admission.admitted({
        label: target.proto,
        // The resolved address, verified against the Service name.
        destination: {
          protocol: target.proto,
          host: address,
          port: target.port,
          servername: target.proto === "https" ? target.hostname : undefined,
          trust
        },
        path,
        headers: upgrade ? RelayHeaders.forwardHeaders(req.headers, target) : RelayHeaders.forwardRawHeaders(req.rawHeaders, target),
        upstream: { target: target.authority }
      })
    const known = resolver.known(target.hostname)
    if (known !== undefined) return admit(known.address)
    return resolver.resolve(target.hostname).pipe(
      Effect.map((resolved) => admit(resolved.address)),
      Effect.catch((error) =>
        Effect.andThen(
          Effect.logWarning("cannot resolve the target service", { target: target.authority, error: error.message }),
          Effect.fail(Admission.refusal<Label>(502, Answers.badGateway, target.proto))
        )
      )
    )
  }

  /**
   * Authenticate, route, resolve: everything that happens before a byte goes upstream. Decided
   * at once when the answers are cached.
   */
  const admit = (req: Http.IncomingMessage, upgrade: boolean): Admission.Admission<Label> => {
    // Node keeps one of a repeated Authorization or routing header; which one counts is a guess.
    const repeated = ServiceRouting.repeatedHeader(req.rawHeaders)
    if (repeated !== undefined) return Admission.refusal(400, repeated.message, "unknown")
    const tokenText = RelayHeaders.bearerTokenText(req.headers)
    const known = authenticator.known(tokenText)
    if (known === undefined) {
      const token = tokenText === undefined ? undefined : Redacted.make(tokenText)
      return authenticator.authenticate(token).pipe(
        Effect.ensuring(Effect.sync(() => HttpHeaders.forgetToken(token))),
        Effect.mapError(() => unauthorized),
        Effect.andThen(() => Admission.awaitAdmission(routeAndResolve(req, upgrade)))
      )
    }
    return Exit.isFailure(known) ? unauthorized : routeAndResolve(req, upgrade)
  }

  const served = yield* Server.serve({
    component: "service-relay",
    gauges: Metrics.serviceRelayOpen,
    listen: options.listen,
    maxHeaderSize: options.maxHeaderSize ?? 64 * 1024,
    headersTimeout: Server.millis(options.headersTimeout, Duration.seconds(5)),
    requestTimeout: Server.millis(options.requestTimeout, Duration.zero),
    shutdownTimeout: options.shutdownTimeout ?? Duration.seconds(5),
    dialTimeout: Server.millis(options.dialTimeout, Duration.seconds(30)),
    handshakeTimeout: Server.millis(options.tlsHandshakeTimeout, Duration.seconds(10)),
    idleTimeout: Server.millis(options.idleConnectionTimeout, Duration.seconds(90))
  }, { admit, record }).pipe(Effect.mapError((error) => new ServiceRelayError({ reason: "Listen", message: error.message })))

  yield* Effect.logInfo("service relay listening", { address: `${served.address.host}:${served.address.port}` }).pipe(
    Effect.annotateLogs({ component: "service-relay" })
  )
  return ServiceRelay.of({ address: served.address, readiness: served.readiness })
})
