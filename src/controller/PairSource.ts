/**
 * The credential controller's discovery at the edge: one list+watch for the whole hosting
 * cluster (hub ManagedClusterAddOns in every namespace, or, without a hub, the source Secrets
 * selected by `--source-secret-selector` in every namespace), never one watch per object, fed
 * through the pure {@link Discovery} core.
 *
 * The source keeps the objects the watch has shown (a small cache of the fields discovery reads;
 * in hub mode also the add-ons in full, so reconciles read them from here, not from the hub)
 * and, after each change, the pairs and problems discovered from all of them. Consumers follow
 * {@link PairSource.changes} and compare with {@link diff} to learn which keys to reconcile.
 *
 * RBAC: hub `list, watch` on `managedclusteraddons.addon.open-cluster-management.io`, or hosting
 * `list, watch` on `secrets` (cluster-wide, filtered by the selector).
 *
 * @since 0.1.0
 */
import { Effect, Stream, SubscriptionRef } from "effect"
import * as Discovery from "../domain/Discovery.ts"
import type * as KubeClient from "../kube/KubeClient.ts"
import type { CustomObject } from "../kube/KubeClient.ts"
import type * as Watch from "../kube/Watch.ts"
import { managedClusterAddOns } from "../provisioner/AddonStatus.ts"

/** @category models */
export type Mode =
  | { readonly _tag: "Hub"; readonly hub: KubeClient.KubeClient; readonly config: Discovery.HubConfig }
  | {
    readonly _tag: "Hubless"
    readonly hosting: KubeClient.KubeClient
    /** `--source-secret-selector`: a label selector, applied by the apiserver. */
    readonly selector: string
    readonly config: Discovery.HublessConfig
  }

/** @category models */
export interface State {
  readonly discovered: Discovery.Discovered
  /** The first list has been seen (the readiness of discovery). */
  readonly synced: boolean
  /** The watch is failing and being retried; `discovered` is what was last seen. */
  readonly broken: boolean
}

/** @category models */
export interface PairSource {
  /**
   * Hub mode: the ManagedClusterAddOn as last seen by the watch (status included; add-ons hold
   * no credentials), or undefined when it is not known. Always undefined without a hub.
   */
  readonly addon: (namespace: string, name: string) => CustomObject | undefined
  /** Keep a newer copy of an add-on we wrote ourselves (its watch event follows). */
  readonly wrote: (object: CustomObject) => void
  readonly current: Effect.Effect<State>
  /** The current state, then each change. */
  readonly changes: Stream.Stream<State>
}

/**
 * The keys whose pair appeared, disappeared or changed between two discoveries.
 *
 * @category computing
 */
export const diff = (before: Discovery.Discovered, after: Discovery.Discovered): Array<string> => {
  const index = (d: Discovery.Discovered) => new Map(d.pairs.map((pair) => [pair.key, JSON.stringify(pair)]))
  const [a, b] = [index(before), index(after)]
  const changed = new Set<string>()
  for (const [key, value] of a) if (b.get(key) !== value) changed.add(key)
  for (const key of b.keys()) if (!a.has(key)) changed.add(key)
  return [...changed].sort()
}

/** Whether `a` has a later resourceVersion than `b` (within one etcd they are increasing integers). */
const newer = (a: CustomObject, b: CustomObject): boolean => {
  const [x, y] = [Number(a.metadata?.resourceVersion), Number(b.metadata?.resourceVersion)]
  return Number.isFinite(x) && Number.isFinite(y) && x > y
}

const empty: State = { discovered: { pairs: [], problems: [] }, synced: false, broken: false }

/** Only what discovery reads, so the cache does not hold Secret data (credentials). */
const slim = (object: { metadata?: Record<string, unknown> | undefined; spec?: unknown }) => {
  const m = (object.metadata ?? {}) as Record<string, unknown>
  const spec = object.spec as { installNamespace?: unknown } | undefined
  return {
    metadata: {
      namespace: m["namespace"] as string | undefined,
      name: m["name"] as string | undefined,
      uid: m["uid"] as string | undefined,
      annotations: m["annotations"] as Record<string, string> | undefined,
      deletionTimestamp: m["deletionTimestamp"]
    },
    spec: spec === undefined ? undefined : { installNamespace: spec.installNamespace }
  }
}

type Slim = ReturnType<typeof slim>

/**
 * Start the watch in the current scope.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(mode: Mode) {
  const state = yield* SubscriptionRef.make<State>(empty)
  const objects = new Map<string, Slim>()
  /** Hub mode: the add-ons in full, by `namespace/name`. */
  const addons = new Map<string, CustomObject>()
  const keepAddon = (object: unknown) => {
    if (mode._tag !== "Hub") return
    const o = object as CustomObject
    const key = `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`
    const known = addons.get(key)
    // Our own write may already be newer than an event still in flight.
    if (known !== undefined && known.metadata?.uid === o.metadata?.uid && newer(known, o)) return
    // managedFields: read by no reconcile, often half the object (a status update without them keeps the server's).
    if (o.metadata?.managedFields === undefined) return void addons.set(key, o)
    const metadata = { ...o.metadata }
    delete metadata.managedFields
    addons.set(key, { ...o, metadata })
  }
  const id = (o: Slim) => `${o.metadata.namespace ?? ""}/${o.metadata.name ?? ""}`
  const discover = (): Discovery.Discovered => {
    const all = [...objects.values()]
    return mode._tag === "Hub" ? Discovery.fromHub(all, mode.config) : Discovery.fromSources(all, mode.config)
  }

  /** Synced and not broken: the published state needs no refresh for its flags. */
  let healthy = false
  const apply = (event: Watch.WatchEvent<{ metadata?: unknown; spec?: unknown }>) =>
    Effect.gen(function*() {
      switch (event._tag) {
        case "Broken":
          healthy = false
          return yield* SubscriptionRef.update(state, (s) => ({ ...s, broken: true }))
        case "Synced":
          objects.clear()
          addons.clear()
          for (const item of event.items) keepAddon(item)
          for (const item of event.items) {
            const o = slim(item as Parameters<typeof slim>[0])
            objects.set(id(o), o)
          }
          break
        case "Deleted": {
          const o = slim(event.object as Parameters<typeof slim>[0])
          addons.delete(id(o))
          if (!objects.delete(id(o)) && healthy) return
          break
        }
        default: {
          keepAddon(event.object)
          const o = slim(event.object as Parameters<typeof slim>[0])
          const before = objects.get(id(o))
          objects.set(id(o), o)
          // Most events change nothing discovery reads (an add-on's status, a source's data): no
          // new discovery, so 1,000 condition writes coming back do not cost 1,000 full passes.
          if (healthy && before !== undefined && JSON.stringify(before) === JSON.stringify(o)) return
        }
      }
      healthy = true
      yield* SubscriptionRef.set(state, { discovered: discover(), synced: true, broken: false })
    })

  const events: Stream.Stream<Watch.WatchEvent<{ metadata?: unknown; spec?: unknown }>> = mode._tag === "Hub"
    ? mode.hub.watchAllCustomObjects(managedClusterAddOns)
    : mode.hosting.watchAllSecrets({ labelSelector: mode.selector })
  yield* Stream.runForEach(events, apply).pipe(Effect.forkScoped)

  return {
    addon: (namespace, name) => addons.get(`${namespace}/${name}`),
    wrote: keepAddon,
    current: SubscriptionRef.get(state),
    changes: SubscriptionRef.changes(state)
  } satisfies PairSource as PairSource
})
