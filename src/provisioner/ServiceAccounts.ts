/**
 * The identity check's one read on the managed cluster: the managed ServiceAccount's UID, with
 * the source kubeconfig's credentials (as {@link TokenIssuer} mints with them). A port, so the
 * reconciler runs on virtual time in property tests; absent from a reconcile's context, no
 * identity check is made.
 *
 * RBAC on the managed cluster (for the source credentials): `get` on the managed ServiceAccount.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Option } from "effect"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as ManagedClients from "./ManagedClients.ts"

/** @category models */
export interface Lookup {
  readonly source: Kubeconfig.SourceKubeconfig
  /** Identifies the source for client caching; safe to log. */
  readonly sourceHash: string
  readonly namespace: string
  readonly name: string
}

/** @category services */
export class ServiceAccounts extends Context.Service<ServiceAccounts, {
  /** The ServiceAccount's UID; None when it does not exist. */
  readonly uid: (lookup: Lookup) => Effect.Effect<Option.Option<string>, KubeError.KubeError>
}>()("tether/provisioner/ServiceAccounts") {
  /** GET on the managed cluster the source kubeconfig names (its client from {@link ManagedClients}). */
  static readonly layer = Layer.effect(ServiceAccounts, Effect.gen(function*() {
    const clients = yield* ManagedClients.fromContextOr("tether-credential-controller")
    return ServiceAccounts.of({
      uid: (lookup) =>
        clients.clientFor(lookup.source).pipe(
          Effect.flatMap((client) => client.getServiceAccount(lookup.namespace, lookup.name)),
          Effect.map((sa) => Option.fromNullishOr(sa.metadata?.uid)),
          Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeedNone),
          Effect.withSpan("ServiceAccounts.uid")
        )
    })
  }))
}
