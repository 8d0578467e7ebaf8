/**
 * The service proxy: the TLS server behind the konnectivity tunnel that user-server's requests
 * reach, routed by the `Cluster-Proxy-*` headers (hosted-mode-spec 4).
 *
 * Per request ({@link ServiceProxyRouting.decide}):
 * - kube-apiserver target: the caller's bearer token is reviewed by the {@link TokenReviewChain}
 *   (managed cluster, then hub); a refusal is 401 with the reason. The request then goes to the
 *   apiserver of {@link ManagedCredentials} (the managed kubeconfig's server, or the in-cluster
 *   apiserver when not hosted) with the client's `Impersonate-*` headers removed, the caller
 *   impersonated (hub ServiceAccounts as `cluster:hub:system:serviceaccount:...`) and the
 *   proxy's current token as the credential. With impersonation turned off the request goes
 *   there with the client's own credential and no review.
 * - Service target, mode Relay: to the managed apiserver's `services/proxy` of the service relay
 *   Service, the client's `Authorization` carried in `Cluster-Proxy-Authorization` and the
 *   proxy's token in `Authorization` and `Cluster-Proxy-Relay-Authorization`.
 * - Service target, mode BestEffort (or not hosted): straight to `<svc>.<ns>.svc:<port>`,
 *   resolved here ({@link ServiceResolver}).
 * - Service target, mode Disabled: 503 `service proxy disabled in hosted mode`, at once.
 *
 * An upstream that cannot be reached is 502 `bad gateway`; the details go to the log. Request
 * paths, header values and tokens are never logged. Upgrades (exec, port-forward, WebSocket)
 * take the same route and are spliced. The serving certificate is re-read when its files
 * change; new connections get the new one.
 *
 * Every request is counted in `cluster_proxy_service_proxy_requests_total{mode,target,result}`
 * (mode `Direct` when not hosted) and timed until the response head.
 *
 * @since 0.1.0
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, FiberSet, FileSystem, Layer, Metric, Result, Schema, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import type { Duplex } from "node:stream"
import * as Tls from "node:tls"
import * as ListenAddress from "../domain/ListenAddress.ts"
import * as Routing from "../domain/Routing.ts"
import * as ServiceProxyRouting from "../domain/ServiceProxyRouting.ts"
import * as Metrics from "../observability/Metrics.ts"
import { loadServiceCa } from "../relay/ServiceRelay.ts"
import { ServiceResolver } from "../relay/ServiceResolver.ts"
import * as FileWatch from "../kube/FileWatch.ts"
import { ManagedCredentials } from "./ManagedCredentials.ts"
import { TokenReviewChain } from "./TokenReviewChain.ts"
import * as Upstream from "../relay/Upstream.ts"

/** @category models */
export interface Options {
  /** Where to serve TLS (`:7443`). Port 0 picks a free port; see {@link ServiceProxy} `address`. */
  readonly listen: ListenAddress.ListenAddress
  /** PEM serving certificate (chain) and key; re-read when they change. */
  readonly certFile: string
  readonly keyFile: string
  readonly deployment: ServiceProxyRouting.Deployment
  /** Authenticate kube-apiserver callers and impersonate them (default in the CLI: true). */
  readonly enableImpersonation: boolean
  /** The relay Service; required in Relay mode. */
  readonly relay?: ServiceProxyRouting.RelayService | undefined
  /** Extra CAs for https Services (a missing file is skipped). */
  readonly additionalServiceCa?: string | undefined
  /**
   * The cluster CA trusted for https Services, besides `additionalServiceCa` (default: the pod's
   * ServiceAccount `ca.crt` when present). Without any CA, the system roots are trusted.
   */
  readonly serviceAccountCa?: string | undefined
  /** Idle upstream connections kept per upstream (default 100). */
  readonly maxIdleConnections?: number
  /** An idle upstream connection is closed after this long (default 90 seconds). */
  readonly idleConnectionTimeout?: Duration.Input
  /** Upstream TLS handshake bound (default 10 seconds). */
  readonly tlsHandshakeTimeout?: Duration.Input
  /** Wait for an upstream `100 Continue` before sending the body (default 1 second; 0 sends at once). */
  readonly expectContinueTimeout?: Duration.Input
  /** Upstream connect bound (default 30 seconds). */
  readonly dialTimeout?: Duration.Input
  /** Fail-safe re-read period of the certificate files (default 10 seconds). */
  readonly reloadInterval?: Duration.Input
  /** Time allowed to receive the request headers (default 10 seconds). */
  readonly headersTimeout?: Duration.Input
  /** How long in-flight requests may run on after shutdown starts (default 5 seconds). */
  readonly shutdownTimeout?: Duration.Input
  /** Largest accepted request (and upstream response) header block, in bytes (default 64 KiB). */
  readonly maxHeaderSize?: number
}

/**
 * The proxy cannot start.
 *
 * @category errors
 */
export class ServiceProxyError extends Schema.TaggedError<ServiceProxyError>()("ServiceProxyError", {
  reason: Schema.Literals(["Config", "Certificate", "Listen", "ServiceCa"]),
  message: Schema.String
}) {}

/** @category services */
export class ServiceProxy extends Context.Service<ServiceProxy, {
  /** The bound address (the real port when `listen` asked for port 0). */
  readonly address: { readonly host: string; readonly port: number }
  /** Succeeds while the proxy accepts connections. */
  readonly readiness: Effect.Effect<void, string>
  /** Re-read the certificate files now (a bad pair is logged and the old one kept). */
  readonly reloadCertificate: Effect.Effect<void>
  /** Fails when the listening socket closes while the proxy should be serving (a supervisor restarts it). */
  readonly failure: Effect.Effect<never, ServiceProxyError>
}>()("tether/serviceproxy/ServiceProxy") {
  /**
   * Serve until the layer's scope closes. Needs {@link ManagedCredentials},
   * {@link TokenReviewChain}, {@link ServiceResolver} and a `FileSystem`.
   */
  static readonly layer = (options: Options) => Layer.effect(ServiceProxy, make(options))
}

// ---------------------------------------------------------------------------------------------
// the serving certificate
// ---------------------------------------------------------------------------------------------

interface KeyPair {
  readonly cert: string
  readonly key: string
  readonly fingerprint: string
}

const readKeyPair = (certFile: string, keyFile: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const fail = (why: string) => new ServiceProxyError({ reason: "Certificate", message: why })
    const cert = yield* fs.readFileString(certFile).pipe(
      Effect.mapError((error) => fail(`cannot read the certificate ${certFile}: ${error.message}`))
    )
    const key = yield* fs.readFileString(keyFile).pipe(
      Effect.mapError((error) => fail(`cannot read the key ${keyFile}: ${error.message}`))
    )
    yield* Effect.try({
      try: () => Tls.createSecureContext({ cert, key }),
      catch: (error) =>
        fail(`the certificate ${certFile} and key ${keyFile} are not a usable pair: ${Upstream.describe(error).split("\n")[0]}`)
    })
    return { cert, key, fingerprint: Crypto.createHash("sha256").update(cert).update("\0").update(key).digest("hex") } satisfies KeyPair
  })

const defaultServiceAccountCa = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

// ---------------------------------------------------------------------------------------------
// the server
// ---------------------------------------------------------------------------------------------

/** Why the proxy answers itself. */
interface Refusal {
  readonly status: 400 | 401 | 502 | 503
  readonly body: string
  readonly target: ServiceProxyRouting.MetricTarget
}

interface Admitted {
  readonly target: ServiceProxyRouting.MetricTarget
  readonly request: Upstream.Request
  /** For logs: where the request goes, without path or credentials. */
  readonly upstream: string
}

const refuse = (status: Refusal["status"], body: string, target: ServiceProxyRouting.MetricTarget) =>
  Effect.fail<Refusal>({ status, body, target })

/**
 * Start the proxy in the current scope. Needs {@link ManagedCredentials},
 * {@link TokenReviewChain}, {@link ServiceResolver} and a `FileSystem`.
 *
 * @category constructors
 */
export const make = Effect.fn("ServiceProxy.make")(function*(options: Options) {
  const credentials = yield* ManagedCredentials
  const chain = yield* TokenReviewChain
  const resolver = yield* ServiceResolver
  const fs = yield* FileSystem.FileSystem
  const { deployment, enableImpersonation } = options
  const mode = ServiceProxyRouting.metricMode(deployment)
  const relay = options.relay
  if (deployment._tag === "Hosted" && deployment.mode === "Relay") {
    if (relay === undefined) {
      return yield* new ServiceProxyError({ reason: "Config", message: "Relay mode needs the relay Service (namespace, name, port)" })
    }
    const valid = ServiceProxyRouting.validateRelayService(relay)
    if (Result.isFailure(valid)) return yield* new ServiceProxyError({ reason: "Config", message: valid.failure })
  }

  const millis = (input: Duration.Input | undefined, fallback: Duration.Input) =>
    Duration.toMillis(Duration.fromInputUnsafe(input ?? fallback))
  const maxHeaderSize = options.maxHeaderSize ?? 64 * 1024
  const headersTimeout = millis(options.headersTimeout, Duration.seconds(10))
  const shutdownTimeout = options.shutdownTimeout ?? Duration.seconds(5)
  const timeouts: Upstream.Timeouts = {
    dial: millis(options.dialTimeout, Duration.seconds(30)),
    handshake: millis(options.tlsHandshakeTimeout, Duration.seconds(10)),
    expectContinue: millis(options.expectContinueTimeout, Duration.seconds(1)),
    maxHeaderSize
  }

  // Trust for https Services: the cluster CA plus the additional one; the system roots when neither.
  const serviceAccountCa = options.serviceAccountCa ?? (Fs.existsSync(defaultServiceAccountCa) ? defaultServiceAccountCa : undefined)
  const serviceCa = yield* Effect.all([loadServiceCa(serviceAccountCa), loadServiceCa(options.additionalServiceCa)]).pipe(
    Effect.map(([cluster, additional]) => [...cluster, ...additional]),
    Effect.mapError((error) => new ServiceProxyError({ reason: "ServiceCa", message: error.message }))
  )

  let keyPair = yield* readKeyPair(options.certFile, options.keyFile).pipe(Effect.provideService(FileSystem.FileSystem, fs))

  // Finalizers run in reverse order of registration: stop the server and drain first, then
  // interrupt what is left, then drop the upstream pools.
  const scope = yield* Scope.fork(yield* Effect.scope, "sequential")
  const agents = yield* Upstream.pools({
    ...(options.maxIdleConnections === undefined ? {} : { maxIdleConnections: options.maxIdleConnections }),
    ...(options.idleConnectionTimeout === undefined ? {} : { idleConnectionTimeout: options.idleConnectionTimeout })
  }).pipe(Scope.provide(scope))
  const fibers = yield* FiberSet.make<void, never>().pipe(Scope.provide(scope))
  const run = yield* FiberSet.runtime(fibers)<never>()
  const spliced = new Set<Duplex>()

  const record = (target: ServiceProxyRouting.MetricTarget, status: number, startedAt: number) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const result = status < 400 ? "success" : "error"
      yield* Metric.update(Metric.withAttributes(Metrics.serviceProxyRequestsTotal, { mode, target, result }), 1)
      yield* Metric.update(Metric.withAttributes(Metrics.serviceProxyRequestDuration, { mode, target }), (now - startedAt) / 1000)
    })

  /** The kube-apiserver: authenticate, then impersonate with the proxy's token. */
  const toApiserver = Effect.fnUntraced(function*(req: Http.IncomingMessage, path: string) {
    const target = "kube-apiserver" as const
    if (ServiceProxyRouting.hasDotSegment(path)) return yield* refuse(400, "invalid request path", target)
    const current = yield* credentials.current
    const { server, tls } = current
    let headers: Routing.OutgoingHeaders
    if (enableImpersonation) {
      const token = ServiceProxyRouting.callerToken(req.headers)
      const caller = yield* chain.authenticate(token).pipe(
        Effect.ensuring(Effect.sync(() => Routing.forgetToken(token))),
        Effect.catch((error) => refuse(401, error.message, target))
      )
      const impersonation = ServiceProxyRouting.impersonationHeaders(caller.source, caller.user)
      if (Result.isFailure(impersonation)) return yield* refuse(401, impersonation.failure.message, target)
      headers = ServiceProxyRouting.impersonatingHeaders(req.headers, impersonation.success, current.token, server.authority)
    } else {
      headers = ServiceProxyRouting.passThroughHeaders(req.headers, server.authority)
    }
    return {
      target,
      upstream: current.serverUrl,
      request: {
        protocol: server.scheme,
        host: server.hostname,
        port: server.port,
        path: ServiceProxyRouting.joinPath(server.pathPrefix, path),
        headers,
        ca: tls.ca,
        servername: tls.servername,
        rejectUnauthorized: !tls.insecure
      }
    } satisfies Admitted
  })

  /** A Service through the relay, via the managed apiserver's `services/proxy`. */
  const toRelay = Effect.fnUntraced(function*(req: Http.IncomingMessage, path: string, target: Routing.Target) {
    if (ServiceProxyRouting.hasDotSegment(path)) return yield* refuse(400, "invalid request path", "service")
    if (relay === undefined) return yield* refuse(503, "service relay is not configured", "service")
    const current = yield* credentials.current
    const { server, tls } = current
    return {
      target: "service",
      upstream: `${current.serverUrl} (relay for ${target.authority})`,
      request: {
        protocol: server.scheme,
        host: server.hostname,
        port: server.port,
        path: ServiceProxyRouting.relayPath(server, relay, path),
        headers: ServiceProxyRouting.relayHeaders(req.headers, target, current.token, server.authority),
        ca: tls.ca,
        servername: tls.servername,
        rejectUnauthorized: !tls.insecure
      }
    } satisfies Admitted
  })

  /** A Service reached from here. */
  const toService = Effect.fnUntraced(function*(req: Http.IncomingMessage, path: string, target: Routing.Target) {
    const resolved = yield* resolver.resolve(target.hostname).pipe(
      Effect.timeoutOrElse({
        duration: Duration.seconds(5),
        orElse: () => Effect.fail({ message: `resolving ${target.hostname} timed out` })
      }),
      Effect.catch((error) =>
        Effect.andThen(
          Effect.logWarning("cannot resolve the target service", { target: target.authority, error: error.message }),
          refuse(502, Upstream.badGateway, "service")
        )
      )
    )
    return {
      target: "service",
      upstream: target.authority,
      request: {
        protocol: target.proto,
        host: resolved.address,
        family: resolved.family,
        port: target.port,
        path,
        headers: ServiceProxyRouting.serviceHeaders(req.headers, target),
        ca: serviceCa.length > 0 ? serviceCa : undefined,
        servername: target.hostname
      }
    } satisfies Admitted
  })

  /** Everything that happens before a byte goes upstream. */
  const admit = Effect.fnUntraced(function*(req: Http.IncomingMessage): Effect.fn.Return<Admitted, Refusal> {
    const classified = ServiceProxyRouting.classify(req.headers)
    if (Result.isFailure(classified)) return yield* refuse(400, classified.failure.message, "unknown")
    const metricTarget = ServiceProxyRouting.metricTarget(classified.success)
    const path = ServiceProxyRouting.requestPath(req.url)
    if (path === undefined) return yield* refuse(400, "invalid request target", metricTarget)
    const decision = ServiceProxyRouting.decide(deployment, classified.success)
    switch (decision._tag) {
      case "Refuse":
        return yield* refuse(decision.status, decision.message, metricTarget)
      case "Apiserver":
        return yield* toApiserver(req, path)
      case "Relay":
        return yield* toRelay(req, path, decision.target)
      case "Service":
        return yield* toService(req, path, decision.target)
    }
  })

  const report = (admitted: Admitted, startedAt: number): Upstream.Report => ({
    answered: (status) => record(admitted.target, status, startedAt),
    failed: (error) =>
      Effect.logWarning("upstream request failed", { target: admitted.target, upstream: admitted.upstream, error: error.message })
  })

  /** One plain request, from the first header to the last byte of the response. */
  const handleRequest = Effect.fnUntraced(function*(req: Http.IncomingMessage, res: Http.ServerResponse) {
    const startedAt = yield* Clock.currentTimeMillis
    const admitted = yield* Effect.result(admit(req))
    if (Result.isFailure(admitted)) {
      const { body, status, target } = admitted.failure
      req.resume()
      Upstream.answer(res, status, body)
      return yield* record(target, status, startedAt)
    }
    yield* Upstream.forwardRequest(req, res, admitted.success.request, agents, timeouts, report(admitted.success, startedAt))
  })

  /** An `Upgrade` request: the same admission, then the upstream's answer and a socket splice. */
  const handleUpgrade = Effect.fnUntraced(function*(req: Http.IncomingMessage, socket: Duplex, head: Buffer) {
    const startedAt = yield* Clock.currentTimeMillis
    socket.on("error", () => socket.destroy())
    const admitted = yield* Effect.result(admit(req))
    if (Result.isFailure(admitted)) {
      const { body, status, target } = admitted.failure
      Upstream.answerOnSocket(socket, status, body)
      return yield* record(target, status, startedAt)
    }
    yield* Upstream.forwardUpgrade(
      req,
      socket,
      head,
      admitted.success.request,
      agents,
      timeouts,
      spliced,
      report(admitted.success, startedAt)
    )
  })

  const guarded = <E>(effect: Effect.Effect<void, E>, onDefect: () => void) => Upstream.guarded(effect, "service-proxy", onDefect)

  const secureOptions = (pair: KeyPair) => ({ cert: pair.cert, key: pair.key, minVersion: "TLSv1.2" as const })
  const server = Https.createServer({
    ...secureOptions(keyPair),
    maxHeaderSize,
    headersTimeout,
    requestTimeout: 0,
    // How often headersTimeout is checked; the default (30s) would stretch it.
    connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(headersTimeout / 4)))
  })
  server.on("request", (req, res) => {
    run(guarded(handleRequest(req, res), () => Upstream.answer(res, 502, Upstream.badGateway)))
  })
  server.on("upgrade", (req, socket, head) => {
    run(guarded(handleUpgrade(req, socket, head), () => socket.destroy()))
  })
  server.on("tlsClientError", () => {
    // A client that fails the handshake is its own problem; keep serving.
  })
  server.on("error", () => {
    // Errors after listening are per connection and handled there; keep the process up.
  })

  const reloadCertificate = readKeyPair(options.certFile, options.keyFile).pipe(
    Effect.provideService(FileSystem.FileSystem, fs),
    Effect.matchEffect({
      onFailure: (error) => Effect.logWarning("cannot reload the serving certificate; keeping the current one", { error: error.message }),
      onSuccess: (next) => {
        if (next.fingerprint === keyPair.fingerprint) return Effect.void
        return Effect.try({
          try: () => server.setSecureContext(secureOptions(next)),
          catch: (error) => Upstream.describe(error)
        }).pipe(
          Effect.andThen(Effect.sync(() => void (keyPair = next))),
          Effect.andThen(Effect.logInfo("serving certificate reloaded", { cert: options.certFile })),
          Effect.catch((error) => Effect.logWarning("cannot use the new serving certificate; keeping the current one", { error }))
        )
      }
    }),
    Effect.annotateLogs({ component: "service-proxy" })
  )

  const address = yield* Upstream.listen(server, options.listen).pipe(
    Effect.mapError((message) => new ServiceProxyError({ reason: "Listen", message }))
  )

  const failure = yield* Deferred.make<never, ServiceProxyError>()
  let stopping = false
  server.on("close", () => {
    if (stopping) return
    Deferred.doneUnsafe(failure, Exit.fail(new ServiceProxyError({ reason: "Listen", message: `the listener on ${address.host}:${address.port} closed` })))
  })
  const shutdown = Effect.andThen(
    Effect.sync(() => void (stopping = true)),
    Upstream.shutdown(server, FiberSet.awaitEmpty(fibers), spliced, shutdownTimeout)
  )
  yield* Scope.addFinalizer(scope, shutdown.pipe(Effect.annotateLogs({ component: "service-proxy" })))

  yield* FileWatch.start({
    paths: [options.certFile, options.keyFile],
    interval: options.reloadInterval ?? Duration.seconds(10),
    reload: reloadCertificate,
    what: "serving certificate"
  }).pipe(Effect.provideService(FileSystem.FileSystem, fs), Scope.provide(scope))

  yield* Effect.logInfo("service proxy listening", {
    address: `${address.host}:${address.port}`,
    mode,
    impersonation: enableImpersonation,
    apiserver: (yield* credentials.current).serverUrl,
    ...(relay === undefined || mode !== "Relay" ? {} : { relay: `${relay.namespace}/${relay.name}:${relay.port}` })
  }).pipe(Effect.annotateLogs({ component: "service-proxy" }))

  return ServiceProxy.of({
    address,
    readiness: Effect.suspend(() => (server.listening ? Effect.void : Effect.fail("not listening"))),
    reloadCertificate,
    failure: Deferred.await(failure)
  })
})
