/**
 * `tether credential-controller`: one process that keeps the managed kubeconfigs of every
 * (managed cluster, add-on) pair a hosting cluster serves (issue #12, first increment).
 *
 * @since 0.1.0
 */
import { Effect, Layer, Result } from "effect"
import * as Os from "node:os"
import { Command, Flag } from "effect/cli"
import * as ControllerLayers from "../../../layers/CredentialController.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as Options from "../../controller/Options.ts"
import * as Flags from "../Flags.ts"
import { UsageError } from "../UsageError.ts"

export const flags = {
  kubeconfig: Flags.string("kubeconfig", "Kubeconfig of the hosting cluster (default: in-cluster configuration)"),
  hubKubeconfig: Flags.string("hub-kubeconfig", "Kubeconfig of the hub: discover the ManagedClusterAddOns hosted on this cluster"),
  hostingClusterName: Flags.string("hosting-cluster-name", "This hosting cluster's name on the hub (required with --hub-kubeconfig)"),
  sourceSecretSelector: Flags.string("source-secret-selector", "Without a hub: a label selector for the source kubeconfig Secrets on the hosting cluster"),
  addons: Flags.string("addons", "Add-ons served, comma-separated (hub mode: default every hosted add-on)", "cluster-proxy"),
  identityCheckInterval: Flags.duration("identity-check-interval", "Bound on the periodic identity check per pair: at most one read of the managed ServiceAccount's UID per interval (jittered); a re-created ServiceAccount gets its token blanked, then a new one", "10m"),
  tokenExpiration: Flags.duration("token-expiration", "Requested token lifetime (TokenRequest expirationSeconds; at least 10m)", "24h"),
  refreshBefore: Flags.duration("refresh-before", "Refresh at least this long before expiry (and at the latest at 80% of the lifetime)", "1h"),
  tokenFilePath: Flags.string("token-file-path", "Where the consumers mount the generated Secret's token key: written as tokenFile beside the token in the generated kubeconfig, so clients that re-read it (client-go) follow rotations without a restart; an absolute path (default: the inline token only)"),
  concurrency: Flag.Int("concurrency").pipe(Flag.withDescription("Reconciles running at once (default 8)"), Flag.withDefault(8)),
  kubeApiQps: Flag.Finite("kube-api-qps").pipe(
    Flag.withDescription("API requests per second to the hosting, hub and managed apiservers together, watches excepted (default 50)"),
    Flag.withDefault(50)
  ),
  kubeApiBurst: Flag.Int("kube-api-burst").pipe(
    Flag.withDescription("API requests sent at once after a quiet spell, above --kube-api-qps (default 100)"),
    Flag.withDefault(100)
  ),
  shardLeaseNamespace: Flags.string("shard-lease-namespace", "Namespace of the replicas' member Leases; replicas share the pairs through them (default: $POD_NAMESPACE; neither: one replica serves every pair)"),
  shardIdentity: Flags.string("shard-identity", "This replica's name in its member Lease (default: $POD_NAME, else the host name)"),
  shardLeaseDuration: Flags.duration("shard-lease-duration", "A replica that stops renewing loses its pairs to the others after this long", "15s"),
  shardRenewInterval: Flags.duration("shard-renew-interval", "How often each replica renews its member Lease and reads the others' (with up to 20% jitter)", "5s"),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000")
}

export const command = Command.make("credential-controller", flags, (given) =>
  Effect.gen(function*() {
    const options = Options.resolve(given, {
      podNamespace: process.env["POD_NAMESPACE"],
      podName: process.env["POD_NAME"],
      hostname: Os.hostname()
    })
    if (Result.isFailure(options)) return yield* new UsageError({ message: options.failure.message })
    const hostingKubeconfig = given.kubeconfig === "" ? undefined : given.kubeconfig
    return yield* Layer.launch(
      ControllerLayers.layer(options.success, { hostingKubeconfig }).pipe(
        Layer.provideMerge(Observability.layer(given.healthProbeBindAddress))
      )
    )
  })).pipe(
    Command.withDescription(
      "Keep managed kubeconfig Secrets for every hosted (managed cluster, add-on) pair of this hosting cluster, discovered from the hub or from labelled source Secrets."
    )
  )
