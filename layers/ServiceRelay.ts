/**
 * Composition root of the service relay, used by `tether service-relay` and by controllers that
 * embed the relay.
 *
 * - {@link layerNoDeps}: the relay with caller authentication; the caller provides
 *   {@link ManagedCluster} (credentials that may create `tokenreviews`) and a
 *   {@link ServiceResolver}.
 * - {@link layer}: the same with the managed-cluster client built from a kubeconfig path
 *   (in-cluster when absent), the system resolver, and a `/readyz` check; needs {@link Probes}.
 *
 * The relay refuses to start without trusted caller usernames: an empty set would refuse every
 * request, and a relay that trusts everyone is the open proxy this design exists to prevent.
 *
 * @since 0.1.0
 */
import { type Duration, Effect, Layer } from "effect"
import type * as ListenAddress from "../src/domain/ListenAddress.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { ManagedCluster } from "../src/kube/KubeClient.ts"
import { Probes } from "../src/observability/Probes.ts"
import { CallerAuthenticator } from "../src/relay/CallerAuthenticator.ts"
import { ServiceRelay, ServiceRelayError, type Options as RelayOptions } from "../src/relay/ServiceRelay.ts"
import { ServiceResolver } from "../src/relay/ServiceResolver.ts"

/** @category models */
export interface Options {
  readonly listen: ListenAddress.ListenAddress
  /** PEM file of extra CAs for https Services; a missing file is skipped. */
  readonly additionalServiceCa: string | undefined
  /** Usernames whose tokens may use the relay; at least one. */
  readonly trustedCallerUsernames: ReadonlyArray<string>
  readonly tokenReviewCacheTtl: Duration.Input
  /** Kubeconfig of the managed cluster; undefined means the in-cluster configuration. */
  readonly kubeconfig: string | undefined
  /** Server tuning (timeouts, header size, pools); the defaults suit a pod. */
  readonly tuning?: Omit<RelayOptions, "listen" | "additionalServiceCa">
}

const component = "tether-service-relay"

/**
 * Split repeated and comma-separated `--trusted-caller-username` values, dropping blanks and
 * duplicates.
 *
 * @category options
 */
export const trustedUsernames = (given: ReadonlyArray<string>): ReadonlyArray<string> => [
  ...new Set(given.flatMap((value) => value.split(",")).map((name) => name.trim()).filter((name) => name !== ""))
]

const requireTrusted = (options: Options) =>
  trustedUsernames(options.trustedCallerUsernames).length > 0
    ? Effect.void
    : Effect.fail(
      new ServiceRelayError({
        reason: "Config",
        message: "at least one trusted caller username is required (--trusted-caller-username, e.g. " +
          "system:serviceaccount:<addon namespace>:cluster-proxy); the relay does not run open"
      })
    )

/**
 * The relay and its caller authenticator. Needs {@link ManagedCluster} and {@link ServiceResolver}.
 *
 * @category layers
 */
export const layerNoDeps = (options: Options) =>
  Layer.unwrap(
    Effect.as(
      requireTrusted(options),
      ServiceRelay.layer({ ...options.tuning, listen: options.listen, additionalServiceCa: options.additionalServiceCa }).pipe(
        Layer.provide(CallerAuthenticator.layer({
          trustedUsernames: trustedUsernames(options.trustedCallerUsernames),
          cacheTtl: options.tokenReviewCacheTtl
        }))
      )
    )
  )

/** Report the relay on `/readyz`. Needs {@link Probes} and {@link ServiceRelay}. @category layers */
export const layerReadiness = Layer.effectDiscard(
  Effect.gen(function*() {
    const probes = yield* Probes
    const relay = yield* ServiceRelay
    yield* probes.addReadinessCheck("service-relay", relay.readiness)
  })
)

/**
 * The relay as `tether service-relay` runs it: TokenReview against the managed cluster named by
 * `kubeconfig` (in-cluster when undefined), Services resolved by the system resolver, readiness
 * on `/readyz`. Needs {@link Probes}.
 *
 * @category layers
 */
export const layer = (options: Options) =>
  layerReadiness.pipe(
    Layer.provideMerge(layerNoDeps(options)),
    Layer.provide(ServiceResolver.layerSystem),
    Layer.provide(ClientNodeKube.layer(ManagedCluster, { cluster: "managed", path: options.kubeconfig, userAgent: component }))
  )
