/**
 * `tether service-relay`: the authenticated HTTP relay that runs on the managed cluster and
 * carries hosted service-proxy requests to in-cluster Services.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import * as Observability from "../../../layers/Observability.ts"
import * as ServiceRelayLayers from "../../../layers/ServiceRelay.ts"
import * as ServiceRelayOptions from "../../relay/ServiceRelayOptions.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"

const flags = {
  listen: Flags.listen("listen", "Address the relay serves plain HTTP on", ":7444"),
  additionalServiceCa: Flags.string(
    "additional-service-ca",
    "PEM file of extra CAs trusted for https Services, besides the system roots (a missing file is skipped)"
  ),
  trustedCallerUsername: Flag.String("trusted-caller-username").pipe(
    Flag.withDescription(
      "Username allowed to use the relay, as TokenReview reports it (system:serviceaccount:<ns>:<name>); " +
        "repeat the flag or separate names with commas; required"
    ),
    Flag.atLeast(0)
  ),
  tokenReviewCacheTtl: Flags.duration(
    "token-review-cache-ttl",
    "How long a TokenReview answer about a caller token is reused (0 disables the cache)",
    "10s"
  ),
  kubeconfig: Flags.string("kubeconfig", "Kubeconfig of the managed cluster, for TokenReview (default: in-cluster configuration)"),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000")
}

export const command = Command.make("service-relay", flags, (given) =>
  Effect.gen(function*() {
    const options = yield* checked(ServiceRelayOptions.resolve({
      listen: given.listen,
      additionalServiceCa: given.additionalServiceCa === "" ? undefined : given.additionalServiceCa,
      trustedCallerUsernames: given.trustedCallerUsername,
      tokenReviewCacheTtl: given.tokenReviewCacheTtl,
      kubeconfig: given.kubeconfig === "" ? undefined : given.kubeconfig
    }))
    return yield* Layer.launch(
      ServiceRelayLayers.layer(options).pipe(Layer.provideMerge(Observability.layer(given.healthProbeBindAddress)))
    )
  })).pipe(
    Command.withDescription(
      "Relay HTTP (and WebSocket/SPDY upgrades) from the hosted service-proxy to in-cluster Services, " +
        "for callers authenticated by TokenReview as a trusted user."
    )
  )
