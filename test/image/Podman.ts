/**
 * podman for the image tests, with a storage folder of its own (nothing lands in the machine's
 * image store, and the folder goes when the scope closes) and runc as the OCI runtime.
 *
 * Why runc and not crun: crun 1.8 (Debian bookworm) refuses to start anything on a host whose
 * cgroups are mounted in hybrid mode with a controller in the v2 hierarchy ("cgroups in hybrid
 * mode not supported, drop all controllers from cgroupv2"), which is how these machines boot.
 * runc runs there. `TETHER_OCI_RUNTIME` picks another runtime.
 *
 * Why explicit ulimits: podman asks the runtime for RLIMIT_NOFILE and RLIMIT_NPROC values above
 * this sandbox's hard limits, and without CAP_SYS_RESOURCE the runtime may not raise them.
 */
import { Data, Effect, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

export class PodmanError extends Data.TaggedError("PodmanError")<{ readonly message: string }> {}

export interface Output {
  /** The exit code; null when the process was killed (timeout). */
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

export interface Podman {
  /** Runs `podman <global flags> <args>`; never fails, the exit code tells. */
  readonly exec: (args: ReadonlyArray<string>, options?: { readonly timeoutMs?: number }) => Effect.Effect<Output>
  /** Runs it and fails with stderr unless it exits 0; stdout. */
  readonly ok: (args: ReadonlyArray<string>, options?: { readonly timeoutMs?: number }) => Effect.Effect<string, PodmanError>
  /** `run` flags every test container gets: the restrictions a hardened pod has, and host network. */
  readonly hardened: ReadonlyArray<string>
}

export const runtime = process.env["TETHER_OCI_RUNTIME"] ?? "runc"

const onPath = (command: string): boolean =>
  (process.env["PATH"] ?? "").split(Path.delimiter).some((dir) => {
    try {
      Fs.accessSync(Path.join(dir, command), Fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })

/** What keeps the image tests from running here, if anything. */
export const missing = (): ReadonlyArray<string> => [
  ...(onPath("podman") ? [] : ["podman is not installed (apt-get install podman)"]),
  ...(onPath(runtime) ? [] : [`the OCI runtime ${runtime} is not installed (apt-get install ${runtime})`]),
  ...(process.getuid?.() === 0 ? [] : ["the image tests run podman as root"])
]

/** The soft limit of this process for a /proc/self/limits row, capped; `fallback` if unreadable. */
const softLimit = (row: string, cap: number, fallback: number): number => {
  try {
    const line = Fs.readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith(row))
    const soft = Number(line?.slice(row.length).trim().split(/\s+/)[0])
    return Number.isFinite(soft) && soft > 0 ? Math.min(soft, cap) : fallback
  } catch {
    return fallback
  }
}

export const make: Effect.Effect<Podman, PodmanError, Scope.Scope> = Effect.gen(function*() {
  const dir = yield* Effect.acquireRelease(
    Effect.try({
      try: () => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-podman-")),
      catch: (e) => new PodmanError({ message: `creating podman's storage folder: ${String(e)}` })
    }),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )
  const global = [
    `--root=${Path.join(dir, "storage")}`,
    `--runroot=${Path.join(dir, "run")}`,
    `--tmpdir=${Path.join(dir, "tmp")}`,
    `--runtime=${runtime}`,
    "--cgroup-manager=cgroupfs",
    "--events-backend=none"
  ]
  const exec = (args: ReadonlyArray<string>, options: { readonly timeoutMs?: number } = {}): Effect.Effect<Output> =>
    Effect.callback<Output>((resume) => {
      ChildProcess.execFile(
        "podman",
        [...global, ...args],
        { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, killSignal: "SIGKILL" },
        (error, stdout, stderr) => {
          const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
          const note = error !== null && code === null ? `\n(podman ${args[0]}: ${error.message.split("\n")[0]})` : ""
          resume(Effect.succeed({ code, stdout, stderr: stderr + note }))
        }
      )
    })
  const ok = (args: ReadonlyArray<string>, options: { readonly timeoutMs?: number } = {}) =>
    exec(args, options).pipe(
      Effect.flatMap((out) =>
        out.code === 0
          ? Effect.succeed(out.stdout)
          : Effect.fail(new PodmanError({ message: `podman ${args.slice(0, 2).join(" ")} exited ${out.code}: ${out.stderr.trim()}` }))
      )
    )
  // Containers and images go before their storage folder does.
  yield* Effect.addFinalizer(() =>
    exec(["rm", "--all", "--force", "--time=0"]).pipe(Effect.andThen(exec(["rmi", "--all", "--force"])), Effect.asVoid)
  )
  const limit = softLimit("Max open files", 65_536, 1024)
  const processes = softLimit("Max processes", 4096, 1024)
  const hardened = [
    "--pull=never",
    "--network=host",
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
    `--ulimit=nofile=${limit}:${limit}`,
    `--ulimit=nproc=${processes}:${processes}`
  ]
  return { exec, ok, hardened }
})
