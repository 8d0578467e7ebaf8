/**
 * The credential controller: managed kubeconfigs for every (managed cluster, add-on) pair a
 * hosting cluster serves, in one process. The first increment of issue #12.
 *
 * Pieces, each its own module: {@link PairSource} (one shared watch for discovery), a
 * {@link WorkQueue} (deduplicated keys, one reconcile per key at a time, bounded concurrency,
 * backoff, a global rate limit on starts), optionally {@link Membership} (keys shared between
 * replicas), and per key the single-cluster provisioner's reconcile
 * ({@link Reconciler.reconcile}), reused as it is, with the pair's own add-on status port, token
 * issuer (one managed-cluster client per pair, made on first use) and memory.
 *
 * Keys are `<cluster>/<addon>`. A key whose pair disappears from discovery gets one last reconcile
 * with its last add-on port: in hub mode that finds the add-on gone (or being deleted) and deletes
 * the generated Secret; then the key and its client are dropped. In hubless mode nothing tracks
 * the add-on, so the Secret stays (a deleted source means no new tokens, not a deleted credential).
 *
 * Not yet (see the README): reads from shared caches (each reconcile reads its source and target
 * Secret and the add-on), idle closing of managed clients, the periodic identity check, and the
 * `tokenFile` kubeconfig.
 *
 * @since 0.1.0
 */
import { type Context, Effect, Exit, Layer, Metric, Option, Scope, Stream } from "effect"
import type * as Discovery from "../domain/Discovery.ts"
import type * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import { HubCluster } from "../kube/KubeClient.ts"
import * as WorkQueue from "../kube/WorkQueue.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Probes } from "../observability/Probes.ts"
import { AddonStatus } from "../provisioner/AddonStatus.ts"
import * as Reconciler from "../provisioner/Reconciler.ts"
import { SecretStore } from "../provisioner/SecretStore.ts"
import { TokenIssuer } from "../provisioner/TokenIssuer.ts"
import type { Membership } from "./Membership.ts"
import * as PairSource from "./PairSource.ts"

/** @category models */
export interface Options {
  readonly source: PairSource.Mode
  readonly settings: RefreshPolicy.ValidatedSettings
  /** Reconciles at once; default 8. */
  readonly concurrency?: number | undefined
  /** Global limit on reconcile starts; default 20 per second, bursts of 40. */
  readonly rateLimit?: WorkQueue.Options<never, never>["rateLimit"]
  /** Share keys with other replicas; every key is ours when absent. */
  readonly membership?: Membership["Service"] | undefined
}

const controller = "credential-controller"

/** The pair's reconcile spec: the first source candidate that exists, else the first. */
const specFor = Effect.fnUntraced(function*(pair: Discovery.Pair, settings: RefreshPolicy.ValidatedSettings) {
  const store = yield* SecretStore
  let source = pair.sources[0]!
  if (pair.sources.length > 1) {
    for (const candidate of pair.sources) {
      const found = yield* store.get(candidate.namespace, candidate.name).pipe(Effect.orElseSucceed(() => Option.none()))
      if (Option.isSome(found)) {
        source = candidate
        break
      }
    }
  }
  return { clusterName: pair.key, source, target: pair.target, serviceAccount: pair.serviceAccount, settings } satisfies Reconciler.ClusterSpec
})

interface Entry {
  pair: Discovery.Pair
  readonly memory: Reconciler.Memory
  readonly services: Context.Context<AddonStatus | TokenIssuer>
  readonly scope: Scope.Closeable
}

/**
 * Run until interrupted.
 *
 * @category running
 */
export const run = Effect.fnUntraced(function*(options: Options) {
  const hub = yield* Effect.serviceOption(HubCluster)
  const source = yield* PairSource.make(options.source)
  const entries = new Map<string, Entry>()
  const membership = options.membership

  const entryFor = Effect.fnUntraced(function*(pair: Discovery.Pair) {
    const existing = entries.get(pair.key)
    if (existing !== undefined) {
      existing.pair = pair
      return existing
    }
    const scope = yield* Scope.make()
    const addon = pair.addonObject === undefined || Option.isNone(hub)
      ? AddonStatus.layerUntracked
      : AddonStatus.layer(pair.addonObject).pipe(Layer.provide(Layer.succeed(HubCluster, hub.value)))
    const services = yield* Layer.buildWithScope(Layer.merge(addon, TokenIssuer.layer), scope)
    const entry: Entry = { pair, memory: Reconciler.makeMemory(), services, scope }
    entries.set(pair.key, entry)
    return entry
  })

  const drop = (key: string) =>
    Effect.suspend(() => {
      const entry = entries.get(key)
      entries.delete(key)
      return entry === undefined ? Effect.void : Scope.close(entry.scope, Exit.void)
    })

  const ownedGauge = Metric.withAttributes(Metrics.controllerOwnedKeys, { controller })
  const publishOwned = Effect.gen(function*() {
    const state = yield* source.current
    let owned = 0
    for (const pair of state.discovered.pairs) if (membership === undefined || (yield* membership.allows(pair.key))) owned++
    yield* Metric.update(ownedGauge, owned)
  })

  // Readiness: the first list has been seen and each of its keys reconciled once.
  let initial: Set<string> | undefined
  const reconcile = (key: string) => reconcileKey(key).pipe(Effect.ensuring(Effect.sync(() => void initial?.delete(key))))

  const reconcileKey = Effect.fnUntraced(function*(key: string) {
    if (membership !== undefined && !(yield* membership.allows(key))) return Controller.awaitChange
    const state = yield* source.current
    const pair = state.discovered.pairs.find((p) => p.key === key)
    if (pair === undefined) {
      const last = entries.get(key)
      if (last === undefined) return Controller.awaitChange
      // Gone from discovery: one last look, which removes the Secret of a deleted add-on.
      if (last.pair.addonObject !== undefined) {
        const spec = yield* specFor(last.pair, options.settings)
        yield* Reconciler.reconcile(spec, last.memory).pipe(Effect.provide(last.services), Effect.ignore)
      }
      yield* drop(key)
      return Controller.awaitChange
    }
    const entry = yield* entryFor(pair)
    const spec = yield* specFor(pair, options.settings)
    return yield* Reconciler.reconcile(spec, entry.memory).pipe(Effect.provide(entry.services))
  })

  const queue = yield* WorkQueue.make({
    name: controller,
    reconcile,
    concurrency: options.concurrency ?? 8,
    rateLimit: options.rateLimit ?? { perSecond: 20, burst: 40 }
  })

  // Discovery changes: reconcile the keys whose pair changed (and every key on the first list).
  let seen: Discovery.Discovered = { pairs: [], problems: [] }
  yield* source.changes.pipe(
    Stream.filter((state) => state.synced),
    Stream.runForEach((state) =>
      Effect.gen(function*() {
        if (initial === undefined) initial = new Set(state.discovered.pairs.map((p) => p.key))
        const changed = PairSource.diff(seen, state.discovered)
        seen = state.discovered
        for (const key of changed) yield* queue.add(key)
        for (const problem of state.discovered.problems) {
          yield* Effect.logWarning("a pair cannot be served", { subject: problem.subject, reason: problem.reason, error: problem.message })
        }
        yield* publishOwned
      })
    ),
    Effect.forkScoped
  )

  // Membership changes: every key may have moved.
  if (membership !== undefined) {
    yield* membership.changes.pipe(
      Stream.runForEach(() =>
        Effect.gen(function*() {
          for (const pair of seen.pairs) yield* queue.add(pair.key)
          yield* publishOwned
        })
      ),
      Effect.forkScoped
    )
  }

  const probes = yield* Effect.serviceOption(Probes)
  if (Option.isSome(probes)) {
    yield* probes.value.addReadinessCheck("discovery", Effect.gen(function*() {
      const state = yield* source.current
      if (!state.synced) return yield* Effect.fail("discovery has not listed yet")
      if (state.broken) return yield* Effect.fail("the discovery watch is failing")
      if (initial === undefined || initial.size > 0) {
        return yield* Effect.fail(`${initial?.size ?? "all"} discovered pairs not reconciled yet`)
      }
    }))
  }
  yield* Effect.addFinalizer(() => Effect.forEach([...entries.keys()], drop, { discard: true }))
  yield* Effect.logInfo("credential controller started", { mode: options.source._tag })
  return yield* Effect.never
}, Effect.scoped)
