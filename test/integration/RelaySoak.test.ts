/**
 * Soak of the TCP relay (`tether managed-apiserver-proxy`, the shipped bundle, as its own process):
 * repeated bursts of 1,000 connections, each sending a request and reading the whole answer from a
 * loopback target. Bounded: a fixed number of rounds, each bounded in time.
 *
 * After every round: every connection got its answer, the active-connection gauge is back to 0,
 * the process's file descriptors (/proc/<pid>/fd) are back to where they were, and what the heap
 * retains does not grow. Memory is read by a small preload in the spawned process (it answers
 * SIGUSR2 with a full garbage collection and writes `process.memoryUsage()` to a file): after a
 * forced collection the heap holds only what is retained, so a leak shows as growth from round to
 * round, while V8's own choice of when to collect (an idle process collects nothing) does not. The
 * resident size must plateau: later rounds together grow it less than the first round did.
 *
 * Plain TCP, not TLS: the relay never looks at the bytes, and TLS handshakes at both ends would
 * only spend the test's time in this process. `SOAK_ROUNDS` lengthens the run by hand.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { until } from "../support/eventually.ts"
import { freePort, get } from "../support/local.ts"

const rounds = Number(process.env["SOAK_ROUNDS"] ?? 5)
const perRound = 1_000
const answer = Buffer.alloc(16 * 1024, "a") // a small list's worth, so both directions copy

const preload = `
import * as Fs from "node:fs"
const out = process.env.SOAK_MEMORY_FILE
process.on("SIGUSR2", () => {
  globalThis.gc()
  const m = process.memoryUsage()
  Fs.writeFileSync(out + ".tmp", JSON.stringify({ rss: m.rss, heapUsed: m.heapUsed, external: m.external }))
  Fs.renameSync(out + ".tmp", out)
})
`

interface Memory {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
}

const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10

describe("TCP relay soak (the bundled process, repeated bursts of 1,000 connections)", () => {
  let dir!: string
  let target!: Net.Server
  let child!: ChildProcess.ChildProcess
  let relayPort!: number
  let healthPort!: number
  const memoryFile = () => Path.join(dir, "memory.json")

  beforeAll(async () => {
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-soak-"))
    // The target reads the request line and answers; the client closes once it has it all.
    target = Net.createServer((socket) => {
      socket.on("error", () => socket.destroy())
      socket.once("data", () => socket.end(answer))
    })
    await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve))
    const targetPort = (target.address() as Net.AddressInfo).port
    const kubeconfig = Path.join(dir, "managed.kubeconfig")
    Fs.writeFileSync(
      kubeconfig,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "- name: m",
        "  cluster:",
        `    server: https://127.0.0.1:${targetPort}`,
        "users:",
        "- name: u",
        "  user:",
        "    token: soak",
        "contexts:",
        "- name: m",
        "  context: {cluster: m, user: u}",
        "current-context: m",
        ""
      ].join("\n")
    )
    Fs.writeFileSync(Path.join(dir, "preload.mjs"), preload)
    relayPort = await Effect.runPromise(freePort)
    healthPort = await Effect.runPromise(freePort)
    child = ChildProcess.spawn(process.execPath, [
      "--expose-gc",
      "--import",
      Path.join(dir, "preload.mjs"),
      tetherEntry(),
      "managed-apiserver-proxy",
      "--managed-kubeconfig",
      kubeconfig,
      "--listen",
      `127.0.0.1:${relayPort}`,
      "--health-probe-bind-address",
      `127.0.0.1:${healthPort}`,
      "--max-connections",
      "0"
    ], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, SOAK_MEMORY_FILE: Path.join(dir, "memory.json") } })
    child.stderr?.resume()
  }, 180_000)

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGTERM")
      await exited
    }
    await new Promise((resolve) => target?.close(resolve))
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
  })

  /** One connection through the relay: send a line, read until the target closes; the bytes read. */
  const once = () =>
    new Promise<number>((resolve) => {
      let read = 0
      const socket = Net.connect(relayPort, "127.0.0.1", () => socket.write("GET / HTTP/1.1\r\n\r\n"))
      socket.on("data", (chunk: Buffer) => void (read += chunk.length))
      socket.on("error", () => socket.destroy())
      socket.on("close", () => resolve(read))
      socket.setTimeout(30_000, () => socket.destroy())
    })

  const fds = () => Fs.readdirSync(`/proc/${child.pid}/fd`).length
  const active = Effect.suspend(() => get(`http://127.0.0.1:${healthPort}/metrics`)).pipe(Effect.map(({ body }) => {
    const line = body.split("\n").find((l) => l.startsWith("cluster_proxy_managed_apiserver_relay_connections_active"))
    return line === undefined ? -1 : Number(line.split(" ").at(-1))
  }))
  /** Full GC in the relay process, then its memory. */
  const memory = Effect.gen(function*() {
    Fs.rmSync(memoryFile(), { force: true })
    child.kill("SIGUSR2")
    return yield* until(
      Effect.sync(() => (Fs.existsSync(memoryFile()) ? (JSON.parse(Fs.readFileSync(memoryFile(), "utf8")) as Memory) : undefined)),
      (m): m is Memory => m !== undefined,
      "memory reported",
      { timeout: "10 seconds", interval: "50 millis" }
    ) as Effect.Effect<Memory, unknown>
  })

  it.live(`${rounds} bursts of ${perRound} connections: all answered, gauge back to 0, descriptors flat, retained heap flat, resident size plateaus`, () =>
    Effect.gen(function*() {
      yield* until(get(`http://127.0.0.1:${healthPort}/readyz`), (r) => r.status === 200, "relay ready", { timeout: "60 seconds" })
      const baseFds = fds()
      const start = yield* memory
      const after: Array<Memory> = []
      for (let round = 1; round <= rounds; round++) {
        const reads = yield* Effect.promise(() => Promise.all(Array.from({ length: perRound }, once)))
        const short = reads.filter((n) => n !== answer.length).length
        assert.strictEqual(short, 0, `round ${round}: ${short} of ${perRound} connections did not get the whole answer`)
        yield* until(active, (n) => n === 0, `round ${round}: active connections back to 0`, { timeout: "20 seconds" })
        yield* until(Effect.sync(fds), (n) => n <= baseFds, `round ${round}: descriptors back to ${baseFds}`, { timeout: "20 seconds" })
        after.push(yield* memory)
      }
      const first = after[0]!
      const last = after.at(-1)!
      const figures = [start, ...after].map((m) => `rss ${mb(m.rss)} MB heap ${mb(m.heapUsed)} MB external ${mb(m.external)} MB`)
      console.log(`relay soak, after each forced GC (start, then rounds 1-${rounds}):\n${figures.join("\n")}`)
      // Retained: what the heap holds after a full collection does not grow with the rounds. (External
      // memory is reported, not bounded: buffers are released by a concurrent sweeper, after gc() returns.)
      assert.isAtMost(last.heapUsed - first.heapUsed, 2 * 2 ** 20, `retained heap grew: ${figures.join("; ")}`)
      // Plateau: all later rounds together grow the resident size less than the first round did.
      assert.isBelow(last.rss - first.rss, first.rss - start.rss, `resident size did not plateau: ${figures.join("; ")}`)
    }), { timeout: 240_000 })
})
