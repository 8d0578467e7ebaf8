/**
 * What the soak suites share: the shipped bundle (`tetherEntry()`) spawned as its own process
 * with the environment the chart and the image give it (`runtimeEnv`: a bounded young generation,
 * two malloc arenas) and a small preload, and the readings taken from it between rounds.
 *
 * The preload answers SIGUSR2 with the memory-reducing full collection an idle tether process
 * makes itself (src/observability/HeapTrim.ts) and writes `process.memoryUsage()`
 * to a file: after a forced collection the heap holds only what is retained, so a leak shows as
 * growth from round to round, while V8's own choice of when to collect (an idle process collects
 * nothing) does not. With `serviceAddress` it also stands in for cluster DNS: every `*.svc` name
 * resolves to that address (the service relay looks Service names up with the system resolver).
 * Nothing else in the process is changed. By hand, `SOAK_HEAP_SNAPSHOTS=<dir>` also writes a heap
 * snapshot at every reading, to compare what rounds leave behind.
 */
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { shippedEnv } from "../bench/Footprint.ts"
import { until } from "./eventually.ts"
import { get } from "./local.ts"

const preload = `
import * as Dns from "node:dns"
import * as Fs from "node:fs"
import * as V8 from "node:v8"
const out = process.env.SOAK_MEMORY_FILE
const snapshots = process.env.SOAK_HEAP_SNAPSHOTS
let reading = 0
process.on("SIGUSR2", () => {
  // The collection the process makes itself once it has been idle (src/observability/HeapTrim.ts),
  // which also gives the young generation back: the reading is what an idle process keeps.
  globalThis.gc({ type: "major", execution: "sync", flavor: "last-resort" })
  if (snapshots) V8.writeHeapSnapshot(snapshots + "/" + process.pid + "-" + String(reading++).padStart(2, "0") + ".heapsnapshot")
  const m = process.memoryUsage()
  Fs.writeFileSync(out + ".tmp", JSON.stringify({ rss: m.rss, heapUsed: m.heapUsed, external: m.external }))
  Fs.renameSync(out + ".tmp", out)
})
const service = process.env.SOAK_SERVICE_ADDRESS
if (service) {
  const lookup = Dns.promises.lookup
  Dns.promises.lookup = (host, options) =>
    host.endsWith(".svc") ? Promise.resolve({ address: service, family: 4 }) : lookup.call(Dns.promises, host, options)
}
`

const repo = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "../..")

export interface Memory {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
}

/** Megabytes, one decimal. */
export const mb = (bytes: number): number => Math.round((bytes / 2 ** 20) * 10) / 10

export const formatMemory = (m: Memory): string => `rss ${mb(m.rss)} MB heap ${mb(m.heapUsed)} MB external ${mb(m.external)} MB`

export interface Soaked {
  readonly child: ChildProcess.ChildProcess
  /** Open file descriptors of the process now (/proc/<pid>/fd). */
  readonly fds: () => number
  /** Full GC in the process, then its memory. */
  readonly memory: Effect.Effect<Memory, unknown>
  /** The last lines of its output, for failure messages. */
  readonly logTail: () => string
  /** SIGTERM and wait for the exit. */
  readonly stop: () => Promise<void>
}

/**
 * `tether <args>` as it ships, with the soak preload; output goes to `<dir>/<name>.log`.
 */
export const spawnSoaked = (
  dir: string,
  name: string,
  args: ReadonlyArray<string>,
  options: { readonly serviceAddress?: string } = {}
): Soaked => {
  const preloadFile = Path.join(dir, "soak-preload.mjs")
  Fs.writeFileSync(preloadFile, preload)
  const memoryFile = Path.join(dir, `${name}-memory.json`)
  const logFile = Path.join(dir, `${name}.log`)
  const log = Fs.openSync(logFile, "w")
  const child = ChildProcess.spawn(process.execPath, ["--expose-gc", "--import", preloadFile, tetherEntry(), ...args], {
    stdio: ["ignore", log, log],
    env: {
      ...process.env,
      ...shippedEnv(repo),
      SOAK_MEMORY_FILE: memoryFile,
      ...(options.serviceAddress === undefined ? {} : { SOAK_SERVICE_ADDRESS: options.serviceAddress })
    }
  })
  Fs.closeSync(log)
  const memory = Effect.gen(function*() {
    Fs.rmSync(memoryFile, { force: true })
    child.kill("SIGUSR2")
    return yield* until(
      Effect.sync(() => (Fs.existsSync(memoryFile) ? (JSON.parse(Fs.readFileSync(memoryFile, "utf8")) as Memory) : undefined)),
      (m): m is Memory => m !== undefined,
      `${name}: memory reported`,
      { timeout: "10 seconds", interval: "50 millis" }
    ) as Effect.Effect<Memory, unknown>
  })
  return {
    child,
    fds: () => Fs.readdirSync(`/proc/${child.pid}/fd`).length,
    memory,
    logTail: () => {
      try {
        return Fs.readFileSync(logFile, "utf8").trimEnd().split("\n").slice(-20).join("\n")
      } catch {
        return "(no log)"
      }
    },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGTERM")
      await exited
    }
  }
}

/**
 * The values of the named series on a `/metrics` endpoint (plain HTTP); -1 for a series it does
 * not show, so that a missing series never passes for a gauge back at 0.
 */
export const scrape = <const Names extends ReadonlyArray<string>>(url: string, names: Names) =>
  Effect.map(Effect.suspend(() => get(url)), ({ body }) => {
    const lines = body.split("\n")
    return names.map((name) => {
      const line = lines.find((l) => l === name || l.startsWith(`${name} `) || l.startsWith(`${name}{`))
      return line === undefined ? -1 : Number(line.split(" ").at(-1))
    }) as { readonly [K in keyof Names]: number }
  })
