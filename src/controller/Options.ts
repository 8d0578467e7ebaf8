/**
 * From command-line values to a validated credential-controller configuration, pure: which
 * discovery mode (a hub, or source Secrets without one), the add-ons served, the refresh
 * settings' limits (the provisioner's rules) and the sharding between replicas.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Result, Schema } from "effect"
import * as Discovery from "../domain/Discovery.ts"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as LabelSelector from "../domain/LabelSelector.ts"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import type * as TokenBucket from "../domain/TokenBucket.ts"
import * as Membership from "./Membership.ts"

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
  /** API requests per second, all clusters together (watches excepted). */
  readonly kubeApiQps: number
  /** The most API requests sent at once after a quiet spell. */
  readonly kubeApiBurst: number
  /** Namespace of the member Leases; empty: `$POD_NAMESPACE`; neither: no sharding. */
  readonly shardLeaseNamespace: string
  /** This replica's name among the others; empty: `$POD_NAME`, else the host name. */
  readonly shardIdentity: string
  readonly shardLeaseDuration: Duration.Duration
  readonly shardRenewInterval: Duration.Duration
  /** Where consumers mount the generated Secret's `token` key; empty: no `tokenFile` in the kubeconfig. */
  readonly tokenFilePath?: string
}

/** What the environment says when flags are silent. @category models */
export interface Environment {
  readonly podNamespace?: string | undefined
  readonly podName?: string | undefined
  readonly hostname?: string | undefined
}

/** The Lease group of the controller's replicas. @category constants */
export const shardGroup = "credential-controller"

/** @category models */
export interface Resolved {
  readonly mode:
    | { readonly _tag: "Hub"; readonly hubKubeconfig: string; readonly config: Discovery.HubConfig }
    | { readonly _tag: "Hubless"; readonly selector: string; readonly config: Discovery.HublessConfig }
  readonly settings: RefreshPolicy.ValidatedSettings
  readonly identityCheckInterval: Duration.Duration
  readonly concurrency: number
  /** The process's limit on API requests (every client, watches excepted). */
  readonly requestLimit: TokenBucket.Policy
  /** Membership of the replicas' group; undefined: this process serves every key alone. */
  readonly sharding: Omit<Membership.Options, "quiesce"> | undefined
  /** `tokenFile` beside the token in every generated kubeconfig; absent: the token alone. */
  readonly tokenFile?: Kubeconfig.TokenFilePath
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
export const resolve = (flags: Flags, env: Environment = {}): Result.Result<Resolved, InvalidOptions> => {
  const hub = flags.hubKubeconfig.trim()
  const selector = flags.sourceSecretSelector.trim()
  const addons = flags.addons.split(",").map((a) => a.trim()).filter((a) => a !== "")
  const bad = addons.find((a) => !Discovery.isNamespace(a))
  if (bad !== undefined) return fail(`--addons: ${JSON.stringify(bad)} is not a valid add-on name`)
  if (hub !== "" && selector !== "") {
    return fail("--hub-kubeconfig and --source-secret-selector exclude each other: discover from the hub or from source Secrets")
  }
  if (hub === "" && selector === "") return fail("one of --hub-kubeconfig or --source-secret-selector is required")
  if (selector !== "") {
    const parsed = LabelSelector.parse(selector)
    if (Result.isFailure(parsed)) return fail(`--source-secret-selector: ${parsed.failure.message}`)
  }
  const hostingClusterName = flags.hostingClusterName.trim()
  if (hub !== "" && hostingClusterName === "") return fail("--hosting-cluster-name is required with --hub-kubeconfig")
  if (hub !== "" && !Discovery.isNamespace(hostingClusterName)) {
    return fail("--hosting-cluster-name must be a managed cluster's name (a DNS label)")
  }
  if (hub === "" && addons.length === 0) return fail("--addons must name at least one add-on without a hub")
  if (!Duration.isGreaterThan(flags.identityCheckInterval, Duration.zero)) return fail("--identity-check-interval must be greater than 0")
  if (!Number.isInteger(flags.concurrency) || flags.concurrency < 1) return fail("--concurrency must be a whole number of at least 1")
  if (!Number.isFinite(flags.kubeApiQps) || flags.kubeApiQps <= 0) return fail("--kube-api-qps must be a number greater than 0")
  if (!Number.isInteger(flags.kubeApiBurst) || flags.kubeApiBurst < 1) return fail("--kube-api-burst must be a whole number of at least 1")
  const tokenFile = Kubeconfig.optionalTokenFilePath(flags.tokenFilePath)
  if (Result.isFailure(tokenFile)) return fail(`--token-file-path: ${tokenFile.failure.message}`)
  const sharding = resolveSharding(flags, env)
  if (Result.isFailure(sharding)) return Result.fail(sharding.failure)
  const settings = RefreshPolicy.validateSettings({ tokenExpiration: flags.tokenExpiration, refreshBefore: flags.refreshBefore })
  if (Result.isFailure(settings)) return fail(settings.failure.message)
  return Result.succeed({
    mode: hub !== ""
      ? { _tag: "Hub", hubKubeconfig: hub, config: { hostingClusterName, addons: addons.length === 0 ? undefined : addons } }
      : { _tag: "Hubless", selector, config: { addons } },
    settings: settings.success,
    identityCheckInterval: flags.identityCheckInterval,
    concurrency: flags.concurrency,
    requestLimit: { perSecond: flags.kubeApiQps, burst: flags.kubeApiBurst },
    sharding: sharding.success,
    ...(tokenFile.success === undefined ? {} : { tokenFile: tokenFile.success })
  })
}

const resolveSharding = (
  flags: Flags,
  env: Environment
): Result.Result<Omit<Membership.Options, "quiesce"> | undefined, InvalidOptions> => {
  const namespace = flags.shardLeaseNamespace.trim() || (env.podNamespace ?? "").trim()
  if (namespace === "") return Result.succeed(undefined)
  if (!Discovery.isNamespace(namespace)) return fail(`--shard-lease-namespace: ${JSON.stringify(namespace)} is not a namespace name`)
  const identity = flags.shardIdentity.trim() || (env.podName ?? "").trim() || (env.hostname ?? "").trim().toLowerCase()
  if (identity === "") return fail("--shard-identity is required when neither POD_NAME nor a host name is known")
  if (!Duration.isGreaterThan(flags.shardLeaseDuration, Duration.zero)) return fail("--shard-lease-duration must be greater than 0")
  if (!Duration.isGreaterThan(flags.shardRenewInterval, Duration.zero)) return fail("--shard-renew-interval must be greater than 0")
  const options = {
    namespace,
    group: shardGroup,
    identity,
    leaseDuration: flags.shardLeaseDuration,
    renewInterval: flags.shardRenewInterval
  }
  const checked = Membership.validate({ ...options, quiesce: () => Effect.void })
  if (Result.isFailure(checked)) {
    return fail(checked.failure.message.replace(/^membership: identity/, "--shard-identity").replace(
      /^membership: the renew interval/,
      "--shard-renew-interval"
    ))
  }
  return Result.succeed(options)
}
