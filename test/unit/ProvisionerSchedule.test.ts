/**
 * The provisioner's refresh schedule on virtual time: the real reconciler and controller, with
 * in-memory Secrets and a token issuer that may return shorter lifetimes than requested (as EKS
 * does). Properties over TTLs from 10 minutes to a year:
 * - every refresh happens before the current token expires;
 * - exactly one TokenRequest per rotation (never two for the same token, whatever the resyncs);
 * - a shortened TTL never turns into a refresh loop;
 * - a clock that leaps back before the issue time forces a refresh.
 */
import { assert, describe, it } from "@effect/vitest"
import type { V1Secret } from "@kubernetes/client-node"
import { Clock, Duration, Effect, FileSystem, Layer, Redacted, Ref, Schema, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as Controller from "../../src/kube/Controller.ts"
import { EventRecorder } from "../../src/kube/EventRecorder.ts"
import { AddonStatus } from "../../src/provisioner/AddonStatus.ts"
import * as Reconciler from "../../src/provisioner/Reconciler.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { TokenIssuer } from "../../src/provisioner/TokenIssuer.ts"

const MINUTE = 60_000
const YEAR = 365 * 24 * 60 * MINUTE

const sourceKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: m
  cluster:
    server: https://managed.example:6443
    certificate-authority-data: ${Buffer.from("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").toString("base64")}
users:
- name: admin
  user:
    token: source-admin-token
contexts:
- name: m
  context: { cluster: m, user: admin }
current-context: m
`

const spec = (ttlMs: number, refreshBeforeMs: number): Reconciler.ClusterSpec => ({
  clusterName: "c1",
  source: { namespace: "c1", name: "external-managed-kubeconfig" },
  target: { namespace: "agent", name: "cluster-proxy-managed-kubeconfig" },
  serviceAccount: { namespace: "agent", name: "cluster-proxy" },
  settings: { tokenExpiration: Duration.millis(ttlMs), refreshBefore: Duration.millis(refreshBeforeMs) }
})

interface Issued {
  readonly at: number
  readonly expiresAt: number
}

/** The reconciler's world in memory; `issued` records every TokenRequest. */
const world = (serverTtlMs: number, issued: Array<Issued>) => {
  const seed = new Map<string, V1Secret>([[
    "c1/external-managed-kubeconfig",
    { metadata: { name: "external-managed-kubeconfig", namespace: "c1", resourceVersion: "1" }, data: { kubeconfig: Buffer.from(sourceKubeconfig).toString("base64") } }
  ]])
  const issuer = Layer.succeed(
    TokenIssuer,
    TokenIssuer.of({
      request: () =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          // Whole seconds, like a real issuer; the annotation keeps second precision too.
          const expiresAt = Math.floor((now + serverTtlMs) / 1000) * 1000
          issued.push({ at: now, expiresAt })
          return { token: Redacted.make(`token-${issued.length}`), issuedAt: now, expiresAt }
        })
    })
  )
  return Layer.mergeAll(
    SecretStore.layerMemory(seed),
    issuer,
    AddonStatus.layerUntracked,
    EventRecorder.layerMemory([]),
    Reconciler.TokenState.layer,
    FileSystem.layerNoop({})
  )
}

/** Run the controller for `spanMs` of virtual time. */
const runFor = (s: Reconciler.ClusterSpec, spanMs: number, syncIntervalMs: number) =>
  Effect.gen(function*() {
    yield* Controller.run({
      name: "test",
      keys: [s.clusterName],
      triggers: Stream.never,
      resyncInterval: Duration.millis(syncIntervalMs),
      reconcile: () => Reconciler.reconcile(s)
    }).pipe(Effect.forkScoped)
    // Step in slices so every timer fires at its own time.
    const slices = 40
    for (let i = 0; i < slices; i++) yield* TestClock.adjust(Duration.millis(spanMs / slices))
  })

const Ttl = Schema.Int.check(Schema.isBetween({ minimum: 10 * MINUTE, maximum: YEAR }))
const Percent = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100 }))
const PercentBelow100 = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 99 }))

describe("provisioner refresh schedule (TestClock)", () => {
  it.effect.prop(
    "refreshes before expiry, once per rotation, and never loops when the server shortens the TTL",
    { requestedTtl: Ttl, servedPercent: Percent, refreshBeforePercent: PercentBelow100 },
    ({ refreshBeforePercent, requestedTtl, servedPercent }) =>
      Effect.gen(function*() {
        const issued: Array<Issued> = []
        // The server may hand back a shorter token than asked for, but never under 10 minutes.
        const served = Math.max(10 * MINUTE, Math.floor((requestedTtl * servedPercent) / 100))
        const s = spec(requestedTtl, Math.floor((requestedTtl * refreshBeforePercent) / 100))
        const syncInterval = Math.max(10 * MINUTE, Math.floor(served / 3))
        yield* runFor(s, 3.5 * served, syncInterval).pipe(Effect.provide(world(served, issued)))

        // Three and a half lifetimes hold at least three rotations and at most seven requests.
        assert.isAtLeast(issued.length, 4)
        assert.isAtMost(issued.length, 8)
        for (let i = 1; i < issued.length; i++) {
          const previous = issued[i - 1]!
          const current = issued[i]!
          // Before expiry ...
          assert.isBelow(current.at, previous.expiresAt)
          // ... and not before 40% of the served lifetime (no loop, one request per token).
          assert.isAtLeast(current.at - previous.at, 0.4 * (previous.expiresAt - previous.at) - 1000)
        }
      }).pipe(Effect.scoped),
    { arbitrary: { runs: 60 } }
  )

  it.effect("a clock that leaps back before the issue time forces one refresh", () =>
    Effect.gen(function*() {
      const issued: Array<Issued> = []
      const s = spec(60 * MINUTE, 5 * MINUTE)
      yield* TestClock.setTime(Date.UTC(2026, 5, 1))
      const once = Reconciler.reconcile(s)
      yield* Effect.gen(function*() {
        yield* once
        assert.strictEqual(issued.length, 1)
        yield* once // fresh: no request
        assert.strictEqual(issued.length, 1)
        yield* TestClock.setTime(Date.UTC(2026, 5, 1) - 30 * MINUTE)
        yield* once
        assert.strictEqual(issued.length, 2)
        const tokens = yield* Reconciler.TokenState
        const lifetime = (yield* Ref.get(tokens)).get("c1")
        assert.strictEqual(lifetime?.issuedAt, Date.UTC(2026, 5, 1) - 30 * MINUTE)
      }).pipe(Effect.provide(world(60 * MINUTE, issued)))
    }))
})
