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
 *    `Impersonate-*` and hop-by-hop header removed ({@link Routing.forwardHeaders}).
 *
 * Bodies stream both ways with back-pressure (pipes, no buffering), so a watch, a log follow or
 * a large upload costs a few buffers of memory. Upgrades (WebSocket, SPDY for exec and
 * port-forward) are authenticated and routed the same way, then the two sockets are spliced.
 * Upstream connections are pooled (keep-alive agents for http and https); https backends are
 * verified against the system roots plus `additionalServiceCa`, under the Service host name
 * even though the connection goes to the resolved address.
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
import { Clock, Context, Duration, Effect, FiberSet, Layer, Metric, Result, Schedule, Schema, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import type * as Net from "node:net"
import { pipeline, type Duplex } from "node:stream"
import * as Tls from "node:tls"
import * as ListenAddress from "../domain/ListenAddress.ts"
import * as Routing from "../domain/Routing.ts"
import * as Metrics from "../observability/Metrics.ts"
import { CallerAuthenticator } from "./CallerAuthenticator.ts"
import { type Resolved, ServiceResolver } from "./ServiceResolver.ts"

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
  /** Idle upstream connections kept per backend (default 100). */
  readonly maxIdleConnections?: number
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
  readonly status: 400 | 401 | 502
  readonly body: string
  readonly scheme: Routing.MetricScheme
}

interface Admitted {
  readonly target: Routing.Target
  readonly resolved: Resolved
  readonly path: string
}

type UpstreamAnswer =
  | { readonly _tag: "Response"; readonly response: Http.IncomingMessage }
  | { readonly _tag: "Upgrade"; readonly response: Http.IncomingMessage; readonly socket: Duplex; readonly head: Buffer }

class UpstreamError extends Schema.TaggedError<UpstreamError>()("UpstreamError", { message: Schema.String }) {}

const badGateway = "bad gateway"

const describe = (error: unknown): string => {
  const code = (error as { code?: unknown } | undefined)?.code
  const message = error instanceof Error ? error.message : String(error)
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message
}

/** The path and query to send upstream: origin-form as received; absolute-form reduced to it. */
const requestPath = (url: string | undefined): string | undefined => {
  if (url === undefined || url === "") return undefined
  if (url.startsWith("/") || url === "*") return url
  const parsed = URL.parse(url)
  return parsed === null ? undefined : `${parsed.pathname}${parsed.search}`
}

const first = (value: string | ReadonlyArray<string> | undefined): string | undefined =>
  typeof value === "string" ? value : value?.[0]

const textHeaders = (body: string) => ({
  "content-type": "text/plain; charset=utf-8",
  "x-content-type-options": "nosniff",
  "content-length": String(Buffer.byteLength(body)),
  connection: "close"
})

/** A short plain-text answer on a response that has not started; otherwise cut the connection. */
const answer = (res: Http.ServerResponse, status: number, text: string) => {
  if (res.headersSent || res.destroyed) {
    res.destroy()
    return
  }
  const body = `${text}\n`
  res.writeHead(status, textHeaders(body))
  res.end(body)
}

const headerBlock = (status: number, statusMessage: string, pairs: ReadonlyArray<readonly [string, string]>): string =>
  `HTTP/1.1 ${status} ${statusMessage}\r\n${pairs.map(([name, value]) => `${name}: ${value}\r\n`).join("")}\r\n`

/** The same answer written on a raw socket (an upgrade request has no ServerResponse). */
const answerOnSocket = (socket: Duplex, status: number, text: string) => {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const body = `${text}\n`
  socket.end(headerBlock(status, Http.STATUS_CODES[status] ?? "", Object.entries(textHeaders(body))) + body)
  closeSoon(socket)
}

/**
 * After our last byte on a socket the server no longer watches: a client that never closes its
 * side must not keep it open.
 */
const closeSoon = (socket: Duplex) => {
  const linger = setTimeout(() => socket.destroy(), 5_000)
  linger.unref()
  socket.once("close", () => clearTimeout(linger))
}

const rawPairs = (raw: ReadonlyArray<string>): Array<readonly [string, string]> => {
  const pairs: Array<readonly [string, string]> = []
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!])
  return pairs
}

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
  const extraCa = yield* loadServiceCa(options.additionalServiceCa)

  // Finalizers run in reverse order of registration: stop the server and drain first, then
  // interrupt what is left, then drop the upstream pools.
  const scope = yield* Scope.fork(yield* Effect.scope, "sequential")
  const agents = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const pool = {
        keepAlive: true,
        maxFreeSockets: options.maxIdleConnections ?? 100,
        timeout: millis(options.idleConnectionTimeout, Duration.seconds(90)),
        scheduling: "lifo" as const
      }
      return {
        http: new Http.Agent(pool),
        https: new Https.Agent({ ...pool, ca: [...systemRoots(), ...extraCa], minVersion: "TLSv1.2" })
      }
    }),
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
  const record = (scheme: Routing.MetricScheme, status: number, startedAt: number) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* Metric.update(counterFor(scheme, status < 400 ? "success" : "error"), 1)
      yield* Metric.update(durationFor(scheme), (now - startedAt) / 1000)
    })

  /** Authenticate, route, resolve: everything that happens before a byte goes upstream. */
  const admit = Effect.fnUntraced(function*(req: Http.IncomingMessage): Effect.fn.Return<Admitted, Refusal> {
    yield* authenticator.authenticate(Routing.bearerToken(req.headers)).pipe(
      Effect.mapError((): Refusal => ({ status: 401, body: "unauthorized", scheme: "unknown" }))
    )
    const routed = Routing.route(req.headers)
    if (Result.isFailure(routed)) {
      const scheme = routed.failure.reason === "MissingHeader"
        ? "unknown"
        : Routing.metricScheme(first(req.headers[Routing.headerNames.proto.toLowerCase()]))
      return yield* Effect.fail<Refusal>({ status: 400, body: routed.failure.message, scheme })
    }
    const target = routed.success
    const path = requestPath(req.url)
    if (path === undefined) return yield* Effect.fail<Refusal>({ status: 400, body: "invalid request target", scheme: target.proto })
    const resolved = yield* resolver.resolve(target.hostname).pipe(
      Effect.catch((error) =>
        Effect.andThen(
          Effect.logWarning("cannot resolve the target service", { target: target.authority, error: error.message }),
          Effect.fail<Refusal>({ status: 502, body: badGateway, scheme: target.proto })
        )
      )
    )
    return { target, resolved, path }
  })

  /** Send the request head upstream and wait for the response head (or the upgrade). */
  const openUpstream = (
    req: Http.IncomingMessage,
    admitted: Admitted,
    body: "pipe" | "none"
  ): Effect.Effect<UpstreamAnswer, UpstreamError> =>
    Effect.callback<UpstreamAnswer, UpstreamError>((resume) => {
      const { path, resolved, target } = admitted
      let settled = false
      const settle = (effect: Effect.Effect<UpstreamAnswer, UpstreamError>) => {
        if (settled) return
        settled = true
        resume(effect)
      }
      const https = target.proto === "https"
      let outgoing: Http.ClientRequest
      try {
        outgoing = (https ? Https : Http).request({
          host: resolved.address,
          family: resolved.family,
          port: target.port,
          method: req.method ?? "GET",
          path,
          headers: Routing.forwardHeaders(req.headers, target) as Http.OutgoingHttpHeaders,
          setHost: false,
          maxHeaderSize,
          ...(https ? { agent: agents.https, servername: target.hostname } : { agent: agents.http })
        })
      } catch (error) {
        settle(Effect.fail(new UpstreamError({ message: describe(error) })))
        return
      }
      outgoing.once("socket", (socket: Net.Socket) => {
        if (!socket.connecting) return // a pooled connection
        const dial = setTimeout(() => outgoing.destroy(new Error(`connect timed out after ${dialTimeout}ms`)), dialTimeout)
        socket.once("close", () => clearTimeout(dial))
        socket.once("connect", () => {
          clearTimeout(dial)
          if (!https) return
          const handshake = setTimeout(
            () => outgoing.destroy(new Error(`TLS handshake timed out after ${handshakeTimeout}ms`)),
            handshakeTimeout
          )
          socket.once("secureConnect", () => clearTimeout(handshake))
          socket.once("close", () => clearTimeout(handshake))
        })
      })
      outgoing.once("response", (response) => settle(Effect.succeed({ _tag: "Response", response })))
      outgoing.once("upgrade", (response, socket, head) => settle(Effect.succeed({ _tag: "Upgrade", response, socket, head })))
      outgoing.on("error", (error) => {
        if (body === "pipe") {
          req.unpipe(outgoing)
          req.resume() // discard the rest of the upload; the answer closes the connection
        }
        settle(Effect.fail(new UpstreamError({ message: describe(error) })))
      })
      if (body === "pipe") {
        req.pipe(outgoing)
        req.once("close", () => {
          if (!req.complete) outgoing.destroy() // the client went away mid-upload
        })
      } else {
        outgoing.end()
      }
      return Effect.sync(() => outgoing.destroy())
    })

  const logUpstreamFailure = (target: Routing.Target, error: UpstreamError) =>
    Effect.logWarning("upstream request failed", { target: target.authority, error: error.message })

  /** One plain HTTP request, from the first header to the last byte of the response. */
  const handleRequest = Effect.fnUntraced(function*(req: Http.IncomingMessage, res: Http.ServerResponse) {
    const startedAt = yield* Clock.currentTimeMillis
    const admitted = yield* Effect.result(admit(req))
    if (Result.isFailure(admitted)) {
      const { body, scheme, status } = admitted.failure
      req.resume()
      yield* record(scheme, status, startedAt)
      return answer(res, status, body)
    }
    const { target } = admitted.success
    const upstream = yield* Effect.result(openUpstream(req, admitted.success, "pipe"))
    if (Result.isFailure(upstream)) {
      yield* logUpstreamFailure(target, upstream.failure)
      yield* record(target.proto, 502, startedAt)
      return answer(res, 502, badGateway)
    }
    if (upstream.success._tag === "Upgrade") {
      upstream.success.socket.destroy() // switching protocols was not asked for
      yield* record(target.proto, 502, startedAt)
      return answer(res, 502, badGateway)
    }
    const response = upstream.success.response
    const status = response.statusCode ?? 502
    const wrote = yield* Effect.try({
      try: () => res.writeHead(status, response.statusMessage, Routing.stripHopByHop(response.headers) as Http.OutgoingHttpHeaders),
      catch: (error) => new UpstreamError({ message: `unusable response head: ${describe(error)}` })
    }).pipe(Effect.result)
    if (Result.isFailure(wrote)) {
      response.destroy()
      yield* logUpstreamFailure(target, wrote.failure)
      yield* record(target.proto, 502, startedAt)
      return answer(res, 502, badGateway)
    }
    yield* record(target.proto, status, startedAt)
    yield* Effect.callback<void>((resume) => {
      // pipe() plus explicit endings: stream.pipeline builds an AbortController per call, which
      // showed up in the relay's per-request profile.
      let done = false
      const finish = () => {
        if (done) return
        done = true
        resume(Effect.void)
      }
      response.once("error", () => {
        res.destroy()
        finish()
      })
      response.once("aborted", () => res.destroy())
      res.once("close", () => {
        if (!response.complete) response.destroy()
        finish()
      })
      res.once("finish", finish)
      response.pipe(res)
      return Effect.sync(() => {
        response.destroy()
        res.destroy()
      })
    })
  })

  /** Join two sockets until both are closed. */
  const splice = (client: Duplex, upstream: Duplex) =>
    Effect.callback<void>((resume) => {
      spliced.add(client)
      spliced.add(upstream)
      let open = 2
      const closed = (socket: Duplex) => () => {
        spliced.delete(socket)
        if (--open === 0) resume(Effect.void)
      }
      const teardown = () => {
        client.destroy()
        upstream.destroy()
      }
      client.once("close", closed(client))
      upstream.once("close", closed(upstream))
      client.on("error", teardown)
      upstream.on("error", teardown)
      client.pipe(upstream)
      upstream.pipe(client)
      return Effect.sync(teardown)
    })

  /** An `Upgrade` request: the same admission, then the backend's answer and a socket splice. */
  const handleUpgrade = Effect.fnUntraced(function*(req: Http.IncomingMessage, socket: Duplex, head: Buffer) {
    const startedAt = yield* Clock.currentTimeMillis
    socket.on("error", () => socket.destroy())
    const admitted = yield* Effect.result(admit(req))
    if (Result.isFailure(admitted)) {
      const { body, scheme, status } = admitted.failure
      yield* record(scheme, status, startedAt)
      return answerOnSocket(socket, status, body)
    }
    const { target } = admitted.success
    const upstream = yield* Effect.result(openUpstream(req, admitted.success, "none"))
    if (Result.isFailure(upstream)) {
      yield* logUpstreamFailure(target, upstream.failure)
      yield* record(target.proto, 502, startedAt)
      return answerOnSocket(socket, 502, badGateway)
    }
    const { response } = upstream.success
    const status = response.statusCode ?? 502
    yield* record(target.proto, status, startedAt)
    if (upstream.success._tag === "Upgrade") {
      const { head: upstreamHead, socket: upstreamSocket } = upstream.success
      socket.write(headerBlock(status, response.statusMessage ?? "", rawPairs(response.rawHeaders)))
      if (upstreamHead.length > 0) socket.write(upstreamHead)
      if (head.length > 0) upstreamSocket.write(head)
      return yield* splice(socket, upstreamSocket)
    }
    // The backend refused the upgrade: pass its answer on and close (the body ends with the connection).
    const kept = rawPairs(response.rawHeaders).filter(([name]) => {
      const lower = name.toLowerCase()
      return !Routing.hopByHopHeaders.has(lower) && lower !== "content-length"
    })
    socket.write(headerBlock(status, response.statusMessage ?? "", [...kept, ["connection", "close"]]))
    yield* Effect.callback<void>((resume) => {
      pipeline(response, socket, () => {
        closeSoon(socket)
        resume(Effect.void)
      })
      return Effect.sync(() => {
        response.destroy()
        socket.destroy()
      })
    })
  })

  // A defect must still leave the client with an answer and the process alive.
  const guarded = <E>(effect: Effect.Effect<void, E>, onDefect: () => void) =>
    effect.pipe(
      Effect.catchCause((cause) =>
        Effect.andThen(Effect.logError("service relay request failed unexpectedly", { cause: String(cause) }), Effect.sync(onDefect))
      ),
      Effect.annotateLogs({ component: "service-relay" })
    )

  const server = Http.createServer({
    maxHeaderSize,
    headersTimeout,
    requestTimeout,
    // How often headersTimeout/requestTimeout are checked; the default (30s) would let a 5s
    // header timeout run to 35s.
    connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(headersTimeout / 4)))
  })
  server.on("request", (req, res) => {
    run(guarded(handleRequest(req, res), () => answer(res, 502, badGateway)))
  })
  server.on("upgrade", (req, socket, head) => {
    run(guarded(handleUpgrade(req, socket, head), () => socket.destroy()))
  })
  server.on("error", () => {
    // Errors after listening are per-connection and handled there; keep the process up.
  })

  const address = yield* Effect.callback<{ readonly host: string; readonly port: number }, ServiceRelayError>(
    (resume) => {
      const onError = (error: Error) =>
        resume(Effect.fail(
          new ServiceRelayError({ reason: "Listen", message: `cannot listen on ${ListenAddress.format(options.listen)}: ${describe(error)}` })
        ))
      server.once("error", onError)
      server.listen({ port: options.listen.port, ...(options.listen.host ? { host: options.listen.host } : {}) }, () => {
        server.off("error", onError)
        const bound = server.address() as Net.AddressInfo
        resume(Effect.succeed({ host: bound.address, port: bound.port }))
      })
    }
  )

  const shutdown = Effect.gen(function*() {
    const closed = Effect.callback<void>((resume) => {
      server.close(() => resume(Effect.void))
    })
    // Keep-alive connections that go idle during the drain are closed as they do.
    const closeIdle = Effect.sync(() => server.closeIdleConnections()).pipe(
      Effect.repeat(Schedule.spaced("100 millis")),
      Effect.andThen(Effect.never)
    )
    const drained = yield* Effect.all([closed, FiberSet.awaitEmpty(fibers)]).pipe(
      Effect.raceFirst(closeIdle),
      Effect.timeoutOption(shutdownTimeout)
    )
    if (drained._tag === "None") yield* Effect.logWarning("service relay shutdown timed out; closing open connections")
    server.closeAllConnections()
    for (const socket of spliced) socket.destroy()
  })
  yield* Scope.addFinalizer(scope, shutdown.pipe(Effect.annotateLogs({ component: "service-relay" })))
  yield* Effect.logInfo("service relay listening", { address: `${address.host}:${address.port}` }).pipe(
    Effect.annotateLogs({ component: "service-relay" })
  )

  return ServiceRelay.of({
    address,
    readiness: Effect.suspend(() => (server.listening ? Effect.void : Effect.fail("not listening")))
  })
})
