/**
 * Minting ServiceAccount tokens on the managed cluster with TokenRequest, using the
 * credentials of the source kubeconfig.
 *
 * The managed client comes from {@link ManagedClients} (one per connection, kept across
 * reconciles). The expiry is the one the server
 * returns: issuers may shorten the requested TTL (EKS caps it at a day).
 *
 * RBAC on the managed cluster (for the source credentials): `create` on
 * `serviceaccounts/token` for the managed ServiceAccount.
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer, Metric, Redacted } from "effect"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as Metrics from "../observability/Metrics.ts"
import * as ManagedClients from "./ManagedClients.ts"

/** A freshly minted token. @category models */
export interface IssuedToken {
  readonly token: Redacted.Redacted<string>
  /** Epoch ms, our clock when we asked. */
  readonly issuedAt: number
  /** Epoch ms, from the server's `status.expirationTimestamp`. */
  readonly expiresAt: number
}

/** @category models */
export interface TokenRequestInput {
  readonly source: Kubeconfig.SourceKubeconfig
  /** Identifies the source for client caching (its hash); safe to log. */
  readonly sourceHash: string
  readonly namespace: string
  readonly name: string
  readonly expirationSeconds: number
}

/** @category services */
export class TokenIssuer extends Context.Service<TokenIssuer, {
  readonly request: (input: TokenRequestInput) => Effect.Effect<IssuedToken, KubeError.KubeError>
}>()("tether/provisioner/TokenIssuer") {
  /** TokenRequest against the managed cluster named by the source kubeconfig. */
  static readonly layer = Layer.effect(TokenIssuer, Effect.gen(function*() {
    const clients = yield* ManagedClients.fromContextOr("tether-managed-kubeconfig-provisioner")
    return TokenIssuer.of({
      request: Effect.fn("TokenIssuer.request")(function*(input) {
        const issuedAt = yield* Clock.currentTimeMillis
        const client = yield* clients.clientFor(input.source)
        const response = yield* client.createServiceAccountToken(input.namespace, input.name, {
          spec: { audiences: [], expirationSeconds: input.expirationSeconds }
        }).pipe(
          Effect.onExit(() =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => Metric.update(Metrics.tokenRequestDuration, (now - issuedAt) / 1000))
          )
        )
        const token = response.status?.token ?? ""
        if (token === "") {
          return yield* new KubeError.KubeError({
            cluster: "managed",
            operation: `create token for serviceaccount ${input.namespace}/${input.name}`,
            reason: "Invalid",
            detail: "the server returned an empty token"
          })
        }
        const expiry = response.status?.expirationTimestamp
        const expiresAt = expiry === undefined ? Number.NaN : new Date(expiry).getTime()
        return {
          token: Redacted.make(token),
          issuedAt,
          expiresAt: Number.isFinite(expiresAt) ? expiresAt : issuedAt + input.expirationSeconds * 1000
        }
      })
    })
  }))
}
