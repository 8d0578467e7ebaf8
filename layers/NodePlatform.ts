/**
 * What tether's components take from Node's platform: the file system and paths. Not
 * `NodeServices.layer`, whose child-process spawner loads `node:child_process` (2.6 MiB in a bare
 * Node process, less where the rest of `net` is loaded anyway) for subprocesses tether never
 * starts.
 *
 * @since 0.1.0
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { ChildProcessSpawner } from "effect/process"

/** `FileSystem` and `Path`. @category layers */
export const layer = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

/**
 * A spawner for environments that require one by type (the command line's) but start no
 * process: a call is a defect.
 *
 * @category layers
 */
export const layerNoChildProcesses = Layer.succeed(
  ChildProcessSpawner.ChildProcessSpawner,
  ChildProcessSpawner.make(() => Effect.die(new Error("tether starts no child processes")))
)
