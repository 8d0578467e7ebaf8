/**
 * The identity check's schedule (issue #12), on virtual time with the real reconciler and
 * controller loop, in-memory Secrets, a token issuer whose tokens carry the ServiceAccount's UID,
 * and a ServiceAccount port that counts its reads. Properties:
 * - however often reconciles run (resyncs, watch events), checks of one pair are never closer
 *   than the interval, and at least one comes in every interval and a half;
 * - no TokenRequest while the identity holds;
 * - a re-created ServiceAccount is noticed at the next check and gets exactly one new token,
 *   recorded with the new UID;
 * - the schedule's bounds and its spread: 1,000 pairs started in the same second do not check
 *   in the same second.
 */
import { assert, describe, it } from "@effect/vitest"
import type { V1Secret } from "@kubernetes/client-node"
import { Clock, Duration, Effect, FileSystem, Layer, Option, Redacted, Schema, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as IdentityCheck from "../../src/domain/IdentityCheck.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import * as Controller from "../../src/kube/Controller.ts"
import { EventRecorder } from "../../src/kube/EventRecorder.ts"
import { AddonStatus } from "../../src/provisioner/AddonStatus.ts"
import * as Reconciler from "../../src/provisioner/Reconciler.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { ServiceAccounts } from "../../src/provisioner/ServiceAccounts.ts"
import { TokenIssuer } from "../../src/provisioner/TokenIssuer.ts"
import { sourceSecret } from "../support/sourceSecret.ts"

const MINUTE = 60_000

const spec = (intervalMs: number): Reconciler.ClusterSpec => ({
  clusterName: "c1/cluster-proxy",
  source: { namespace: "c1", name: "external-managed-kubeconfig" },
  target: { namespace: "agent", name: "cluster-proxy-managed-kubeconfig" },
  serviceAccount: { namespace: "agent", name: "cluster-proxy" },
  // Tokens that outlive the run: only identity checks can cause requests.
  settings: { tokenExpiration: Duration.hours(24 * 365), refreshBefore: Duration.hours(1) },
  identityCheckInterval: Duration.millis(intervalMs)
})

/** A bound-token-shaped JWT naming the ServiceAccount's UID (unsigned: the reconciler only reads it). */
const jwt = (uid: string, n: number) =>
  `e30.${Buffer.from(JSON.stringify({ n, "kubernetes.io": { serviceaccount: { name: "cluster-proxy", uid } } })).toString("base64url")}.sig`

interface World {
  uid: string
  readonly reads: Array<number>
  readonly mints: Array<number>
}

const layers = (world: World) => {
  const seed = new Map<string, V1Secret>([[
    "c1/external-managed-kubeconfig",
    sourceSecret()
  ]])
  const issuer = Layer.succeed(TokenIssuer, TokenIssuer.of({
    request: () =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        world.mints.push(now)
        return { token: Redacted.make(jwt(world.uid, world.mints.length)), issuedAt: now, expiresAt: now + 365 * 24 * 60 * MINUTE }
      })
  }))
  const accounts = Layer.succeed(ServiceAccounts, ServiceAccounts.of({
    uid: () =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        world.reads.push(now)
        return Option.some(world.uid)
      })
  }))
  return Layer.mergeAll(
    SecretStore.layerMemory(seed),
    issuer,
    accounts,
    AddonStatus.layerUntracked,
    EventRecorder.layerMemory([]),
    Reconciler.TokenState.layer,
    FileSystem.layerNoop({})
  )
}

/** The controller loop with resyncs every `resyncMs`, for `spanMs` of virtual time in 1-second steps. */
const runFor = (s: Reconciler.ClusterSpec, spanMs: number, resyncMs: number, at?: (elapsed: number) => void) =>
  Effect.gen(function*() {
    const memory = Reconciler.makeMemory()
    yield* Controller.run({
      name: "test",
      keys: [s.clusterName],
      triggers: Stream.never,
      resyncInterval: Duration.millis(resyncMs),
      reconcile: () => Reconciler.reconcile(s, memory)
    }).pipe(Effect.forkScoped)
    for (let elapsed = 0; elapsed < spanMs; elapsed += 1000) {
      at?.(elapsed)
      yield* TestClock.adjust(Duration.seconds(1))
    }
    const store = yield* SecretStore
    return yield* store.get(s.target.namespace, s.target.name)
  })

const IntervalSeconds = Schema.Int.check(Schema.isBetween({ minimum: 30, maximum: 1800 }))
const ResyncSeconds = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 600 }))

describe("identity check schedule (TestClock)", () => {
  it.effect.prop(
    "never two checks closer than the interval, one at least every interval and a half, no TokenRequest",
    { intervalSeconds: IntervalSeconds, resyncSeconds: ResyncSeconds },
    ({ intervalSeconds, resyncSeconds }) =>
      Effect.gen(function*() {
        const world: World = { uid: "uid-a", reads: [], mints: [] }
        const interval = intervalSeconds * 1000
        const span = 6 * interval
        yield* runFor(spec(interval), span, resyncSeconds * 1000).pipe(Effect.provide(layers(world)))
        assert.strictEqual(world.mints.length, 1, "one TokenRequest, at the start")
        for (let i = 1; i < world.reads.length; i++) {
          assert.isAtLeast(world.reads[i]! - world.reads[i - 1]!, interval, "checks an interval apart")
        }
        // The first check within an interval of the mint's, and then no gap over 1.5 intervals
        // (plus the 1-second step and a resync's delay, whichever wakes the loop).
        const slack = 1000
        const starts = [world.mints[0]!, ...world.reads]
        for (let i = 1; i < starts.length; i++) {
          assert.isAtMost(starts[i]! - starts[i - 1]!, 1.5 * interval + slack, "no check overdue")
        }
        assert.isAtLeast(world.reads.length, 3, "checks keep coming")
      }).pipe(Effect.scoped),
    { arbitrary: { runs: 25 } }
  )

  it.effect("a re-created ServiceAccount is noticed at the next check and gets exactly one new token, recorded with its UID", () =>
    Effect.gen(function*() {
      const world: World = { uid: "uid-a", reads: [], mints: [] }
      const interval = 10 * MINUTE
      const secret = yield* runFor(spec(interval), 4 * interval, 30_000, (elapsed) => {
        if (elapsed === 2 * interval) world.uid = "uid-b"
      }).pipe(Effect.provide(layers(world)))
      assert.strictEqual(world.mints.length, 2)
      const switchedAt = world.mints[0]! + 2 * interval
      const noticedBy = world.reads.find((at) => at >= switchedAt)!
      assert.isAtLeast(world.mints[1]!, noticedBy)
      assert.isAtMost(world.mints[1]! - switchedAt, 1.5 * interval + 1000)
      const observed = ManagedKubeconfigSecret.observe({
        data: Option.getOrThrow(secret).data ?? {},
        annotations: Option.getOrThrow(secret).metadata?.annotations ?? {}
      })
      assert.strictEqual(observed._tag === "Present" ? observed.serviceAccountUid : undefined, "uid-b")
    }).pipe(Effect.scoped))

  it.effect.prop(
    "bounds: the first check within the first interval, the next in [interval, 1.5 interval)",
    { at: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 ** 40 })), intervalSeconds: IntervalSeconds, key: Schema.String },
    ({ at, intervalSeconds, key }) =>
      Effect.sync(() => {
        const interval = intervalSeconds * 1000
        const f = IdentityCheck.fraction(key, at)
        assert.isAtLeast(f, 0)
        assert.isBelow(f, 1)
        const first = IdentityCheck.firstCheckAt(at, interval, f)
        assert.isAtLeast(first, at)
        assert.isBelow(first, at + interval)
        const next = IdentityCheck.nextCheckAt(at, interval, f)
        assert.isAtLeast(next, at + interval)
        assert.isBelow(next, at + 1.5 * interval)
      })
  )

  it("spread: 1,000 pairs started (or minted) in the same second do not check in the same second", () => {
    const interval = 10 * MINUTE
    const now = Date.UTC(2026, 11, 6)
    for (const when of [IdentityCheck.firstCheckAt, IdentityCheck.nextCheckAt]) {
      const perSecond = new Map<number, number>()
      for (let i = 0; i < 1000; i++) {
        const key = `cluster-${i}/cluster-proxy`
        const second = Math.floor(when(now, interval, IdentityCheck.fraction(key, now)) / 1000)
        perSecond.set(second, (perSecond.get(second) ?? 0) + 1)
      }
      // 1,000 checks over 300 or 600 seconds: a few per second at most, never a burst.
      assert.isAtMost(Math.max(...perSecond.values()), 12)
      assert.isAtLeast(perSecond.size, 250)
    }
  })
})
