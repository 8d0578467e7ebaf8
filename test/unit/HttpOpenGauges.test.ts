/**
 * The open-request, open-connection and open-upgrade gauges of the shared HTTP core
 * (`src/http/Server.ts`, used by both the service relay and the service proxy), over real
 * loopback sockets: each path a request can take raises them and brings them back to 0 —
 * a keep-alive answer, a client gone mid-upload and mid-answer, an unreachable upstream, a
 * request timeout, refusals decided at once and after waiting, pipelined requests behind a
 * refusal, an upgrade spliced and one refused, a TLS handshake that never finishes, and
 * shutdown with all of these open at once. The policy is a small test one: what is under test
 * is the server, not authentication or routing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Metric, Scope } from "effect"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as Admission from "../../src/http/Admission.ts"
import type * as Forwarder from "../../src/http/Forwarder.ts"
import * as Server from "../../src/http/Server.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { holds, type Options as Polling } from "../support/eventually.ts"
import { selfSigned } from "../support/local.ts"

const poll: Polling = { timeout: "10 seconds", interval: "10 millis" }
const ignore = () => {}
const plainTrust: Forwarder.Trust = { key: "none", ca: undefined, rejectUnauthorized: true }

// ---------------------------------------------------------------------------------------------
// the backend: answers, streams until cut, reads uploads, echoes upgrades
// ---------------------------------------------------------------------------------------------

const backendHandler = (req: Http.IncomingMessage, res: Http.ServerResponse) => {
  if (req.url === "/forever") {
    res.writeHead(200, { "content-type": "text/plain" })
    const tick = setInterval(() => res.write("tick\n"), 10)
    res.once("close", () => clearInterval(tick))
    return
  }
  req.resume()
  req.on("end", () => res.end(`ok ${req.url}`))
}

const backendUpgrade = (req: Http.IncomingMessage, socket: Net.Socket) => {
  socket.on("error", () => socket.destroy())
  if (req.url === "/ws-refuse") {
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nrefused")
    return
  }
  socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
  socket.pipe(socket)
}

const listen = (server: Net.Server): Promise<number> =>
  new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as Net.AddressInfo).port)))

const backend = Effect.acquireRelease(
  Effect.promise(async () => {
    const server = Http.createServer(backendHandler)
    server.on("upgrade", backendUpgrade)
    return { server, port: await listen(server) }
  }),
  ({ server }) =>
    Effect.callback<void>((resume) => {
      server.closeAllConnections()
      server.close(() => resume(Effect.void))
    })
)

/** A loopback port nothing listens on. */
const deadPort = Effect.promise(async () => {
  const server = Net.createServer()
  const port = await listen(server)
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
})

// ---------------------------------------------------------------------------------------------
// the server under test
// ---------------------------------------------------------------------------------------------

/**
 * Admission by path: `/refuse` at once, `/refuse-later` after waiting, `/dead` to a port nothing
 * listens on, `/later/...` admitted after waiting, anything else admitted at once.
 */
const policy = (backendPort: number, dead: number): Admission.Policy<string> => {
  const to = (port: number, path: string, upgrade: string | undefined) =>
    Admission.admitted<string>({
      label: "test",
      destination: { protocol: "http", host: "127.0.0.1", port, trust: plainTrust },
      path,
      headers: upgrade === undefined ? { host: "backend" } : { host: "backend", connection: "Upgrade", upgrade },
      upstream: { target: "test" }
    })
  return {
    admit: (req, upgrade) => {
      const url = req.url ?? "/"
      const upgrading = upgrade ? req.headers.upgrade : undefined
      if (url === "/refuse") return Admission.refusal(403, "refused", "test")
      if (url === "/refuse-later") return Effect.fail(Admission.refusal(403, "refused", "test")).pipe(Effect.delay("20 millis"))
      if (url === "/dead") return to(dead, url, upgrading)
      if (url.startsWith("/later/")) {
        return Effect.succeed(to(backendPort, url.slice("/later".length), upgrading)).pipe(Effect.delay("20 millis"))
      }
      return to(backendPort, url, upgrading)
    },
    record: ignore
  }
}

interface Running {
  readonly port: number
  readonly scope: Scope.Closeable
  /** requests, connections, upgrades, as the gauges read now. */
  readonly open: () => readonly [number, number, number]
}

const start = (options: { readonly tls?: { readonly cert: string; readonly key: string }; readonly requestTimeout?: number } = {}) =>
  Effect.gen(function*() {
    const upstream = yield* backend
    const dead = yield* deadPort
    const registry = new Map()
    const scope = yield* Scope.make("sequential")
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const served = yield* Server.serve({
      component: "test",
      gauges: Metrics.serviceRelayOpen,
      listen: { host: "127.0.0.1", port: 0 },
      tls: options.tls,
      maxHeaderSize: 16 * 1024,
      headersTimeout: 2_000,
      requestTimeout: options.requestTimeout ?? 0,
      shutdownTimeout: "200 millis",
      dialTimeout: 2_000,
      handshakeTimeout: 2_000,
      idleTimeout: 10_000
    }, policy(upstream.port, dead)).pipe(Scope.provide(scope), Effect.provideService(Metric.MetricRegistry, registry))
    const context = Context.make(Metric.MetricRegistry, registry)
    const read = (gauge: Metric.Gauge<number>) => gauge.valueUnsafe(context).value
    const { connections, requests, upgrades } = Metrics.serviceRelayOpen
    const open = () => [read(requests), read(connections), read(upgrades)] as const
    return { port: served.address.port, scope, open } satisfies Running
  })

const reads = (server: Running, expected: readonly [number, number, number], what: string) =>
  holds(() => {
    const now = server.open()
    return now[0] === expected[0] && now[1] === expected[1] && now[2] === expected[2]
  }, `${what}: gauges (requests, connections, upgrades) ${expected.join(", ")}, last ${server.open().join(", ")}`, poll)

// ---------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------

/** A raw connection that collects what it receives. */
const connect = (port: number, tls?: { readonly ca: string }) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly socket: Net.Socket; readonly received: () => string; readonly closed: () => boolean }>((resume) => {
      const socket: Net.Socket = tls === undefined
        ? Net.connect(port, "127.0.0.1")
        : Tls.connect({ host: "127.0.0.1", port, ca: tls.ca, servername: "localhost" })
      let data = ""
      let isClosed = false
      socket.on("data", (chunk: Buffer) => void (data += chunk.toString("latin1")))
      socket.on("error", ignore)
      socket.on("close", () => void (isClosed = true))
      socket.once(tls === undefined ? "connect" : "secureConnect", () =>
        resume(Effect.succeed({ socket, received: () => data, closed: () => isClosed })))
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  )

/** GET on a keep-alive agent (HTTPS for an `Https.Agent`); status and body. */
const get = (port: number, path: string, agent: Http.Agent) =>
  Effect.callback<{ readonly status: number; readonly body: string }>((resume) => {
    const send = agent instanceof Https.Agent ? Https.request : Http.request
    const req = send({ host: "127.0.0.1", port, path, agent }, (res) => {
      let body = ""
      res.on("data", (chunk: Buffer) => void (body += chunk.toString()))
      res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, body })))
    })
    req.on("error", (error) => resume(Effect.die(error)))
    req.end()
    return Effect.sync(() => req.destroy())
  })

const request = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: proxy\r\n${extra}\r\n`

// ---------------------------------------------------------------------------------------------
// the suite
// ---------------------------------------------------------------------------------------------

describe("HTTP core gauges: requests, connections and upgrades open now", () => {
  it.live("keep-alive answers: a request counts until answered, its connection until closed", () =>
    Effect.gen(function*() {
      const server = yield* start()
      assert.deepStrictEqual(server.open(), [0, 0, 0])
      // A request that streams until cut is open while it streams.
      const streaming = yield* connect(server.port)
      streaming.socket.write(request("/forever"))
      yield* holds(() => streaming.received().includes("tick"), "streaming", poll)
      yield* reads(server, [1, 1, 0], "streaming")

      const agent = new Http.Agent({ keepAlive: true, maxSockets: 2 })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      for (let i = 0; i < 5; i++) {
        const [a, b] = yield* Effect.all([get(server.port, `/a${i}`, agent), get(server.port, `/later/b${i}`, agent)], { concurrency: 2 })
        assert.deepStrictEqual([a.status, a.body, b.status, b.body], [200, `ok /a${i}`, 200, `ok /b${i}`])
      }
      // Read at once: the server closes idle keep-alive connections after 5 s.
      yield* reads(server, [1, 3, 0], "answered: two idle keep-alive connections, and the stream")
      agent.destroy()
      yield* reads(server, [1, 1, 0], "keep-alive clients gone")
      streaming.socket.destroy()
      yield* reads(server, [0, 0, 0], "client gone mid-answer")
    }))

  it.live("client gone mid-upload, unreachable upstream, request timeout", () =>
    Effect.gen(function*() {
      const server = yield* start({ requestTimeout: 600 })
      // Mid-upload: the body is promised and never finished.
      const uploading = yield* connect(server.port)
      uploading.socket.write("POST /upload HTTP/1.1\r\nHost: proxy\r\nContent-Length: 1000\r\n\r\npart")
      yield* reads(server, [1, 1, 0], "upload under way")
      uploading.socket.destroy()
      yield* reads(server, [0, 0, 0], "client gone mid-upload")

      // The upstream cannot be reached: 502, and the proxy closes the connection.
      const dead = yield* connect(server.port)
      dead.socket.write(request("/dead"))
      yield* holds(dead.closed, "connection closed after the 502", poll)
      assert.match(dead.received(), /^HTTP\/1\.1 502 /)
      yield* reads(server, [0, 0, 0], "upstream error answered")

      // The body never finishes within the request timeout: 408 and the connection closed.
      const slow = yield* connect(server.port)
      slow.socket.write("POST /slow HTTP/1.1\r\nHost: proxy\r\nContent-Length: 10\r\n\r\nab")
      yield* reads(server, [1, 1, 0], "slow upload under way")
      yield* holds(slow.closed, "timed-out connection closed", poll)
      assert.match(slow.received(), /^HTTP\/1\.1 408 /)
      yield* reads(server, [0, 0, 0], "request timed out")
    }))

  it.live("refusals decided at once and after waiting, with pipelined requests behind them", () =>
    Effect.gen(function*() {
      const server = yield* start()
      for (const path of ["/refuse", "/refuse-later"]) {
        const client = yield* connect(server.port)
        // Two more requests pipelined behind the refusal are never served.
        client.socket.write(request(path) + request("/a") + request("/later/b"))
        yield* holds(client.closed, `${path}: connection closed after the refusal`, poll)
        assert.match(client.received(), /^HTTP\/1\.1 403 /)
        assert.notInclude(client.received(), "ok /")
        yield* reads(server, [0, 0, 0], `${path} answered`)
      }
    }))

  it.live("upgrades: spliced until either side closes, refused by the upstream, refused by admission", () =>
    Effect.gen(function*() {
      const server = yield* start()
      const upgrade = (path: string) => request(path, "Connection: Upgrade\r\nUpgrade: test\r\n")

      const spliced = yield* connect(server.port)
      spliced.socket.write(upgrade("/ws"))
      yield* holds(() => spliced.received().includes("101 Switching Protocols"), "switched", poll)
      spliced.socket.write("ping")
      yield* holds(() => spliced.received().endsWith("ping"), "echoed through the splice", poll)
      yield* reads(server, [0, 1, 1], "spliced")
      spliced.socket.end()
      yield* reads(server, [0, 0, 0], "splice closed by the client")

      for (const [path, status] of [["/ws-refuse", "403"], ["/refuse", "403"], ["/dead", "502"]] as const) {
        const refused = yield* connect(server.port)
        refused.socket.write(upgrade(path))
        yield* holds(refused.closed, `${path}: closed after the answer`, poll)
        assert.match(refused.received(), new RegExp(`^HTTP/1\\.1 ${status} `))
        yield* reads(server, [0, 0, 0], `${path} upgrade answered`)
      }
    }))

  it.live("shutdown cuts everything open, and the gauges read 0 when it returns", () =>
    Effect.gen(function*() {
      const server = yield* start()
      const agent = new Http.Agent({ keepAlive: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      assert.strictEqual((yield* get(server.port, "/idle", agent)).status, 200)
      const streaming = yield* connect(server.port)
      streaming.socket.write(request("/forever"))
      const spliced = yield* connect(server.port)
      spliced.socket.write(request("/ws", "Connection: Upgrade\r\nUpgrade: test\r\n"))
      const silent = yield* connect(server.port)
      yield* holds(() => streaming.received().includes("tick") && spliced.received().includes("101"), "streaming and spliced", poll)
      yield* reads(server, [1, 4, 1], "all open")
      yield* Scope.close(server.scope, Exit.void)
      assert.deepStrictEqual(server.open(), [0, 0, 0])
      yield* holds(() => streaming.closed() && spliced.closed() && silent.closed(), "clients cut", poll)
    }))

  it.live("TLS: a handshake that never finishes holds a connection; keep-alive over TLS", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-gauges-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      const tls = selfSigned(dir, "server", ["localhost", "127.0.0.1"])
      const server = yield* start({ tls })
      const agent = new Https.Agent({ keepAlive: true, maxSockets: 1, ca: tls.cert, servername: "localhost" })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      for (let i = 0; i < 3; i++) assert.strictEqual((yield* get(server.port, `/t${i}`, agent)).body, `ok /t${i}`)
      yield* reads(server, [0, 1, 0], "answered over TLS, one idle connection")
      // Plain TCP to the TLS port, no ClientHello: counted from accept.
      const mute = yield* connect(server.port)
      yield* reads(server, [0, 2, 0], "handshake pending")
      mute.socket.destroy()
      agent.destroy()
      yield* reads(server, [0, 0, 0], "TLS clients gone")

      const pending = yield* connect(server.port)
      const streaming = yield* connect(server.port, { ca: tls.cert })
      streaming.socket.write(request("/forever"))
      yield* holds(() => streaming.received().includes("tick"), "streaming over TLS", poll)
      yield* reads(server, [1, 2, 0], "TLS stream and a pending handshake")
      yield* Scope.close(server.scope, Exit.void)
      assert.deepStrictEqual(server.open(), [0, 0, 0])
      yield* holds(() => pending.closed() && streaming.closed(), "TLS clients cut", poll)
    }))
})
