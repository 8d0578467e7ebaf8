/**
 * The `tether` command: one subcommand per component.
 *
 * Only the requested subcommand's modules are loaded (all of them for `--help` or an unknown
 * name): a relay process then carries no Kubernetes client it does not use, which keeps its heap
 * small, and garbage collection with it (the TCP relay's throughput depends on that).
 *
 * @since 0.1.0
 */
import { NodeRuntime, NodeStdio, NodeTerminal } from "@effect/platform-node"
import { Cause, Console, Effect, Exit, Layer, type Runtime } from "effect"
import { CliError, Command } from "effect/cli"
import * as NodePlatform from "../../layers/NodePlatform.ts"
import * as WasmTiering from "../observability/WasmTiering.ts"

const subcommands = {
  "managed-kubeconfig-provisioner": () => import("./commands/ManagedKubeconfigProvisioner.ts"),
  "managed-apiserver-proxy": () => import("./commands/ManagedApiserverProxy.ts"),
  "service-relay": () => import("./commands/ServiceRelay.ts"),
  "service-proxy": () => import("./commands/ServiceProxy.ts"),
  "addon-agent": () => import("./commands/AddonAgent.ts"),
  "hosted-agent": () => import("./commands/HostedAgent.ts"),
  "credential-controller": () => import("./commands/CredentialController.ts")
} as const

type Name = keyof typeof subcommands

/** What the command line needs from the platform; no child-process spawner (see NodePlatform). */
const services = Layer.mergeAll(NodePlatform.layer, NodeStdio.layer, NodeTerminal.layer, NodePlatform.layerNoChildProcesses)

const isName = (name: string | undefined): name is Name => name !== undefined && Object.hasOwn(subcommands, name)

/**
 * Exit 0 after a clean shutdown on SIGTERM/SIGINT (interruption only), 1 on any failure: a pod
 * stopped by Kubernetes should not look like a crash.
 */
const teardown: Runtime.Teardown = (exit, onExit) =>
  onExit(Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause) ? 0 : 1)

/** Run `tether` with `argv` (the arguments after the script). */
export const main = async (argv: ReadonlyArray<string>): Promise<void> => {
  const requested = argv[0]
  const names: ReadonlyArray<Name> = isName(requested) ? [requested] : (Object.keys(subcommands) as Array<Name>)
  const commands = await Promise.all(names.map((name) => subcommands[name]().then((module) => module.command)))
  // After the subcommand's chunks are loaded, so that their code cache still applies.
  WasmTiering.keepOnBaseline()
  const tether = Command.make("tether").pipe(
    Command.withDescription("Hosted-mode credential and relay engine for Open Cluster Management add-ons"),
    Command.withSubcommands(commands as unknown as [typeof commands[number]])
  )
  tether.pipe(
    Command.run({ version: "0.1.0" }),
    // Command-line errors are already rendered by Command.run; anything else is a typed error
    // whose message says what to do, so print that instead of a stack trace.
    Effect.tapError((error) =>
      CliError.isCliError(error) || CliError.getUserMessage(error) !== undefined
        ? Effect.void
        : Console.error(`error: ${(error as { message?: string }).message ?? String(error)}`)
    ),
    // A defect is a bug in tether: error reporting is off (typed errors print one line above),
    // so say what it was, or the process would exit 1 without a word.
    Effect.tapCause((cause) => (Cause.hasDies(cause) ? Console.error(`tether stopped on a defect:\n${Cause.pretty(cause)}`) : Effect.void)),
    Effect.provide(services),
    (program) => NodeRuntime.runMain(program as typeof program, { disableErrorReporting: true, teardown })
  )
}
