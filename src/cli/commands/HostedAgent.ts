/**
 * `tether hosted-agent`: everything that runs on the hosting cluster for one managed cluster,
 * in one supervised process: the managed-kubeconfig provisioner, the managed-apiserver TCP
 * relay, the service proxy and the add-on Lease (`--components` picks which).
 *
 * Flags keep the names of the single-component commands, so the chart maps one to one: the
 * provisioner's as they are, the TCP relay's prefixed `--apiserver-proxy-`, the service proxy's
 * listen address as `--service-proxy-listen`, the Lease's as in `addon-agent`. Every flag is
 * checked before anything starts.
 *
 * @since 0.1.0
 */
import { Effect, Result } from "effect"
import { Command } from "effect/cli"
import * as HostedAgentLayers from "../../../layers/HostedAgent.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as ServiceProxyLayers from "../../../layers/ServiceProxy.ts"
import * as ListenAddress from "../../domain/ListenAddress.ts"
import * as ProvisionerOptions from "../../provisioner/Options.ts"
import * as Flags from "../Flags.ts"
import { UsageError } from "../UsageError.ts"
import * as AddonAgentCommand from "./AddonAgent.ts"
import * as RelayCommand from "./ManagedApiserverProxy.ts"
import * as ProvisionerCommand from "./ManagedKubeconfigProvisioner.ts"
import * as ServiceProxyCommand from "./ServiceProxy.ts"

const relayPrefix = "apiserver-proxy-"

/** `flags` without `names`: the flags hosted-agent shares between components or leaves out. */
const without = <F extends Record<string, unknown>, K extends keyof F>(flags: F, ...names: ReadonlyArray<K>): Omit<F, K> =>
  Object.fromEntries(Object.entries(flags).filter(([name]) => !names.includes(name as K))) as Omit<F, K>

const provisionerFlags = without(ProvisionerCommand.flags, "cleanup", "healthProbeBindAddress")
// The cluster name, add-on name and hosting kubeconfig are the provisioner's; the managed
// kubeconfig is the provisioner's output.
const leaseFlags = without(AddonAgentCommand.flags, "clusterName", "healthProbeBindAddress", "kubeconfig", "spokeKubeconfig", "addonName")

const flags = {
  components: Flags.string(
    "components",
    `Components to run, comma-separated: ${HostedAgentLayers.componentNames.join(", ")}`,
    HostedAgentLayers.componentNames.join(",")
  ),
  managedKubeconfig: Flags.string(
    "managed-kubeconfig",
    "Generated managed kubeconfig file for the other components when provisioner is not among --components; " +
      "with the provisioner it is handed over in process and this flag must stay empty"
  ),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000"),
  provisioner: provisionerFlags,
  apiserverProxy: RelayCommand.relayFlags(relayPrefix),
  serviceProxy: ServiceProxyCommand.proxyFlags("service-proxy-listen"),
  lease: leaseFlags
}

type Given = Command.Command.Config.Infer<typeof flags>

const trimmed = (s: string) => (s.trim() === "" ? undefined : s.trim())

/**
 * The components named by `--components`, or why the list is not usable.
 *
 * @category constructors
 */
export const parseComponents = (text: string): Result.Result<ReadonlySet<HostedAgentLayers.ComponentName>, UsageError> => {
  const names = text.split(",").map((name) => name.trim()).filter((name) => name !== "")
  const known = new Set<string>(HostedAgentLayers.componentNames)
  const unknown = names.find((name) => !known.has(name))
  if (unknown !== undefined) {
    return Result.fail(
      new UsageError({
        message: `--components: unknown component ${JSON.stringify(unknown)} (expected ${HostedAgentLayers.componentNames.join(", ")})`
      })
    )
  }
  if (names.length === 0) return Result.fail(new UsageError({ message: "--components must name at least one component" }))
  return Result.succeed(new Set(names as Array<HostedAgentLayers.ComponentName>))
}

const samePort = (a: ListenAddress.ListenAddress, b: ListenAddress.ListenAddress) =>
  a.port !== 0 && a.port === b.port && (a.host === undefined || b.host === undefined || a.host === b.host)

/**
 * Validate every flag (and `POD_NAMESPACE`) into the agent's options; nothing starts unless all
 * of it holds.
 *
 * @category constructors
 */
export const resolve = (
  given: Given,
  env: Readonly<Record<string, string | undefined>> = process.env
): Result.Result<HostedAgentLayers.Options, UsageError> =>
  Result.gen(function*() {
    const fail = (message: string) => Result.fail(new UsageError({ message }))
    const components = yield* parseComponents(given.components)
    const podNamespace = trimmed(env["POD_NAMESPACE"] ?? "")
    const managedKubeconfig = trimmed(given.managedKubeconfig)
    const hubKubeconfig = trimmed(given.provisioner.hubKubeconfig)
    const consumers = ["apiserver-proxy", "service-proxy", "addon-lease"].filter((name) =>
      components.has(name as HostedAgentLayers.ComponentName)
    )

    let provisioner: HostedAgentLayers.Options["provisioner"]
    if (components.has("provisioner")) {
      if (managedKubeconfig !== undefined) {
        return yield* fail(
          "--managed-kubeconfig conflicts with the provisioner component, which hands its kubeconfig over in process; " +
            "leave it empty or drop provisioner from --components"
        )
      }
      const resolved = ProvisionerOptions.resolve(given.provisioner, podNamespace)
      if (Result.isFailure(resolved)) return yield* fail(resolved.failure.message)
      provisioner = resolved.success
    } else if (managedKubeconfig === undefined && consumers.length > 0) {
      return yield* fail(`--managed-kubeconfig is required when --components leaves out provisioner (${consumers.join(", ")} need it)`)
    }

    let apiserverProxy: HostedAgentLayers.Options["apiserverProxy"]
    if (components.has("apiserver-proxy")) {
      apiserverProxy = yield* RelayCommand.resolveRelay(given.apiserverProxy, relayPrefix)
    }

    let serviceProxy: HostedAgentLayers.Options["serviceProxy"]
    if (components.has("service-proxy")) {
      const cli = yield* ServiceProxyCommand.resolve({
        ...given.serviceProxy,
        hubKubeconfig: hubKubeconfig ?? "",
        // Always hosted here: the managed kubeconfig comes from the provisioner or the file.
        managedKubeconfig: managedKubeconfig ?? "in-process"
      }, env)
      const proxy = ServiceProxyLayers.proxyOptions(cli)
      if (Result.isFailure(proxy)) return yield* fail(proxy.failure.message)
      serviceProxy = {
        proxy: proxy.success,
        tokenReviewCacheTtl: cli.tokenReviewCacheTtl,
        tokenReviewErrorPatterns: cli.tokenReviewErrorPatterns
      }
    }

    let addonLease: HostedAgentLayers.Options["addonLease"]
    if (components.has("addon-lease")) {
      const lease = yield* AddonAgentCommand.resolve({
        ...given.lease,
        clusterName: given.provisioner.clusterName,
        addonName: given.provisioner.addonName,
        spokeKubeconfig: managedKubeconfig ?? "in-process"
      }, podNamespace)
      addonLease = lease
    }

    const listeners: Array<readonly [string, ListenAddress.ListenAddress]> = [["--health-probe-bind-address", given.healthProbeBindAddress]]
    if (apiserverProxy !== undefined) listeners.push([`--${relayPrefix}listen`, apiserverProxy.listen])
    if (serviceProxy !== undefined) listeners.push(["--service-proxy-listen", serviceProxy.proxy.listen])
    for (const [i, [flagA, a]] of listeners.entries()) {
      for (const [flagB, b] of listeners.slice(i + 1)) {
        if (samePort(a, b)) return yield* fail(`${flagA} and ${flagB} both listen on port ${a.port}`)
      }
    }

    return {
      hostingKubeconfig: trimmed(given.provisioner.kubeconfig),
      hubKubeconfig,
      provisioner,
      managedKubeconfig,
      apiserverProxy,
      serviceProxy,
      addonLease
    } satisfies HostedAgentLayers.Options
  })

export const command = Command.make("hosted-agent", flags, (given) =>
  Effect.gen(function*() {
    const options = resolve(given)
    if (Result.isFailure(options)) return yield* options.failure
    return yield* Effect.scoped(
      HostedAgentLayers.launch(options.success).pipe(Effect.provide(Observability.layer(given.healthProbeBindAddress)))
    )
  })).pipe(
    Command.withDescription(
      "Run every hosting-side component of one managed cluster in one supervised process: the managed-kubeconfig provisioner, " +
        "the managed-apiserver TCP relay, the service proxy and the add-on Lease (--components picks which)."
    )
  )
