/**
 * Forwarding plain HTTP requests through undici connection pools, in callbacks: the service
 * relay's hot path.
 *
 * Measured on the benchmark machine (bare proxies, wrk at 32 connections), Node's
 * `http.request` with a keep-alive `Agent` managed about 11.9k requests/s where undici's
 * `dispatch` managed 20.8k, and a fiber per request cost tether about as much CPU again as the
 * proxying itself. So from the request event to the last byte this path is plain callbacks;
 * Effect stays at the edges (building and closing the pools, logging failures). Upgrades do not
 * come here: they are rare, and {@link Upstream} carries them.
 *
 * Bodies stream both ways with back-pressure: the response pauses the upstream connection
 * while the client is not reading, and the request body is piped. Response trailers are passed
 * on (unannounced: `Trailer` is dropped with the other hop-by-hop headers). When the upstream
 * fails before the answer starts, the client gets the generic 502 and the rest of its upload is
 * discarded; after the answer started, the client connection is cut. A client that goes away
 * aborts the upstream request.
 *
 * @since 0.1.0
 */
import type * as Http from "node:http"
import { PassThrough } from "node:stream"
import { type Dispatcher, Pool } from "undici"
import * as Routing from "../domain/Routing.ts"
import * as Upstream from "./Upstream.ts"

/** @category models */
export interface PoolOptions {
  /** Connecting, TLS handshake included, in milliseconds. */
  readonly connectTimeout: number
  /** An idle upstream connection is closed after this long, in milliseconds. */
  readonly idleTimeout: number
  /** Largest accepted response header block, in bytes. */
  readonly maxHeaderSize: number
  /** PEM certificates trusted for https upstreams. */
  readonly ca: ReadonlyArray<string>
}

/**
 * Where a request goes: an address, and for https the name the certificate must carry.
 *
 * @category models
 */
export interface Destination {
  readonly protocol: "http" | "https"
  readonly address: string
  readonly family: 4 | 6
  readonly port: number
  /** https only: sent as SNI and verified against the certificate. */
  readonly servername?: string | undefined
}

/** Pools kept at once; past this the least recently created one is closed (gracefully). */
const maxPools = 256

/**
 * One keep-alive pool per destination (address, port, scheme and server name).
 *
 * @category models
 */
export class Pools {
  private readonly pools = new Map<string, Pool>()
  private readonly options: PoolOptions
  constructor(options: PoolOptions) {
    this.options = options
  }

  get(destination: Destination): Pool {
    const host = destination.family === 6 ? `[${destination.address}]` : destination.address
    const origin = `${destination.protocol}://${host}:${destination.port}`
    const key = destination.protocol === "https" ? `${origin}/${destination.servername ?? ""}` : origin
    const existing = this.pools.get(key)
    if (existing !== undefined) return existing
    if (this.pools.size >= maxPools) {
      const [oldestKey, oldest] = this.pools.entries().next().value as [string, Pool]
      this.pools.delete(oldestKey)
      void oldest.close().catch(() => {})
    }
    const pool = new Pool(origin, {
      keepAliveTimeout: this.options.idleTimeout,
      keepAliveMaxTimeout: this.options.idleTimeout,
      maxHeaderSize: this.options.maxHeaderSize,
      // Watches and log follows are quiet for long stretches: no response timeouts, as in Go.
      headersTimeout: 0,
      bodyTimeout: 0,
      connect: {
        timeout: this.options.connectTimeout,
        ...(destination.protocol === "https"
          ? {
            ca: [...this.options.ca],
            minVersion: "TLSv1.2" as const,
            rejectUnauthorized: true,
            ...(destination.servername === undefined ? {} : { servername: destination.servername })
          }
          : {})
      }
    })
    this.pools.set(key, pool)
    return pool
  }

  /** Close every pool; in-flight requests are cut. */
  async destroy(): Promise<void> {
    const all = [...this.pools.values()]
    this.pools.clear()
    await Promise.allSettled(all.map((pool) => pool.destroy()))
  }
}

/**
 * What the caller hears about one forwarded request.
 *
 * @category models
 */
export interface Outcome {
  /** The clock `headAt` is read from, in milliseconds. */
  readonly now: () => number
  /**
   * The status the client was sent (502 when the upstream failed first), and when its head was
   * written. Told once the first bytes of the answer are on their way, so that bookkeeping does
   * not delay them.
   */
  readonly answered: (status: number, headAt: number) => void
  /** Why the upstream failed, for the log; never called for a client that went away. */
  readonly failed: (message: string) => void
}

/** A request carries a body when it says so (RFC 9112, section 6.3). */
const hasBody = (req: Http.IncomingMessage): boolean =>
  req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined

class Forwarding implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined
  private clientGone = false
  /** The status written but not yet reported ({@link Outcome.answered}), and when. */
  private unreported: number | undefined
  private headAt = 0
  private readonly resume = () => this.controller?.resume()
  private readonly req: Http.IncomingMessage
  private readonly res: Http.ServerResponse
  private readonly body: PassThrough | undefined
  private readonly outcome: Outcome

  constructor(req: Http.IncomingMessage, res: Http.ServerResponse, body: PassThrough | undefined, outcome: Outcome) {
    this.req = req
    this.res = res
    this.body = body
    this.outcome = outcome
    res.once("close", () => {
      this.report()
      if (res.writableFinished) return
      this.clientGone = true
      this.controller?.abort(new Error("the client went away"))
    })
  }

  private report(): void {
    const status = this.unreported
    if (status === undefined) return
    this.unreported = undefined
    this.outcome.answered(status, this.headAt)
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
      this.res.writeHead(statusCode, statusMessage, Routing.stripHopByHopLowerCased(headers) as Http.OutgoingHttpHeaders)
    } catch (error) {
      controller.abort(new Error(`unusable response head: ${Upstream.describe(error)}`))
      return
    }
    this.unreported = statusCode
    this.headAt = this.outcome.now()
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const flowing = this.res.write(chunk)
    this.report()
    if (flowing) return
    controller.pause()
    this.res.once("drain", this.resume)
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: Http.IncomingHttpHeaders): void {
    Upstream.passTrailers(this.res, trailers)
    this.res.end()
    this.report()
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.body !== undefined) {
      // Keep the client connection usable for the answer: discard the rest of the upload.
      this.req.unpipe(this.body)
      this.req.resume()
    }
    if (this.clientGone) return
    this.outcome.failed(Upstream.describe(error))
    if (this.res.headersSent) {
      this.res.destroy()
      return
    }
    Upstream.answer(this.res, 502, Upstream.badGateway)
    this.outcome.answered(502, this.outcome.now())
  }
}

/**
 * Send `req` (its body streamed) to `destination` with `headers` (flat name/value list, as
 * {@link Routing.forwardRawHeaders} makes it) and stream the answer back on `res`.
 *
 * @category forwarding
 */
export const forward = (
  req: Http.IncomingMessage,
  res: Http.ServerResponse,
  pools: Pools,
  destination: Destination,
  path: string,
  headers: Array<string>,
  outcome: Outcome
): void => {
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
  const handler = new Forwarding(req, res, body, outcome)
  pools.get(destination).dispatch({ method: req.method ?? "GET", path, headers, body: body ?? null }, handler)
}
