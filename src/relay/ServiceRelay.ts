/**
 * The service relay: a plain-HTTP server on the managed cluster that carries requests from the
 * hosted service-proxy (arriving through the managed kube-apiserver's `services/proxy`) to the
 * in-cluster Service named by the `Cluster-Proxy-*` headers.
 *
 * Per request, in this order:
 * 1. authenticate the caller ({@link CallerAuthenticator}); a refusal is 401 `unauthorized` and
 *    nothing is forwarded, not even a DNS lookup;
 * 2. route ({@link Routing.route}); a refusal is 400 with the reason;
 * 3. resolve the Service host ({@link ServiceResolver}); failure is 502;
 * 4. forward with the client's own `Authorization` restored and every `Cluster-Proxy-*`,
 *    `Impersonate-*` and hop-by-hop header removed ({@link Routing.forwardRawHeaders}, and
 *    {@link Routing.forwardHeaders} for upgrades).
 *
 * Bodies stream both ways with back-pressure (no buffering), so a watch, a log follow or a
 * large upload costs a few buffers of memory. Upgrades (WebSocket, SPDY for exec and
 * port-forward) are authenticated and routed the same way, then the two sockets are spliced.
 * Upstream connections are pooled; https backends are verified against the system roots plus
 * `additionalServiceCa`, under the Service host name even though the connection goes to the
 * resolved address.
 *
 * Plain requests take a fast path without a fiber when the caller's TokenReview and the
 * Service's address are cached (nearly always): admission is synchronous and forwarding is
 * {@link PooledForwarder}'s callbacks. A cache miss runs the same admission as an Effect.
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
import { Clock, Context, Duration, Effect, Exit, FiberSet, Layer, Metric, Redacted, Result, Schema, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import type { Duplex } from "node:stream"
import * as Tls from "node:tls"
import * as ListenAddress from "../domain/ListenAddress.ts"
import * as Routing from "../domain/Routing.ts"
import * as Metrics from "../observability/Metrics.ts"
import { CallerAuthenticator } from "./CallerAuthenticator.ts"
import * as PooledForwarder from "./PooledForwarder.ts"
import { type Resolved, ServiceResolver } from "./ServiceResolver.ts"
import * as Upstream from "./Upstream.ts"

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
  readonly readiness: Effect.Effect<void, string>
}>()("tether/relay/ServiceRelay") {
  /** Serve until the layer's scope closes. Needs {@link CallerAuthenticator} and {@link ServiceResolver}. */
  static readonly layer = (options: Options) => Layer.effect(ServiceRelay, make(options))
}

// ---------------------------------------------------------------------------------------------
// trust for https backends
// ---------------------------------------------------------------------------------------------

const pemBlock = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/**
 * The certificates of a PEM file, for https backends. Missing file: logged, none. Unreadable or
 * not PEM certificates: an error (trusting less than asked would fail every https call later).
 *
 * @category constructors
 */
export const loadServiceCa = Effect.fn("ServiceRelay.loadServiceCa")(function*(path: string | undefined) {
  if (path === undefined || path === "") return [] as ReadonlyArray<string>
  const fail = (why: string) => new ServiceRelayError({ reason: "ServiceCa", message: `additional service CA ${path}: ${why}` })
  const text = yield* Effect.try({
    try: () => (Fs.existsSync(path) ? Fs.readFileSync(path, "utf8") : undefined),
    catch: (error) => fail(error instanceof Error ? error.message : String(error))
  })
  if (text === undefined) {
    yield* Effect.logWarning("additional service CA file not found; trusting the system roots only", { path })
    return [] as ReadonlyArray<string>
  }
  const blocks = text.match(pemBlock) ?? []
  if (blocks.length === 0) return yield* fail("no PEM certificate found")
  for (const [index, block] of blocks.entries()) {
    yield* Effect.try({
      try: () => new Crypto.X509Certificate(block),
      catch: () => fail(`certificate ${index + 1} does not parse`)
    })
  }
  return blocks as ReadonlyArray<string>
})

const systemRoots = (): ReadonlyArray<string> => {
  const all = new Set(Tls.getCACertificates("default"))
  try {
    for (const cert of Tls.getCACertificates("system")) all.add(cert)
  } catch {
    // No readable system store (e.g. a distroless image): the bundled roots remain.
  }
  return [...all]
}

// ---------------------------------------------------------------------------------------------
// the server
// ---------------------------------------------------------------------------------------------

/** Why the relay answers instead of the backend. */
interface Refusal {
  readonly _tag: "Refusal"
  readonly status: 400 | 401 | 502
  readonly body: string
  readonly scheme: Routing.MetricScheme
}

interface Admitted {
  readonly _tag: "Admitted"
  readonly target: Routing.Target
  readonly resolved: Resolved
  readonly path: string
}

/** An admission decided now, or one that has to wait for a TokenReview or a DNS lookup. */
type Admission = Admitted | Refusal | Effect.Effect<Admitted, Refusal>

const refusal = (status: Refusal["status"], body: string, scheme: Routing.MetricScheme): Refusal => ({
  _tag: "Refusal",
  status,
  body,
  scheme
})

const unauthorized = refusal(401, "unauthorized", "unknown")

/** The waiting form of any admission. */
const awaitAdmission = (admission: Admission): Effect.Effect<Admitted, Refusal> =>
  Effect.isEffect(admission) ? admission : admission._tag === "Admitted" ? Effect.succeed(admission) : Effect.fail(admission)


/** The path and query to send upstream: origin-form as received; absolute-form reduced to it. */
const requestPath = (url: string | undefined): string | undefined => {
  if (url === undefined || url === "") return undefined
  if (url.startsWith("/") || url === "*") return url
  const parsed = URL.parse(url)
  return parsed === null ? undefined : `${parsed.pathname}${parsed.search}`
}

const first = (value: string | ReadonlyArray<string> | undefined): string | undefined =>
  typeof value === "string" ? value : value?.[0]

/**
 * Start the relay in the current scope. Needs {@link CallerAuthenticator} and
 * {@link ServiceResolver}.
 *
 * @category constructors
 */
export const make = Effect.fn("ServiceRelay.make")(function*(options: Options) {
  const authenticator = yield* CallerAuthenticator
  const resolver = yield* ServiceResolver
  const millis = (input: Duration.Input | undefined, fallback: Duration.Input) =>
    Duration.toMillis(Duration.fromInputUnsafe(input ?? fallback))
  const maxHeaderSize = options.maxHeaderSize ?? 64 * 1024
  const requestTimeout = millis(options.requestTimeout, Duration.zero)
  // Node refuses a header timeout longer than a (non-zero) request timeout.
  const headersTimeout = Math.min(
    millis(options.headersTimeout, Duration.seconds(5)),
    requestTimeout > 0 ? requestTimeout : Number.POSITIVE_INFINITY
  )
  const shutdownTimeout = options.shutdownTimeout ?? Duration.seconds(5)
  const dialTimeout = millis(options.dialTimeout, Duration.seconds(30))
  const handshakeTimeout = millis(options.tlsHandshakeTimeout, Duration.seconds(10))
  const trustedCa = [...systemRoots(), ...(yield* loadServiceCa(options.additionalServiceCa))]

  // Finalizers run in reverse order of registration: stop the server and drain first, then
  // interrupt what is left, then drop the upstream pools.
  const scope = yield* Scope.fork(yield* Effect.scope, "sequential")
  const pools = yield* Effect.acquireRelease(
    Effect.sync(() =>
      new PooledForwarder.Pools({
        connectTimeout: dialTimeout + handshakeTimeout,
        idleTimeout: millis(options.idleConnectionTimeout, Duration.seconds(90)),
        maxHeaderSize,
        ca: trustedCa
      })
    ),
    (pools) => Effect.promise(() => pools.destroy())
  ).pipe(Scope.provide(scope))
  // Upgrades go through Node's `http` instead; an upgraded connection never returns to a pool.
  const agents = yield* Effect.acquireRelease(
    Effect.sync(() => ({
      http: new Http.Agent(),
      https: new Https.Agent({ ca: trustedCa, minVersion: "TLSv1.2" })
    })),
    ({ http, https }) =>
      Effect.sync(() => {
        http.destroy()
        https.destroy()
      })
  ).pipe(Scope.provide(scope))
  const fibers = yield* FiberSet.make<void, never>().pipe(Scope.provide(scope))
  const run = yield* FiberSet.runtime(fibers)<never>()
  const spliced = new Set<Duplex>()

  // Labelled metric handles, built once: the label sets are closed and small.
  const counters = new Map<string, Metric.Metric<number, unknown>>()
  const durations = new Map<string, Metric.Metric<number, unknown>>()
  const counterFor = (scheme: Routing.MetricScheme, result: "success" | "error") => {
    const key = `${scheme}/${result}`
    let metric = counters.get(key)
    if (metric === undefined) {
      metric = Metric.withAttributes(Metrics.serviceRelayRequestsTotal, { scheme, result })
      counters.set(key, metric)
    }
    return metric
  }
  const durationFor = (scheme: Routing.MetricScheme) => {
    let metric = durations.get(scheme)
    if (metric === undefined) {
      metric = Metric.withAttributes(Metrics.serviceRelayRequestDuration, { scheme })
      durations.set(scheme, metric)
    }
    return metric
  }
  // The request path records metrics and reads the clock outside any fiber.
  const context = yield* Effect.context<never>()
  const clock = yield* Clock.clockWith(Effect.succeed)
  const now = () => clock.currentTimeMillisUnsafe()
  const record = (scheme: Routing.MetricScheme, status: number, startedAt: number, headAt = now()) => {
    counterFor(scheme, status < 400 ? "success" : "error").updateUnsafe(1, context)
    durationFor(scheme).updateUnsafe((headAt - startedAt) / 1000, context)
  }
  const log = (effect: Effect.Effect<void>) => run(Effect.annotateLogs(effect, { component: "service-relay" }))

  /** Route and resolve, once the caller is authenticated. */
  const routeAndResolve = (req: Http.IncomingMessage): Admission => {
    const routed = Routing.route(req.headers)
    if (Result.isFailure(routed)) {
      const scheme = routed.failure.reason === "MissingHeader"
        ? "unknown"
        : Routing.metricScheme(first(req.headers[Routing.headerNames.proto.toLowerCase()]))
      return refusal(400, routed.failure.message, scheme)
    }
    const target = routed.success
    const path = requestPath(req.url)
    if (path === undefined) return refusal(400, "invalid request target", target.proto)
    const known = resolver.known(target.hostname)
    if (known !== undefined) return { _tag: "Admitted", target, resolved: known, path }
    return resolver.resolve(target.hostname).pipe(
      Effect.map((resolved): Admitted => ({ _tag: "Admitted", target, resolved, path })),
      Effect.catch((error) =>
        Effect.andThen(
          Effect.logWarning("cannot resolve the target service", { target: target.authority, error: error.message }),
          Effect.fail(refusal(502, Upstream.badGateway, target.proto))
        )
      )
    )
  }

  /**
   * Authenticate, route, resolve: everything that happens before a byte goes upstream. Decided
   * at once when the answers are cached.
   */
  const admit = (req: Http.IncomingMessage): Admission => {
    const tokenText = Routing.bearerTokenText(req.headers)
    const known = authenticator.known(tokenText)
    if (known === undefined) {
      const token = tokenText === undefined ? undefined : Redacted.make(tokenText)
      return authenticator.authenticate(token).pipe(
        Effect.ensuring(Effect.sync(() => Routing.forgetToken(token))),
        Effect.mapError(() => unauthorized),
        Effect.andThen(() => awaitAdmission(routeAndResolve(req)))
      )
    }
    return Exit.isFailure(known) ? unauthorized : routeAndResolve(req)
  }

  const timeouts: Upstream.Timeouts = { dial: dialTimeout, handshake: handshakeTimeout, expectContinue: 0, maxHeaderSize }

  /** Where an admitted request goes: the resolved address, verified against the Service name. */
  const upstreamRequest = (req: Http.IncomingMessage, admitted: Admitted): Upstream.Request => ({
    protocol: admitted.target.proto,
    host: admitted.resolved.address,
    family: admitted.resolved.family,
    port: admitted.target.port,
    path: admitted.path,
    headers: Routing.forwardHeaders(req.headers, admitted.target),
    servername: admitted.target.proto === "https" ? admitted.target.hostname : undefined
  })

  const report = (admitted: Admitted, startedAt: number): Upstream.Report => ({
    answered: (status) => Effect.sync(() => record(admitted.target.proto, status, startedAt)),
    failed: (error) => Effect.logWarning("upstream request failed", { target: admitted.target.authority, error: error.message })
  })

  /** Answer a refused plain request ourselves. */
  const refuse = (req: Http.IncomingMessage, res: Http.ServerResponse, refused: Refusal, startedAt: number) => {
    req.resume()
    record(refused.scheme, refused.status, startedAt)
    Upstream.answer(res, refused.status, refused.body)
  }

  /** Send an admitted plain request on; the rest happens in the forwarder's callbacks. */
  const forward = (req: Http.IncomingMessage, res: Http.ServerResponse, admitted: Admitted, startedAt: number) => {
    const { resolved, target } = admitted
    PooledForwarder.forward(
      req,
      res,
      pools,
      {
        protocol: target.proto,
        address: resolved.address,
        family: resolved.family,
        port: target.port,
        servername: target.proto === "https" ? target.hostname : undefined
      },
      admitted.path,
      Routing.forwardRawHeaders(req.rawHeaders, target),
      {
        now,
        answered: (status, headAt) => record(target.proto, status, startedAt, headAt),
        failed: (message) => log(Effect.logWarning("upstream request failed", { target: target.authority, error: message }))
      }
    )
  }

  /** One plain HTTP request: without a fiber when admission needs no waiting. */
  const handleRequest = (req: Http.IncomingMessage, res: Http.ServerResponse) => {
    const startedAt = now()
    const admission = admit(req)
    if (!Effect.isEffect(admission)) {
      return admission._tag === "Admitted" ? forward(req, res, admission, startedAt) : refuse(req, res, admission, startedAt)
    }
    run(guarded(
      Effect.match(admission, {
        onFailure: (refused) => refuse(req, res, refused, startedAt),
        onSuccess: (admitted) => forward(req, res, admitted, startedAt)
      }),
      () => Upstream.answer(res, 502, Upstream.badGateway)
    ))
  }

  /** An `Upgrade` request: the same admission, then the backend's answer and a socket splice. */
  const handleUpgrade = Effect.fnUntraced(function*(req: Http.IncomingMessage, socket: Duplex, head: Buffer) {
    const startedAt = now()
    socket.on("error", () => socket.destroy())
    const admitted = yield* Effect.result(awaitAdmission(admit(req)))
    if (Result.isFailure(admitted)) {
      const { body, scheme, status } = admitted.failure
      record(scheme, status, startedAt)
      return Upstream.answerOnSocket(socket, status, body)
    }
    yield* Upstream.forwardUpgrade(
      req,
      socket,
      head,
      upstreamRequest(req, admitted.success),
      agents,
      timeouts,
      spliced,
      report(admitted.success, startedAt)
    )
  })

  const guarded = <E>(effect: Effect.Effect<void, E>, onDefect: () => void) => Upstream.guarded(effect, "service-relay", onDefect)

  const server = Http.createServer({
    maxHeaderSize,
    headersTimeout,
    requestTimeout,
    // How often headersTimeout/requestTimeout are checked; the default (30s) would let a 5s
    // header timeout run to 35s.
    connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(headersTimeout / 4)))
  })
  server.on("request", (req, res) => {
    try {
      handleRequest(req, res)
    } catch (error) {
      // A defect must still leave the client with an answer and the process alive.
      log(Effect.logError("service-relay request failed unexpectedly", { cause: Upstream.describe(error) }))
      Upstream.answer(res, 502, Upstream.badGateway)
    }
  })
  server.on("upgrade", (req, socket, head) => {
    run(guarded(handleUpgrade(req, socket, head), () => socket.destroy()))
  })
  server.on("error", () => {
    // Errors after listening are per-connection and handled there; keep the process up.
  })

  const address = yield* Upstream.listen(server, options.listen).pipe(
    Effect.mapError((message) => new ServiceRelayError({ reason: "Listen", message }))
  )

  const shutdown = Upstream.shutdown(server, FiberSet.awaitEmpty(fibers), spliced, shutdownTimeout)
  yield* Scope.addFinalizer(scope, shutdown.pipe(Effect.annotateLogs({ component: "service-relay" })))
  yield* Effect.logInfo("service relay listening", { address: `${address.host}:${address.port}` }).pipe(
    Effect.annotateLogs({ component: "service-relay" })
  )

  return ServiceRelay.of({
    address,
    readiness: Effect.suspend(() => (server.listening ? Effect.void : Effect.fail("not listening")))
  })
})
