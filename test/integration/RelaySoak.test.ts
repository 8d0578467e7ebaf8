/**
 * Soak of the TCP relay (`tether managed-apiserver-proxy`, the shipped bundle, as its own process):
 * repeated bursts of 1,000 connections, each sending a request and reading the whole answer from a
 * loopback target. Bounded: a fixed number of rounds, each bounded in time.
 *
 * After every round: every connection got its answer, the active-connection gauge is back to 0,
 * the process's file descriptors (/proc/<pid>/fd) are back to where they were, and what the heap
 * retains after a forced collection does not grow (the soak preload, {@link spawnSoaked}). The
 * resident size must plateau: later rounds together grow it less than the first round did.
 *
 * Plain TCP, not TLS: the relay never looks at the bytes, and TLS handshakes at both ends would
 * only spend the test's time in this process. `SOAK_ROUNDS` lengthens the run by hand.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { until } from "../support/eventually.ts"
import { freePort, get } from "../support/local.ts"
import { formatMemory, type Memory, scrape, type Soaked, spawnSoaked } from "../support/soak.ts"

const rounds = Number(process.env["SOAK_ROUNDS"] ?? 5)
const perRound = 1_000
const answer = Buffer.alloc(16 * 1024, "a") // a small list's worth, so both directions copy

describe("TCP relay soak (the bundled process, repeated bursts of 1,000 connections)", () => {
  let dir!: string
  let target!: Net.Server
  let relay!: Soaked
  let relayPort!: number
  let healthPort!: number

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
    relayPort = await Effect.runPromise(freePort)
    healthPort = await Effect.runPromise(freePort)
    relay = spawnSoaked(dir, "relay", [
      "managed-apiserver-proxy",
      "--managed-kubeconfig",
      kubeconfig,
      "--listen",
      `127.0.0.1:${relayPort}`,
      "--health-probe-bind-address",
      `127.0.0.1:${healthPort}`,
      "--max-connections",
      "0"
    ])
  }, 180_000)

  afterAll(async () => {
    if (relay !== undefined) await relay.stop()
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

  const fds = () => relay.fds()
  const active = Effect.map(
    Effect.suspend(() => scrape(`http://127.0.0.1:${healthPort}/metrics`, ["cluster_proxy_managed_apiserver_relay_connections_active"])),
    ([value]) => value
  )
  const memory = Effect.suspend(() => relay.memory)

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
      const figures = [start, ...after].map(formatMemory)
      console.log(`relay soak, after each forced GC (start, then rounds 1-${rounds}):\n${figures.join("\n")}`)
      // Retained: what the heap holds after a full collection does not grow with the rounds. (External
      // memory is reported, not bounded: buffers are released by a concurrent sweeper, after gc() returns.)
      assert.isAtMost(last.heapUsed - first.heapUsed, 2 * 2 ** 20, `retained heap grew: ${figures.join("; ")}`)
      // Plateau: all later rounds together grow the resident size less than the first round did.
      assert.isBelow(last.rss - first.rss, first.rss - start.rss, `resident size did not plateau: ${figures.join("; ")}`)
    }), { timeout: 240_000 })
})
