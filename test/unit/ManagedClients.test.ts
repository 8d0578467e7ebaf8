/**
 * The managed-cluster clients on virtual time: one per connection and credentials (a source that
 * differs only in its token gets its own client, never another's), kept while used, dropped
 * after `idleAfter` unused, and made anew on the next use.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Redacted } from "effect"
import { TestClock } from "effect/testing"
import type * as Kubeconfig from "../../src/domain/Kubeconfig.ts"
import { ManagedClients } from "../../src/provisioner/ManagedClients.ts"

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
})
