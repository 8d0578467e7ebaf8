/**
 * `tether managed-kubeconfig-provisioner`: keep the generated managed kubeconfig Secret alive,
 * or with `--cleanup` delete it once (the add-on's pre-delete Job).
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import { Command } from "effect/cli"
import * as Observability from "../../../layers/Observability.ts"
import * as ProvisionerLayers from "../../../layers/Provisioner.ts"
import * as Options from "../../provisioner/Options.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"

export const flags = {
  clusterName: Flags.string("cluster-name", "Name of the managed cluster (required unless --cleanup)"),
  sourceNamespace: Flags.string("source-namespace", "Namespace of the source kubeconfig Secret on the hosting cluster (default: --cluster-name)"),
  sourceName: Flags.string("source-name", "Name of the source kubeconfig Secret", "external-managed-kubeconfig"),
  targetNamespace: Flags.string("target-namespace", "Namespace of the generated Secret (default: $POD_NAMESPACE)"),
  targetName: Flags.string("target-name", "Name of the generated Secret", "cluster-proxy-managed-kubeconfig"),
  serviceAccountNamespace: Flags.string("managed-service-account-namespace", "Namespace of the ServiceAccount on the managed cluster (default: --target-namespace)"),
  serviceAccountName: Flags.string("managed-service-account-name", "ServiceAccount on the managed cluster whose tokens are minted", "cluster-proxy"),
  tokenExpiration: Flags.duration("token-expiration", "Requested token lifetime (TokenRequest expirationSeconds; at least 10m)", "24h"),
  refreshBefore: Flags.duration("refresh-before", "Refresh at least this long before expiry (and at the latest at 80% of the lifetime)", "1h"),
  tokenFilePath: Flags.string("token-file-path", "Where the consumers mount the generated Secret's token key: written as tokenFile beside the token in the generated kubeconfig, so clients that re-read it (client-go) follow rotations without a restart; an absolute path (default: the inline token only)"),
  syncInterval: Flags.duration("sync-interval", "Fail-safe resync period; refreshes are scheduled, not polled", "5m"),
  hubKubeconfig: Flags.string("hub-kubeconfig", "Kubeconfig of the hub; enables the ManagedKubeconfigReady condition and add-on deletion tracking"),
  addonName: Flags.string("addon-name", "Name of the ManagedClusterAddOn on the hub", "cluster-proxy"),
  addonNamespace: Flags.string("addon-namespace", "Namespace of the ManagedClusterAddOn on the hub (default: --cluster-name)"),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000"),
  cleanup: Flags.boolean("cleanup", "Delete the generated Secret and exit 0 once it is gone"),
  kubeconfig: Flags.string("kubeconfig", "Kubeconfig of the hosting cluster (default: in-cluster configuration)")
}

const orUndefined = (s: string) => (s === "" ? undefined : s)

export const command = Command.make("managed-kubeconfig-provisioner", flags, (given) =>
  Effect.gen(function*() {
    const podNamespace = orUndefined(process.env["POD_NAMESPACE"] ?? "")
    const hostingKubeconfig = orUndefined(given.kubeconfig)
    if (given.cleanup) {
      const target = yield* checked(Options.resolveCleanupTarget(given, podNamespace))
      yield* ProvisionerLayers.cleanup(target, { hostingKubeconfig }).pipe(Effect.provide(Observability.layerJsonLogger))
      return
    }
    const options = yield* checked(Options.resolve(given, podNamespace))
    return yield* Layer.launch(
      ProvisionerLayers.layer(options, { hostingKubeconfig, hubKubeconfig: orUndefined(given.hubKubeconfig) }).pipe(
        Layer.provideMerge(Observability.layer(given.healthProbeBindAddress))
      )
    )
  })).pipe(
    Command.withDescription(
      "Keep a managed-cluster kubeconfig Secret alive on the hosting cluster with short-lived ServiceAccount tokens (TokenRequest), and report ManagedKubeconfigReady on the hub."
    )
  )
