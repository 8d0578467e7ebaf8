/**
 * `tether hosted-agent`'s options, checked before anything starts: which components run, where
 * they get the managed kubeconfig (the provisioner in the same process, or a mounted file),
 * each component's own options through that component's `Options` module, and listeners that
 * would collide. Pure.
 *
 * @since 0.1.0
 */
import { Result } from "effect"
import * as AddonAgentOptions from "../addonagent/Options.ts"
import { fail, type InvalidOptions } from "../domain/InvalidOptions.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"
import * as ProvisionerOptions from "../provisioner/Options.ts"
import type * as Provisioner from "../provisioner/Provisioner.ts"
import * as TcpRelayOptions from "../relay/TcpRelayOptions.ts"
import * as ServiceProxyOptions from "../serviceproxy/Options.ts"
import type * as Supervisor from "./Supervisor.ts"

/** The names `--components` accepts, in start order (they stop in reverse). @category models */
export const componentNames = ["provisioner", "addon-lease", "apiserver-proxy", "service-proxy"] as const

/** @category models */
export type ComponentName = typeof componentNames[number]

/**
 * Where the components other than the provisioner get the managed kubeconfig: handed over in
 * process by the provisioner running here, or read from a mounted file.
 *
 * @category models
 */
export type ManagedKubeconfig =
  | { readonly _tag: "InProcess"; readonly provisioner: Provisioner.Options }
  | { readonly _tag: "File"; readonly path: string }

/** @category models */
export interface Options {
  /** Hosting cluster kubeconfig; undefined means in-cluster. */
  readonly hostingKubeconfig: string | undefined
  /** Hub kubeconfig: the add-on condition and the second TokenReview; undefined means no hub. */
  readonly hubKubeconfig: string | undefined
  readonly managedKubeconfig: ManagedKubeconfig
  readonly apiserverProxy: TcpRelayOptions.Relay | undefined
  readonly serviceProxy: ServiceProxyOptions.Options | undefined
  readonly addonLease: AddonAgentOptions.Lease | undefined
  readonly supervisor?: Supervisor.Options
}

/** The flags as given, grouped by component (blank = not given). @category models */
export interface Input {
  readonly components: string
  readonly managedKubeconfig: string
  readonly healthProbeBindAddress: ListenAddress.ListenAddress
  readonly provisioner: ProvisionerOptions.Flags & { readonly kubeconfig: string }
  readonly apiserverProxy: TcpRelayOptions.Relay
  /** The service proxy's options but those the agent shares (hub) or decides (managed kubeconfig). */
  readonly serviceProxy: Omit<ServiceProxyOptions.Input, "hubKubeconfig" | "managedKubeconfig" | "relayNamespace">
  /** The Lease's flags but those the provisioner's name (cluster name, add-on name). */
  readonly lease: Omit<AddonAgentOptions.LeaseInput, "clusterName" | "addonName">
}

/** The `--apiserver-proxy-` prefix of the TCP relay's flags. @category constants */
export const relayPrefix = "apiserver-proxy-"

/**
 * The components named by `--components`, or why the list is not usable.
 *
 * @category constructors
 */
export const parseComponents = (text: string): Result.Result<ReadonlySet<ComponentName>, InvalidOptions> => {
  const names = text.split(",").map((name) => name.trim()).filter((name) => name !== "")
  const known = new Set<string>(componentNames)
  const unknown = names.find((name) => !known.has(name))
  if (unknown !== undefined) {
    return fail(`--components: unknown component ${JSON.stringify(unknown)} (expected ${componentNames.join(", ")})`)
  }
  if (names.length === 0) return fail("--components must name at least one component")
  return Result.succeed(new Set(names as Array<ComponentName>))
}

const samePort = (a: ListenAddress.ListenAddress, b: ListenAddress.ListenAddress) =>
  a.port !== 0 && a.port === b.port && (a.host === undefined || b.host === undefined || a.host === b.host)

const trimmed = (s: string) => (s.trim() === "" ? undefined : s.trim())

/**
 * Check every option (and `POD_NAMESPACE`); nothing starts unless all of it holds.
 *
 * @category constructors
 */
export const resolve = (
  given: Input,
  env: Readonly<Record<string, string | undefined>>
): Result.Result<Options, InvalidOptions> =>
  Result.gen(function*() {
    const components = yield* parseComponents(given.components)
    const podNamespace = trimmed(env["POD_NAMESPACE"] ?? "")
    const file = trimmed(given.managedKubeconfig)
    const hubKubeconfig = trimmed(given.provisioner.hubKubeconfig)
    const consumers = ["apiserver-proxy", "service-proxy", "addon-lease"].filter((name) => components.has(name as ComponentName))

    let managedKubeconfig: ManagedKubeconfig
    if (components.has("provisioner")) {
      if (file !== undefined) {
        return yield* fail(
          "--managed-kubeconfig conflicts with the provisioner component, which hands its kubeconfig over in process; " +
            "leave it empty or drop provisioner from --components"
        )
      }
      managedKubeconfig = { _tag: "InProcess", provisioner: yield* ProvisionerOptions.resolve(given.provisioner, podNamespace) }
    } else if ((given.provisioner.tokenFilePath ?? "") !== "") {
      return yield* fail("--token-file-path shapes the kubeconfig the provisioner writes; it needs provisioner among --components")
    } else if (file === undefined) {
      return yield* fail(`--managed-kubeconfig is required when --components leaves out provisioner (${consumers.join(", ")} need it)`)
    } else {
      managedKubeconfig = { _tag: "File", path: file }
    }

    const apiserverProxy = components.has("apiserver-proxy")
      ? yield* TcpRelayOptions.resolveRelay(given.apiserverProxy, relayPrefix)
      : undefined

    const serviceProxy = components.has("service-proxy")
      ? yield* ServiceProxyOptions.resolve({
        ...given.serviceProxy,
        hubKubeconfig,
        // Always hosted here: the managed kubeconfig comes from the provisioner or the file.
        managedKubeconfig: managedKubeconfig._tag === "File" ? managedKubeconfig : { _tag: "InProcess" },
        relayNamespace: podNamespace
      })
      : undefined

    const addonLease = components.has("addon-lease")
      ? yield* AddonAgentOptions.resolveLease({
        ...given.lease,
        clusterName: given.provisioner.clusterName,
        addonName: given.provisioner.addonName
      }, podNamespace)
      : undefined

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
      managedKubeconfig,
      apiserverProxy,
      serviceProxy,
      addonLease
    }
  })

/**
 * Whether a component talks to the hosting cluster: the provisioner (Secrets, TokenRequest
 * through the source) and the add-on Lease. The relays alone need no hosting client, so an
 * install of only those runs outside a pod without `--kubeconfig`.
 *
 * @category models
 */
export const needsHostingCluster = (options: Pick<Options, "managedKubeconfig" | "addonLease">): boolean =>
  options.managedKubeconfig._tag === "InProcess" || options.addonLease !== undefined
