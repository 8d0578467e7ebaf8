/**
 * The managed-kubeconfig provisioner as a long-running component: watches that mark the
 * cluster dirty, the controller that reconciles it, and the probes that tell the truth.
 *
 * Triggers: the source Secret, the generated Secret and (with a hub) the ManagedClusterAddOn,
 * each watched by name. Between triggers the controller sleeps until the token's refresh point;
 * `syncInterval` is only a fail-safe resync.
 *
 * Readiness: a valid (unexpired) token is in place and every watch is connected.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Metric, Option, Ref, Stream } from "effect"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import { EventRecorder } from "../kube/EventRecorder.ts"
import { HostingCluster, HubCluster } from "../kube/KubeClient.ts"
import type * as KubeWatch from "../kube/Watch.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Probes } from "../observability/Probes.ts"
import { managedClusterAddOns } from "./AddonStatus.ts"
import * as Reconciler from "./Reconciler.ts"
import { SecretStore } from "./SecretStore.ts"

/** @category models */
export interface Options extends Reconciler.ClusterSpec {
  readonly syncInterval: Duration.Duration
  /** The ManagedClusterAddOn on the hub, when a hub is configured. */
  readonly addon: Reconciler.ObjectName | undefined
}

const byName = (name: string) => ({ fieldSelector: `metadata.name=${name}` })

/**
 * Run the provisioner until interrupted.
 *
 * @category running
 */
export const run = Effect.fn("Provisioner.run")(function*(options: Options) {
  const hosting = yield* HostingCluster
  const probes = yield* Probes
  const tokens = yield* Reconciler.TokenState
  const key = options.clusterName

  // Liveness per watch: false from a Broken event until the next successful event.
  const alive = yield* Ref.make<ReadonlyMap<string, boolean>>(new Map())
  const track = <A>(name: string, events: Stream.Stream<KubeWatch.WatchEvent<A>>) =>
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
      Stream.filter((event) => event._tag !== "Broken"),
      Stream.map(() => key)
    )

  const watches: Array<Stream.Stream<string>> = [
    track("source-secret", hosting.watchSecrets(options.source.namespace, byName(options.source.name))),
    track("target-secret", hosting.watchSecrets(options.target.namespace, byName(options.target.name)))
  ]
  // The hub client is optional: without one there is no add-on to watch.
  const hub = Option.getOrUndefined(yield* Effect.serviceOption(HubCluster))
  if (options.addon !== undefined && hub !== undefined) {
    watches.push(
      track(
        "managedclusteraddon",
        hub.watchCustomObjects(managedClusterAddOns, options.addon.namespace, byName(options.addon.name))
      )
    )
  }

  yield* probes.addReadinessCheck("token", Effect.gen(function*() {
    const lifetime = (yield* Ref.get(tokens)).get(key)
    const now = yield* Clock.currentTimeMillis
    if (lifetime === undefined) return yield* Effect.fail("no managed kubeconfig token in place yet")
    if (RefreshPolicy.isExpired(now, lifetime)) return yield* Effect.fail("the managed kubeconfig token has expired")
  }))
  yield* probes.addReadinessCheck("watches", Effect.gen(function*() {
    const states = yield* Ref.get(alive)
    const down = [...states].filter(([, up]) => !up).map(([name]) => name)
    if (states.size < watches.length) return yield* Effect.fail("watches are starting")
    if (down.length > 0) return yield* Effect.fail(`watch down: ${down.join(", ")}`)
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
    triggers: Stream.mergeAll(watches, { concurrency: "unbounded" }),
    resyncInterval: options.syncInterval,
    reconcile: () => Reconciler.reconcile(options)
  })
})

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
