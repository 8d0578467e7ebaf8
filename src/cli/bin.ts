#!/usr/bin/env node
/**
 * The `tether` command: one subcommand per component.
 *
 * @since 0.1.0
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Console, Effect, Exit, type Runtime } from "effect"
import { CliError, Command } from "effect/cli"
import * as AddonAgent from "./commands/AddonAgent.ts"
import * as ManagedApiserverProxy from "./commands/ManagedApiserverProxy.ts"
import * as ManagedKubeconfigProvisioner from "./commands/ManagedKubeconfigProvisioner.ts"
import * as ServiceProxy from "./commands/ServiceProxy.ts"
import * as ServiceRelay from "./commands/ServiceRelay.ts"

const major = Number(process.versions.node.split(".")[0])
if (major < 24) {
  process.stderr.write(`tether needs Node 24 or newer; this is ${process.version}. Use \`npm run tether -- ...\`.\n`)
  process.exit(1)
}

/**
 * Exit 0 after a clean shutdown on SIGTERM/SIGINT (interruption only), 1 on any failure: a pod
 * stopped by Kubernetes should not look like a crash.
 */
const teardown: Runtime.Teardown = (exit, onExit) =>
  onExit(Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause) ? 0 : 1)

const tether = Command.make("tether").pipe(
  Command.withDescription("Hosted-mode credential and relay engine for Open Cluster Management add-ons"),
  Command.withSubcommands([
    ManagedKubeconfigProvisioner.command,
    ManagedApiserverProxy.command,
    ServiceRelay.command,
    ServiceProxy.command,
    AddonAgent.command
  ])
)

tether.pipe(
  Command.run({ version: "0.1.0" }),
  // Command-line errors are already rendered by Command.run; anything else is a typed error
  // whose message says what to do, so print that instead of a stack trace.
  Effect.tapError((error) =>
    CliError.isCliError(error) || CliError.getUserMessage(error) !== undefined
      ? Effect.void
      : Console.error(`error: ${error.message}`)
  ),
  Effect.provide(NodeServices.layer),
  (main) => NodeRuntime.runMain(main, { disableErrorReporting: true, teardown })
)
