/**
 * Copying one direction of a relayed TCP connection through a read buffer the relay owns.
 *
 * Left to itself, Node reads every chunk into a freshly allocated 64 KiB buffer. A relay only
 * passes each chunk on, so at relay speeds those allocations and their garbage collection cost
 * more than the copying does (profiled: a `pipe` relay spent its time in GC and lost to
 * haproxy). Node's `onread` socket option reads into a buffer of the caller's instead, which a
 * {@link Copier} reuses for every chunk:
 *
 * - read into the buffer, write that slice to the sink;
 * - when the write completed at once (the usual case), read again into the same buffer;
 * - when it did not, the pending write still refers to the buffer, so reading stops until that
 *   write completes. That is the back-pressure: a direction holds at most one buffer, however
 *   slowly its reader reads.
 *
 * The buffer starts small, since most API connections are quiet watches, and grows to 32 KiB
 * (past that, throughput on loopback no longer rose) once a read fills it after the direction
 * has carried 256 KiB: a list or a log stream. Growing at the first full read made every TLS
 * handshake and every small answer allocate 32 KiB it barely used; a burst of 1,000 connections
 * churned 36 MB of buffers through malloc, and the resident size grew with every burst.
 *
 * @since 0.1.0
 */
import * as Net from "node:net"

const initialBufferBytes = 4 * 1024
const maxBufferBytes = 32 * 1024
const growAfterBytes = 256 * 1024

/**
 * One direction of a connection: bytes read from `source` are written to `sink`.
 *
 * Create it first, pass {@link Copier.onread} to the source socket's constructor (or
 * {@link adopt}), then {@link Copier.connect} both ends before the source starts reading.
 *
 * @since 0.1.0
 * @category models
 */
export class Copier {
  /** Bytes copied so far. */
  bytes = 0
  /** Reading is stopped until the pending write to the sink completes. */
  waiting = false
  private buffer: Buffer = Buffer.allocUnsafe(initialBufferBytes)
  private source: Net.Socket | undefined
  private sink: Net.Socket | undefined

  /** The `onread` option for the source socket. */
  readonly onread: Net.OnReadOpts = {
    buffer: () => this.buffer,
    callback: (length) => this.copy(length)
  }

  /** Wire both ends; from then on, the source's end of data (FIN) ends the sink too. */
  connect(source: Net.Socket, sink: Net.Socket): void {
    this.source = source
    this.sink = sink
    source.on("end", () => sink.end())
  }

  /** The bytes read but not yet written to the sink. */
  get buffered(): number {
    return this.sink?.writableLength ?? 0
  }

  private readonly written = () => {
    if (!this.waiting) return
    this.waiting = false
    this.source?.resume()
  }

  /** Returns whether the source may read again (Node stops reading on `false`). */
  private copy(length: number): boolean {
    const sink = this.sink!
    this.bytes += length
    const full = length === this.buffer.length
    sink.write(this.buffer.subarray(0, length), this.written)
    const done = sink.writableLength === 0
    // Node asks for the next buffer right after this returns. A pending write keeps the old one
    // alive for as long as it needs it.
    if (full && this.buffer.length < maxBufferBytes && this.bytes >= growAfterBytes) this.buffer = Buffer.allocUnsafe(maxBufferBytes)
    if (done) return true
    this.waiting = true
    return false
  }
}

/**
 * Take over an accepted socket so that it reads through `onread`, which Node accepts only when
 * it constructs a socket, never for the sockets a server accepts. The accepted socket must not
 * have started reading (`pauseOnConnect`); it is closed without closing the connection, and the
 * returned socket (paused) owns the connection from then on. `undefined` when the connection is
 * already gone.
 *
 * @since 0.1.0
 * @category constructors
 */
export const adopt = (accepted: Net.Socket, onread: Net.OnReadOpts): Net.Socket | undefined => {
  // `_handle` is Node's own field; a Node without it fails every relay test, not silently.
  const owner = accepted as unknown as { _handle: Net.SocketConstructorOpts["handle"] | null }
  const handle = owner._handle
  if (handle === null || handle === undefined || accepted.destroyed) return undefined
  // Detached first, so that closing the accepted socket only settles the server's connection
  // count and leaves the connection itself open.
  owner._handle = null
  accepted.destroy()
  return new Net.Socket({ handle, allowHalfOpen: true, onread, pauseOnCreate: true } as Net.SocketConstructorOpts)
}
