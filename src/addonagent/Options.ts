/**
 * The add-on agent's options (the health Lease and its checks), checked once: by `tether
 * addon-agent`, and by `tether hosted-agent` for its `addon-lease` component, which gets the
 * managed kubeconfig from its own source instead of `--spoke-kubeconfig`. Pure.
 *
 * @since 0.1.0
 */
import { Duration, Result } from "effect"
import { fail, type InvalidOptions } from "../domain/InvalidOptions.ts"

/** The Lease flags as given, before validation (blank = not given). @category models */
export interface LeaseInput {
  readonly clusterName: string
  readonly addonName: string
  readonly leaseNamespace: string
  readonly leaseDuration: Duration.Duration
  readonly renewInterval: Duration.Duration
  readonly proxyAgentReadinessUrl: string
  readonly enableProxyAgentHealthCheck: boolean
  readonly tokenFreshnessMargin: Duration.Duration
}

/** `tether addon-agent`'s flags as given. @category models */
export interface Input extends LeaseInput {
  readonly spokeKubeconfig: string
}

/** The Lease and its checks, checked. @category models */
export interface Lease {
  /** The managed cluster's name, for logs. */
  readonly clusterName: string | undefined
  /** The add-on name, which is also the Lease name. */
  readonly addonName: string
  readonly leaseNamespace: string
  readonly leaseDuration: Duration.Duration
  readonly renewInterval: Duration.Duration
  /** Undefined turns the proxy-agent check off. */
  readonly proxyAgentReadinessUrl: string | undefined
  readonly tokenFreshnessMargin: Duration.Duration
}

/** `tether addon-agent`'s options. @category models */
export interface Options extends Lease {
  /** The managed cluster's kubeconfig; set means hosted mode. */
  readonly spokeKubeconfig: string | undefined
}

const orUndefined = (s: string) => (s.trim() === "" ? undefined : s.trim())

/**
 * Check the Lease settings; `podNamespace` is `$POD_NAMESPACE`.
 *
 * @category constructors
 */
export const resolveLease = (given: LeaseInput, podNamespace: string | undefined): Result.Result<Lease, InvalidOptions> => {
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
  return Result.succeed({
    clusterName: orUndefined(given.clusterName),
    addonName,
    leaseNamespace,
    leaseDuration: given.leaseDuration,
    renewInterval: given.renewInterval,
    proxyAgentReadinessUrl: url,
    tokenFreshnessMargin: given.tokenFreshnessMargin
  })
}

/**
 * Check `tether addon-agent`'s options; `podNamespace` is `$POD_NAMESPACE`.
 *
 * @category constructors
 */
export const resolve = (given: Input, podNamespace: string | undefined): Result.Result<Options, InvalidOptions> =>
  Result.map(resolveLease(given, podNamespace), (lease) => ({ ...lease, spokeKubeconfig: orUndefined(given.spokeKubeconfig) }))
