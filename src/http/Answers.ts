/**
 * The answers a proxy gives itself instead of an upstream: short plain-text bodies, on a
 * response or on the raw socket of an upgrade request, and the transport-error text for logs.
 *
 * @since 0.1.0
 */
import * as Http from "node:http"
import type { Duplex } from "node:stream"

/**
 * The only body a failed upstream gets: no backend detail reaches the caller.
 *
 * @category answers
 */
export const badGateway = "bad gateway"

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

/**
 * An HTTP/1.1 response head as text.
 *
 * @category answers
 */
export const headerBlock = (status: number, statusMessage: string, pairs: ReadonlyArray<readonly [string, string]>): string =>
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
 *
 * @category answers
 */
export const closeSoon = (socket: Duplex): void => {
  const linger = setTimeout(() => socket.destroy(), 5_000)
  linger.unref()
  socket.once("close", () => clearTimeout(linger))
}
