/**
 * The managed-apiserver relay: a raw TCP relay from a listening port to the managed cluster's
 * kube-apiserver. TLS stays end to end between the client and the apiserver; the relay never
 * looks at the bytes.
 *
 * Per accepted connection: dial the *current* target (bounded by `dialTimeout`, TCP keepalive
 * on), then copy both directions, each through one reusable read buffer ({@link SocketCopy}):
 * reading stops while a write to the other side is pending, so a slow reader costs the relay at
 * most one buffer per direction, never an unbounded queue. Each direction ends on its own: a FIN
 * from one side becomes a FIN to the other (`allowHalfOpen` on both sockets), and the
 * connection is over once both directions have ended, or at once when either side resets.
 *
 * Limits: `maxConnections` refuses connections beyond the limit (accepted, then closed at once);
 * `idleTimeout` closes a connection that moved no byte either way for that long; after a target
 * change, connections to the previous target are closed `drainTimeout` later, while new ones
 * already go to the new target.
 *
 * @since 0.1.0
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, FiberSet, Layer, Metric, Option, Schema, Stream } from "effect"
import * as Net from "node:net"
import * as ListenAddress from "../domain/ListenAddress.ts"
import * as Metrics from "../observability/Metrics.ts"
import { NotReady, notReady, Probes } from "../observability/Probes.ts"
import * as ManagedTarget from "./ManagedTarget.ts"
import * as SocketCopy from "./SocketCopy.ts"
import { TargetWatcher } from "./TargetWatcher.ts"

/** @since 0.1.0 @category models */
export interface Options {
  readonly listen: ListenAddress.ListenAddress
  /** Bound on connecting to the target (DNS included). */
  readonly dialTimeout: Duration.Duration
  /** How long connections to a previous target may live on after a target change. */
  readonly drainTimeout: Duration.Duration
  /** Close a connection without traffic in either direction for this long; zero turns it off. */
  readonly idleTimeout: Duration.Duration
  /** Connections relayed at once; 0 means no limit. */
  readonly maxConnections: number
  /**
   * On shutdown, after the listener closes, let open connections finish for up to this long
   * before cutting them; default zero (cut at once).
   */
  readonly shutdownDrain?: Duration.Duration
}

/**
 * The target did not accept a TCP connection in time. Retryable: the client dials again.
 *
 * @since 0.1.0
 * @category errors
 */
export class DialError extends Schema.TaggedError<DialError>()("RelayDialError", {
  target: Schema.String,
  message: Schema.String
}) {
  get retryable(): boolean {
    return true
  }
}

/**
 * One relayed connection as seen right now (for diagnostics and tests).
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionInfo {
  /** `host:port` this connection was dialed to. */
  readonly target: string
  /** Whether the upstream connection is established. */
  readonly connected: boolean
  /** Bytes from the client to the apiserver so far. */
  readonly bytesUpstream: number
  /** Bytes from the apiserver to the client so far. */
  readonly bytesDownstream: number
  /** Bytes the relay holds for the client: read from the apiserver, not yet written to the client. */
  readonly bufferedDownstream: number
  /** Bytes the relay holds for the apiserver: read from the client, not yet written upstream. */
  readonly bufferedUpstream: number
  /** Reading from the apiserver is paused because the client is not keeping up. */
  readonly upstreamReadPaused: boolean
  /** Reading from the client is paused because the apiserver is not keeping up. */
  readonly downstreamReadPaused: boolean
}

/** @since 0.1.0 @category services */
export class TcpRelay extends Context.Service<TcpRelay, {
  /** Where the relay listens (the bound port when `listen.port` was 0). */
  readonly address: { readonly host: string; readonly port: number }
  /** The connections being relayed now. */
  readonly connections: Effect.Effect<ReadonlyArray<ConnectionInfo>>
  /** Fails when the listening socket closes while the relay should be serving (a supervisor restarts it). */
  readonly failure: Effect.Effect<never, ListenAddress.ListenError>
}>()("tether/relay/TcpRelay") {
  /** Listen and relay for as long as the layer lives; needs {@link TargetWatcher}. */
  static readonly layer = (options: Options) => Layer.effect(TcpRelay, make(options))
}

/** TCP keepalive on both legs: dead peers are found even on quiet watch connections. */
const keepAliveDelayMs = 30_000

/** Byte counters reach the metrics this often (and when a connection ends). */
const bytesFlushInterval = Duration.seconds(5)

/** At most one "refusing connections" warning per this period. */
const refusalLogInterval = Duration.seconds(10)

interface Connection {
  readonly target: ManagedTarget.Target
  readonly client: Net.Socket
  upstream: Net.Socket | undefined
  /** Client to apiserver. */
  readonly up: SocketCopy.Copier
  /** Apiserver to client. */
  readonly down: SocketCopy.Copier
  reportedUp: number
  reportedDown: number
}

const ignore = () => {}

const upstreamBytes = Metric.withAttributes(Metrics.relayBytesTotal, { direction: "upstream" })
const downstreamBytes = Metric.withAttributes(Metrics.relayBytesTotal, { direction: "downstream" })

/** Move the byte counts accumulated since the last flush into the metrics. */
const flushBytes = (connection: Connection) =>
  Effect.suspend(() => {
    const up = connection.up.bytes - connection.reportedUp
    const down = connection.down.bytes - connection.reportedDown
    connection.reportedUp = connection.up.bytes
    connection.reportedDown = connection.down.bytes
    return Effect.andThen(
      up > 0 ? Metric.update(upstreamBytes, up) : Effect.void,
      down > 0 ? Metric.update(downstreamBytes, down) : Effect.void
    )
  })

const describeError = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/**
 * Open a TCP connection to `target`. `onSocket` sees the socket as soon as it exists, so the
 * caller can close it whatever happens next; `onread` is passed to the socket (see
 * {@link SocketCopy}). Errors after the connect are left to the caller's `close` handling (a
 * permanent no-op `error` listener keeps them from crashing the process).
 *
 * @since 0.1.0
 * @category dialing
 */
export const dial = (
  target: ManagedTarget.Target,
  timeout: Duration.Duration,
  options: { readonly onSocket?: (socket: Net.Socket) => void; readonly onread?: Net.OnReadOpts } = {}
): Effect.Effect<Net.Socket, DialError> =>
  Effect.callback<Net.Socket, DialError>((resume) => {
    const socket = Net.connect({
      host: target.host,
      port: target.port,
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: keepAliveDelayMs,
      ...(options.onread === undefined ? {} : { onread: options.onread })
    })
    socket.on("error", ignore)
    options.onSocket?.(socket)
    const onError = (error: Error) => {
      socket.destroy()
      resume(Effect.fail(new DialError({ target: ManagedTarget.format(target), message: describeError(error) })))
    }
    socket.once("error", onError)
    socket.once("connect", () => {
      socket.off("error", onError)
      resume(Effect.succeed(socket))
    })
    return Effect.sync(() => socket.destroy())
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () =>
        Effect.fail(
          new DialError({ target: ManagedTarget.format(target), message: `no connection within ${Duration.format(timeout)}` })
        )
    })
  )

/**
 * Copy both ways until both directions have ended (or either side fails); closing the
 * sockets when interrupted.
 */
const pump = (connection: Connection, upstream: Net.Socket, idleTimeout: Duration.Duration) =>
  Effect.callback<void>((resume) => {
    const client = connection.client
    const destroyBoth = () => {
      client.destroy()
      upstream.destroy()
    }
    let open = 2
    const onClose = (peer: Net.Socket) => (hadError: boolean) => {
      // A reset or error ends both directions; a clean close only ends this socket, and the
      // other one finishes once its pending writes are flushed.
      if (hadError) peer.destroy()
      if (--open === 0) resume(Effect.void)
    }
    for (const [socket, peer] of [[client, upstream], [upstream, client]] as const) {
      if (socket.closed) onClose(peer)(true)
      else socket.once("close", onClose(peer))
    }
    // Reads and writes both reset a socket's timer; watching both sockets covers a connection
    // where one side already finished.
    const idleMs = Duration.toMillis(idleTimeout)
    if (idleMs > 0) {
      client.setTimeout(idleMs, destroyBoth)
      upstream.setTimeout(idleMs, destroyBoth)
    }
    client.resume()
    upstream.resume()
    return Effect.sync(destroyBoth)
  })

const make = Effect.fnUntraced(function*(options: Options) {
  const watcher = yield* TargetWatcher
  const runFork = yield* FiberSet.makeRuntime<never>()
  const connections = new Set<Connection>()
  let active = 0
  /** Set once the listener is closing; `allClosed` completes when the last connection ends after that. */
  let stopping = false
  const allClosed = yield* Deferred.make<void>()
  let refusedSinceLog = 0
  let lastRefusalLog = Number.NEGATIVE_INFINITY

  // Draining is one subscription for the whole relay, not one per connection: a stream, a queue
  // and a fiber per connection were most of what a burst of connections left behind for the
  // garbage collector (the old generation grew with every burst).
  /** When each target stopped being the current one (absent while it is current). */
  const leftAt = new Map<string, number>()
  const sweep = Effect.gen(function*() {
    const current = yield* watcher.current
    const now = yield* Clock.currentTimeMillis
    const due = Duration.toMillis(options.drainTimeout)
    let closed = 0
    for (const connection of connections) {
      if (ManagedTarget.equals(connection.target, current)) continue
      const since = leftAt.get(ManagedTarget.format(connection.target))
      if (since === undefined || now - since < due) continue
      connection.client.destroy()
      connection.upstream?.destroy()
      closed++
    }
    if (closed > 0) yield* Effect.logDebug("closed connections to previous targets after the drain timeout", { connections: closed })
  })
  let previous: ManagedTarget.Target | undefined
  yield* Effect.forkScoped(Stream.runForEach(watcher.changes, (next) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (previous !== undefined && !ManagedTarget.equals(previous, next)) leftAt.set(ManagedTarget.format(previous), now)
      leftAt.delete(ManagedTarget.format(next))
      previous = next
      yield* Effect.forkScoped(Effect.andThen(Effect.sleep(options.drainTimeout), sweep))
    })))

  const relay = Effect.fnUntraced(function*(client: Net.Socket, up: SocketCopy.Copier, down: SocketCopy.Copier) {
    const startedAt = yield* Clock.currentTimeMillis
    yield* Metric.update(Metrics.relayConnectionsTotal, 1)
    yield* Metric.update(Metrics.relayConnectionsActive, active)
    const target = yield* watcher.current
    const connection: Connection = { target, client, upstream: undefined, up, down, reportedUp: 0, reportedDown: 0 }
    connections.add(connection)

    const finish = Effect.suspend(() => {
      client.destroy()
      connection.upstream?.destroy()
      connections.delete(connection)
      active--
      if (stopping && active === 0) Deferred.doneUnsafe(allClosed, Exit.void)
      return Effect.gen(function*() {
        yield* flushBytes(connection)
        yield* Metric.update(Metrics.relayConnectionsActive, active)
        const endedAt = yield* Clock.currentTimeMillis
        yield* Metric.update(Metrics.relayConnectionDuration, (endedAt - startedAt) / 1000)
      })
    })

    yield* Effect.gen(function*() {
      const dialStart = yield* Clock.currentTimeMillis
      const upstream = yield* dial(target, options.dialTimeout, {
        onread: down.onread,
        // Both directions are wired before either side can read: the upstream starts reading
        // as soon as it is connected.
        onSocket: (socket) => {
          connection.upstream = socket
          up.connect(client, socket)
          down.connect(socket, client)
        }
      })
      yield* Metric.update(Metrics.relayDialDuration, ((yield* Clock.currentTimeMillis) - dialStart) / 1000)
      yield* pump(connection, upstream, options.idleTimeout)
    }).pipe(
      Effect.catchTag("RelayDialError", (error) =>
        Effect.andThen(
          Metric.update(Metrics.relayDialErrorsTotal, 1),
          Effect.logWarning("cannot connect to the managed apiserver; closing the client connection", {
            target: error.target,
            error: error.message
          })
        )),
      Effect.ensuring(finish)
    )
  })

  const refuse = Effect.gen(function*() {
    yield* Metric.update(Metrics.relayConnectionsTotal, 1)
    yield* Metric.update(Metrics.relayConnectionsRefusedTotal, 1)
    const now = yield* Clock.currentTimeMillis
    if (now - lastRefusalLog < Duration.toMillis(refusalLogInterval)) return
    lastRefusalLog = now
    const refused = refusedSinceLog
    refusedSinceLog = 0
    yield* Effect.logWarning("at --max-connections; refusing new connections", {
      maxConnections: options.maxConnections,
      refused
    })
  })

  const onConnection = (accepted: Net.Socket) => {
    // Before anything else: an unhandled socket error would crash the process. Errors are
    // handled through "close" (hadError) in `pump`.
    accepted.on("error", ignore)
    if (options.maxConnections > 0 && active >= options.maxConnections) {
      accepted.destroy()
      refusedSinceLog++
      runFork(refuse)
      return
    }
    const up = new SocketCopy.Copier()
    const down = new SocketCopy.Copier()
    const client = SocketCopy.adopt(accepted, up.onread)
    if (client === undefined) return
    client.on("error", ignore)
    // Counted here, synchronously, so a burst of accepts cannot overshoot the limit.
    active++
    runFork(relay(client, up, down))
  }

  const lost = yield* Deferred.make<never, ListenAddress.ListenError>()
  const server = yield* Effect.acquireRelease(
    Effect.callback<Net.Server, ListenAddress.ListenError>((resume) => {
      const server = Net.createServer({
        allowHalfOpen: true,
        // Nothing is read before the upstream connection exists (and before `adopt`).
        pauseOnConnect: true,
        noDelay: true,
        keepAlive: true,
        keepAliveInitialDelay: keepAliveDelayMs
      }, onConnection)
      const onListenError = (error: Error) =>
        resume(Effect.fail(
          new ListenAddress.ListenError({
            message: `cannot listen on ${ListenAddress.format(options.listen)}: ${describeError(error)}`,
            code: ListenAddress.errorCode(error)
          })
        ))
      server.once("error", onListenError)
      server.listen({ port: options.listen.port, ...(options.listen.host === undefined ? {} : { host: options.listen.host }) }, () => {
        server.off("error", onListenError)
        resume(Effect.succeed(server))
      })
    }),
    // Stop accepting; the open connections are closed by the FiberSet's scope (made earlier,
    // so closed later). Not waiting for `close`: it only fires once every connection is gone.
    (server) =>
      Effect.gen(function*() {
        stopping = true
        server.close()
        const drain = options.shutdownDrain ?? Duration.zero
        if (active === 0 || !Duration.isGreaterThan(drain, Duration.zero)) return
        yield* Effect.logInfo("listener closed; draining open connections", { connections: active, drainTimeout: Duration.format(drain) })
        const done = yield* Deferred.await(allClosed).pipe(Effect.timeoutOption(drain))
        if (Option.isNone(done)) yield* Effect.logInfo("drain timeout reached; closing the remaining connections", { connections: active })
      })
  )
  server.on("close", () => {
    if (!stopping) {
      Deferred.doneUnsafe(lost, Exit.fail(new ListenAddress.ListenError({ message: `the listener on ${ListenAddress.format(options.listen)} closed` })))
    }
  })
  server.on("error", (error) => {
    // Accept errors (EMFILE, ...) drop that one connection; the listener keeps going.
    runFork(Effect.logError("accepting a connection failed", { error: describeError(error) }))
  })

  yield* Effect.forkScoped(
    Effect.forever(Effect.andThen(Effect.sleep(bytesFlushInterval), Effect.forEach(connections, flushBytes, { discard: true })))
  )

  // The unlabelled counters exist from the start at 0 (as the prototype's registry had them), so
  // a rate() or an alert on them has a series before the first connection or dial error.
  for (const counter of [Metrics.relayConnectionsTotal, Metrics.relayDialErrorsTotal, Metrics.relayConnectionsRefusedTotal]) {
    yield* Metric.update(counter, 0)
  }
  yield* Metric.update(Metrics.relayConnectionsActive, active)

  const bound = server.address() as Net.AddressInfo
  const address = { host: bound.address, port: bound.port }
  yield* Effect.logInfo("managed apiserver relay listening", {
    address: ListenAddress.format(address),
    target: Option.match(yield* watcher.peek, { onNone: () => "none yet", onSome: ManagedTarget.format }),
    maxConnections: options.maxConnections
  })

  return TcpRelay.of({
    address,
    failure: Deferred.await(lost),
    connections: Effect.sync(() =>
      Array.from(connections, (c): ConnectionInfo => ({
        target: ManagedTarget.format(c.target),
        connected: c.upstream !== undefined && !c.upstream.connecting && !c.upstream.destroyed,
        bytesUpstream: c.up.bytes,
        bytesDownstream: c.down.bytes,
        bufferedDownstream: c.down.buffered,
        bufferedUpstream: c.up.buffered,
        upstreamReadPaused: c.down.waiting,
        downstreamReadPaused: c.up.waiting
      }))
    )
  })
})

/**
 * Registers the `/readyz` check "managed-apiserver": the current target accepts a TCP
 * connection within `timeout`. The answer is cached for `cacheFor`, so probes (and several
 * probers) cost at most one connection per period.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerReadiness = (options: { readonly timeout?: Duration.Input; readonly cacheFor?: Duration.Input } = {}) =>
  Layer.effectDiscard(Effect.gen(function*() {
    const probes = yield* Probes
    const watcher = yield* TargetWatcher
    const timeout = Duration.fromInputUnsafe(options.timeout ?? "2 seconds")
    const check = Effect.gen(function*() {
      const target = yield* watcher.peek
      if (Option.isNone(target)) return yield* notReady("no managed kubeconfig yet")
      const socket = yield* dial(target.value, timeout).pipe(Effect.mapError((error) => new NotReady({ reason: `cannot connect to ${error.target}: ${error.message}` })))
      socket.destroy()
    })
    const cached = yield* Effect.cachedWithTTL(check, options.cacheFor ?? "5 seconds")
    // "No target yet" is not cached: otherwise a probe just before the first target arrives
    // (hosted-agent's in-process hand-off) holds the relay unready for a whole cache period.
    yield* probes.addReadinessCheck(
      "managed-apiserver",
      Effect.flatMap(watcher.peek, (target) => (Option.isNone(target) ? notReady("no managed kubeconfig yet") : cached))
    )
  }))
