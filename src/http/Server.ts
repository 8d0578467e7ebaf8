/**
 * The server both HTTP proxies run: listening (plain or TLS) with header-size and header-time
 * limits, each request admitted by the proxy's {@link Admission.Policy} and then sent on by the
 * {@link Forwarder.Forwarder}, refusals answered here, and a graceful shutdown when the scope
 * closes.
 *
 * Per request:
 * - `Expect: 100-continue` is answered only once the request is admitted (a refused caller is
 *   never invited to send its body); a request the parser refuses gets 400, 408 or 431
 *   ({@link Answers.clientError});
 * - a plain request whose admission is decided at once (the usual case) runs in callbacks from
 *   the request event to the last byte, without a fiber; one that has to wait runs its
 *   admission as an Effect, then takes the same path;
 * - an `Upgrade` request is admitted the same way and spliced ({@link Forwarder.Forwarder}
 *   `forwardUpgrade`).
 *
 * A defect in a policy or the forwarder still leaves the client with an answer (502, or a cut
 * upgrade socket) and the process alive; the cause goes to the log. Upstream failures are
 * logged with the admission's `upstream` fields, never a path, header value or token.
 *
 * With `busyPollMicros`, the event loop keeps polling for up to that long after each request
 * arrives, each answer comes and each response closes, instead of sleeping, while such events
 * come close together and at most one request is open ({@link BusyPoll}).
 *
 * What is open (requests, client connections, upgrades) is counted here with plain numbers and
 * sets, and read by the proxy's gauges ({@link Metrics.OpenGauges}) at scrape time, so the
 * request path pays no metric update.
 *
 * Closing the scope stops accepting connections, closes keep-alive connections as they go
 * idle, lets in-flight requests run for `shutdownTimeout`, then cuts what is left (upgrades and
 * connections still in their TLS handshake included), waits briefly for the sockets to close,
 * and drops the upstream pools.
 *
 * @since 0.1.0
 */
import { Clock, type Context, Duration, Effect, FiberSet, Metric, Schedule, Scope } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import type * as Net from "node:net"
import type { Duplex } from "node:stream"
import * as ListenAddress from "../domain/ListenAddress.ts"
import type * as Metrics from "../observability/Metrics.ts"
import { type NotReady, notReady } from "../observability/Probes.ts"
import * as Admission from "./Admission.ts"
import * as Answers from "./Answers.ts"
import * as BusyPoll from "./BusyPoll.ts"
import { Forwarder, type Report } from "./Forwarder.ts"

/** @category models */
export interface Options {
  /** Log annotation and message prefix (`service-relay`, `service-proxy`). */
  readonly component: string
  /** The proxy's gauges of what is open now. */
  readonly gauges: Metrics.OpenGauges
  readonly listen: ListenAddress.ListenAddress
  /** Serve TLS with this certificate (chain) and key; plain HTTP when absent. */
  readonly tls?: { readonly cert: string; readonly key: string } | undefined
  /** Largest accepted request (and upstream response) header block, in bytes. */
  readonly maxHeaderSize: number
  /** Time allowed to receive the request headers, in milliseconds. */
  readonly headersTimeout: number
  /** Time allowed to receive a whole request, in milliseconds; 0 for none. */
  readonly requestTimeout: number
  /** How long in-flight requests may run on after shutdown starts. */
  readonly shutdownTimeout: Duration.Input
  /** Upstream TCP connect bound, in milliseconds. */
  readonly dialTimeout: number
  /** Upstream TLS handshake bound, in milliseconds. */
  readonly handshakeTimeout: number
  /** An idle upstream connection is closed after this long, in milliseconds. */
  readonly idleTimeout: number
  /** Keep the event loop polling up to this long after each request and response ({@link BusyPoll}); 0 or absent: never. */
  readonly busyPollMicros?: number | undefined
}

/** @category models */
export interface Served {
  readonly server: Http.Server | Https.Server
  /** The bound address (the real port when `listen` asked for port 0). */
  readonly address: { readonly host: string; readonly port: number }
  /** Succeeds while the server accepts connections. */
  readonly readiness: Effect.Effect<void, NotReady>
  /** Whether the scope has started closing the server (a `close` event before that is a failure). */
  readonly stopping: () => boolean
}

/**
 * Listen on `address`; the bound host and port (port 0 picks a free one), or why not.
 *
 * @category servers
 */
export const listen = (server: Net.Server, address: ListenAddress.ListenAddress): Effect.Effect<Served["address"], ListenAddress.ListenError> =>
  Effect.callback((resume) => {
    const onError = (error: Error) =>
      resume(Effect.fail(
        new ListenAddress.ListenError({ message: `cannot listen on ${ListenAddress.format(address)}: ${Answers.describe(error)}`, code: ListenAddress.errorCode(error) })
      ))
    server.once("error", onError)
    server.listen({ port: address.port, ...(address.host ? { host: address.host } : {}) }, () => {
      server.off("error", onError)
      const bound = server.address() as Net.AddressInfo
      resume(Effect.succeed({ host: bound.address, port: bound.port }))
    })
  })

/**
 * What a server has open now. Module-level, so that the gauges' read hooks (kept by the metric
 * registry after the server stops) hold these counts and nothing else of the server.
 */
class Open {
  /** Plain requests whose response has not closed. */
  requests = 0
  /** Client sockets, from accept (before any TLS handshake) until they close. */
  readonly sockets = new Set<Net.Socket>()
  /** Client sockets of upgrade requests, until they close. */
  readonly upgrades = new Set<Duplex>()
  /** Called once the last client socket has closed (shutdown waits on it). */
  onIdle: (() => void) | undefined

  register(gauges: Metrics.OpenGauges, context: Context.Context<never>): void {
    const readOnly = { update: () => {}, modify: () => {} }
    Metric.registerUnsafe(gauges.requests, context, { ...readOnly, get: () => ({ value: this.requests }) })
    Metric.registerUnsafe(gauges.connections, context, { ...readOnly, get: () => ({ value: this.sockets.size }) })
    Metric.registerUnsafe(gauges.upgrades, context, { ...readOnly, get: () => ({ value: this.upgrades.size }) })
  }

  accepted(socket: Net.Socket): void {
    this.sockets.add(socket)
    socket.once("close", () => {
      this.sockets.delete(socket)
      if (this.sockets.size === 0) this.onIdle?.()
    })
  }

  upgrading(socket: Duplex): void {
    this.upgrades.add(socket)
    socket.once("close", () => void this.upgrades.delete(socket))
  }

  /** Cut every client socket, then wait (bounded) for their close events. */
  cutAll(): Effect.Effect<void> {
    for (const socket of this.upgrades) socket.destroy()
    for (const socket of this.sockets) socket.destroy()
    return Effect.callback<void>((resume) => {
      if (this.sockets.size === 0) return resume(Effect.void)
      this.onIdle = () => resume(Effect.void)
      return Effect.sync(() => void (this.onIdle = undefined))
    }).pipe(Effect.timeoutOption("2 seconds"), Effect.asVoid)
  }
}

const shutdown = (server: Http.Server, inFlight: Effect.Effect<void>, spliced: ReadonlySet<Duplex>, open: Open, timeout: Duration.Input) =>
  Effect.gen(function*() {
    const closed = Effect.callback<void>((resume) => {
      server.close(() => resume(Effect.void))
    })
    const closeIdle = Effect.sync(() => server.closeIdleConnections()).pipe(
      Effect.repeat(Schedule.spaced("100 millis")),
      Effect.andThen(Effect.never)
    )
    const drained = yield* Effect.all([closed, inFlight]).pipe(Effect.raceFirst(closeIdle), Effect.timeoutOption(timeout))
    if (drained._tag === "None") yield* Effect.logWarning("shutdown timed out; closing open connections")
    server.closeAllConnections()
    for (const socket of spliced) socket.destroy()
    yield* open.cutAll()
  })

/**
 * Serve `policy` until the current scope closes.
 *
 * @category constructors
 */
export const serve = Effect.fnUntraced(function*<L>(options: Options, policy: Admission.Policy<L>) {
  const { component, maxHeaderSize } = options
  // Node refuses a header timeout longer than a (non-zero) request timeout.
  const headersTimeout = Math.min(
    options.headersTimeout,
    options.requestTimeout > 0 ? options.requestTimeout : Number.POSITIVE_INFINITY
  )

  // Finalizers run in reverse order of registration: stop the server and drain first, then
  // interrupt what is left, then drop the upstream pools.
  const scope = yield* Scope.fork(yield* Effect.scope, "sequential")
  const forwarder = yield* Effect.acquireRelease(
    Effect.sync(() =>
      new Forwarder({
        dialTimeout: options.dialTimeout,
        handshakeTimeout: options.handshakeTimeout,
        idleTimeout: options.idleTimeout,
        maxHeaderSize
      })
    ),
    (forwarder) => Effect.promise(() => forwarder.destroy())
  ).pipe(Scope.provide(scope))
  const fibers = yield* FiberSet.make<void, never>().pipe(Scope.provide(scope))
  const run = yield* FiberSet.runtime(fibers)<never>()
  const spliced = new Set<Duplex>()
  const open = new Open()
  open.register(options.gauges, yield* Effect.context<never>())
  const poll = BusyPoll.make(options.busyPollMicros ?? 0)
  yield* Scope.addFinalizer(scope, Effect.sync(poll.stop))
  // Polled for only while at most one request is open: with more the loop is seldom idle, and
  // spinning would take CPU from the clients and upstreams beside it (in two bench runs at 128
  // connections, 0.81-0.97x Go's req/s polling against 1.01-1.14x without).
  const touch = (awaiting: BusyPoll.Awaiting) => {
    if (open.requests <= 1) poll.touch(awaiting)
  }
  /** One listener function for every response: no closure per request. */
  const requestClosed = () => {
    open.requests--
    touch("client")
  }

  // The request path reads the clock and logs outside any fiber.
  const clock = yield* Clock.clockWith(Effect.succeed)
  const now = () => clock.currentTimeMillisUnsafe()
  const log = (effect: Effect.Effect<void>) => run(Effect.annotateLogs(effect, { component }))

  const report = (admitted: Admission.Admitted<L>, startedAt: number): Report => ({
    now,
    answered: (status, headAt) => {
      // The answer came: the response closes next, as soon as it is written.
      touch("upstream")
      policy.record(admitted.label, status, startedAt, headAt)
    },
    failed: (message) => log(Effect.logWarning("upstream request failed", { ...admitted.upstream, error: message }))
  })

  // Connections whose last answer was a refusal (which closes them): a request pipelined behind
  // it is not served, as its client will never read the answer.
  const closing = new WeakSet<Net.Socket>()

  const refuse = (req: Http.IncomingMessage, res: Http.ServerResponse, refused: Admission.Refusal<L>, startedAt: number) => {
    closing.add(req.socket)
    req.resume()
    Answers.answer(res, refused.status, refused.body)
    policy.record(refused.label, refused.status, startedAt, now())
  }

  const forward = (req: Http.IncomingMessage, res: Http.ServerResponse, admitted: Admission.Admitted<L>, startedAt: number) =>
    forwarder.forward(req, res, admitted.destination, admitted.path, admitted.headers, report(admitted, startedAt))

  const guarded = <E>(effect: Effect.Effect<void, E>, onDefect: () => void): Effect.Effect<void> =>
    effect.pipe(
      Effect.catchCause((cause) =>
        Effect.andThen(Effect.logError(`${component} request failed unexpectedly`, { cause: String(cause) }), Effect.sync(onDefect))
      ),
      Effect.annotateLogs({ component })
    )

  /**
   * One plain request: without a fiber when admission needs no waiting. A client that sent
   * `Expect: 100-continue` is invited to send its body only once admitted; a refused one gets
   * its answer without the invitation.
   */
  const handleRequest = (req: Http.IncomingMessage, res: Http.ServerResponse, expectsContinue: boolean) => {
    if (closing.has(req.socket)) return void req.resume()
    const startedAt = now()
    const admission = policy.admit(req, false)
    const proceed = (admitted: Admission.Admitted<L>) => {
      if (expectsContinue) res.writeContinue()
      forward(req, res, admitted, startedAt)
    }
    if (!Effect.isEffect(admission)) {
      return admission._tag === "Admitted" ? proceed(admission) : refuse(req, res, admission, startedAt)
    }
    run(guarded(
      Effect.match(admission, {
        onFailure: (refused) => refuse(req, res, refused, startedAt),
        onSuccess: proceed
      }),
      () => Answers.answer(res, 502, Answers.badGateway)
    ))
  }

  /** An `Upgrade` request: the same admission, then the upstream's answer and a socket splice. */
  const handleUpgrade = Effect.fnUntraced(function*(req: Http.IncomingMessage, socket: Duplex, head: Buffer) {
    const startedAt = now()
    socket.on("error", () => socket.destroy())
    const admitted = yield* Effect.result(Admission.awaitAdmission(policy.admit(req, true)))
    if (admitted._tag === "Failure") {
      const { body, label, status } = admitted.failure
      Answers.answerOnSocket(socket, status, body)
      return policy.record(label, status, startedAt, now())
    }
    const { destination, headers, path } = admitted.success
    yield* forwarder.forwardUpgrade(req, socket, head, destination, path, headers, spliced, report(admitted.success, startedAt))
  })

  const limits = {
    maxHeaderSize,
    headersTimeout,
    requestTimeout: options.requestTimeout,
    // How often headersTimeout/requestTimeout are checked; the default (30s) would let a 5s
    // header timeout run to 35s.
    connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(headersTimeout / 4)))
  }
  const server: Http.Server | Https.Server = options.tls === undefined
    ? Http.createServer(limits)
    : Https.createServer({ ...limits, cert: options.tls.cert, key: options.tls.key, minVersion: "TLSv1.2" })
  const onRequest = (expectsContinue: boolean) => (req: Http.IncomingMessage, res: Http.ServerResponse) => {
    // A response closes exactly once on every path: finished, refused, cut, or its socket gone
    // (queued pipelined responses included).
    open.requests++
    touch("upstream")
    res.on("close", requestClosed)
    try {
      handleRequest(req, res, expectsContinue)
    } catch (error) {
      // A defect must still leave the client with an answer and the process alive.
      log(Effect.logError(`${component} request failed unexpectedly`, { cause: Answers.describe(error) }))
      Answers.answer(res, 502, Answers.badGateway)
    }
  }
  // Every accepted socket, before any TLS handshake (a handshake that never finishes still holds one).
  server.on("connection", (socket: Net.Socket) => open.accepted(socket))
  server.on("request", onRequest(false))
  // With a listener here Node no longer answers `100 Continue` by itself: admission decides.
  server.on("checkContinue", onRequest(true))
  // Requests the parser refuses (oversize headers, smuggling shapes) get an answer, not a cut.
  server.on("clientError", Answers.clientError)
  // CONNECT (an authority-form target) is nothing either proxy carries; Node would cut it silently.
  server.on("connect", (_req: Http.IncomingMessage, socket: Duplex) => {
    socket.on("error", () => socket.destroy())
    Answers.answerOnSocket(socket, 405, "method not allowed")
  })
  server.on("upgrade", (req: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
    open.upgrading(socket)
    run(guarded(handleUpgrade(req, socket, head), () => socket.destroy()))
  })
  server.on("tlsClientError", () => {
    // A client that fails the handshake is its own problem; keep serving.
  })
  server.on("error", () => {
    // Errors after listening are per connection and handled there; keep the process up.
  })

  const address = yield* listen(server, options.listen)
  let stopping = false
  yield* Scope.addFinalizer(
    scope,
    Effect.andThen(
      Effect.sync(() => void (stopping = true)),
      shutdown(server, FiberSet.awaitEmpty(fibers), spliced, open, options.shutdownTimeout)
    ).pipe(Effect.annotateLogs({ component }))
  )

  return {
    server,
    address,
    readiness: Effect.suspend(() => (server.listening ? Effect.void : notReady("not listening"))),
    stopping: () => stopping
  } satisfies Served
})

/**
 * A duration option in milliseconds, `fallback` when not given.
 *
 * @category options
 */
export const millis = (input: Duration.Input | undefined, fallback: Duration.Input): number =>
  Duration.toMillis(Duration.fromInputUnsafe(input ?? fallback))
