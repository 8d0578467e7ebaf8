/**
 * The shared HTTP core's https upstreams over real loopback sockets: one TLS context per
 * upstream pool, not one per connection. Given `ca`, Node's `tls.connect` builds a context for
 * every connection and parses each CA certificate again; with the system roots (the service
 * relay's trust for https Services) that is milliseconds of CPU per connection. The backend here
 * closes every connection after its answer, so each request opens a new one; the count of
 * contexts Node builds while connecting is read from `tls.createSecureContext` itself. The
 * answers show that verification still holds: the right CA and name pass, another CA fails.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Metric, Scope } from "effect"
import * as Fs from "node:fs"
import * as Https from "node:https"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import TlsModule from "node:tls"
import * as Admission from "../../src/http/Admission.ts"
import * as Server from "../../src/http/Server.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"

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
        admit: (req) =>
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
            headers: { host: "backend.default.svc" },
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

      const refused = yield* send(served.address.port, { path: "/other/x" })
      assert.strictEqual(refused.status, 502, "a backend certificate the trust does not cover is refused")
      assert.strictEqual(built, 0)
    }))
})
