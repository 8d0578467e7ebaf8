/**
 * `tether addon-agent`: heartbeat the add-on health Lease (`--addon-name`, in
 * `--lease-namespace`) while the proxy-agent is ready and, in hosted mode, the managed token is
 * fresh, so OCM reports the add-on's availability truthfully.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import * as AddonAgent from "../../../layers/AddonAgent.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as AddonAgentOptions from "../../addonagent/Options.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"

export const flags = {
  spokeKubeconfig: Flags.string(
    "spoke-kubeconfig",
    "Kubeconfig of the managed cluster; set in hosted mode (the Lease then lives on the hosting cluster and the token's freshness is checked)"
  ),
  clusterName: Flags.string("cluster-name", "Name of the managed cluster (for logs)"),
  addonName: Flags.string("addon-name", "Name of the add-on, which is also the Lease name", "cluster-proxy"),
  leaseNamespace: Flags.string("lease-namespace", "Namespace of the Lease (default: $POD_NAMESPACE)"),
  leaseDuration: Flags.duration("lease-duration", "leaseDurationSeconds written to the Lease", "60s"),
  renewInterval: Flags.duration("renew-interval", "Renew the Lease this often while healthy, plus up to 25% jitter", "60s"),
  proxyAgentReadinessUrl: Flags.string(
    "proxy-agent-readiness-url",
    "Readiness URL of the proxy-agent; an empty value turns the check off",
    "http://localhost:8093/readyz"
  ),
  enableProxyAgentHealthCheck: Flag.Boolean("enable-proxy-agent-health-check").pipe(
    Flag.withDescription("Renew the Lease only while the proxy-agent is ready (default true)"),
    Flag.withDefault(true)
  ),
  tokenFreshnessMargin: Flags.duration(
    "token-freshness-margin",
    "In hosted mode, stop renewing when the managed token expires within this margin",
    "5m"
  ),
  kubeconfig: Flags.string("kubeconfig", "Kubeconfig of the cluster the agent runs on (default: in-cluster configuration)"),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8888")
}

const orUndefined = (s: string) => (s.trim() === "" ? undefined : s.trim())

/** The flags as given, before validation. @category models */
export type Given = AddonAgentOptions.Input

/**
 * The flags as the agent's checked options ({@link AddonAgentOptions.resolve}); `podNamespace`
 * is `$POD_NAMESPACE`.
 *
 * @category constructors
 */
export const resolve = (given: Given, podNamespace: string | undefined) => AddonAgentOptions.resolve(given, podNamespace)

export const command = Command.make("addon-agent", flags, (given) =>
  Effect.gen(function*() {
    const { healthProbeBindAddress, kubeconfig, ...rest } = given
    const options = yield* checked(resolve(rest, process.env["POD_NAMESPACE"]))
    return yield* Layer.launch(
      AddonAgent.layer(options, { kubeconfig: orUndefined(kubeconfig) }).pipe(
        Layer.provideMerge(Observability.layer(healthProbeBindAddress))
      )
    )
  })).pipe(
    Command.withDescription(
      "Renew the add-on health Lease while the health checks pass (proxy-agent readiness, and in hosted mode the managed token's freshness), so OCM marks the add-on unavailable when they fail."
    )
  )
