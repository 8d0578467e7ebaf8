/**
 * The service proxy: the TLS server behind the konnectivity tunnel that user-server's requests
 * reach, routed by the `Cluster-Proxy-*` headers (hosted-mode-spec 4).
 *
 * Per request ({@link ServiceProxyMode.decide}):
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
 * The proxy is an admission policy over the shared HTTP core (`src/http`): {@link Server}
 * listens (TLS), forwards (undici fast path for plain requests, `node:http` for upgrades) and
 * shuts down. Admission is synchronous when the caller's TokenReview and the Service's address
 * are cached (nearly always); a cache miss runs the same admission as an Effect.
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
import { Context, Deferred, Duration, Effect, Exit, FileSystem, Layer, Metric, Redacted, Result, Schema } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import type * as Http from "node:http"
import type * as Https from "node:https"
import * as Tls from "node:tls"
import * as HttpHeaders from "../domain/HttpHeaders.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"
import * as RequestPath from "../domain/RequestPath.ts"
import * as ApiserverUrl from "../domain/ApiserverUrl.ts"
import * as Impersonation from "../domain/Impersonation.ts"
import * as ServiceProxyHeaders from "../domain/ServiceProxyHeaders.ts"
import * as ServiceProxyMode from "../domain/ServiceProxyMode.ts"
import * as ServiceRouting from "../domain/ServiceRouting.ts"
import * as Admission from "../http/Admission.ts"
import * as Answers from "../http/Answers.ts"
import * as BusyPoll from "../http/BusyPoll.ts"
import type * as Forwarder from "../http/Forwarder.ts"
import * as Server from "../http/Server.ts"
import * as Trust from "../http/Trust.ts"
import * as FileWatch from "../kube/FileWatch.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { NotReady } from "../observability/Probes.ts"
import { ServiceResolver } from "../relay/ServiceResolver.ts"
import { ManagedCredentials, type Snapshot } from "./ManagedCredentials.ts"
import { type Authenticated, TokenReviewChain } from "./TokenReviewChain.ts"

/** @category models */
export interface Options {
  /** Where to serve TLS (`:7443`). Port 0 picks a free port; see {@link ServiceProxy} `address`. */
  readonly listen: ListenAddress.ListenAddress
  /** PEM serving certificate (chain) and key; re-read when they change. */
  readonly certFile: string
  readonly keyFile: string
  readonly deployment: ServiceProxyMode.Deployment
  /** Authenticate kube-apiserver callers and impersonate them (default in the CLI: true). */
  readonly enableImpersonation: boolean
  /** The relay Service; required in Relay mode. */
  readonly relay?: ApiserverUrl.RelayService | undefined
  /** Extra CAs for https Services (a missing file is skipped). */
  readonly additionalServiceCa?: string | undefined
  /**
   * The cluster CA trusted for https Services, besides `additionalServiceCa` (default: the pod's
   * ServiceAccount `ca.crt` when present). Without any CA, the system roots are trusted.
   */
  readonly serviceAccountCa?: string | undefined
  /**
   * Accepted for the `--max-idle-conns` flag; the upstream pools keep every connection alive
   * until it has been idle for `idleConnectionTimeout`.
   */
  readonly maxIdleConnections?: number
  /** An idle upstream connection is closed after this long (default 90 seconds). */
  readonly idleConnectionTimeout?: Duration.Input
  /** Upstream TLS handshake bound (default 10 seconds). */
  readonly tlsHandshakeTimeout?: Duration.Input
  /**
   * Accepted for the `--expect-continue-timeout` flag. The proxy's own server answers
   * `100 Continue` and receives the whole body; the upstream hop carries no `Expect`.
   */
  readonly expectContinueTimeout?: Duration.Input
  /**
   * The longest the event loop keeps polling after each request and response instead of
   * sleeping, adapted to how close together they come (`--busy-poll`, see `http/BusyPoll`);
   * 0: never; absent: {@link BusyPoll.defaultMaxMicros}.
   */
  readonly busyPoll?: Duration.Input | undefined
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
  readonly readiness: Effect.Effect<void, NotReady>
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

const certificateError = (message: string) => new ServiceProxyError({ reason: "Certificate", message })

/** The files as they are now, not yet checked ({@link checkKeyPair}). */
const readKeyPair = (certFile: string, keyFile: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const cert = yield* fs.readFileString(certFile).pipe(
      Effect.mapError((error) => certificateError(`cannot read the certificate ${certFile}: ${error.message}`))
    )
    const key = yield* fs.readFileString(keyFile).pipe(
      Effect.mapError((error) => certificateError(`cannot read the key ${keyFile}: ${error.message}`))
    )
    return { cert, key, fingerprint: Crypto.createHash("sha256").update(cert).update("\0").update(key).digest("hex") } satisfies KeyPair
  })

/**
 * Fails unless the pair can serve TLS. Building a TLS context from it costs about a
 * millisecond of the event loop, so a reload checks only a pair that changed.
 */
const checkKeyPair = (pair: KeyPair, certFile: string, keyFile: string) =>
  Effect.try({
    try: () => void Tls.createSecureContext({ cert: pair.cert, key: pair.key }),
    catch: (error) =>
      certificateError(`the certificate ${certFile} and key ${keyFile} are not a usable pair: ${Answers.describe(error).split("\n")[0]}`)
  })

const secureOptions = (pair: KeyPair) => ({ cert: pair.cert, key: pair.key, minVersion: "TLSv1.2" as const })

const defaultServiceAccountCa = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

// ---------------------------------------------------------------------------------------------
// the server
// ---------------------------------------------------------------------------------------------

type Label = ServiceProxyMode.MetricTarget

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
  const mode = ServiceProxyMode.metricMode(deployment)
  const relay = options.relay
  // The options were checked by `Options.resolve`; what remains is the one field the type
  // cannot tie to the mode.
  if (deployment._tag === "Hosted" && deployment.mode === "Relay" && relay === undefined) {
    return yield* new ServiceProxyError({ reason: "Config", message: "Relay mode needs the relay Service (namespace, name, port)" })
  }

  // Trust for https Services: the cluster CA plus the additional one; the system roots when neither.
  const serviceAccountCa = options.serviceAccountCa ?? (Fs.existsSync(defaultServiceAccountCa) ? defaultServiceAccountCa : undefined)
  const serviceCa = yield* Effect.all([Trust.loadServiceCa(serviceAccountCa), Trust.loadServiceCa(options.additionalServiceCa)]).pipe(
    Effect.map(([cluster, additional]) => [...cluster, ...additional]),
    Effect.mapError((error) => new ServiceProxyError({ reason: "ServiceCa", message: error.message }))
  )
  const serviceTrust: Forwarder.Trust = { key: "service", ca: serviceCa.length > 0 ? serviceCa : undefined, rejectUnauthorized: true }

  let keyPair = yield* readKeyPair(options.certFile, options.keyFile).pipe(Effect.provideService(FileSystem.FileSystem, fs))
  yield* checkKeyPair(keyPair, options.certFile, options.keyFile)

  // Labelled metric handles, built once: the label sets are closed and small.
  const context = yield* Effect.context<never>()
  const handles = new Map<string, { readonly count: Metric.Metric<number, unknown>; readonly duration: Metric.Metric<number, unknown> }>()
  const record = (target: Label, status: number, startedAt: number, headAt: number) => {
    const result = status < 400 ? "success" : "error"
    const key = `${target}/${result}`
    let handle = handles.get(key)
    if (handle === undefined) {
      handle = {
        count: Metric.withAttributes(Metrics.serviceProxyRequestsTotal, { mode, target, result }),
        duration: Metric.withAttributes(Metrics.serviceProxyRequestDuration, { mode, target })
      }
      handles.set(key, handle)
    }
    handle.count.updateUnsafe(1, context)
    handle.duration.updateUnsafe((headAt - startedAt) / 1000, context)
  }

  /**
   * Where the managed apiserver is, and how it is trusted, in the snapshot of the moment: one
   * object per snapshot, so that the forwarder finds its pool without building a key.
   */
  const destinations = new WeakMap<Snapshot, Forwarder.Destination>()
  const apiserver = (current: Snapshot): Forwarder.Destination => {
    let destination = destinations.get(current)
    if (destination === undefined) {
      destination = {
        protocol: current.server.scheme,
        host: current.server.hostname,
        port: current.server.port,
        servername: current.tls.servername,
        trust: { key: current.endpointKey, ca: current.tls.ca, rejectUnauthorized: !current.tls.insecure }
      }
      destinations.set(current, destination)
    }
    return destination
  }

  const toApiserverAs = (path: string, headers: Forwarder.HeaderList, current: Snapshot) =>
    Admission.admitted<Label>({
      label: "kube-apiserver",
      destination: apiserver(current),
      path: RequestPath.joinPath(current.server.pathPrefix, path),
      headers,
      upstream: { target: "kube-apiserver", upstream: current.serverUrl }
    })

  // A caller's impersonation headers, built once per cached review answer (the same object
  // until the answer expires) rather than checked and built on every request.
  const impersonations = new WeakMap<Authenticated, ReturnType<typeof Impersonation.impersonationHeaders>>()

  /** The authenticated caller, impersonated with the proxy's current token. */
  const impersonate = (req: Http.IncomingMessage, path: string, caller: Authenticated, upgrade: boolean): Admission.Admission<Label> => {
    let impersonation = impersonations.get(caller)
    if (impersonation === undefined) {
      impersonation = Impersonation.impersonationHeaders(caller.source, caller.user)
      impersonations.set(caller, impersonation)
    }
    if (Result.isFailure(impersonation)) return Admission.refusal(401, impersonation.failure.message, "kube-apiserver")
    const current = credentials.currentUnsafe()
    const { authority } = current.server
    const headers = upgrade
      ? ServiceProxyHeaders.impersonatingHeaders(req.headers, impersonation.success, current.token, authority)
      : ServiceProxyHeaders.impersonatingRawHeaders(req.headers, req.rawHeaders, impersonation.success, current.token, authority)
    return toApiserverAs(path, headers, current)
  }

  /** The kube-apiserver: authenticate, then impersonate with the proxy's token. */
  const toApiserver = (req: Http.IncomingMessage, path: string, upgrade: boolean): Admission.Admission<Label> => {
    if (RequestPath.hasDotSegment(path)) return Admission.refusal(400, "invalid request path", "kube-apiserver")
    if (!enableImpersonation) {
      const current = credentials.currentUnsafe()
      return toApiserverAs(path, ServiceProxyHeaders.passThroughHeaders(req.headers, current.server.authority), current)
    }
    const tokenText = ServiceProxyHeaders.callerTokenText(req.headers)
    const known = chain.known(tokenText)
    if (known !== undefined) {
      if (Exit.isSuccess(known)) return impersonate(req, path, known.value, upgrade)
      const error = Exit.findErrorOption(known)
      return Admission.refusal(401, error._tag === "Some" ? error.value.message : "authentication failed", "kube-apiserver")
    }
    const token = tokenText === undefined ? undefined : Redacted.make(tokenText)
    return chain.authenticate(token).pipe(
      Effect.ensuring(Effect.sync(() => HttpHeaders.forgetToken(token))),
      Effect.mapError((error) => Admission.refusal<Label>(401, error.message, "kube-apiserver")),
      Effect.flatMap((caller) => Admission.awaitAdmission(impersonate(req, path, caller, upgrade)))
    )
  }

  /** A Service through the relay, via the managed apiserver's `services/proxy`. */
  const toRelay = (req: Http.IncomingMessage, path: string, target: ServiceRouting.Target, upgrade: boolean): Admission.Admission<Label> => {
    if (RequestPath.hasDotSegment(path)) return Admission.refusal(400, "invalid request path", "service")
    if (relay === undefined) return Admission.refusal(503, "service relay is not configured", "service")
    const current = credentials.currentUnsafe()
    const { server } = current
    return Admission.admitted({
      label: "service",
      destination: apiserver(current),
      path: ApiserverUrl.relayPath(server, relay, path),
      headers: upgrade
        ? ServiceProxyHeaders.relayHeaders(req.headers, target, current.token, server.authority)
        : ServiceProxyHeaders.relayRawHeaders(req.headers, req.rawHeaders, target, current.token, server.authority),
      upstream: { target: "service", upstream: `${current.serverUrl} (relay for ${target.authority})` }
    })
  }

  /** A Service reached from here. */
  const toService = (req: Http.IncomingMessage, path: string, target: ServiceRouting.Target): Admission.Admission<Label> => {
    const admit = (address: string) =>
      Admission.admitted<Label>({
        label: "service",
        destination: { protocol: target.proto, host: address, port: target.port, servername: target.hostname, trust: serviceTrust },
        path,
        headers: ServiceProxyHeaders.serviceHeaders(req.headers, target),
        upstream: { target: "service", upstream: target.authority }
      })
    const known = resolver.known(target.hostname)
    if (known !== undefined) return admit(known.address)
    return resolver.resolve(target.hostname).pipe(
      Effect.timeoutOrElse({
        duration: Duration.seconds(5),
        orElse: () => Effect.fail({ message: `resolving ${target.hostname} timed out` })
      }),
      Effect.map((resolved) => admit(resolved.address)),
      Effect.catch((error) =>
        Effect.andThen(
          Effect.logWarning("cannot resolve the target service", { target: target.authority, error: error.message }),
          Effect.fail(Admission.refusal<Label>(502, Answers.badGateway, "service"))
        )
      )
    )
  }

  /** Everything that happens before a byte goes upstream ({@link ServiceProxyMode.decide}). */
  const admit = (req: Http.IncomingMessage, upgrade: boolean): Admission.Admission<Label> => {
    // Node keeps one of a repeated Authorization or routing header; which one counts is a guess.
    const repeated = ServiceRouting.repeatedHeader(req.rawHeaders)
    if (repeated !== undefined) return Admission.refusal(400, repeated.message, "unknown")
    const classified = ServiceProxyMode.classify(req.headers)
    if (Result.isFailure(classified)) return Admission.refusal(400, classified.failure.message, "unknown")
    const label = ServiceProxyMode.metricTarget(classified.success)
    const path = RequestPath.requestPath(req.url)
    if (path === undefined) return Admission.refusal(400, "invalid request target", label)
    const decision = ServiceProxyMode.decide(deployment, classified.success)
    switch (decision._tag) {
      case "Refuse":
        return Admission.refusal(decision.status, decision.message, label)
      case "Apiserver":
        return toApiserver(req, path, upgrade)
      case "Relay":
        return toRelay(req, path, decision.target, upgrade)
      case "Service":
        return toService(req, path, decision.target)
    }
  }

  const served = yield* Server.serve({
    component: "service-proxy",
    gauges: Metrics.serviceProxyOpen,
    listen: options.listen,
    tls: { cert: keyPair.cert, key: keyPair.key },
    maxHeaderSize: options.maxHeaderSize ?? 64 * 1024,
    headersTimeout: Server.millis(options.headersTimeout, Duration.seconds(10)),
    requestTimeout: 0,
    shutdownTimeout: options.shutdownTimeout ?? Duration.seconds(5),
    dialTimeout: Server.millis(options.dialTimeout, Duration.seconds(30)),
    handshakeTimeout: Server.millis(options.tlsHandshakeTimeout, Duration.seconds(10)),
    idleTimeout: Server.millis(options.idleConnectionTimeout, Duration.seconds(90)),
    busyPollMicros: options.busyPoll === undefined ? BusyPoll.defaultMaxMicros : Server.millis(options.busyPoll, 0) * 1000
  }, { admit, record }).pipe(Effect.mapError((error) => new ServiceProxyError({ reason: "Listen", message: error.message })))
  const server = served.server as Https.Server
  const address = served.address

  /** Serve new connections with a checked pair. */
  const use = (next: KeyPair) =>
    Effect.try({
      try: () => server.setSecureContext(secureOptions(next)),
      catch: (error) => Answers.describe(error)
    }).pipe(
      Effect.andThen(Effect.sync(() => void (keyPair = next))),
      Effect.andThen(Effect.logInfo("serving certificate reloaded", { cert: options.certFile })),
      Effect.catch((error) => Effect.logWarning("cannot use the new serving certificate; keeping the current one", { error }))
    )
  const reloadCertificate = readKeyPair(options.certFile, options.keyFile).pipe(
    Effect.provideService(FileSystem.FileSystem, fs),
    Effect.flatMap((next) =>
      next.fingerprint === keyPair.fingerprint
        ? Effect.void
        : Effect.andThen(checkKeyPair(next, options.certFile, options.keyFile), use(next))
    ),
    Effect.catch((error) => Effect.logWarning("cannot reload the serving certificate; keeping the current one", { error: error.message })),
    Effect.annotateLogs({ component: "service-proxy" })
  )

  const failure = yield* Deferred.make<never, ServiceProxyError>()
  server.on("close", () => {
    if (served.stopping()) return
    Deferred.doneUnsafe(failure, Exit.fail(new ServiceProxyError({ reason: "Listen", message: `the listener on ${address.host}:${address.port} closed` })))
  })

  yield* FileWatch.start({
    paths: [options.certFile, options.keyFile],
    interval: options.reloadInterval ?? Duration.seconds(10),
    reload: reloadCertificate,
    what: "serving certificate"
  }).pipe(Effect.provideService(FileSystem.FileSystem, fs))

  yield* Effect.logInfo("service proxy listening", {
    address: `${address.host}:${address.port}`,
    mode,
    impersonation: enableImpersonation,
    apiserver: credentials.currentUnsafe().serverUrl,
    ...(relay === undefined || mode !== "Relay" ? {} : { relay: `${relay.namespace}/${relay.name}:${relay.port}` })
  }).pipe(Effect.annotateLogs({ component: "service-proxy" }))

  return ServiceProxy.of({
    address,
    readiness: served.readiness,
    reloadCertificate,
    failure: Deferred.await(failure)
  })
})
