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
import { Effect } from "effect"
import { Command } from "effect/cli"
import * as HostedAgentLayers from "../../../layers/HostedAgent.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as HostedAgentOptions from "../../agent/Options.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"
import * as AddonAgentCommand from "./AddonAgent.ts"
import * as RelayCommand from "./ManagedApiserverProxy.ts"
import * as ProvisionerCommand from "./ManagedKubeconfigProvisioner.ts"
import * as ServiceProxyCommand from "./ServiceProxy.ts"

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
    `Components to run, comma-separated: ${HostedAgentOptions.componentNames.join(", ")}`,
    HostedAgentOptions.componentNames.join(",")
  ),
  managedKubeconfig: Flags.string(
    "managed-kubeconfig",
    "Generated managed kubeconfig file for the other components when provisioner is not among --components; " +
      "with the provisioner it is handed over in process and this flag must stay empty"
  ),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000"),
  provisioner: provisionerFlags,
  apiserverProxy: RelayCommand.relayFlags(HostedAgentOptions.relayPrefix),
  serviceProxy: ServiceProxyCommand.proxyFlags("service-proxy-listen"),
  lease: leaseFlags
}

type Given = Command.Command.Config.Infer<typeof flags>

/**
 * The flags (and `POD_NAMESPACE`) as the agent's checked options ({@link HostedAgentOptions.resolve}).
 *
 * @category constructors
 */
export const resolve = (given: Given, env: Readonly<Record<string, string | undefined>> = process.env) => {
  const { hubKubeconfig: _hub, managedKubeconfig: _managed, relayNamespace: _namespace, ...serviceProxy } = ServiceProxyCommand.input(
    { ...given.serviceProxy, hubKubeconfig: "", managedKubeconfig: "" },
    env
  )
  return HostedAgentOptions.resolve({ ...given, serviceProxy }, env)
}

export const command = Command.make("hosted-agent", flags, (given) =>
  Effect.gen(function*() {
    const options = yield* checked(resolve(given))
    return yield* Effect.scoped(
      HostedAgentLayers.launch(options).pipe(Effect.provide(Observability.layer(given.healthProbeBindAddress)))
    )
  })).pipe(
    Command.withDescription(
      "Run every hosting-side component of one managed cluster in one supervised process: the managed-kubeconfig provisioner, " +
        "the managed-apiserver TCP relay, the service proxy and the add-on Lease (--components picks which)."
    )
  )
