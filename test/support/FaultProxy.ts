/**
 * A fault-injecting TCP proxy for integration tests: put it between tether and an apiserver (on
 * loopback; TLS passes through untouched, and the apiservers' certificates name 127.0.0.1) and
 * change how it treats traffic while the test runs:
 * - `pass`: forward both ways;
 * - `reset`: refuse new connections with a TCP reset and reset the open ones;
 * - `blackhole`: accept connections and swallow everything, answering nothing (open ones go silent
 *   too), as a dropped route or a frozen server does;
 * - `latencyMs`: delay every chunk in both directions;
 * - `readBytesPerSecond`: read from the client no faster than this (a slow server);
 * - `stall()`: the connections open now go silent both ways but stay open (a frozen NAT entry or
 *   proxy: no reset, no FIN), while new connections pass.
 *
 * It counts the connections it accepted, so a test can bound how hard a client knocks on a server
 * that is away. Closed with its scope.
 */
import { Effect, Scope } from "effect"
import * as Fs from "node:fs"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Path from "node:path"

export type Mode = "pass" | "reset" | "blackhole"

export interface FaultProxy {
  readonly host: string
  readonly port: number
  /** `https://127.0.0.1:<port>`, to put in a kubeconfig instead of the apiserver's address. */
  readonly server: string
  readonly setMode: (mode: Mode) => void
  readonly setLatency: (ms: number) => void
  readonly setReadBytesPerSecond: (rate: number | undefined) => void
  /** Freeze the connections open now (both ways, kept open); returns how many sockets (two per connection) it froze. */
  readonly stall: () => number
  /** Connections accepted so far (in any mode). */
  readonly accepted: () => number
  /** When each connection was accepted (epoch ms), in order. */
  readonly acceptedAt: () => ReadonlyArray<number>
  /** Connections currently open. */
  readonly open: () => number
}

export const make = (target: { readonly host: string; readonly port: number }): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ proxy: FaultProxy; server: Net.Server; sockets: Set<Net.Socket> }>((resume) => {
      let mode: Mode = "pass"
      let latency = 0
      let rate: number | undefined
      let accepted = 0
      const acceptedAt: Array<number> = []
      const sockets = new Set<Net.Socket>()
      const frozen = new WeakSet<Net.Socket>()
      const track = (socket: Net.Socket) => {
        sockets.add(socket)
        socket.once("close", () => sockets.delete(socket))
        socket.on("error", () => socket.destroy())
      }
      const relay = (from: Net.Socket, to: Net.Socket, throttle: boolean) => {
        from.on("data", (chunk: Buffer) => {
          if (mode === "blackhole" || frozen.has(from)) return
          if (throttle && rate !== undefined) {
            from.pause()
            setTimeout(() => from.resume(), Math.ceil((chunk.length / rate) * 1000))
          }
          const send = () => {
            if (mode === "pass" && !to.destroyed) to.write(chunk)
          }
          if (latency > 0) setTimeout(send, latency)
          else send()
        })
        from.once("end", () => {
          if (mode === "pass" && !frozen.has(from)) to.end()
        })
        from.once("close", () => {
          if (!frozen.has(from)) to.destroy()
        })
      }
      const server = Net.createServer((client) => {
        accepted++
        acceptedAt.push(Date.now())
        track(client)
        if (mode === "reset") return void client.resetAndDestroy()
        const upstream = Net.connect(target.port, target.host)
        track(upstream)
        relay(client, upstream, true)
        relay(upstream, client, false)
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as Net.AddressInfo).port
        const proxy: FaultProxy = {
          host: "127.0.0.1",
          port,
          server: `https://127.0.0.1:${port}`,
          setMode: (next) => {
            mode = next
            if (next === "reset") for (const socket of sockets) socket.resetAndDestroy()
          },
          setLatency: (ms) => void (latency = ms),
          setReadBytesPerSecond: (next) => void (rate = next),
          stall: () => {
            for (const socket of sockets) frozen.add(socket)
            return sockets.size
          },
          accepted: () => accepted,
          acceptedAt: () => [...acceptedAt],
          open: () => sockets.size
        }
        resume(Effect.succeed({ proxy, server, sockets }))
      })
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))

/** The kubeconfig `yaml` with its server address replaced by the proxy's. */
export const throughProxy = (yaml: string, server: string, proxy: FaultProxy): string => yaml.split(server).join(proxy.server)

/** One request the HTTP fault proxy saw: forwarded, or answered by an injected fault. */
export interface Seen {
  readonly method: string
  readonly path: string
  /** Epoch ms when it arrived. */
  readonly at: number
  /** The injected status, or undefined when it was forwarded. */
  readonly injected: number | undefined
}

/** Answer the next `times` requests that `match` with `status` (a Kubernetes Status body) instead of forwarding them. */
export interface Fault {
  readonly match: (method: string, path: string) => boolean
  readonly status: number
  readonly retryAfterSeconds?: number
  readonly times: number
}

/** A request whose answer the proxy holds back (see {@link HttpFaultProxy.hold}). */
export interface Held {
  /** Succeeds once the apiserver has answered the held request (the answer is then kept back). */
  readonly answered: Effect.Effect<void>
  /** Deliver the held answer to the client. */
  readonly release: Effect.Effect<void>
}

export interface HttpFaultProxy {
  /** `https://127.0.0.1:<port>`, to put in a kubeconfig instead of the apiserver's address. */
  readonly server: string
  /** Queue faults; each is used up by `times` matching requests, in order. */
  readonly inject: (...faults: ReadonlyArray<Fault>) => void
  /**
   * Forward the next request that `match` at once, but keep its answer back until released: a
   * read the apiserver answered before a change that reaches the client after it.
   */
  readonly hold: (match: (method: string, path: string) => boolean) => Held
  /**
   * Succeeds once an answer forwarded to the client after this call (a watch stream among them)
   * has carried `text`.
   */
  readonly passed: (text: string) => Effect.Effect<void>
  readonly seen: () => ReadonlyArray<Seen>
}

/**
 * An HTTP-aware fault proxy in front of a test apiserver: it terminates TLS with the apiserver's
 * own serving certificate (so the apiserver's CA in a kubeconfig still verifies it), speaks
 * HTTP/1.1 (clients fall back from HTTP/2 through ALPN), and forwards each request over TLS with
 * the instance's admin client certificate, except those an injected {@link Fault} answers (429,
 * 5xx, with Retry-After). It records every request, so a test can read retry spacing from what
 * the proxy passed and refused. Only for kubeconfigs that authenticate as the admin anyway.
 */
export const makeHttp = (
  target: { readonly host: string; readonly port: number; readonly dir: string }
): Effect.Effect<HttpFaultProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ proxy: HttpFaultProxy; server: Https.Server }>((resume) => {
      const pki = (file: string) => Fs.readFileSync(Path.join(target.dir, "pki", file), "utf8")
      const upstreamTls = { ca: pki("ca.crt"), cert: pki("admin.crt"), key: pki("admin.key") }
      const agent = new Https.Agent({ ...upstreamTls, keepAlive: true })
      const faults: Array<{ fault: Fault; left: number }> = []
      const holds: Array<{ match: (method: string, path: string) => boolean; answered: () => void; released: Promise<void> }> = []
      const seen: Array<Seen> = []
      const waiters: Array<{ text: string; done: () => void }> = []
      /** Check forwarded bytes against the waiters; `tail` keeps a text split across chunks findable. */
      const watchBytes = (stream: NodeJS.ReadableStream) => {
        let tail = ""
        stream.on("data", (chunk: Buffer) => {
          const text = tail + chunk.toString("utf8")
          for (let i = waiters.length - 1; i >= 0; i--) {
            if (text.includes(waiters[i]!.text)) waiters.splice(i, 1)[0]!.done()
          }
          tail = text.slice(-512)
        })
      }
      const server = Https.createServer({ cert: pki("serving.crt"), key: pki("serving.key"), ALPNProtocols: ["http/1.1"] }, (request, response) => {
        const method = request.method ?? "GET"
        const path = request.url ?? "/"
        const entry = faults.find((f) => f.left > 0 && f.fault.match(method, path))
        if (entry !== undefined) {
          entry.left--
          seen.push({ method, path, at: Date.now(), injected: entry.fault.status })
          request.resume()
          const body = JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", message: "injected by the fault proxy", code: entry.fault.status })
          response.writeHead(entry.fault.status, {
            "content-type": "application/json",
            ...(entry.fault.retryAfterSeconds === undefined ? {} : { "retry-after": String(entry.fault.retryAfterSeconds) })
          })
          return void response.end(body)
        }
        seen.push({ method, path, at: Date.now(), injected: undefined })
        const holdAt = holds.findIndex((h) => h.match(method, path))
        const held = holdAt === -1 ? undefined : holds.splice(holdAt, 1)[0]
        const headers = { ...request.headers }
        delete headers["connection"]
        const upstream = Https.request({ host: target.host, port: target.port, method, path, headers, agent }, (answer) => {
          if (held === undefined) {
            response.writeHead(answer.statusCode ?? 502, answer.headers)
            watchBytes(answer)
            return void answer.pipe(response)
          }
          // Read the whole answer now (the apiserver's view at this moment), hand it over later.
          const chunks: Array<Buffer> = []
          answer.on("data", (chunk: Buffer) => chunks.push(chunk))
          answer.on("end", () => {
            held.answered()
            void held.released.then(() => {
              response.writeHead(answer.statusCode ?? 502, answer.headers)
              response.end(Buffer.concat(chunks))
            })
          })
        })
        upstream.on("error", () => response.destroy())
        response.on("close", () => upstream.destroy())
        request.pipe(upstream)
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as Net.AddressInfo).port
        resume(Effect.succeed({
          server,
          proxy: {
            server: `https://127.0.0.1:${port}`,
            inject: (...next) => void faults.push(...next.map((fault) => ({ fault, left: fault.times }))),
            hold: (match) => {
              let answered!: () => void
              let release!: () => void
              const answeredPromise = new Promise<void>((resolve) => (answered = resolve))
              const released = new Promise<void>((resolve) => (release = resolve))
              holds.push({ match, answered, released })
              return { answered: Effect.promise(() => answeredPromise), release: Effect.sync(release) }
            },
            passed: (text) => {
              const carried = new Promise<void>((done) => void waiters.push({ text, done }))
              return Effect.promise(() => carried)
            },
            seen: () => [...seen]
          }
        }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))
