/**
 * Sending an admitted request on and carrying the answer back: the one forwarder of both HTTP
 * proxies (the service relay and the service proxy).
 *
 * - Plain requests take the fast path: undici connection pools driven by callbacks, no fiber
 *   per request. Measured on the benchmark machine (bare proxies, wrk at 32 connections),
 *   Node's `http.request` with a keep-alive `Agent` managed about 11.9k requests/s where
 *   undici's `dispatch` managed 20.8k, and a fiber per request cost about as much CPU again as
 *   the proxying itself.
 * - Upgrades (WebSocket, SPDY for exec and port-forward) go through `node:http`, whose
 *   `upgrade` event hands over the socket; they are rare, so this path runs in Effect.
 *
 * Bodies stream both ways with back-pressure, so a watch, a log follow or a large upload costs
 * a few buffers. Response trailers are passed on. When the upstream fails before the answer
 * starts, the client gets the generic 502 and the rest of its upload is discarded; after the
 * answer started, the client connection is cut. A client that goes away aborts the upstream
 * request. Errors carry the transport's reason for the log ({@link Report} `failed`), never
 * request material.
 *
 * `Expect` never goes upstream: the proxy's own server has already answered `100 Continue` and
 * receives the whole body itself.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import { type Duplex, PassThrough, pipeline } from "node:stream"
import * as Tls from "node:tls"
import { type Dispatcher, Pool } from "undici"
import * as HttpHeaders from "../domain/HttpHeaders.ts"
import * as Answers from "./Answers.ts"

/**
 * Whom an https upstream is trusted by. `key` names the settings (pools are kept per key), so a
 * new CA or verification setting opens new connections.
 *
 * @category models
 */
export interface Trust {
  readonly key: string
  /** PEM CAs; undefined means Node's bundled roots. */
  readonly ca: string | ReadonlyArray<string> | undefined
  /** False only for `insecure-skip-tls-verify`. */
  readonly rejectUnauthorized: boolean
}

/**
 * Where a request goes.
 *
 * @category models
 */
export interface Destination {
  readonly protocol: "http" | "https"
  /** A host name or an address (IPv6 without brackets). */
  readonly host: string
  readonly port: number
  /** https only: sent as SNI and verified against the certificate (default: `host` when a name). */
  readonly servername?: string | undefined
  /** https only. */
  readonly trust: Trust
}

/**
 * Headers to send: a flat name/value list (as Node's `rawHeaders`) or a record.
 *
 * @category models
 */
export type HeaderList = ReadonlyArray<string> | HttpHeaders.OutgoingHeaders

/**
 * What the server hears about one forwarded request: the status the client was sent (502 when
 * the upstream failed first) and when its head was written, for metrics; why the upstream
 * failed, for the log. Never told a token.
 *
 * @category models
 */
export interface Report {
  /** The clock `headAt` is read from, in milliseconds. */
  readonly now: () => number
  /**
   * Told once, after the first bytes of the answer are on their way, so that bookkeeping does
   * not delay them.
   */
  readonly answered: (status: number, headAt: number) => void
  /** Why the upstream failed; never called for a client that went away. */
  readonly failed: (message: string) => void
}

/** @category models */
export interface Options {
  /** TCP connect, in milliseconds. */
  readonly dialTimeout: number
  /** TLS handshake, in milliseconds. */
  readonly handshakeTimeout: number
  /** An idle upstream connection is closed after this long, in milliseconds. */
  readonly idleTimeout: number
  /** Largest accepted response header block, in bytes. */
  readonly maxHeaderSize: number
}

/** Pools kept at once; past this the least recently created one is closed (gracefully). */
const maxPools = 256

const bracketed = (host: string): string => (Net.isIPv6(host) ? `[${host}]` : host)

/** A request carries a body when it says so (RFC 9112, section 6.3). */
const hasBody = (req: Http.IncomingMessage): boolean =>
  req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined

/** The flat list undici takes, without `Expect`. */
const flatten = (headers: HeaderList): Array<string> => {
  if (Array.isArray(headers)) return headers as Array<string>
  const out: Array<string> = []
  const record = headers as HttpHeaders.OutgoingHeaders
  for (const name in record) {
    if (!Object.hasOwn(record, name) || name === "expect") continue
    const value = record[name]!
    if (typeof value === "string") out.push(name, value)
    else for (const one of value) out.push(name, one)
  }
  return out
}

class Forwarding implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined
  private clientGone = false
  /**
   * The last chunk of the answer, held until the end of the tick: when the answer ends in the
   * same tick (a small answer read at once), it goes out with `res.end(chunk)`, which Node writes
   * together with the head and finishes in one write; `write` then `end` took an extra, empty
   * write through the TLS socket. A chunk still held at the end of the tick is written then.
   */
  private held: Buffer | undefined
  private flushing = false
  /** The status written but not yet reported ({@link Report.answered}), and when. */
  private unreported: number | undefined
  private headAt = 0
  private readonly resume = () => this.controller?.resume()
  private readonly req: Http.IncomingMessage
  private readonly res: Http.ServerResponse
  private readonly body: PassThrough | undefined
  private readonly report: Report

  constructor(req: Http.IncomingMessage, res: Http.ServerResponse, body: PassThrough | undefined, report: Report) {
    this.req = req
    this.res = res
    this.body = body
    this.report = report
    res.once("close", () => {
      this.tell()
      if (res.writableFinished) return
      this.clientGone = true
      this.controller?.abort(new Error("the client went away"))
    })
  }

  private tell(): void {
    const status = this.unreported
    if (status === undefined) return
    this.unreported = undefined
    this.report.answered(status, this.headAt)
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.clientGone) controller.abort(new Error("the client went away"))
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Http.IncomingHttpHeaders,
    statusMessage?: string
  ): void {
    try {
      this.res.writeHead(statusCode, statusMessage, HttpHeaders.stripHopByHopLowerCased(headers) as Http.OutgoingHttpHeaders)
    } catch (error) {
      controller.abort(new Error(`unusable response head: ${Answers.describe(error)}`))
      return
    }
    this.unreported = statusCode
    this.headAt = this.report.now()
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.held !== undefined) this.write(controller, this.held)
    this.held = chunk
    if (this.flushing) return
    this.flushing = true
    process.nextTick(() => {
      this.flushing = false
      const held = this.held
      this.held = undefined
      if (held !== undefined && !this.res.writableEnded && !this.res.destroyed) this.write(controller, held)
    })
  }

  private write(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const flowing = this.res.write(chunk)
    this.tell()
    if (flowing) return
    controller.pause()
    this.res.once("drain", this.resume)
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: Http.IncomingHttpHeaders): void {
    passTrailers(this.res, trailers)
    const held = this.held
    this.held = undefined
    if (held === undefined) this.res.end()
    else this.res.end(held)
    this.tell()
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.body !== undefined) {
      // Keep the client connection usable for the answer: discard the rest of the upload.
      this.req.unpipe(this.body)
      this.req.resume()
    }
    if (this.clientGone) return
    this.report.failed(Answers.describe(error))
    if (this.res.headersSent) {
      this.res.destroy()
      return
    }
    Answers.answer(this.res, 502, Answers.badGateway)
    this.report.answered(502, this.report.now())
  }
}

/**
 * Hand the upstream's trailers to `res`, which writes them when its answer is chunked (as the
 * upstream's was). A trailer Node refuses to write drops them all rather than fail the answer.
 */
const passTrailers = (res: Http.ServerResponse, trailers: HttpHeaders.Headers): void => {
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

const rawPairs = (raw: ReadonlyArray<string>): Array<readonly [string, string]> => {
  const pairs: Array<readonly [string, string]> = []
  for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!])
  return pairs
}

type UpgradeAnswer =
  | { readonly _tag: "Response"; readonly response: Http.IncomingMessage }
  | { readonly _tag: "Upgrade"; readonly response: Http.IncomingMessage; readonly socket: Duplex; readonly head: Buffer }

/**
 * The upstream pools and agents of one server, and the two ways through them. Built and
 * destroyed by {@link Server}.
 *
 * @category models
 */
export class Forwarder {
  private readonly pools = new Map<string, Pool>()
  /**
   * The pool of a destination object a policy hands over again and again (the service proxy's
   * apiserver, one per credentials snapshot), without building its key on every request.
   */
  private readonly known = new WeakMap<Destination, Pool>()
  /**
   * One TLS context per trust, shared by its pools and upgrades: given `ca`, every connect would
   * build its own, parsing each CA certificate again (with the system roots, milliseconds of CPU
   * per connection, and native memory churn that leaves the resident size high;
   * test/bench/TlsContext.ts).
   */
  private readonly contexts = new Map<string, Tls.SecureContext>()
  private readonly options: Options
  // Upgrades only: an upgraded connection never returns to a pool. No TLS session is kept for
  // resumption: the agent tells sessions apart by host, port and name, not by the trust's
  // `secureContext`, and a resumed session is not verified again, so a session verified under
  // one trust would be taken for an upstream under another.
  private readonly agents = { http: new Http.Agent(), https: new Https.Agent({ minVersion: "TLSv1.2", maxCachedSessions: 0 }) }

  constructor(options: Options) {
    this.options = options
  }

  private pool(destination: Destination): Pool {
    const known = this.known.get(destination)
    if (known !== undefined && !known.closed && !known.destroyed) return known
    const pool = this.poolFor(destination)
    this.known.set(destination, pool)
    return pool
  }

  private secureContext(trust: Trust): Tls.SecureContext {
    const existing = this.contexts.get(trust.key)
    if (existing !== undefined) return existing
    if (this.contexts.size >= maxPools) this.contexts.delete(this.contexts.keys().next().value as string)
    const { ca } = trust
    const context = Tls.createSecureContext({ ...(ca === undefined ? {} : { ca: typeof ca === "string" ? ca : [...ca] }), minVersion: "TLSv1.2" })
    this.contexts.set(trust.key, context)
    return context
  }

  private poolFor(destination: Destination): Pool {
    const origin = `${destination.protocol}://${bracketed(destination.host)}:${destination.port}`
    const https = destination.protocol === "https"
    const key = https ? `${origin}/${destination.servername ?? ""}/${destination.trust.key}` : origin
    const existing = this.pools.get(key)
    if (existing !== undefined) return existing
    if (this.pools.size >= maxPools) {
      const [oldestKey, oldest] = this.pools.entries().next().value as [string, Pool]
      this.pools.delete(oldestKey)
      void oldest.close().catch(() => {})
    }
    const { rejectUnauthorized } = destination.trust
    const secureContext = https ? this.secureContext(destination.trust) : undefined
    const pool = new Pool(origin, {
      keepAliveTimeout: this.options.idleTimeout,
      keepAliveMaxTimeout: this.options.idleTimeout,
      maxHeaderSize: this.options.maxHeaderSize,
      // HTTP/1.1 only, as Node's http and Go's Transport with its own TLS config: undici's
      // HTTP/2 (on by default where ALPN offers it) keeps one value of a repeated request
      // header, which dropped all but the last `Impersonate-Group`.
      allowH2: false,
      // Watches and log follows are quiet for long stretches: no response timeouts, as in Go.
      headersTimeout: 0,
      bodyTimeout: 0,
      connect: {
        timeout: this.options.dialTimeout + this.options.handshakeTimeout,
        ...(https
          ? {
            secureContext,
            rejectUnauthorized,
            ...(destination.servername === undefined ? {} : { servername: destination.servername })
          }
          : {})
      }
    })
    this.pools.set(key, pool)
    return pool
  }

  /**
   * Send a plain request (its body streamed) and stream the answer back on `res`; the rest
   * happens in callbacks, told to `report`.
   */
  forward(
    req: Http.IncomingMessage,
    res: Http.ServerResponse,
    destination: Destination,
    path: string,
    headers: HeaderList,
    report: Report
  ): void {
    let body: PassThrough | undefined
    if (hasBody(req)) {
      // Through a PassThrough, so that undici destroying the body on failure destroys this and
      // not the client's socket.
      body = new PassThrough()
      const upload = body
      req.pipe(upload)
      req.once("close", () => {
        if (!req.complete) upload.destroy(new Error("the client went away during the upload"))
      })
    }
    const handler = new Forwarding(req, res, body, report)
    this.pool(destination).dispatch({ method: req.method ?? "GET", path, headers: flatten(headers), body: body ?? null }, handler)
  }

  /**
   * Send an upgrade request: splice the sockets after a 101, or pass on the upstream's refusal
   * and close; an upstream failure is a generic 502. `spliced` sees each socket while it is
   * open (for shutdown).
   */
  forwardUpgrade(
    req: Http.IncomingMessage,
    client: Duplex,
    clientHead: Buffer,
    destination: Destination,
    path: string,
    headers: HeaderList,
    spliced: Set<Duplex>,
    report: Report
  ): Effect.Effect<void> {
    const self = this
    return Effect.gen(function*() {
      const upstream = yield* Effect.result(self.openUpgrade(req, destination, path, headers))
      if (upstream._tag === "Failure") {
        report.failed(upstream.failure)
        Answers.answerOnSocket(client, 502, Answers.badGateway)
        return report.answered(502, report.now())
      }
      const answer = upstream.success
      report.answered(answer.response.statusCode ?? 502, report.now())
      if (answer._tag === "Upgrade") return yield* splice(client, clientHead, answer, spliced)
      yield* refuseUpgrade(client, answer.response)
    })
  }

  private openUpgrade(
    incoming: Http.IncomingMessage,
    destination: Destination,
    path: string,
    headers: HeaderList
  ): Effect.Effect<UpgradeAnswer, string> {
    const { dialTimeout, handshakeTimeout, maxHeaderSize } = this.options
    const agents = this.agents
    return Effect.callback<UpgradeAnswer, string>((resume) => {
      let settled = false
      const settle = (effect: Effect.Effect<UpgradeAnswer, string>) => {
        if (settled) return
        settled = true
        resume(effect)
      }
      const https = destination.protocol === "https"
      let outgoing: Http.ClientRequest
      try {
        const { rejectUnauthorized } = destination.trust
        outgoing = (https ? Https : Http).request({
          host: destination.host,
          port: destination.port,
          method: incoming.method ?? "GET",
          path,
          headers: (Array.isArray(headers) ? [...headers] : headers) as Http.OutgoingHttpHeaders,
          setHost: false,
          maxHeaderSize,
          ...(https
            ? {
              agent: agents.https,
              secureContext: this.secureContext(destination.trust),
              ...(destination.servername === undefined ? {} : { servername: destination.servername }),
              rejectUnauthorized
            }
            : { agent: agents.http })
        })
      } catch (error) {
        settle(Effect.fail(Answers.describe(error)))
        return
      }
      outgoing.once("socket", (socket: Net.Socket) => {
        if (!socket.connecting) return
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
      outgoing.on("error", (error) => settle(Effect.fail(Answers.describe(error))))
      outgoing.end()
      return Effect.sync(() => outgoing.destroy())
    })
  }

  /** Close every pool and agent; in-flight requests are cut. */
  async destroy(): Promise<void> {
    const all = [...this.pools.values()]
    this.pools.clear()
    this.agents.http.destroy()
    this.agents.https.destroy()
    await Promise.allSettled(all.map((pool) => pool.destroy()))
  }
}

/**
 * Join a client socket and an upstream socket after a successful upgrade: write the upstream's
 * 101 head, pass the early bytes on, then copy both ways until both are closed.
 */
const splice = (
  client: Duplex,
  clientHead: Buffer,
  answer: Extract<UpgradeAnswer, { readonly _tag: "Upgrade" }>,
  track: Set<Duplex>
): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const { head, response, socket: upstream } = answer
    client.write(Answers.headerBlock(response.statusCode ?? 101, response.statusMessage ?? "", rawPairs(response.rawHeaders)))
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
 */
const refuseUpgrade = (client: Duplex, response: Http.IncomingMessage): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const kept = rawPairs(response.rawHeaders).filter(([name]) => {
      const lower = name.toLowerCase()
      return !HttpHeaders.hopByHopHeaders.has(lower) && lower !== "content-length"
    })
    client.write(Answers.headerBlock(response.statusCode ?? 502, response.statusMessage ?? "", [...kept, ["connection", "close"]]))
    pipeline(response, client, () => {
      Answers.closeSoon(client)
      resume(Effect.void)
    })
    return Effect.sync(() => {
      response.destroy()
      client.destroy()
    })
  })
