/**
 * `npm run demo` as a real process, the way a newcomer runs it (package.json's `demo` script),
 * with stdout not a TTY so it prints plain lines. It starts three real apiservers, the tether
 * CLI's hosted-agent and service-relay, and a backend in a network namespace (as root).
 *
 * With `--quick`, asserted from its output and from the machine afterwards:
 * - it exits 0 and every check it shows passed (the Service path is left out, and says why,
 *   only where no network namespace can be made);
 * - the rotation under traffic counted requests and none failed;
 * - nothing is left: no process of its process group (it runs as a group leader, so every
 *   child it started, however deep, is in it), none of the PIDs it named, no namespace and no
 *   folder it named, and no namespace carrying its PID.
 * Without `--quick`, Ctrl-C (SIGINT to the whole group) once it is running ends it with 130
 * after its teardown, with nothing left either.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Netns from "../../src/demo/Netns.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"

const root = Path.resolve(import.meta.dirname, "../..")

/** package.json's `demo` script as argv, with `node` being this Node (what npm scripts run). */
const demoCommand = (): ReadonlyArray<string> => {
  const manifest = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")) as { scripts: Record<string, string> }
  const [program, ...args] = (manifest.scripts["demo"] ?? "").split(/\s+/).filter((word) => word !== "")
  assert.strictEqual(program, "node", "the demo script runs node")
  return [process.execPath, ...args]
}

/** PIDs whose process group is `pgid` (from /proc/<pid>/stat: the fields after the command name). */
const processGroup = (pgid: number): ReadonlyArray<number> =>
  Fs.readdirSync("/proc").filter((name) => /^\d+$/.test(name)).flatMap((name) => {
    try {
      const stat = Fs.readFileSync(`/proc/${name}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      return Number(fields[2]) === pgid ? [Number(name)] : []
    } catch {
      return []
    }
  })

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

interface Run {
  readonly pid: number
  readonly output: () => string
  /** The output lines without their timestamps. */
  readonly lines: () => ReadonlyArray<string>
  readonly exit: Effect.Effect<{ readonly code: number | null; readonly signal: string | null }>
}

/** Start the demo as its own process group (everything it starts stays in it unless it calls setsid). */
const start = (extra: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const [program, ...args] = demoCommand()
    const child = ChildProcess.spawn(program!, [...args, ...extra], {
      cwd: root,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, TERM: "dumb" }
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        // Only if the test gave up early: take the whole group down.
        if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, "SIGKILL")
      })
    )
    const output = () => `${stdout}\n--- stderr ---\n${stderr}`
    return {
      pid: child.pid!,
      output,
      lines: () => stdout.split("\n").map((line) => line.replace(/^\d\d:\d\d:\d\d {2}/, "")),
      exit: Effect.callback<{ readonly code: number | null; readonly signal: string | null }>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.succeed({ code: child.exitCode, signal: child.signalCode }))
        child.once("exit", (code, signal) => resume(Effect.succeed({ code, signal })))
      }).pipe(
        Effect.timeoutOrElse({
          duration: "280 seconds",
          orElse: () => Effect.sync(() => assert.fail(`the demo did not exit within 280 s:\n${output()}`))
        })
      )
    } satisfies Run
  })

/** No process of its group, no PID, folder or network namespace it named, and no namespace carrying its PID. */
const assertNothingLeft = (run: Run) =>
  Effect.gen(function*() {
    const lines = run.lines()
    const left = (kind: string) => lines.flatMap((line) => line.startsWith(`LEFT ${kind} `) ? [line.slice(`LEFT ${kind} `.length)] : [])
    const pids = left("pid").map(Number)
    assert.isAtLeast(pids.length, isRoot ? 9 : 7, run.output())
    assert.isAtLeast(left("folder").length, 4, run.output())
    if (isRoot) assert.strictEqual(left("netns").length, 1, run.output())
    // The apiservers' and the demo's watchdogs leave the group just after the demo exits.
    yield* until(Effect.sync(() => processGroup(run.pid)), (group) => group.length === 0, "the demo's process group to be empty", { timeout: "15 seconds" })
    assert.deepStrictEqual(pids.filter(alive), [])
    for (const folder of left("folder")) assert.isFalse(Fs.existsSync(folder), `${folder} is still there`)
    const netns = Netns.list()
    for (const name of left("netns")) assert.notInclude(netns, name)
    assert.deepStrictEqual(netns.filter((name) => name.startsWith(`tether-demo-${run.pid}-`)), [])
    assert.isTrue(lines.some((line) => line.startsWith("stopped every process")), run.output())
  })

const isRoot = process.getuid?.() === 0

describe.skipIf(noApiserver)("npm run demo (a real process)", () => {
  it.live("--quick: shows every path working and a rotation under traffic with no failed request, exits 0 and leaves nothing behind", () =>
    Effect.gen(function*() {
      const run = yield* start(["--quick"])
      const { code } = yield* run.exit
      const output = run.output()
      assert.strictEqual(code, 0, output)

      const lines = run.lines()
      const outcome = (name: string) => lines.find((line) => new RegExp(`^(PASS|FAIL|SKIP) ${name}:`).test(line))?.split(" ")[0]
      assert.strictEqual(outcome("kubectl-via-tcp-relay"), "PASS", output)
      assert.strictEqual(outcome("apiserver-via-service-proxy"), "PASS", output)
      assert.strictEqual(outcome("rotation-under-traffic"), "PASS", output)
      if (isRoot) {
        assert.strictEqual(outcome("service-via-service-relay"), "PASS", output)
      } else {
        assert.strictEqual(outcome("service-via-service-relay"), "SKIP", output)
        assert.isTrue(lines.some((line) => line.startsWith("no network namespace (")), output)
      }
      assert.isFalse(lines.some((line) => /^FAIL /.test(line)), output)
      // What kubectl printed through the relay, and what the backend answered through both hops.
      assert.isTrue(lines.some((line) => /^\s+open-cluster-management-cluster-proxy\s+Active/.test(line)), output)
      if (isRoot) assert.isTrue(lines.some((line) => line.includes(`"url":"/hello/world"`)), output)

      const rotation = lines.map((line) => /^ROTATION requests=(\d+) failed=(\d+)/.exec(line)).find((m) => m !== null)
      assert.isDefined(rotation, output)
      assert.isAbove(Number(rotation![1]), 0)
      assert.strictEqual(Number(rotation![2]), 0, output)
      assert.isTrue(lines.some((line) => /^token rotated \(source changed\)/.test(line)), output)
      const summary = lines.find((line) => line.startsWith("SUMMARY "))
      assert.strictEqual(summary, isRoot ? "SUMMARY passed=4 failed=0 skipped=0" : "SUMMARY passed=3 failed=0 skipped=1", output)

      yield* assertNothingLeft(run)
    }), { timeout: 300_000 })

  it.live("Ctrl-C (SIGINT to its whole process group, as a terminal sends it) while it runs tears everything down", () =>
    Effect.gen(function*() {
      const run = yield* start([])
      yield* until(Effect.sync(() => run.lines()), (lines) => lines.some((line) => line.startsWith("all set.")), "the demo to be running", {
        timeout: "280 seconds",
        interval: "500 millis"
      }).pipe(Effect.catch((error) => Effect.sync(() => assert.fail(`${error.message}\n${run.output()}`))))
      process.kill(-run.pid, "SIGINT")
      const { code, signal } = yield* run.exit
      // Interrupted by the signal, after its teardown ran.
      assert.strictEqual(signal, null, run.output())
      assert.strictEqual(code, 130, run.output())
      yield* assertNothingLeft(run)
    }), { timeout: 330_000 })
})
