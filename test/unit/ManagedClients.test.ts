/**
 * The managed-cluster clients on virtual time: one per connection and credentials (a source that
 * differs only in its token gets its own client, never another's), kept while used, dropped
 * after `idleAfter` unused, and made anew on the next use. And on real sockets: a dropped
 * client's connection is closed, not left to the server's keep-alive timeout.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Redacted } from "effect"
import { TestClock } from "effect/testing"
import * as Fs from "node:fs"
import * as Https from "node:https"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import type * as Kubeconfig from "../../src/domain/Kubeconfig.ts"
import { ManagedClients } from "../../src/provisioner/ManagedClients.ts"
import { until } from "../support/eventually.ts"
import { selfSigned } from "../support/local.ts"

const source = (token: string, server = "https://127.0.0.1:6443"): Kubeconfig.SourceKubeconfig => ({
  cluster: { server, certificateAuthorityData: "Y2E=" },
  credentials: { _tag: "Token", token: Redacted.make(token) }
})

describe("ManagedClients", () => {
  it.effect("one client per connection and credentials; a different token or server is another client", () =>
    Effect.gen(function*() {
      const clients = yield* ManagedClients
      const a = yield* clients.clientFor(source("token-a"))
      assert.strictEqual(yield* clients.clientFor(source("token-a")), a, "the same source: the same client")
      assert.notStrictEqual(yield* clients.clientFor(source("token-b")), a, "another token: another client")
      assert.notStrictEqual(yield* clients.clientFor(source("token-a", "https://127.0.0.2:6443")), a, "another server: another client")
      const certificate = (key: string): Kubeconfig.SourceKubeconfig => ({
        cluster: { server: "https://127.0.0.1:6443" },
        credentials: { _tag: "ClientCertificate", certData: "Y2VydA==", keyData: Redacted.make(key) }
      })
      assert.notStrictEqual(yield* clients.clientFor(certificate("a2V5LWE=")), yield* clients.clientFor(certificate("a2V5LWI=")), "another key: another client")
      assert.strictEqual(yield* clients.size, 5)
    }).pipe(Effect.provide(ManagedClients.layer({ userAgent: "test", idleAfter: "1 minute" }))))

  it.effect("kept while used; dropped after idleAfter unused, then made anew", () =>
    Effect.gen(function*() {
      const clients = yield* ManagedClients
      const busy = yield* clients.clientFor(source("busy"))
      yield* clients.clientFor(source("idle"))
      // The busy one is used every 20 s; the idle one never again.
      for (let i = 0; i < 6; i++) {
        yield* TestClock.adjust(Duration.seconds(20))
        assert.strictEqual(yield* clients.clientFor(source("busy")), busy, `busy kept at ${(i + 1) * 20} s`)
      }
      assert.strictEqual(yield* clients.size, 1, "the idle one dropped")
      yield* TestClock.adjust(Duration.seconds(91))
      assert.strictEqual(yield* clients.size, 0, "nothing held once all are idle")
      assert.notStrictEqual(yield* clients.clientFor(source("busy")), busy, "made anew after being dropped")
    }).pipe(Effect.provide(ManagedClients.layer({ userAgent: "test", idleAfter: "1 minute" }))))

  it.live("a dropped client's connection is closed when it is dropped, though the server would keep it for a minute", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-managed-clients-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      const { cert, key } = selfSigned(dir, "apiserver", ["127.0.0.1"])
      const open = new Set<Net.Socket>()
      const server = Https.createServer({ cert, key }, (_req, res) => {
        res.writeHead(200, { "content-type": "application/json" })
        res.end(JSON.stringify({ metadata: { name: "sa", namespace: "ns" } }))
      })
      server.keepAliveTimeout = 60_000
      server.on("secureConnection", (socket) => {
        open.add(socket)
        socket.once("close", () => open.delete(socket))
      })
      yield* Effect.callback<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void)))
      yield* Effect.addFinalizer(() => Effect.sync(() => server.close()))
      const port = (server.address() as Net.AddressInfo).port
      const live: Kubeconfig.SourceKubeconfig = {
        cluster: { server: `https://127.0.0.1:${port}`, certificateAuthorityData: Buffer.from(cert).toString("base64") },
        credentials: { _tag: "Token", token: Redacted.make("token") }
      }

      const clients = yield* ManagedClients
      const client = yield* clients.clientFor(live)
      const answer = yield* Effect.exit(client.getServiceAccount("ns", "sa"))
      assert.isTrue(Exit.isSuccess(answer), String(answer))
      assert.strictEqual(open.size, 1, "the request's connection is kept open")
      // idleAfter 300 ms, swept every 150 ms: closed well within 10 s, not after the keep-alive of
      // about a minute the server announced (undici honours it).
      yield* until(Effect.sync(() => open.size), (n) => n === 0, "the dropped client's connection closed", { timeout: "10 seconds" })
      assert.strictEqual(yield* clients.size, 0)
    }).pipe(Effect.provide(ManagedClients.layer({ userAgent: "test", idleAfter: "300 millis" }))))
})
