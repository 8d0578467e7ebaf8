/**
 * The demo's child processes: the tether CLI as package.json's `bin` names it, and the backend. Each writes its output to a log file in the demo's folder, is
 * stopped with the scope (SIGTERM, then SIGKILL after a grace period, waiting until it is gone),
 * and is killed by an exit hook should the demo exit without closing its scope, or by the
 * watchdog should it be killed outright.
 *
 * @since 0.1.0
 */
import { Data, Effect, type Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { fileURLToPath } from "node:url"
import { tetherEntry } from "../testing/TetherEntry.ts"
import * as Watchdog from "./Watchdog.ts"

/** The repository root (where package.json is). */
export const root: string = fileURLToPath(new URL("../../", import.meta.url))

/**
 * The command that runs the tether CLI as it ships: package.json's `bin` (the production build),
 * through the repository's shared resolver, which rebuilds the bundle first when it is missing
 * or older than the sources (a fresh clone after `npm ci` has no build yet).
 */
export const tetherCommand = (): ReadonlyArray<string> => [process.execPath, tetherEntry()]

export class ProcessFailed extends Data.TaggedError("ProcessFailed")<{ readonly message: string }> {}

export interface Child {
  readonly label: string
  readonly pid: number
  readonly logPath: string
  readonly child: ChildProcess.ChildProcess
}

const live = new Set<ChildProcess.ChildProcess>()
let hookInstalled = false

const exited = (child: ChildProcess.ChildProcess) => child.exitCode !== null || child.signalCode !== null

/** The last lines of a log file, for error messages. */
export const logTail = (path: string, lines = 15): string => {
  try {
    return Fs.readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

/** Whether `child` is still running; fails with its log tail when it has exited. */
export const running = (proc: Child): Effect.Effect<void, ProcessFailed> =>
  exited(proc.child)
    ? Effect.fail(
      new ProcessFailed({
        message: `${proc.label} exited (${proc.child.exitCode ?? proc.child.signalCode}); last lines of ${proc.logPath}:\n${logTail(proc.logPath)}`
      })
    )
    : Effect.void

/** Spawn `argv` with its output in `logPath`; stopped with the scope. */
export const spawn = (
  label: string,
  argv: ReadonlyArray<string>,
  logPath: string,
  env: Record<string, string> = {}
): Effect.Effect<Child, ProcessFailed, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Child, ProcessFailed>((resume) => {
      const fd = Fs.openSync(logPath, "w")
      const [file, ...args] = argv
      const child = ChildProcess.spawn(file!, args, {
        stdio: ["ignore", fd, fd],
        cwd: root,
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: process.env["HOME"] ?? "/", ...env }
      })
      Fs.closeSync(fd)
      child.once("error", (error) => resume(Effect.fail(new ProcessFailed({ message: `${label}: cannot start ${file}: ${error.message}` }))))
      child.once("spawn", () => {
        if (!hookInstalled) {
          hookInstalled = true
          process.once("exit", () => {
            for (const c of live) if (!exited(c)) c.kill("SIGKILL")
          })
        }
        live.add(child)
        const pid = child.pid ?? -1
        Watchdog.register({ pid })
        child.once("exit", () => {
          live.delete(child)
          Watchdog.unregister({ pid })
        })
        resume(Effect.succeed({ label, pid: child.pid ?? -1, logPath, child }))
      })
    }),
    (proc) => stop(proc)
  )

/** SIGTERM, SIGKILL after `grace`; resolves once the process is gone. */
export const stop = (proc: Child, grace = 10_000): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const { child } = proc
    if (exited(child)) return resume(Effect.void)
    const kill = setTimeout(() => child.kill("SIGKILL"), grace)
    child.once("exit", () => {
      clearTimeout(kill)
      resume(Effect.void)
    })
    child.kill("SIGTERM")
  })
