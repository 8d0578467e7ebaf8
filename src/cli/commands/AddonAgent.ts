/**
 * `tether addon-agent`: heartbeat the add-on health Lease (`--addon-name`, in
 * `--lease-namespace`) while the proxy-agent is ready and, in hosted mode, the managed token is
 * fresh, so OCM reports the add-on's availability truthfully.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Layer, Result } from "effect"
import { Command, Flag } from "effect/cli"
import * as AddonAgent from "../../../layers/AddonAgent.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as Flags from "../Flags.ts"
import { UsageError } from "../UsageError.ts"

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
export interface Given {
  readonly spokeKubeconfig: string
  readonly clusterName: string
  readonly addonName: string
  readonly leaseNamespace: string
  readonly leaseDuration: Duration.Duration
  readonly renewInterval: Duration.Duration
  readonly proxyAgentReadinessUrl: string
  readonly enableProxyAgentHealthCheck: boolean
  readonly tokenFreshnessMargin: Duration.Duration
}

/**
 * Validate the flags into the agent's options; `podNamespace` is `$POD_NAMESPACE`.
 *
 * @category constructors
 */
export const resolve = (given: Given, podNamespace: string | undefined): Result.Result<AddonAgent.Options, UsageError> => {
  const fail = (message: string) => Result.fail(new UsageError({ message }))
  const addonName = given.addonName.trim()
  if (addonName === "") return fail("--addon-name must not be empty")
  const leaseNamespace = orUndefined(given.leaseNamespace) ?? orUndefined(podNamespace ?? "")
  if (leaseNamespace === undefined) return fail("--lease-namespace is required when POD_NAMESPACE is not set")
  if (!Duration.isGreaterThan(given.leaseDuration, Duration.zero)) return fail("--lease-duration must be greater than 0")
  if (!Duration.isGreaterThan(given.renewInterval, Duration.zero)) return fail("--renew-interval must be greater than 0")
  if (Duration.isLessThan(given.tokenFreshnessMargin, Duration.zero)) return fail("--token-freshness-margin must not be negative")
  const url = given.enableProxyAgentHealthCheck ? orUndefined(given.proxyAgentReadinessUrl) : undefined
  if (url !== undefined) {
    const parsed = URL.canParse(url) ? new URL(url) : undefined
    if (parsed === undefined || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
      return fail(`--proxy-agent-readiness-url ${JSON.stringify(url)} is not an http(s) URL`)
    }
  }
  const spokeKubeconfig = orUndefined(given.spokeKubeconfig)
  return Result.succeed({
    clusterName: orUndefined(given.clusterName),
    addonName,
    leaseNamespace,
    leaseDuration: given.leaseDuration,
    renewInterval: given.renewInterval,
    spokeKubeconfig,
    proxyAgentReadinessUrl: url,
    tokenFreshnessMargin: given.tokenFreshnessMargin
  })
}

export const command = Command.make("addon-agent", flags, (given) =>
  Effect.gen(function*() {
    const { healthProbeBindAddress, kubeconfig, ...rest } = given
    const options = resolve(rest, process.env["POD_NAMESPACE"])
    if (Result.isFailure(options)) return yield* options.failure
    return yield* Layer.launch(
      AddonAgent.layer(options.success, { kubeconfig: orUndefined(kubeconfig) }).pipe(
        Layer.provideMerge(Observability.layer(healthProbeBindAddress))
      )
    )
  })).pipe(
    Command.withDescription(
      "Renew the add-on health Lease while the health checks pass (proxy-agent readiness, and in hosted mode the managed token's freshness), so OCM marks the add-on unavailable when they fail."
    )
  )
