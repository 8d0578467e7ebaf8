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
import { Effect, Layer } from "effect"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { ManagedCluster } from "../src/kube/KubeClient.ts"
import { Probes } from "../src/observability/Probes.ts"
import { CallerAuthenticator } from "../src/relay/CallerAuthenticator.ts"
import { ServiceRelay, ServiceRelayError } from "../src/relay/ServiceRelay.ts"
import * as ServiceRelayOptions from "../src/relay/ServiceRelayOptions.ts"
import { ServiceResolver } from "../src/relay/ServiceResolver.ts"

/** Checked by {@link ServiceRelayOptions.resolve}. @category models */
export type Options = ServiceRelayOptions.Options

const component = "tether-service-relay"

/** @category options */
export const trustedUsernames = ServiceRelayOptions.trustedUsernames

/**
 * The relay and its caller authenticator. Needs {@link ManagedCluster} and {@link ServiceResolver}.
 * Fails to build when the options do not hold ({@link ServiceRelayOptions.resolve}).
 *
 * @category layers
 */
export const layerNoDeps = (options: Options) =>
  Layer.unwrap(
    Effect.map(
      Effect.fromResult(ServiceRelayOptions.resolve(options)).pipe(
        Effect.mapError((error) => new ServiceRelayError({ reason: "Config", message: error.message }))
      ),
      (checked) =>
        ServiceRelay.layer({ ...checked.tuning, listen: checked.listen, additionalServiceCa: checked.additionalServiceCa }).pipe(
          Layer.provide(CallerAuthenticator.layer({
            trustedUsernames: checked.trustedCallerUsernames,
            cacheTtl: checked.tokenReviewCacheTtl
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
