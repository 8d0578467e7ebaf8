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
import * as ClientNodeKube from "../kube/ClientNodeKube.ts"
import type * as KubeClient from "../kube/KubeClient.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as RateLimit from "../kube/RateLimit.ts"
import { toKubeConfig } from "./TokenIssuer.ts"

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
  /** GET on the managed cluster the source kubeconfig names (one client per source, for the layer's life). */
  static readonly layer = Layer.effect(ServiceAccounts, Effect.gen(function*() {
    const limited = yield* RateLimit.limiter
    let cached: { readonly hash: string; readonly client: KubeClient.KubeClient } | undefined
    const clientFor = (lookup: Lookup) => {
      if (cached?.hash !== lookup.sourceHash) {
        cached = {
          hash: lookup.sourceHash,
          client: limited(ClientNodeKube.make({ cluster: "managed", kubeConfig: toKubeConfig(lookup.source), userAgent: "tether-credential-controller" }))
        }
      }
      return cached.client
    }
    return ServiceAccounts.of({
      uid: (lookup) =>
        clientFor(lookup).getServiceAccount(lookup.namespace, lookup.name).pipe(
          Effect.map((sa) => Option.fromNullishOr(sa.metadata?.uid)),
          Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeedNone),
          Effect.withSpan("ServiceAccounts.uid")
        )
    })
  }))
}
