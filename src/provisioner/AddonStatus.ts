/**
 * The hub side of the provisioner: is the ManagedClusterAddOn still there, and the
 * `ManagedKubeconfigReady` condition on its status.
 *
 * The condition follows metav1 semantics (see {@link Conditions}): `lastTransitionTime` moves
 * only when `status` flips, and nothing is written when nothing changed. The add-on manager and
 * the registration agent write the same status, so every write is a read-modify-write guarded
 * by resourceVersion and retried on conflict against a fresh read.
 *
 * RBAC on the hub: `get, list, watch` on `managedclusteraddons`, `update` on
 * `managedclusteraddons/status`.
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer, Schedule } from "effect"
import * as Conditions from "../domain/Conditions.ts"
import { type CustomObject, type CustomResource, HubCluster } from "../kube/KubeClient.ts"
import * as KubeError from "../kube/KubeError.ts"

/** The OCM ManagedClusterAddOn resource. @category constants */
export const managedClusterAddOns: CustomResource = {
  group: "addon.open-cluster-management.io",
  version: "v1alpha1",
  plural: "managedclusteraddons"
}

/** The condition type this provisioner owns. @category constants */
export const conditionType = "ManagedKubeconfigReady"

/** @category models */
export type AddonState =
  | { readonly _tag: "Absent" }
  | { readonly _tag: "Deleting" }
  | {
    readonly _tag: "Present"
    readonly generation: number | undefined
    readonly condition: Conditions.Condition | undefined
    /** False when `status.relatedObjects` does not name the generated Secret yet (absent: nothing asked). */
    readonly listsRelated?: boolean
  }
  /** No hub configured: nothing to report to and nothing to watch for deletion. */
  | { readonly _tag: "Untracked" }

/** The condition we want, without timestamps. @category models */
export interface DesiredCondition {
  readonly status: "True" | "False"
  readonly reason: string
  readonly message: string
}

/**
 * An entry of the add-on's `status.relatedObjects` (OCM's ObjectReference: group, resource,
 * name; the namespace is added for readers, and not used to match, in case a schema prunes it).
 *
 * @category models
 */
export interface RelatedObject {
  readonly group: string
  readonly resource: string
  readonly name: string
  readonly namespace?: string
}

/** The generated Secret as a related object. @category constructors */
export const relatedSecret = (secret: { readonly namespace: string; readonly name: string }): RelatedObject => ({
  group: "",
  resource: "secrets",
  name: secret.name,
  namespace: secret.namespace
})

const sameObject = (a: RelatedObject, b: unknown): boolean => {
  if (typeof b !== "object" || b === null) return false
  const r = b as Record<string, unknown>
  return (r["group"] ?? "") === a.group && r["resource"] === a.resource && r["name"] === a.name
}

/** The related objects with `related` appended when missing (others' entries untouched); undefined: nothing to add. */
export const withRelated = (current: unknown, related: RelatedObject): ReadonlyArray<unknown> | undefined => {
  const list = Array.isArray(current) ? (current as ReadonlyArray<unknown>) : []
  return list.some((entry) => sameObject(related, entry)) ? undefined : [...list, related]
}

/** The state an add-on object (undefined: it does not exist) is in. @category models */
export const stateOf = (object: CustomObject | undefined, related?: RelatedObject): AddonState => {
  if (object === undefined) return { _tag: "Absent" }
  if (object.metadata?.deletionTimestamp !== undefined) return { _tag: "Deleting" }
  const conditions = (object.status?.conditions ?? []) as ReadonlyArray<Conditions.Condition>
  return {
    _tag: "Present",
    generation: object.metadata?.generation,
    condition: Conditions.findCondition(conditions, conditionType),
    listsRelated: related === undefined || withRelated(object.status?.["relatedObjects"], related) === undefined
  }
}

const notWritten: CustomObject | undefined = undefined

/** @category services */
export class AddonStatus extends Context.Service<AddonStatus, {
  readonly observe: Effect.Effect<AddonState, KubeError.KubeError>
  /**
   * Set our condition (the same one again: keep it) and list the related object the layer was given; the
   * object as written, or undefined when nothing needed writing. `basis` is a recent copy of the
   * add-on (from a watch) to start from instead of a GET; a conflict falls back to a fresh read.
   */
  readonly setCondition: (desired: DesiredCondition, basis?: CustomObject) => Effect.Effect<CustomObject | undefined, KubeError.KubeError>
}>()("tether/provisioner/AddonStatus") {
  /** Without a hub: everything is a no-op. */
  static readonly layerUntracked = Layer.succeed(
    AddonStatus,
    AddonStatus.of({ observe: Effect.succeed({ _tag: "Untracked" }), setCondition: () => Effect.succeed(notWritten) })
  )

  /**
   * The ManagedClusterAddOn `namespace/name` on the hub; with `related`, every status write also
   * makes sure `status.relatedObjects` lists it (once; others' entries kept).
   */
  static readonly layer = (addon: { readonly namespace: string; readonly name: string }, related?: RelatedObject) =>
    Layer.effect(
      AddonStatus,
      Effect.gen(function*() {
        const hub = yield* HubCluster
        const get = hub.getCustomObject(managedClusterAddOns, addon.namespace, addon.name)

        const observe = get.pipe(
          Effect.map((object) => stateOf(object, related)),
          Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeed<AddonState>({ _tag: "Absent" }))
        )

        const writeOnce = Effect.fnUntraced(function*(desired: DesiredCondition, basis: CustomObject | undefined) {
          const object = basis ?? (yield* get)
          const now = yield* Clock.currentTimeMillis
          const current = (object.status?.conditions ?? []) as ReadonlyArray<Conditions.Condition>
          const next = Conditions.setCondition(current, {
            type: conditionType,
            ...desired,
            ...(object.metadata?.generation === undefined ? {} : { observedGeneration: object.metadata.generation })
          }, now)
          const relatedObjects = related === undefined ? undefined : withRelated(object.status?.["relatedObjects"], related)
          if (!next.changed && relatedObjects === undefined) return undefined
          return yield* hub.replaceCustomObjectStatus(managedClusterAddOns, {
            ...object,
            status: { ...object.status, conditions: next.conditions, ...(relatedObjects === undefined ? {} : { relatedObjects }) }
          })
        })

        const setCondition = (desired: DesiredCondition, basis?: CustomObject) =>
          writeOnce(desired, basis).pipe(
            // The basis was stale: from now on, read the add-on first.
            Effect.catchIf(KubeError.isReason("Conflict"), () => writeOnce(desired, undefined)),
            Effect.retry({
              while: KubeError.isReason("Conflict"),
              schedule: Schedule.exponential("50 millis").pipe(Schedule.jittered),
              times: 5
            }),
            Effect.withSpan("AddonStatus.setCondition")
          )

        return AddonStatus.of({ observe, setCondition })
      })
    )
}
