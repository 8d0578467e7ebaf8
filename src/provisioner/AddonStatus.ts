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
import { HubCluster, type CustomResource } from "../kube/KubeClient.ts"
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
  }
  /** No hub configured: nothing to report to and nothing to watch for deletion. */
  | { readonly _tag: "Untracked" }

/** The condition we want, without timestamps. @category models */
export interface DesiredCondition {
  readonly status: "True" | "False"
  readonly reason: string
  readonly message: string
}

/** @category services */
export class AddonStatus extends Context.Service<AddonStatus, {
  readonly observe: Effect.Effect<AddonState, KubeError.KubeError>
  /** Set our condition; true when a write happened. */
  readonly setCondition: (desired: DesiredCondition) => Effect.Effect<boolean, KubeError.KubeError>
}>()("tether/provisioner/AddonStatus") {
  /** Without a hub: everything is a no-op. */
  static readonly layerUntracked = Layer.succeed(
    AddonStatus,
    AddonStatus.of({ observe: Effect.succeed({ _tag: "Untracked" }), setCondition: () => Effect.succeed(false) })
  )

  /** The ManagedClusterAddOn `namespace/name` on the hub. */
  static readonly layer = (addon: { readonly namespace: string; readonly name: string }) =>
    Layer.effect(
      AddonStatus,
      Effect.gen(function*() {
        const hub = yield* HubCluster
        const get = hub.getCustomObject(managedClusterAddOns, addon.namespace, addon.name)

        const observe = get.pipe(
          Effect.map((object): AddonState => {
            if (object.metadata?.deletionTimestamp !== undefined) return { _tag: "Deleting" }
            const conditions = (object.status?.conditions ?? []) as ReadonlyArray<Conditions.Condition>
            return {
              _tag: "Present",
              generation: object.metadata?.generation,
              condition: Conditions.findCondition(conditions, conditionType)
            }
          }),
          Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeed<AddonState>({ _tag: "Absent" }))
        )

        const writeOnce = Effect.fnUntraced(function*(desired: DesiredCondition) {
          const object = yield* get
          const now = yield* Clock.currentTimeMillis
          const current = (object.status?.conditions ?? []) as ReadonlyArray<Conditions.Condition>
          const next = Conditions.setCondition(current, {
            type: conditionType,
            ...desired,
            ...(object.metadata?.generation === undefined ? {} : { observedGeneration: object.metadata.generation })
          }, now)
          if (!next.changed) return false
          yield* hub.replaceCustomObjectStatus(managedClusterAddOns, {
            ...object,
            status: { ...object.status, conditions: next.conditions }
          })
          return true
        })

        const setCondition = (desired: DesiredCondition) =>
          writeOnce(desired).pipe(
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
