/**
 * From command-line values to a validated credential-controller configuration, pure: which
 * discovery mode (a hub, or source Secrets without one), the add-ons served, and the refresh
 * settings' limits (the provisioner's rules).
 *
 * @since 0.1.0
 */
import { Duration, Result, Schema } from "effect"
import * as Discovery from "../domain/Discovery.ts"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"

/** The flags as given (empty string = not given). @category models */
export interface Flags {
  readonly hubKubeconfig: string
  readonly hostingClusterName: string
  readonly sourceSecretSelector: string
  readonly addons: string
  readonly tokenExpiration: Duration.Duration
  readonly refreshBefore: Duration.Duration
  readonly identityCheckInterval: Duration.Duration
  readonly concurrency: number
}

/** @category models */
export interface Resolved {
  readonly mode:
    | { readonly _tag: "Hub"; readonly hubKubeconfig: string; readonly config: Discovery.HubConfig }
    | { readonly _tag: "Hubless"; readonly selector: string; readonly config: Discovery.HublessConfig }
  readonly settings: RefreshPolicy.ValidatedSettings
  readonly identityCheckInterval: Duration.Duration
  readonly concurrency: number
}

/** @category errors */
export class InvalidOptions extends Schema.TaggedError<InvalidOptions>()("InvalidOptions", {
  message: Schema.String
}) {}

const fail = (message: string) => Result.fail(new InvalidOptions({ message }))

/**
 * Resolve and validate.
 *
 * @category constructors
 */
export const resolve = (flags: Flags): Result.Result<Resolved, InvalidOptions> => {
  const hub = flags.hubKubeconfig.trim()
  const selector = flags.sourceSecretSelector.trim()
  const addons = flags.addons.split(",").map((a) => a.trim()).filter((a) => a !== "")
  const bad = addons.find((a) => !Discovery.isNamespace(a))
  if (bad !== undefined) return fail(`--addons: ${JSON.stringify(bad)} is not a valid add-on name`)
  if (hub !== "" && selector !== "") {
    return fail("--hub-kubeconfig and --source-secret-selector exclude each other: discover from the hub or from source Secrets")
  }
  if (hub === "" && selector === "") return fail("one of --hub-kubeconfig or --source-secret-selector is required")
  const hostingClusterName = flags.hostingClusterName.trim()
  if (hub !== "" && hostingClusterName === "") return fail("--hosting-cluster-name is required with --hub-kubeconfig")
  if (hub !== "" && !Discovery.isNamespace(hostingClusterName)) {
    return fail("--hosting-cluster-name must be a managed cluster's name (a DNS label)")
  }
  if (hub === "" && addons.length === 0) return fail("--addons must name at least one add-on without a hub")
  if (!Duration.isGreaterThan(flags.identityCheckInterval, Duration.zero)) return fail("--identity-check-interval must be greater than 0")
  if (!Number.isInteger(flags.concurrency) || flags.concurrency < 1) return fail("--concurrency must be a whole number of at least 1")
  const settings = RefreshPolicy.validateSettings({ tokenExpiration: flags.tokenExpiration, refreshBefore: flags.refreshBefore })
  if (Result.isFailure(settings)) return fail(settings.failure.message)
  return Result.succeed({
    mode: hub !== ""
      ? { _tag: "Hub", hubKubeconfig: hub, config: { hostingClusterName, addons: addons.length === 0 ? undefined : addons } }
      : { _tag: "Hubless", selector, config: { addons } },
    settings: settings.success,
    identityCheckInterval: flags.identityCheckInterval,
    concurrency: flags.concurrency
  })
}
