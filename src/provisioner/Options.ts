/**
 * From command-line values to a validated provisioner configuration: defaults that depend on
 * other flags (`--source-namespace` defaults to `--cluster-name`, ...), required values, and the
 * refresh settings' limits. Pure, so every rule is unit-tested.
 *
 * @since 0.1.0
 */
import { Duration, Result } from "effect"
import { fail, InvalidOptions } from "../domain/InvalidOptions.ts"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as KubeNames from "../domain/KubeNames.ts"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import type * as Provisioner from "./Provisioner.ts"

/** The flags as given (empty string = not given). @category models */
export interface Flags {
  readonly clusterName: string
  readonly sourceNamespace: string
  readonly sourceName: string
  readonly targetNamespace: string
  readonly targetName: string
  readonly serviceAccountNamespace: string
  readonly serviceAccountName: string
  readonly tokenExpiration: Duration.Duration
  readonly refreshBefore: Duration.Duration
  readonly syncInterval: Duration.Duration
  readonly hubKubeconfig: string
  readonly addonName: string
  readonly addonNamespace: string
  /** Where consumers mount the generated Secret's `token` key; empty: no `tokenFile` in the kubeconfig. */
  readonly tokenFilePath?: string
}

export { InvalidOptions }

/**
 * Resolve defaults and validate. `podNamespace` is `$POD_NAMESPACE`.
 *
 * @category constructors
 */
export const resolve = (flags: Flags, podNamespace: string | undefined): Result.Result<Provisioner.Options, InvalidOptions> => {
  const clusterName = flags.clusterName.trim()
  if (clusterName === "") return fail("--cluster-name is required")
  const targetNamespace = flags.targetNamespace || podNamespace || ""
  if (targetNamespace === "") return fail("--target-namespace is required (or set POD_NAMESPACE)")
  if (flags.targetName === "") return fail("--target-name must not be empty")
  if (flags.sourceName === "") return fail("--source-name must not be empty")
  if (flags.serviceAccountName === "") return fail("--managed-service-account-name must not be empty")
  // Names the apiserver would refuse fail here, once, rather than on every reconcile.
  const badName = firstBadName([
    ["--cluster-name", "label", clusterName],
    ["--source-namespace", "label", flags.sourceNamespace || clusterName],
    ["--source-name", "subdomain", flags.sourceName],
    ["--target-namespace", "label", targetNamespace],
    ["--target-name", "subdomain", flags.targetName],
    ["--managed-service-account-namespace", "label", flags.serviceAccountNamespace || targetNamespace],
    ["--managed-service-account-name", "subdomain", flags.serviceAccountName],
    ...(flags.hubKubeconfig === "" || flags.addonName === "" ? [] : [
      ["--addon-name", "subdomain", flags.addonName],
      ["--addon-namespace", "label", flags.addonNamespace || clusterName]
    ] as const)
  ])
  if (badName !== undefined) return fail(badName)
  if (!Duration.isGreaterThan(flags.syncInterval, Duration.zero)) return fail("--sync-interval must be greater than 0")
  const tokenFile = Kubeconfig.optionalTokenFilePath(flags.tokenFilePath)
  if (Result.isFailure(tokenFile)) return fail(`--token-file-path: ${tokenFile.failure.message}`)
  const settings = RefreshPolicy.validateSettings({ tokenExpiration: flags.tokenExpiration, refreshBefore: flags.refreshBefore })
  if (Result.isFailure(settings)) return fail(settings.failure.message)
  if (flags.hubKubeconfig === "" && (flags.addonNamespace !== "")) {
    return fail("--addon-namespace needs --hub-kubeconfig (the add-on lives on the hub)")
  }
  return Result.succeed({
    clusterName,
    source: { namespace: flags.sourceNamespace || clusterName, name: flags.sourceName },
    target: { namespace: targetNamespace, name: flags.targetName },
    serviceAccount: { namespace: flags.serviceAccountNamespace || targetNamespace, name: flags.serviceAccountName },
    settings: settings.success,
    syncInterval: flags.syncInterval,
    addon: flags.hubKubeconfig === "" || flags.addonName === ""
      ? undefined
      : { namespace: flags.addonNamespace || clusterName, name: flags.addonName },
    ...(tokenFile.success === undefined ? {} : { tokenFile: tokenFile.success })
  })
}

const firstBadName = (
  names: ReadonlyArray<readonly [flag: string, kind: "label" | "subdomain", name: string]>
): string | undefined => {
  for (const [flag, kind, name] of names) {
    const problem = KubeNames.invalidName(flag, kind, name)
    if (problem !== undefined) return problem
  }
  return undefined
}

/** Target of `--cleanup`: only the target flags matter. @category constructors */
export const resolveCleanupTarget = (
  flags: Pick<Flags, "targetNamespace" | "targetName">,
  podNamespace: string | undefined
): Result.Result<Provisioner.Options["target"], InvalidOptions> => {
  const namespace = flags.targetNamespace || podNamespace || ""
  if (namespace === "") return fail("--target-namespace is required (or set POD_NAMESPACE)")
  if (flags.targetName === "") return fail("--target-name must not be empty")
  const badName = firstBadName([["--target-namespace", "label", namespace], ["--target-name", "subdomain", flags.targetName]])
  if (badName !== undefined) return fail(badName)
  return Result.succeed({ namespace, name: flags.targetName })
}
