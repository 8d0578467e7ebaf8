/**
 * Child processes for `npm run bench`: long-running servers tied to a `Scope`, and bounded
 * one-shot commands.
 *
 * Every child gets its own process group (so nginx workers and socat's per-connection forks go
 * with their parent). Closing the scope sends SIGTERM to the group, then SIGKILL after a grace
 * period; an exit hook SIGKILLs whatever is still running when the process exits some other
 * way. When the benchmark is killed without running any code (SIGKILL), a watchdog shell whose
 * stdin is a pipe from this process sees the pipe close and kills the registered groups and
 * removes the registered folders; `setpriv --pdeathsig` also takes each direct child down.
 *
 * @since 0.1.0
 */
import { Data, Duration, Effect, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Net from "node:net"

/** Something the benchmark needs did not work; the message says what. */
export class BenchError extends Data.TaggedError("BenchError")<{ readonly message: string }> {}

const running = new Set<number>()

// The watchdog reads lines `g <pgid>` (kill at the end), `u <pgid>` (forget), `d <dir>` (remove at
// the end) until its stdin closes, which happens when this process is gone however it ended.
const watchdogScript = `
trap '' INT TERM
groups=" "; dirs=""
while read -r kind value; do
  case "$kind" in
    g) groups="$groups$value " ;;
    u) groups=$(printf '%s' "$groups" | sed "s/ $value / /") ;;
    d) dirs="$dirs $value" ;;
  esac
done
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done
for d in $dirs; do rm -rf -- "$d"; done
`

let watchdog: ChildProcess.ChildProcess | undefined

const tellWatchdog = (line: string) => {
  if (watchdog === undefined) {
    const child = ChildProcess.spawn("sh", ["-c", watchdogScript], { stdio: ["pipe", "ignore", "ignore"], detached: true })
    child.on("error", () => {})
    child.stdin?.on("error", () => {})
    child.unref()
    ;(child.stdin as unknown as Net.Socket | null)?.unref()
    watchdog = child
  }
  if (watchdog.stdin?.writable === true) watchdog.stdin.write(`${line}\n`)
}

/** Remove `dir` even if this process is killed before it can. */
export const removeOnDeath = (dir: string) => tellWatchdog(`d ${dir}`)

const killGroup = (pid: number, signal: NodeJS.Signals) => {
  try {
    process.kill(-pid, signal)
  } catch {
    // Already gone.
  }
}

process.on("exit", () => {
  for (const pid of running) killGroup(pid, "SIGKILL")
})

const hasSetpriv = ChildProcess.spawnSync("setpriv", ["--help"], { stdio: "pipe" }).status === 0

/** The command line to spawn: the command itself, made to die with this process when possible. */
const wrap = (command: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  hasSetpriv ? ["setpriv", ["--pdeathsig", "KILL", "--", command, ...args]] : [command, [...args]]

/** The last `max` characters of a growing text (stderr kept for error messages). */
const tail = (max: number) => {
  let text = ""
  return {
    add: (chunk: Buffer) => {
      text = (text + chunk.toString("utf8")).slice(-max)
    },
    get: () => text
  }
}

const spawnInGroup = (command: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv | undefined, cwd: string | undefined) => {
  const [file, argv] = wrap(command, args)
  const child = ChildProcess.spawn(file, argv, {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
    env: { ...process.env, ...env },
    ...(cwd === undefined ? {} : { cwd })
  })
  const pid = child.pid
  if (pid !== undefined) {
    running.add(pid)
    tellWatchdog(`g ${pid}`)
  }
  child.once("exit", () => {
    if (pid === undefined) return
    running.delete(pid)
    // The group may still have members (nginx workers, socat forks); `stop` kills it and then
    // tells the watchdog to forget it.
  })
  return child
}

/** SIGTERM to the group, SIGKILL after `grace`; resolves once the leader has exited. */
const stop = (child: ChildProcess.ChildProcess, grace: Duration.Duration) =>
  Effect.callback<void>((resume) => {
    const pid = child.pid
    if (pid === undefined || child.exitCode !== null || child.signalCode !== null) {
      if (pid !== undefined) {
        killGroup(pid, "SIGKILL") // stray group members
        tellWatchdog(`u ${pid}`)
      }
      return resume(Effect.void)
    }
    const hard = setTimeout(() => killGroup(pid, "SIGKILL"), Duration.toMillis(grace))
    child.once("exit", () => {
      clearTimeout(hard)
      killGroup(pid, "SIGKILL")
      tellWatchdog(`u ${pid}`)
      resume(Effect.void)
    })
    killGroup(pid, "SIGTERM")
  })

/** A free loopback port (free when asked; the caller binds it right away). */
export const freePort: Effect.Effect<number, BenchError> = Effect.callback((resume) => {
  const server = Net.createServer()
  server.once("error", (error) => resume(Effect.fail(new BenchError({ message: `no free port: ${error.message}` }))))
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const answers = (url: string) =>
  Effect.promise(() =>
    fetch(url, { signal: AbortSignal.timeout(2000) }).then(
      async (response) => {
        await response.arrayBuffer()
        return response.status === 200
      },
      () => false
    )
  )

const connects = (port: number) =>
  Effect.callback<boolean>((resume) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => {
      socket.destroy()
      resume(Effect.succeed(false))
    })
    return Effect.sync(() => socket.destroy())
  })

/** How a started server shows that it is ready. */
export type Readiness =
  /**
   * It prints a line matching `pattern` on stdout and then accepts connections on `port`, or
   * when `port` is absent, on the port in the pattern's first group (`listening (\d+)`).
   */
  | { readonly _tag: "Prints"; readonly pattern: RegExp; readonly port?: number }
  /** It accepts TCP connections on this loopback port. */
  | { readonly _tag: "Accepts"; readonly port: number }
  /** `url` answers a GET with 200 (a `/readyz` probe); `port` is what the server reports. */
  | { readonly _tag: "Answers"; readonly url: string; readonly port: number }
  /** Ready once spawned (a process with nothing to wait for). */
  | { readonly _tag: "Started" }

/** The Go tools and the relay process print `listening <port>`. */
export const printsPort: Readiness = { _tag: "Prints", pattern: /listening (\d+)/ }

export interface Server {
  readonly name: string
  readonly pid: number
  readonly port: number
  /** The end of its output (stderr and stdout), for error messages. */
  readonly output: () => string
}

/**
 * Start a long-running server for the life of the current scope and wait (at most
 * `startupTimeout`) until it is ready.
 */
export const server = Effect.fn("Children.server")(function*(
  name: string,
  command: string,
  args: ReadonlyArray<string>,
  readiness: Readiness,
  options: { readonly env?: NodeJS.ProcessEnv; readonly cwd?: string; readonly startupTimeout?: Duration.Input } = {}
): Effect.fn.Return<Server, BenchError, Scope.Scope> {
  const errors = tail(4000)
  let printed: number | undefined
  const pattern = readiness._tag === "Prints" ? readiness.pattern : undefined
  const child = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const child = spawnInGroup(command, args, options.env, options.cwd)
      child.stderr?.on("data", errors.add)
      // Keep reading after readiness, so a chatty child never blocks on a full pipe.
      let out = ""
      child.stdout?.on("data", (chunk: Buffer) => {
        errors.add(chunk)
        if (printed !== undefined || pattern === undefined) return
        out = (out + chunk.toString("utf8")).slice(-4000)
        const match = pattern.exec(out)
        if (match) printed = readiness._tag === "Prints" && readiness.port !== undefined ? readiness.port : Number(match[1])
      })
      child.on("error", (error) => errors.add(Buffer.from(`\nspawn failed: ${error.message}`)))
      return child
    }),
    (child) => stop(child, Duration.seconds(3))
  )
  const exited = () => child.exitCode !== null || child.signalCode !== null
  const failed = (why: string) =>
    new BenchError({ message: `${name} (${command}) ${why}${errors.get() === "" ? "" : `; output:\n${errors.get()}`}` })
  const timeout = Duration.fromInputUnsafe(options.startupTimeout ?? "30 seconds")
  const port = yield* Effect.gen(function*() {
    while (true) {
      if (exited()) return yield* failed(`exited during startup (code ${child.exitCode ?? child.signalCode})`)
      switch (readiness._tag) {
        case "Prints":
          if (printed !== undefined && (yield* connects(printed))) return printed
          break
        case "Accepts":
          if (yield* connects(readiness.port)) return readiness.port
          break
        case "Answers":
          if (yield* answers(readiness.url)) return readiness.port
          break
        case "Started":
          return 0
      }
      yield* Effect.sleep("50 millis")
    }
  }).pipe(
    Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(failed(`was not ready within ${Duration.format(timeout)}`)) })
  )
  return { name, pid: child.pid ?? 0, port, output: errors.get }
})

export interface Output {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Run a command to completion, killed (with its group) after `timeout` or when interrupted.
 * Fails when it does not exit 0 unless `allowFailure`.
 */
export const run = Effect.fn("Children.run")(function*(
  command: string,
  args: ReadonlyArray<string>,
  options: {
    readonly timeout: Duration.Input
    readonly env?: NodeJS.ProcessEnv
    readonly cwd?: string
    readonly allowFailure?: boolean
  }
): Effect.fn.Return<Output, BenchError> {
  const timeout = Duration.fromInputUnsafe(options.timeout)
  const output = yield* Effect.callback<Output>((resume) => {
    const child = spawnInGroup(command, args, options.env, options.cwd)
    let stdout = ""
    const stderr = tail(8000)
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString("utf8")
    })
    child.stderr?.on("data", stderr.add)
    child.once("error", (error) => resume(Effect.succeed({ code: -1, stdout, stderr: `spawn failed: ${error.message}` })))
    child.once("close", (code) => {
      if (child.pid !== undefined) {
        killGroup(child.pid, "SIGKILL") // leftovers of the group, if any
        tellWatchdog(`u ${child.pid}`)
      }
      resume(Effect.succeed({ code, stdout, stderr: stderr.get() }))
    })
    return stop(child, Duration.seconds(2))
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () => Effect.fail(new BenchError({ message: `${command} ${args.join(" ")} did not finish within ${Duration.format(timeout)}` }))
    })
  )
  if (output.code !== 0 && options.allowFailure !== true) {
    return yield* new BenchError({ message: `${command} ${args.join(" ")} exited with ${output.code}:\n${output.stderr}` })
  }
  return output
})

/** Whether a command is on PATH. */
export const onPath = (command: string): boolean =>
  ChildProcess.spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0
