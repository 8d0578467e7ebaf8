/**
 * The managed-kubeconfig provisioner as a long-running component: watches that mark the
 * cluster dirty, the controller that reconciles it, and the probes that tell the truth.
 *
 * Triggers: the source Secret, the generated Secret and (with a hub) the ManagedClusterAddOn,
 * each watched by name. Between triggers the controller sleeps until the token's refresh point;
 * `syncInterval` is only a fail-safe resync, counted from the last reconcile.
 *
 * Quiet between deadlines: the watches double as caches, so a reconcile reads the three objects
 * from them (falling back to a GET while a watch is not synced), and an event for a version the
 * provisioner wrote itself updates the cache without triggering a reconcile (also one that comes
 * in before the write's answer: it waits for the write). A rotation then costs
 * one TokenRequest, one Secret write, at most one status update and one Event.
 *
 * Recovery: while a refresh waits on a managed apiserver that does not answer, a cheap probe
 * ({@link Reachability}) runs every few seconds (jittered) and triggers a reconcile as soon as the
 * apiserver answers again, instead of waiting out the backoff.
 *
 * Readiness: a valid (unexpired) token is in place and every watch is connected.
 *
 * @since 0.1.0
 */
import type { V1Secret } from "@kubernetes/client-node"
import { Clock, Duration, Effect, Latch, Metric, Option, Queue, Random, Ref, Stream } from "effect"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import * as OwnWrites from "../kube/OwnWrites.ts"
import { EventRecorder } from "../kube/EventRecorder.ts"
import { type CustomObject, HostingCluster, HubCluster } from "../kube/KubeClient.ts"
import type * as KubeWatch from "../kube/Watch.ts"
import * as Metrics from "../observability/Metrics.ts"
import { notReady, Probes } from "../observability/Probes.ts"
import { AddonStatus, managedClusterAddOns, stateOf } from "./AddonStatus.ts"
import { Reachability } from "./Reachability.ts"
import * as Reconciler from "./Reconciler.ts"
import { SecretStore } from "./SecretStore.ts"

/** @category models */
export interface Options extends Reconciler.ClusterSpec {
  readonly syncInterval: Duration.Duration
  /** The ManagedClusterAddOn on the hub, when a hub is configured. */
  readonly addon: Reconciler.ObjectName | undefined
  /** How often the managed apiserver is probed while a refresh waits on it (jittered ×0.5–1.5; default 2 s). */
  readonly probeInterval?: Duration.Input
  /** Tokens minted per window at most (default {@link RefreshPolicy.defaultMintLimit}). */
  readonly mintLimit?: RefreshPolicy.MintLimit
}

const byName = (name: string) => ({ fieldSelector: `metadata.name=${name}` })

/** One object as its name-selected watch last saw it; `synced` is false until listed and after a break. */
interface Cached<A> {
  synced: boolean
  object: A | undefined
}

/**
 * Run the provisioner until interrupted.
 *
 * @category running
 */
export const run = Effect.fn("Provisioner.run")(function*(options: Options) {
  const hosting = yield* HostingCluster
  const probes = yield* Probes
  const tokens = yield* Reconciler.TokenState
  const store = yield* SecretStore
  const addonStatus = yield* AddonStatus
  const reachability = Option.getOrElse(yield* Effect.serviceOption(Reachability), () => Reachability.live)
  const key = options.clusterName
  const memory = Reconciler.makeMemory(options.mintLimit)
  const own = OwnWrites.make()
  const pokes = yield* Queue.unbounded<string>()

  // A write's own watch event can arrive before the write's answer, when it cannot be told ours
  // yet: while a write is in flight an event waits for it (bounded) before it is judged.
  const settled = Latch.makeUnsafe(true)
  let inFlight = 0
  const writing = <A, E, R>(write: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.acquireUseRelease(
      Effect.sync(() => void (inFlight++, settled.closeUnsafe())),
      () => write,
      () => Effect.sync(() => void (--inFlight === 0 && settled.openUnsafe()))
    )
  const ours = (object: OwnWrites.Versioned) =>
    own.has(object)
      ? Effect.succeed(true)
      : inFlight === 0
      ? Effect.succeed(false)
      : settled.await.pipe(Effect.timeoutOrElse({ duration: "10 seconds", orElse: () => Effect.void }), Effect.map(() => own.has(object)))

  // Liveness per watch: false from a Broken event until the next successful event.
  const alive = yield* Ref.make<ReadonlyMap<string, boolean>>(new Map())
  const track = <A extends OwnWrites.Versioned>(name: string, cache: Cached<A>, events: Stream.Stream<KubeWatch.WatchEvent<A>>) =>
    events.pipe(
      Stream.tap((event) =>
        Effect.andThen(
          Ref.update(alive, (all) => new Map(all).set(name, event._tag !== "Broken")),
          Metric.update(
            Metric.withAttributes(Metrics.watchRestartsTotal, { resource: name, result: event._tag === "Broken" ? "error" : "connected" }),
            event._tag === "Synced" || event._tag === "Broken" ? 1 : 0
          )
        )
      ),
      Stream.tap((event) =>
        event._tag === "Broken"
          ? Effect.logWarning("watch broken; retrying", { watch: name, error: event.error.message })
          : Effect.void
      ),
      Stream.filterEffect((event) => {
        switch (event._tag) {
          case "Broken":
            cache.synced = false
            return Effect.succeed(false)
          case "Synced":
            cache.synced = true
            cache.object = event.items[0]
            return Effect.succeed(true)
          case "Deleted":
            cache.object = undefined
            return Effect.succeed(true)
          default:
            cache.object = event.object
            // Our own write coming back: the cache is now current, and there is nothing to do.
            return Effect.map(ours(event.object), (mine) => !mine)
        }
      }),
      Stream.map(() => key)
    )

  const source: Cached<V1Secret> = { synced: false, object: undefined }
  const target: Cached<V1Secret> = { synced: false, object: undefined }
  const addon: Cached<CustomObject> = { synced: false, object: undefined }
  const watches: Array<Stream.Stream<string>> = [
    track("source-secret", source, hosting.watchSecrets(options.source.namespace, byName(options.source.name))),
    track("target-secret", target, hosting.watchSecrets(options.target.namespace, byName(options.target.name)))
  ]
  // The hub client is optional: without one there is no add-on to watch.
  const hub = Option.getOrUndefined(yield* Effect.serviceOption(HubCluster))
  const addonWatched = options.addon !== undefined && hub !== undefined
  if (options.addon !== undefined && hub !== undefined) {
    watches.push(
      track(
        "managedclusteraddon",
        addon,
        hub.watchCustomObjects(managedClusterAddOns, options.addon.namespace, byName(options.addon.name))
      )
    )
  }

  // The reconciler's ports, reading through the watch caches and remembering our own writes.
  const cacheFor = (namespace: string, name: string) =>
    namespace === options.source.namespace && name === options.source.name
      ? source
      : namespace === options.target.namespace && name === options.target.name
      ? target
      : undefined
  const wrote = (secret: V1Secret) =>
    Effect.sync(() => {
      own.add(secret)
      const cache = cacheFor(secret.metadata?.namespace ?? "", secret.metadata?.name ?? "")
      if (cache !== undefined) cache.object = secret
      return secret
    })
  const cachedStore = SecretStore.of({
    get: (namespace, name) => {
      const cache = cacheFor(namespace, name)
      return cache?.synced === true ? Effect.succeed(Option.fromNullishOr(cache.object)) : store.get(namespace, name)
    },
    create: (namespace, secret) => writing(Effect.flatMap(store.create(namespace, secret), wrote)),
    replace: (namespace, secret) => writing(Effect.flatMap(store.replace(namespace, secret), wrote)),
    delete: (namespace, name) =>
      Effect.tap(store.delete(namespace, name), () =>
        Effect.sync(() => {
          const cache = cacheFor(namespace, name)
          if (cache !== undefined) cache.object = undefined
        }))
  })
  const cachedAddon = addonWatched
    ? AddonStatus.of({
      observe: Effect.suspend(() => (addon.synced ? Effect.succeed(stateOf(addon.object)) : addonStatus.observe)),
      setCondition: (desired, basis) =>
        writing(Effect.tap(addonStatus.setCondition(desired, basis ?? (addon.synced ? addon.object : undefined)), (written) =>
          Effect.sync(() => {
            if (written === undefined) return
            own.add(written)
            addon.object = written
          })))
    })
    : addonStatus

  // While a refresh waits on an unreachable managed apiserver: probe it, and reconcile once it answers.
  const probeEvery = Duration.toMillis(Duration.fromInputUnsafe(options.probeInterval ?? "2 seconds"))
  const watchForReturn = Effect.gen(function*() {
    let sawDown = false
    while (true) {
      yield* Effect.sleep(Duration.millis(Math.round(probeEvery * (yield* Random.nextBetween(0.5, 1.5)))))
      const cluster = memory.unreachable
      if (cluster === undefined) {
        sawDown = false
        continue
      }
      const answers = yield* reachability.answers(cluster, Duration.millis(Math.max(500, probeEvery)))
      if (answers === "Silent") sawDown = true
      // Only a return counts: an apiserver that answers but refuses is the backoff's business.
      if (answers === "Answers" && sawDown) {
        sawDown = false
        memory.unreachable = undefined
        yield* Effect.logInfo("the managed apiserver answers again; refreshing", { cluster: key })
        yield* Queue.offer(pokes, key)
      }
    }
  })
  yield* Effect.forkScoped(watchForReturn)

  yield* probes.addReadinessCheck("token", Effect.gen(function*() {
    const lifetime = (yield* Ref.get(tokens)).get(key)
    const now = yield* Clock.currentTimeMillis
    if (lifetime === undefined) return yield* notReady("no managed kubeconfig token in place yet")
    if (RefreshPolicy.isExpired(now, lifetime)) return yield* notReady("the managed kubeconfig token has expired")
  }))
  yield* probes.addReadinessCheck("watches", Effect.gen(function*() {
    const states = yield* Ref.get(alive)
    const down = [...states].filter(([, up]) => !up).map(([name]) => name)
    if (states.size < watches.length) return yield* notReady("watches are starting")
    if (down.length > 0) return yield* notReady(`watch down: ${down.join(", ")}`)
  }))
  yield* probes.addScrapeHook(Effect.gen(function*() {
    const lifetime = (yield* Ref.get(tokens)).get(key)
    const now = yield* Clock.currentTimeMillis
    yield* Metric.update(Metrics.tokenExpirationSeconds, lifetime === undefined ? 0 : Math.max(0, (lifetime.expiresAt - now) / 1000))
    yield* Metric.update(Metrics.tokenExpirationTimestampSeconds, lifetime === undefined ? 0 : lifetime.expiresAt / 1000)
  }))

  yield* Effect.logInfo("managed kubeconfig provisioner started", {
    cluster: key,
    source: `${options.source.namespace}/${options.source.name}`,
    target: `${options.target.namespace}/${options.target.name}`
  })
  return yield* Controller.run({
    name: "managed-kubeconfig-provisioner",
    keys: [key],
    triggers: Stream.mergeAll([...watches, Stream.fromQueue(pokes)], { concurrency: "unbounded" }),
    resyncInterval: options.syncInterval,
    reconcile: () =>
      Reconciler.reconcile(options, memory).pipe(
        Effect.provideService(SecretStore, cachedStore),
        Effect.provideService(AddonStatus, cachedAddon)
      )
  })
}, Effect.scoped)

/** How `--cleanup` ended. @category models */
export type CleanupResult = "Deleted" | "AlreadyGone"

/**
 * Delete the generated Secret (the add-on's pre-delete Job). Succeeds when it is gone.
 *
 * @category running
 */
export const cleanup = Effect.fn("Provisioner.cleanup")(function*(target: Reconciler.ObjectName) {
  const store = yield* SecretStore
  const events = yield* EventRecorder
  const regarding = { apiVersion: "v1", kind: "Secret", ...target }
  const name = `${target.namespace}/${target.name}`
  const deleted = yield* store.delete(target.namespace, target.name).pipe(
    Effect.tapError((error) =>
      events.record({ type: "Warning", reason: "ManagedKubeconfigCleanupFailed", message: error.message, regarding })
    )
  )
  yield* events.record(
    deleted
      ? { type: "Normal", reason: "ManagedKubeconfigCleaned", message: `Deleted generated managed kubeconfig secret ${name}`, regarding }
      : { type: "Normal", reason: "ManagedKubeconfigCleanupSkipped", message: `Generated managed kubeconfig secret ${name} was already removed`, regarding }
  )
  yield* Effect.logInfo(deleted ? "deleted the generated managed kubeconfig secret" : "the generated managed kubeconfig secret was already gone", { secret: name })
  return (deleted ? "Deleted" : "AlreadyGone") satisfies CleanupResult as CleanupResult
})
