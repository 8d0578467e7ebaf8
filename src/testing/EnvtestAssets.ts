/**
 * Locates the `kube-apiserver` and `etcd` binaries the integration tests run against, and builds them
 * when they are missing.
 *
 * The envtest conventions come first so that a machine that already has assets (CI images,
 * controller-runtime users) builds nothing: `KUBEBUILDER_ASSETS`, then the pair
 * `TEST_ASSET_KUBE_APISERVER` + `TEST_ASSET_ETCD`. Otherwise the assets live in a per-machine cache
 * outside the clone (`${TETHER_ENVTEST_CACHE:-${XDG_CACHE_HOME:-~/.cache}/tether/envtest}/v1.20.2`),
 * filled once by `build-envtest-assets.sh` (about four minutes) through `npm run envtest`.
 *
 * @since 0.1.0
 */
import { Effect, Result, Schema } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

/** The Kubernetes version the build script produces; the cache folder is named after it. */
export const kubernetesVersion = "v1.20.2"

/** Where the binaries came from, so messages can say which setting to fix. */
export type AssetSource = "KUBEBUILDER_ASSETS" | "TEST_ASSET_*" | "cache"

export interface AssetPaths {
  readonly kubeApiserver: string
  readonly etcd: string
  readonly source: AssetSource
}

/** The binaries are not there (or not runnable); the message says how to get them. */
export class AssetsUnavailable extends Schema.TaggedError<AssetsUnavailable>()("AssetsUnavailable", {
  message: Schema.String
}) {}

const howToGet = "Run `npm run envtest` to build them (about 4 minutes, once per machine; needs a Debian machine " +
  "with apt, curl and dpkg-deb), or point KUBEBUILDER_ASSETS at a folder holding kube-apiserver and etcd."

/** The cache folder for the built assets, outside the clone so every clone on the machine shares it. */
export const cacheDir = (env: NodeJS.ProcessEnv = process.env): string => {
  const root = nonEmpty(env["TETHER_ENVTEST_CACHE"]) ??
    Path.join(
      absoluteOrUndefined(env["XDG_CACHE_HOME"]) ?? Path.join(Os.homedir(), ".cache"),
      "tether",
      "envtest"
    )
  return Path.join(root, kubernetesVersion)
}

/** Finds the binaries without running anything; the pure core of {@link resolve}. */
export const lookup = (env: NodeJS.ProcessEnv = process.env): Result.Result<AssetPaths, AssetsUnavailable> => {
  const kubebuilder = nonEmpty(env["KUBEBUILDER_ASSETS"])
  if (kubebuilder !== undefined) {
    return check({
      kubeApiserver: Path.join(kubebuilder, "kube-apiserver"),
      etcd: Path.join(kubebuilder, "etcd"),
      source: "KUBEBUILDER_ASSETS"
    }, `KUBEBUILDER_ASSETS=${kubebuilder}`, "KUBEBUILDER_ASSETS")
  }
  const apiserver = nonEmpty(env["TEST_ASSET_KUBE_APISERVER"])
  const etcd = nonEmpty(env["TEST_ASSET_ETCD"])
  if (apiserver !== undefined || etcd !== undefined) {
    if (apiserver === undefined || etcd === undefined) {
      return Result.fail(
        new AssetsUnavailable({
          message: "TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD must be set together (only one of them is set)."
        })
      )
    }
    return check(
      { kubeApiserver: apiserver, etcd, source: "TEST_ASSET_*" },
      "TEST_ASSET_KUBE_APISERVER/TEST_ASSET_ETCD",
      "TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD"
    )
  }
  const dir = cacheDir(env)
  return check({
    kubeApiserver: Path.join(dir, "kube-apiserver"),
    etcd: Path.join(dir, "etcd"),
    source: "cache"
  }, `the envtest cache ${dir}`)
}

/** Synchronous form for `describe.skipIf(EnvtestAssets.resolveSync() === undefined)`. */
export const resolveSync = (env: NodeJS.ProcessEnv = process.env): AssetPaths | undefined => {
  const found = lookup(env)
  return Result.isSuccess(found) ? found.success : undefined
}

/** The binaries, or a typed error that says how to get them. Builds nothing. */
export const resolve: Effect.Effect<AssetPaths, AssetsUnavailable> = Effect.suspend(() => Effect.fromResult(lookup()))

/**
 * The binaries, building them into the cache when nothing is configured and the cache is empty.
 * Explicit settings (`KUBEBUILDER_ASSETS`, `TEST_ASSET_*`) are never overridden by a build: when they
 * point at nothing, that is reported instead. Idempotent: a second call finds the cache filled.
 */
export const ensure: Effect.Effect<AssetPaths, AssetsUnavailable> = Effect.gen(function*() {
  const found = lookup()
  if (Result.isSuccess(found)) return found.success
  if (explicitlyConfigured(process.env)) return yield* found.failure
  const dir = cacheDir()
  yield* runBuildScript(dir)
  return yield* resolve
}).pipe(Effect.withSpan("EnvtestAssets.ensure"))

/** The first line of `--version` of each binary, e.g. `Kubernetes v1.20.2` and `etcd Version: 3.4.23`. */
export const versions = Effect.fn("EnvtestAssets.versions")(function*(paths: AssetPaths) {
  const [kubeApiserver, etcd] = yield* Effect.all([
    firstLineOf(paths.kubeApiserver, ["--version"]),
    firstLineOf(paths.etcd, ["--version"])
  ], { concurrency: 2 })
  return { kubeApiserver, etcd } as const
})

/** The build script shipped next to this module. */
export const buildScriptPath: string = fileURLToPath(new URL("./assets/build-envtest-assets.sh", import.meta.url))

const nonEmpty = (value: string | undefined): string | undefined =>
  value === undefined || value.trim() === "" ? undefined : value

// The XDG base-directory spec says relative values are invalid and must be ignored.
const absoluteOrUndefined = (value: string | undefined): string | undefined => {
  const v = nonEmpty(value)
  return v !== undefined && Path.isAbsolute(v) ? v : undefined
}

const explicitlyConfigured = (env: NodeJS.ProcessEnv): boolean =>
  nonEmpty(env["KUBEBUILDER_ASSETS"]) !== undefined ||
  nonEmpty(env["TEST_ASSET_KUBE_APISERVER"]) !== undefined ||
  nonEmpty(env["TEST_ASSET_ETCD"]) !== undefined

// `setting` names the variables that chose the location; a build never overrides them.
const check = (
  paths: AssetPaths,
  origin: string,
  setting?: string
): Result.Result<AssetPaths, AssetsUnavailable> => {
  const missing = [paths.kubeApiserver, paths.etcd].filter((file) => !isExecutable(file))
  if (missing.length === 0) return Result.succeed(paths)
  return Result.fail(
    new AssetsUnavailable({
      message: `envtest assets not found: ${origin} has no runnable ${
        missing.map((file) => Path.basename(file)).join(" or ")
      } (looked for ${missing.join(", ")}). ${
        setting === undefined
          ? howToGet
          : `Fix ${setting}, or unset it and run \`npm run envtest\` to build them into ${cacheDir()}.`
      }`
    })
  )
}

const isExecutable = (file: string): boolean => {
  try {
    if (!Fs.statSync(file).isFile()) return false
    Fs.accessSync(file, Fs.constants.X_OK)
    return true
  } catch {
    return false
  }
}

// The build script reports progress on stderr; it goes straight to ours. Interrupting `ensure`
// stops the build (its own trap removes its work folder).
const runBuildScript = (dir: string): Effect.Effect<void, AssetsUnavailable> =>
  Effect.callback<void, AssetsUnavailable>((resume) => {
    process.stderr.write(`[envtest] building kube-apiserver ${kubernetesVersion} + etcd into ${dir}\n`)
    const child = ChildProcess.spawn("bash", [buildScriptPath, dir], { stdio: ["ignore", 2, 2] })
    child.once("error", (error) =>
      resume(Effect.fail(new AssetsUnavailable({ message: `could not start the envtest build (bash): ${error.message}` }))))
    child.once("exit", (code, signal) => {
      if (code === 0) return resume(Effect.void)
      const why = code === 3
        ? "this machine lacks what the build needs (see the [envtest] line above: apt with a Debian mirror, " +
          "curl, make, tar, dpkg-deb, sha256sum)"
        : signal !== null
        ? `it was stopped by ${signal}`
        : `it exited with code ${code} (see the [envtest] lines above)`
      resume(Effect.fail(
        new AssetsUnavailable({
          message: `the envtest build into ${dir} failed: ${why}. ` +
            "Alternatively point KUBEBUILDER_ASSETS at a folder holding kube-apiserver and etcd."
        })
      ))
    })
    return Effect.sync(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
    })
  })

const firstLineOf = (file: string, args: ReadonlyArray<string>): Effect.Effect<string, AssetsUnavailable> =>
  Effect.callback<string, AssetsUnavailable>((resume) => {
    const child = ChildProcess.execFile(file, args, { timeout: 15_000 }, (error, stdout, stderr) => {
      if (error !== null) {
        return resume(Effect.fail(new AssetsUnavailable({ message: `${file} --version failed: ${error.message}` })))
      }
      resume(Effect.succeed(`${stdout}${stderr}`.trim().split("\n")[0] ?? ""))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })
