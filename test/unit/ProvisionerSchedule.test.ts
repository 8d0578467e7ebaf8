/**
 * The provisioner's refresh schedule on virtual time: the real reconciler and controller, with
 * in-memory Secrets and a token issuer that may return shorter lifetimes than requested (as EKS
 * does). Properties over TTLs from 10 minutes to a year:
 * - every refresh happens before the current token expires;
 * - exactly one TokenRequest per rotation (never two for the same token, whatever the resyncs);
 * - a shortened TTL never turns into a refresh loop;
 * - a clock that leaps back before the issue time forces a refresh;
 * - while TokenRequest keeps failing, the condition turns False at the token's expiry, to the second;
 * - a deletion storm re-creates the Secret from the token in hand: one TokenRequest in all;
 * - minting is rate-limited whatever drives it.
 */
import { assert, describe, it } from "@effect/vitest"
import type { V1Secret } from "@kubernetes/client-node"
import { Clock, Duration, Effect, FileSystem, Layer, Option, Queue, Redacted, Ref, Schema, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as Controller from "../../src/kube/Controller.ts"
import { EventRecorder } from "../../src/kube/EventRecorder.ts"
import type * as Conditions from "../../src/domain/Conditions.ts"
import * as KubeError from "../../src/kube/KubeError.ts"
import { AddonStatus } from "../../src/provisioner/AddonStatus.ts"
import * as Reconciler from "../../src/provisioner/Reconciler.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { TokenIssuer } from "../../src/provisioner/TokenIssuer.ts"
import { sourceKubeconfig, sourceSecret } from "../support/sourceSecret.ts"

const MINUTE = 60_000
const YEAR = 365 * 24 * 60 * MINUTE

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
    sourceSecret()
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

interface Written {
  readonly at: number
  readonly status: string
  readonly reason: string
  readonly message: string
}

/** An add-on that is present and records each condition write with its (virtual) time. */
const recordingAddon = (written: Array<Written>) =>
  Layer.sync(AddonStatus, () => {
    let current: Conditions.Condition | undefined
    return AddonStatus.of({
      observe: Effect.sync(() => ({ _tag: "Present" as const, generation: 1, condition: current })),
      setCondition: (desired) =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          if (current?.status === desired.status && current.reason === desired.reason && current.message === desired.message) return undefined
          current = { type: "ManagedKubeconfigReady", ...desired, lastTransitionTime: new Date(now).toISOString() }
          written.push({ at: now, status: desired.status, reason: desired.reason, message: desired.message })
          return { metadata: { resourceVersion: String(written.length) } }
        })
    })
  })

/** The first TokenRequest succeeds; every later one hangs for `hangMs` and fails without an answer. */
const failingAfterFirst = (serverTtlMs: number, hangMs: number, issued: Array<Issued>) =>
  Layer.succeed(
    TokenIssuer,
    TokenIssuer.of({
      request: () =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          if (issued.length > 0) {
            issued.push({ at: now, expiresAt: 0 })
            yield* Effect.sleep(Duration.millis(hangMs))
            return yield* new KubeError.KubeError({ cluster: "managed", operation: "create token", reason: "Transport", detail: "connect ETIMEDOUT" })
          }
          const expiresAt = Math.floor((now + serverTtlMs) / 1000) * 1000
          issued.push({ at: now, expiresAt })
          return { token: Redacted.make("token-1"), issuedAt: now, expiresAt }
        })
    })
  )

const step = (totalMs: number, sliceMs: number) =>
  Effect.gen(function*() {
    for (let t = 0; t < totalMs; t += sliceMs) yield* TestClock.adjust(Duration.millis(sliceMs))
  })

describe("provisioner failure handling (TestClock)", () => {
  it.effect.prop(
    "while TokenRequest fails, the condition stays True until the token expires and turns False at expiry, to the second",
    { ttlMinutes: Schema.Int.check(Schema.isBetween({ minimum: 10, maximum: 120 })), hangSeconds: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 30 })) },
    ({ hangSeconds, ttlMinutes }) =>
      Effect.gen(function*() {
        const issued: Array<Issued> = []
        const written: Array<Written> = []
        const ttl = ttlMinutes * MINUTE
        const s = spec(ttl, 2 * MINUTE)
        const layer = Layer.mergeAll(
          world(ttl, []),
          failingAfterFirst(ttl, hangSeconds * 1000, issued),
          recordingAddon(written)
        )
        yield* Effect.gen(function*() {
          yield* Controller.run({
            name: "test",
            keys: [s.clusterName],
            triggers: Stream.never,
            resyncInterval: Duration.minutes(5),
            reconcile: () => Reconciler.reconcile(s, Reconciler.makeMemory())
          }).pipe(Effect.forkScoped)
          yield* step(ttl + 2 * MINUTE, 500)
        }).pipe(Effect.provide(layer))
        const expiresAt = issued[0]!.expiresAt
        const firstFalse = written.find((w) => w.status === "False")
        assert.isDefined(firstFalse, "the condition turned False")
        assert.isTrue(written.filter((w) => w.at < expiresAt).every((w) => w.status === "True"), "True before expiry")
        assert.isAtLeast(firstFalse!.at, expiresAt)
        assert.isBelow(firstFalse!.at - expiresAt, 1000, `False ${firstFalse!.at - expiresAt} ms after expiry`)
        assert.strictEqual(firstFalse!.reason, Reconciler.expiredReason)
        assert.isTrue(written.filter((w) => w.at >= expiresAt).every((w) => w.status === "False"), "False from expiry on")
        // Still "expired" once the attempt fails, with the failure as the cause.
        const expired = written.filter((w) => w.at >= expiresAt)
        assert.isTrue(expired.every((w) => w.reason === Reconciler.expiredReason), expired.map((w) => w.reason).join(", "))
        assert.include(expired.at(-1)!.message, "requesting a new one failed (TokenRequestFailed: ")
      }).pipe(Effect.scoped),
    { arbitrary: { runs: 15 } }
  )

  it.effect("a deletion storm re-creates the Secret from the token in hand: one TokenRequest in all", () =>
    Effect.gen(function*() {
      const issued: Array<Issued> = []
      const events: Array<{ reason: string }> = []
      const s = spec(60 * MINUTE, 5 * MINUTE)
      const triggers = yield* Queue.unbounded<string>()
      const layer = Layer.mergeAll(world(60 * MINUTE, issued), EventRecorder.layerMemory(events as never))
      yield* Effect.gen(function*() {
        const memory = Reconciler.makeMemory()
        yield* Controller.run({
          name: "test",
          keys: [s.clusterName],
          triggers: Stream.fromQueue(triggers),
          resyncInterval: Duration.minutes(5),
          reconcile: () => Reconciler.reconcile(s, memory)
        }).pipe(Effect.forkScoped)
        yield* step(1000, 100)
        const store = yield* SecretStore
        for (let i = 0; i < 20; i++) {
          assert.isTrue(yield* store.delete(s.target.namespace, s.target.name), `deletion ${i + 1} found the Secret`)
          yield* Queue.offer(triggers, s.clusterName)
          yield* step(350, 50)
        }
        const back = yield* store.get(s.target.namespace, s.target.name)
        assert.isTrue(Option.isSome(back))
        assert.strictEqual(Buffer.from(Option.getOrThrow(back).data?.["token"] ?? "", "base64").toString(), "token-1")
      }).pipe(Effect.provide(layer))
      assert.strictEqual(issued.length, 1)
      assert.strictEqual(events.filter((e) => e.reason === "ManagedKubeconfigCreated").length, 21)
    }).pipe(Effect.scoped))

  it.effect("minting is rate-limited: a source that keeps changing gets at most five tokens in five minutes", () =>
    Effect.gen(function*() {
      const issued: Array<Issued> = []
      const s = spec(60 * MINUTE, 5 * MINUTE)
      const triggers = yield* Queue.unbounded<string>()
      yield* Effect.gen(function*() {
        const memory = Reconciler.makeMemory()
        yield* Controller.run({
          name: "test",
          keys: [s.clusterName],
          triggers: Stream.fromQueue(triggers),
          resyncInterval: Duration.minutes(5),
          reconcile: () => Reconciler.reconcile(s, memory)
        }).pipe(Effect.forkScoped)
        const store = yield* SecretStore
        for (let i = 0; i < 30; i++) {
          const current = Option.getOrThrow(yield* store.get(s.source.namespace, s.source.name))
          yield* store.replace(s.source.namespace, {
            ...current,
            data: { kubeconfig: Buffer.from(`${sourceKubeconfig}# change ${i}\n`).toString("base64") }
          })
          yield* Queue.offer(triggers, s.clusterName)
          yield* step(2000, 100)
        }
        yield* step(10 * MINUTE, 1000)
      }).pipe(Effect.provide(world(60 * MINUTE, issued)))
      for (let i = 5; i < issued.length; i++) {
        assert.isAtLeast(issued[i]!.at - issued[i - 5]!.at, 5 * MINUTE, `mint ${i + 1} within five minutes of mint ${i - 4}`)
      }
      // The last change is served once the window allows.
      assert.isAtLeast(issued.length, 6)
    }).pipe(Effect.scoped))
})
