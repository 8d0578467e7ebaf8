/**
 * The bad-command-line corpus (test/corpus/cli.json): each case runs the shipped `tether` entry
 * with its arguments (outside a cluster, no POD_NAMESPACE) and states the exit code and a
 * fragment of the one-line message it must print. No case may end in a stack trace or an empty
 * error message. The processes run a few at a time; each is bounded in time.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

interface Case {
  readonly name: string
  readonly args: ReadonlyArray<string>
  readonly env?: Readonly<Record<string, string>>
  readonly expect: { readonly exit: number; readonly message: string }
}

const corpus = JSON.parse(Fs.readFileSync(new URL("../corpus/cli.json", import.meta.url), "utf8")) as { readonly cases: ReadonlyArray<Case> }

const tether = (entry: string, c: Case) =>
  Effect.callback<{ readonly code: number | null; readonly output: string }>((resume) => {
    const child = ChildProcess.execFile(process.execPath, [entry, ...c.args], {
      timeout: 30_000,
      env: { ...process.env, POD_NAMESPACE: "", KUBERNETES_SERVICE_HOST: "", KUBERNETES_SERVICE_PORT: "", ...c.env }
    }, (error, stdout, stderr) => resume(Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, output: stdout + stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("bad command lines (corpus)", () => {
  it.live("every case exits as stated with a one-line message, never a stack trace", () =>
    Effect.gen(function*() {
      assert.isAtLeast(corpus.cases.length, 30)
      const entry = tetherEntry()
      const failures: Array<string> = []
      yield* Effect.forEach(corpus.cases, (c) =>
        Effect.map(tether(entry, c), ({ code, output }) => {
          const problems: Array<string> = []
          if (code !== c.expect.exit) problems.push(`exit ${code}, expected ${c.expect.exit}`)
          if (!output.includes(c.expect.message)) problems.push(`no ${JSON.stringify(c.expect.message)}`)
          if (output.includes("    at ")) problems.push("a stack trace")
          if (/^error:\s*$/m.test(output)) problems.push("an empty error message")
          if (problems.length > 0) failures.push(`${c.name}: ${problems.join("; ")} (${JSON.stringify(output.trim().split("\n").at(-1))})`)
        }), { concurrency: 4, discard: true })
      assert.strictEqual(failures.length, 0, `${failures.length} of ${corpus.cases.length} cases answered otherwise:\n${failures.join("\n")}`)
    }), 240_000)
})

describe("a port in use", () => {
  it.live("the health-probe address: exit 1, naming the address and the reason", () =>
    Effect.gen(function*() {
      const taken = Net.createServer()
      yield* Effect.acquireRelease(
        Effect.callback<void>((resume) => void taken.listen(0, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => taken.close())
      )
      const port = (taken.address() as Net.AddressInfo).port
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-cli-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      const kubeconfig = Path.join(dir, "managed.kubeconfig")
      Fs.writeFileSync(kubeconfig, JSON.stringify({
        clusters: [{ name: "m", cluster: { server: "https://127.0.0.1:1" } }],
        users: [{ name: "u", user: { token: "t" } }],
        contexts: [{ name: "m", context: { cluster: "m", user: "u" } }],
        "current-context": "m"
      }))
      const { code, output } = yield* tether(tetherEntry(), {
        name: "probe port in use",
        args: ["managed-apiserver-proxy", `--managed-kubeconfig=${kubeconfig}`, "--listen=127.0.0.1:0", `--health-probe-bind-address=127.0.0.1:${port}`],
        expect: { exit: 1, message: "" }
      })
      assert.strictEqual(code, 1)
      assert.include(output, `cannot listen on 127.0.0.1:${port} for the health probes`)
      assert.include(output, "EADDRINUSE")
      assert.notInclude(output, "    at ")
    }).pipe(Effect.scoped), 60_000)
})
