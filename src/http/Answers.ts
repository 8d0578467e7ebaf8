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

const answered = new WeakSet<Duplex>()

/**
 * Answer a request Node's parser refused (the server's `clientError`): 431 for a header block
 * over the limit, 413 for chunk extensions over Node's limit, 408 for headers that took too long, 400 for anything else (a malformed
 * request line or header, a smuggling shape such as both `Content-Length` and
 * `Transfer-Encoding`). Node's own answer destroys the socket right after writing it, which
 * loses the answer over TLS or while the client is still sending; here the answer is ended
 * gracefully, what the client still sends is read and dropped, and the socket is cut after a
 * linger. A connection that already has an answer under way is only cut.
 *
 * @category answers
 */
export const clientError = (error: Error & { readonly code?: string }, socket: Duplex): void => {
  // Node's own check: a response whose head is out cannot be followed by another answer.
  const inFlight = (socket as { readonly _httpMessage?: { readonly headersSent?: boolean } | null })._httpMessage
  // The parser reports each further chunk of an answered connection again; the answer is on its
  // way and the linger cuts the socket.
  if (answered.has(socket)) return
  if (error.code === "ECONNRESET" || !socket.writable || inFlight?.headersSent === true) {
    socket.destroy()
    return
  }
  answered.add(socket)
  const [status, text] = error.code === "HPE_HEADER_OVERFLOW"
    ? [431, "request header fields too large"] as const
    : error.code === "HPE_CHUNK_EXTENSIONS_OVERFLOW"
    ? [413, "chunk extensions too large"] as const
    : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
    ? [408, "request timeout"] as const
    : [400, "bad request"] as const
  socket.on("data", () => {})
  socket.resume()
  answerOnSocket(socket, status, text)
}
