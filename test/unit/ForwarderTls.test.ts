/**
 * The shared HTTP core's https upstreams over real loopback sockets: one TLS context per
 * upstream pool, not one per connection. Given `ca`, Node's `tls.connect` builds a context for
 * every connection and parses each CA certificate again; with the system roots (the service
 * relay's trust for https Services) that is milliseconds of CPU per connection. The backend here
 * closes every connection after its answer, so each request opens a new one; the count of
 * contexts Node builds while connecting is read from `tls.createSecureContext` itself. Upgrades
 * (spliced, so each opens its own connection) take the same context. The answers show that
 * verification still holds: the right CA and name pass, another CA fails.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Metric, Scope } from "effect"
import * as Fs from "node:fs"
import * as Https from "node:https"
import type * as Net from "node:net"
import NetModule from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import TlsModule from "node:tls"
import * as Admission from "../../src/http/Admission.ts"
import * as Server from "../../src/http/Server.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"

/** An upgrade through the server on a raw socket: its status line, and whether a byte sent after a 101 comes back. */
const upgrade = (port: number, path: string) =>
  Effect.callback<{ readonly status: string; readonly echoed: boolean }>((resume) => {
    const socket = NetModule.connect(port, "127.0.0.1")
    let data = ""
    let settled = false
    const settle = (echoed: boolean) => {
      if (settled) return
      settled = true
      socket.destroy()
      resume(Effect.succeed({ status: data.split("\r\n")[0] ?? "", echoed }))
    }
    socket.on("error", () => settle(false))
    socket.on("close", () => settle(false))
    socket.on("data", (chunk: Buffer) => {
      data += chunk.toString("latin1")
      const head = data.indexOf("\r\n\r\n")
      if (head < 0) return
      if (!data.startsWith("HTTP/1.1 101")) return settle(false)
      if (data.length === head + 4) socket.write("ping")
      else if (data.endsWith("ping")) settle(true)
    })
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n`)
    return Effect.sync(() => socket.destroy())
  })

describe("Forwarder https upstreams", () => {
  it.live("build one TLS context per pool, and still verify the upstream", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-forwarder-tls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      const backendTls = selfSigned(dir, "backend", ["backend.default.svc"])
      const otherCa = selfSigned(dir, "other", ["backend.default.svc"])

      const backend = Https.createServer({ cert: backendTls.cert, key: backendTls.key }, (req, res) => {
        req.resume()
        res.writeHead(200, { connection: "close" })
        res.end(`ok ${req.url}`)
      })
      backend.on("upgrade", (_req, socket: Net.Socket) => {
        socket.on("error", () => socket.destroy())
        socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
        socket.pipe(socket)
      })
      const backendPort = yield* Effect.acquireRelease(
        Effect.promise(() => new Promise<number>((resolve) => backend.listen(0, "127.0.0.1", () => resolve((backend.address() as Net.AddressInfo).port)))),
        () => Effect.promise(() => new Promise((resolve) => {
          backend.closeAllConnections()
          backend.close(resolve)
        }))
      )

      // `/other/...` goes with a CA that did not sign the backend's certificate.
      const trusted = { key: "right", ca: [backendTls.cert], rejectUnauthorized: true }
      const untrusted = { key: "wrong", ca: [otherCa.cert], rejectUnauthorized: true }
      const policy: Admission.Policy<string> = {
        admit: (req, upgrade) =>
          Admission.admitted({
            label: "test",
            destination: {
              protocol: "https",
              host: "127.0.0.1",
              port: backendPort,
              servername: "backend.default.svc",
              trust: req.url?.startsWith("/other/") ? untrusted : trusted
            },
            path: req.url ?? "/",
            headers: upgrade
              ? { host: "backend.default.svc", connection: "Upgrade", upgrade: req.headers.upgrade ?? "test" }
              : { host: "backend.default.svc" },
            upstream: { target: "test" }
          }),
        record: () => {}
      }
      const scope = yield* Scope.make("sequential")
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const served = yield* Server.serve({
        component: "test",
        gauges: Metrics.serviceRelayOpen,
        listen: { host: "127.0.0.1", port: 0 },
        maxHeaderSize: 16 * 1024,
        headersTimeout: 5_000,
        requestTimeout: 0,
        shutdownTimeout: "200 millis",
        dialTimeout: 5_000,
        handshakeTimeout: 5_000,
        idleTimeout: 10_000
      }, policy).pipe(Scope.provide(scope), Effect.provideService(Metric.MetricRegistry, new Map()))

      // Count the contexts Node builds inside tls.connect (it calls the module's export).
      let built = 0
      const original = TlsModule.createSecureContext
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          TlsModule.createSecureContext = (options) => {
            built++
            return original(options)
          }
        }),
        () => Effect.sync(() => void (TlsModule.createSecureContext = original))
      )

      for (let i = 0; i < 20; i++) {
        const reply = yield* send(served.address.port, { path: `/r/${i}` })
        assert.deepStrictEqual([reply.status, reply.body], [200, `ok /r/${i}`])
      }
      assert.strictEqual(built, 0, "TLS contexts built per connection for 20 upstream connections")

      for (let i = 0; i < 5; i++) {
        assert.deepStrictEqual(yield* upgrade(served.address.port, `/ws/${i}`), { status: "HTTP/1.1 101 Switching Protocols", echoed: true })
      }
      assert.strictEqual(built, 0, "TLS contexts built per connection for 5 upgrades")

      const refused = yield* send(served.address.port, { path: "/other/x" })
      assert.strictEqual(refused.status, 502, "a backend certificate the trust does not cover is refused")
      const refusedUpgrade = yield* upgrade(served.address.port, "/other/ws")
      assert.deepStrictEqual(refusedUpgrade, { status: "HTTP/1.1 502 Bad Gateway", echoed: false }, "and so is an upgrade to it")
      assert.strictEqual(built, 0)
    }))
})
