/**
 * The HTTP plumbing of the service proxy: sending a request on to an upstream (an apiserver or
 * a Service) and carrying the answer back, for plain requests and for upgrades (WebSocket, and
 * SPDY for exec and port-forward).
 *
 * Bodies stream both ways with back-pressure, so a watch, a log follow or a large upload costs
 * a few buffers. Upstream connections are pooled in keep-alive agents; the pool key includes
 * the TLS settings, so a new CA or server name opens new connections. The connect and TLS
 * handshake phases are bounded. Errors carry the transport's reason for the log, never request
 * material.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Schedule, Schema, type Scope } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import type * as Net from "node:net"
import * as ListenAddress from "../domain/ListenAddress.ts"
import { type Duplex, pipeline } from "node:stream"
import * as Routing from "../domain/Routing.ts"

/**
 * Where and what to send.
 *
 * @category models
 */
export interface Request {
  readonly protocol: "http" | "https"
  /** The address (or host name) to connect to. */
  readonly host: string
  readonly family?: 4 | 6 | undefined
  readonly port: number
  /** Path and query. */
  readonly path: string
  readonly headers: Routing.OutgoingHeaders
  /** https only: PEM CAs to trust (undefined: the system roots). */
  readonly ca?: string | ReadonlyArray<string> | undefined
  /** https only: the name to send as SNI and to verify the certificate against. */
  readonly servername?: string | undefined
  /** https only: verify the certificate (default true). */
  readonly rejectUnauthorized?: boolean | undefined
}

/**
 * The upstream's answer: a response, or a switch to another protocol.
 *
 * @category models
 */
export type Answer =
  | { readonly _tag: "Response"; readonly response: Http.IncomingMessage }
  | { readonly _tag: "Upgrade"; readonly response: Http.IncomingMessage; readonly socket: Duplex; readonly head: Buffer }

/**
 * The upstream could not be reached or gave no usable answer. Answered with 502; the message
 * is for the log.
 *
 * @category errors
 */
export class UpstreamError extends Schema.TaggedError<UpstreamError>()("UpstreamError", { message: Schema.String }) {}

/** @category models */
export interface Pools {
  readonly http: Http.Agent
  readonly https: Https.Agent
}

/** @category models */
export interface PoolOptions {
  /** Idle connections kept per upstream (default 100). */
  readonly maxIdleConnections?: number
  /** An idle connection is closed after this long (default 90 seconds). */
  readonly idleConnectionTimeout?: Duration.Input
}

/**
 * Keep-alive agents for http and https upstreams, destroyed with the scope.
 *
 * @category constructors
 */
export const pools = (options: PoolOptions): Effect.Effect<Pools, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const pool = {
        keepAlive: true,
        maxFreeSockets: options.maxIdleConnections ?? 100,
        timeout: Duration.toMillis(Duration.fromInputUnsafe(options.idleConnectionTimeout ?? Duration.seconds(90))),
        scheduling: "lifo" as const
      }
      return { http: new Http.Agent(pool), https: new Https.Agent({ ...pool, minVersion: "TLSv1.2" }) }
    }),
    ({ http, https }) =>
      Effect.sync(() => {
        http.destroy()
        https.destroy()
      })
  )

/** @category models */
export interface Timeouts {
  /** TCP connect, in milliseconds. */
  readonly dial: number
  /** TLS handshake, in milliseconds. */
  readonly handshake: number
  /**
   * With `Expect: 100-continue`, how long to wait for the upstream's `100 Continue` before
   * sending the body anyway, in milliseconds (0: send at once).
   */
  readonly expectContinue: number
  /** Largest accepted response header block, in bytes. */
  readonly maxHeaderSize: number
}

/**
 * A transport error as text: node's code and message.
 *
 * @category errors
 */
export const describe = (error: unknown): string => {
  const code = (error as { code?: unknown } | undefined)?.code
  const message = error instanceof Error ? error.message : String(error)
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message
}

/**
 * Send the request head (and, with `body: "pipe"`, the client's body) upstream and wait for the
 * response head or the upgrade. Interrupting destroys the upstream request.
 *
 * @category forwarding
 */
export const open = (
  incoming: Http.IncomingMessage,
  request: Request,
  agents: Pools,
  timeouts: Timeouts,
  body: "pipe" | "none"
): Effect.Effect<Answer, UpstreamError> =>
  Effect.callback<Answer, UpstreamError>((resume) => {
    let settled = false
    const settle = (effect: Effect.Effect<Answer, UpstreamError>) => {
      if (settled) return
      settled = true
      resume(effect)
    }
    const https = request.protocol === "https"
    let outgoing: Http.ClientRequest
    try {
      outgoing = (https ? Https : Http).request({
        host: request.host,
        ...(request.family === undefined ? {} : { family: request.family }),
        port: request.port,
        method: incoming.method ?? "GET",
        path: request.path,
        headers: request.headers as Http.OutgoingHttpHeaders,
        setHost: false,
        maxHeaderSize: timeouts.maxHeaderSize,
        ...(https
          ? {
            agent: agents.https,
            ...(request.ca === undefined ? {} : { ca: typeof request.ca === "string" ? request.ca : [...request.ca] }),
            ...(request.servername === undefined ? {} : { servername: request.servername }),
            rejectUnauthorized: request.rejectUnauthorized ?? true
          }
          : { agent: agents.http })
      })
    } catch (error) {
      settle(Effect.fail(new UpstreamError({ message: describe(error) })))
      return
    }
    outgoing.once("socket", (socket: Net.Socket) => {
      if (!socket.connecting) return // a pooled connection
      const dial = setTimeout(() => outgoing.destroy(new Error(`connect timed out after ${timeouts.dial}ms`)), timeouts.dial)
      socket.once("close", () => clearTimeout(dial))
      socket.once("connect", () => {
        clearTimeout(dial)
        if (!https) return
        const handshake = setTimeout(
          () => outgoing.destroy(new Error(`TLS handshake timed out after ${timeouts.handshake}ms`)),
          timeouts.handshake
        )
        socket.once("secureConnect", () => clearTimeout(handshake))
        socket.once("close", () => clearTimeout(handshake))
      })
    })
    outgoing.once("response", (response) => settle(Effect.succeed({ _tag: "Response", response })))
    outgoing.once("upgrade", (response, socket, head) => settle(Effect.succeed({ _tag: "Upgrade", response, socket, head })))
    outgoing.on("error", (error) => {
      if (body === "pipe") {
        incoming.unpipe(outgoing)
        incoming.resume() // discard the rest of the upload; the answer closes the connection
      }
      settle(Effect.fail(new UpstreamError({ message: describe(error) })))
    })
    if (body === "pipe") {
      const sendBody = () => {
        incoming.pipe(outgoing)
        incoming.once("close", () => {
          if (!incoming.complete) outgoing.destroy() // the client went away mid-upload
        })
      }
      const expects = /100-continue/i.test(String(request.headers["expect"] ?? request.headers["Expect"] ?? ""))
      if (expects && timeouts.expectContinue > 0) {
        // Hold the body until the upstream says 100 Continue, or the timeout passes (Go's
        // ExpectContinueTimeout); an early final answer means the body is not wanted.
        let sent = false
        const once = () => {
          if (sent) return
          sent = true
          clearTimeout(timer)
          sendBody()
        }
        const timer = setTimeout(once, timeouts.expectContinue)
        outgoing.once("continue", once)
        outgoing.once("response", () => {
          if (sent) return
          sent = true
          clearTimeout(timer)
          incoming.resume()
        })
        outgoing.flushHeaders()
      } else {
        sendBody()
      }
    } else {
      outgoing.end()
    }
    return Effect.sync(() => outgoing.destroy())
  })

const textHeaders = (body: string) => ({
  "content-type": "text/plain; charset=utf-8",
  "x-content-type-options": "nosniff",
  "content-length": String(Buffer.byteLength(body)),
  connection: "close"
})

/**
 * A short plain-text answer on a response that has not started; otherwise cut the connection.
 *
 * @category answers
 */
export const answer = (res: Http.ServerResponse, status: number, text: string): void => {
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

/**
 * The same answer written on a raw socket (an upgrade request has no ServerResponse).
 *
 * @category answers
 */
export const answerOnSocket = (socket: Duplex, status: number, text: string): void => {
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
 * Write the upstream response head to the client (hop-by-hop headers dropped). Fails when the
 * head cannot be written (invalid header from upstream); the caller answers 502.
 *
 * @category forwarding
 */
export const writeHead = (res: Http.ServerResponse, response: Http.IncomingMessage): Effect.Effect<void, UpstreamError> =>
  Effect.try({
    try: () => {
      res.writeHead(
        response.statusCode ?? 502,
        response.statusMessage,
        Routing.stripHopByHop(response.headers) as Http.OutgoingHttpHeaders
      )
    },
    catch: (error) => new UpstreamError({ message: `unusable response head: ${describe(error)}` })
  })

/**
 * Hand the upstream's trailers to `res`, which writes them when its answer is chunked (as the
 * upstream's was). A trailer Node refuses to write drops them all rather than fail the answer.
 *
 * @category forwarding
 */
export const passTrailers = (res: Http.ServerResponse, trailers: Routing.Headers): void => {
  // No key array on every response: most have no trailers at all.
  for (const name in trailers) {
    if (!Object.hasOwn(trailers, name)) continue
    try {
      res.addTrailers(trailers as Http.OutgoingHttpHeaders)
    } catch {
      // Ends without trailers.
    }
    return
  }
}

/**
 * Stream the upstream body, then its trailers, to the client until either side ends.
 *
 * @category forwarding
 */
export const pipeBody = (response: Http.IncomingMessage, res: Http.ServerResponse): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
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
    // Ended by hand, so that the upstream's trailers go on first (sent when the answer is chunked).
    response.once("end", () => {
      passTrailers(res, response.trailers)
      res.end()
    })
    response.pipe(res, { end: false })
    return Effect.sync(() => {
      response.destroy()
      res.destroy()
    })
  })

/**
 * Join a client socket and an upstream socket after a successful upgrade: write the upstream's
 * 101 head, pass the early bytes on, then copy both ways until both are closed. `track` sees
 * each socket while it is open (for shutdown).
 *
 * @category forwarding
 */
export const splice = (
  client: Duplex,
  clientHead: Buffer,
  answer: Extract<Answer, { readonly _tag: "Upgrade" }>,
  track: Set<Duplex>
): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const { head, response, socket: upstream } = answer
    client.write(headerBlock(response.statusCode ?? 101, response.statusMessage ?? "", rawPairs(response.rawHeaders)))
    if (head.length > 0) client.write(head)
    if (clientHead.length > 0) upstream.write(clientHead)
    track.add(client)
    track.add(upstream)
    let open = 2
    const closed = (socket: Duplex) => () => {
      track.delete(socket)
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

/**
 * The upstream refused an upgrade with an ordinary response: pass it on and close (the body
 * ends with the connection).
 *
 * @category forwarding
 */
export const refuseUpgrade = (client: Duplex, response: Http.IncomingMessage): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const kept = rawPairs(response.rawHeaders).filter(([name]) => {
      const lower = name.toLowerCase()
      return !Routing.hopByHopHeaders.has(lower) && lower !== "content-length"
    })
    client.write(headerBlock(response.statusCode ?? 502, response.statusMessage ?? "", [...kept, ["connection", "close"]]))
    pipeline(response, client, () => {
      closeSoon(client)
      resume(Effect.void)
    })
    return Effect.sync(() => {
      response.destroy()
      client.destroy()
    })
  })

/**
 * Listen on `address`; the bound host and port (port 0 picks a free one), or why not.
 *
 * @category servers
 */
export const listen = (
  server: Net.Server,
  address: ListenAddress.ListenAddress
): Effect.Effect<{ readonly host: string; readonly port: number }, string> =>
  Effect.callback((resume) => {
    const onError = (error: Error) =>
      resume(Effect.fail(`cannot listen on ${ListenAddress.format(address)}: ${describe(error)}`))
    server.once("error", onError)
    server.listen({ port: address.port, ...(address.host ? { host: address.host } : {}) }, () => {
      server.off("error", onError)
      const bound = server.address() as Net.AddressInfo
      resume(Effect.succeed({ host: bound.address, port: bound.port }))
    })
  })

/**
 * Graceful shutdown of an HTTP server: stop accepting, close keep-alive connections as they go
 * idle, wait for in-flight requests (`inFlight`) up to `timeout`, then cut whatever is left,
 * spliced upgrade sockets included.
 *
 * @category servers
 */
export const shutdown = (
  server: Http.Server,
  inFlight: Effect.Effect<void>,
  spliced: ReadonlySet<Duplex>,
  timeout: Duration.Input
): Effect.Effect<void> =>
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
  })

/**
 * What a server wants to hear about one forwarded request: the status it ended with (for
 * metrics), and why the upstream failed (for logs). Never called with a token.
 *
 * @category forwarding
 */
export interface Report {
  readonly answered: (status: number) => Effect.Effect<void>
  readonly failed: (error: UpstreamError) => Effect.Effect<void>
}

/**
 * Run one request's handling so that a defect still leaves the client with an answer
 * (`onDefect`) and the process alive; the cause goes to the log, tagged with `component`.
 *
 * @category servers
 */
export const guarded = <E>(effect: Effect.Effect<void, E>, component: string, onDefect: () => void): Effect.Effect<void> =>
  effect.pipe(
    Effect.catchCause((cause) =>
      Effect.andThen(Effect.logError(`${component} request failed unexpectedly`, { cause: String(cause) }), Effect.sync(onDefect))
    ),
    Effect.annotateLogs({ component })
  )

/** The only body a failed upstream gets: no backend detail reaches the caller. @category answers */
export const badGateway = "bad gateway"

/**
 * Forward an admitted plain request: open the upstream, pass the response head and stream the
 * body; any upstream failure is a generic 502 (the detail only goes to `report.failed`).
 *
 * @category forwarding
 */
export const forwardRequest = Effect.fnUntraced(function*(
  incoming: Http.IncomingMessage,
  res: Http.ServerResponse,
  request: Request,
  agents: Pools,
  timeouts: Timeouts,
  report: Report
) {
  const upstream = yield* Effect.result(open(incoming, request, agents, timeouts, "pipe"))
  if (upstream._tag === "Failure") {
    yield* report.failed(upstream.failure)
    answer(res, 502, badGateway)
    return yield* report.answered(502)
  }
  if (upstream.success._tag === "Upgrade") {
    upstream.success.socket.destroy() // switching protocols was not asked for
    answer(res, 502, badGateway)
    return yield* report.answered(502)
  }
  const response = upstream.success.response
  const wrote = yield* Effect.result(writeHead(res, response))
  if (wrote._tag === "Failure") {
    response.destroy()
    yield* report.failed(wrote.failure)
    answer(res, 502, badGateway)
    return yield* report.answered(502)
  }
  yield* report.answered(response.statusCode ?? 502)
  yield* pipeBody(response, res)
})

/**
 * Forward an admitted upgrade request: splice the sockets after a 101, or pass on the
 * upstream's refusal and close; an upstream failure is a generic 502.
 *
 * @category forwarding
 */
export const forwardUpgrade = Effect.fnUntraced(function*(
  incoming: Http.IncomingMessage,
  client: Duplex,
  clientHead: Buffer,
  request: Request,
  agents: Pools,
  timeouts: Timeouts,
  spliced: Set<Duplex>,
  report: Report
) {
  const upstream = yield* Effect.result(open(incoming, request, agents, timeouts, "none"))
  if (upstream._tag === "Failure") {
    yield* report.failed(upstream.failure)
    answerOnSocket(client, 502, badGateway)
    return yield* report.answered(502)
  }
  const upstreamAnswer = upstream.success
  yield* report.answered(upstreamAnswer.response.statusCode ?? 502)
  if (upstreamAnswer._tag === "Upgrade") return yield* splice(client, clientHead, upstreamAnswer, spliced)
  yield* refuseUpgrade(client, upstreamAnswer.response)
})
