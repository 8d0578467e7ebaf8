/**
 * Where a proxy's latency tail comes from, recorded inside the proxy process under `npm run
 * bench`: every garbage collection (kind and duration, from `PerformanceObserver`), how late
 * the event loop ran (`monitorEventLoopDelay`, 10 ms resolution), the process's CPU time and the
 * connections it accepted (`net.server.socket`). They go to a file as one JSON line per 100 ms
 * window, read back by the bench and summed over each measured wrk run. A window with a long
 * delay and little CPU time is one in which the process was not scheduled; one with much CPU
 * time and many new connections, a burst of handshakes.
 *
 * Started by the proxy processes of the bench when `BENCH_PAUSES` names the file; costs one
 * timer and one observer callback per collection.
 *
 * @since 0.1.0
 */
import * as DiagnosticsChannel from "node:diagnostics_channel"
import * as Fs from "node:fs"
import { constants, monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks"
import * as V8 from "node:v8"
import * as HeapTrim from "../../src/observability/HeapTrim.ts"

/** One window of the recording. */
export interface Window {
  /** End of the window, `Date.now()`. */
  readonly at: number
  /** Young-generation collections (scavenges, minor mark-sweeps): count and milliseconds. */
  readonly minor: number
  readonly minorMs: number
  /** Full collections (mark-compact): count and milliseconds. */
  readonly major: number
  readonly majorMs: number
  /** The longest single collection in the window, milliseconds. */
  readonly longestGcMs: number
  /** The event loop's delay in the window: p99 and maximum, milliseconds. */
  readonly loopP99Ms: number
  readonly loopMaxMs: number
  /** CPU time of the process (user and system), milliseconds. */
  readonly cpuMs: number
  /** Connections accepted by the process's servers. */
  readonly accepted: number
  /** Upstream connections its undici pools opened. */
  readonly connected: number
  /** The young generation's size at the end of the window, bytes (V8 grows and shrinks it). */
  readonly youngBytes: number
  /** The old generation's used bytes at the end of the window: what grows here was promoted. */
  readonly oldBytes: number
}

const windowMs = 100

const oldBytes = (): number => V8.getHeapSpaceStatistics().find((space) => space.space_name === "old_space")?.space_used_size ?? 0

/** Record to `file` until the process ends. */
export const record = (file: string): void => {
  const out = Fs.openSync(file, "w")
  let minor = 0
  let minorMs = 0
  let major = 0
  let majorMs = 0
  let longest = 0
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = ((entry as { readonly detail?: unknown }).detail as { readonly kind?: number } | undefined)?.kind
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        major++
        majorMs += entry.duration
      } else {
        minor++
        minorMs += entry.duration
      }
      longest = Math.max(longest, entry.duration)
    }
  }).observe({ entryTypes: ["gc"] })
  let accepted = 0
  let connected = 0
  DiagnosticsChannel.subscribe("net.server.socket", () => void accepted++)
  DiagnosticsChannel.subscribe("undici:client:connected", () => void connected++)
  // 10 ms, not 1: a 1 ms timer woke the proxy 1,000 times a second, which cost it 7-23 µs of
  // CPU per request at one connection (three hand-run rounds with and without it); the stalls
  // worth finding are longer.
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  let cpu = process.cpuUsage()
  const flush = () => {
    const cpuNow = process.cpuUsage()
    const window: Window = {
      at: Date.now(),
      minor,
      minorMs,
      major,
      majorMs,
      longestGcMs: longest,
      loopP99Ms: loop.percentile(99) / 1e6,
      loopMaxMs: loop.max / 1e6,
      cpuMs: (cpuNow.user - cpu.user + cpuNow.system - cpu.system) / 1000,
      accepted,
      connected,
      youngBytes: HeapTrim.youngBytes(),
      oldBytes: oldBytes()
    }
    Fs.writeSync(out, JSON.stringify(window) + "\n")
    cpu = cpuNow
    minor = minorMs = major = majorMs = longest = accepted = connected = 0
    loop.reset()
  }
  setInterval(flush, windowMs).unref()
}

/** What the windows between `from` and `to` add up to. */
export interface Summary {
  readonly minorPerSecond: number
  /** Share of the run's wall time spent in collections. */
  readonly gcShare: number
  readonly majors: number
  readonly longestGcMs: number
  /** The worst window's event-loop p99 and the longest delay seen, milliseconds. */
  readonly loopP99Ms: number
  readonly loopMaxMs: number
  /** The window with the longest delay: the process's CPU time in it and the connections it accepted. */
  readonly worst: { readonly cpuMs: number; readonly accepted: number }
  /** The young generation's mean size over the windows, MiB. */
  readonly youngMiB: number
  /** Connections accepted from clients and opened upstream, in all. */
  readonly accepted: number
  readonly connected: number
  /** How much the old generation grew, window to window (what was promoted into it), bytes. */
  readonly promotedBytes: number
}

/** Sum the recording in `file` over the runs `[from, to]` (`Date.now()` times); undefined without windows. */
export const summarize = (file: string, runs: ReadonlyArray<readonly [number, number]>): Summary | undefined => {
  const all = Fs.readFileSync(file, "utf8").split("\n").filter((line) => line !== "").map((line) => JSON.parse(line) as Window)
  // A window counts when it lies within a run (its first one may have begun before the run did).
  const windows = all.filter((window) => runs.some(([from, to]) => window.at > from + windowMs && window.at <= to))
  if (windows.length === 0) return undefined
  const seconds = (windows.length * windowMs) / 1000
  const sum = (pick: (window: Window) => number) => windows.reduce((total, window) => total + pick(window), 0)
  const worst = windows.reduce((a, b) => (b.loopMaxMs > a.loopMaxMs ? b : a))
  return {
    worst: { cpuMs: worst.cpuMs, accepted: worst.accepted },
    minorPerSecond: sum((w) => w.minor) / seconds,
    gcShare: sum((w) => w.minorMs + w.majorMs) / 1000 / seconds,
    majors: sum((w) => w.major),
    longestGcMs: Math.max(...windows.map((w) => w.longestGcMs)),
    loopP99Ms: Math.max(...windows.map((w) => w.loopP99Ms)),
    loopMaxMs: Math.max(...windows.map((w) => w.loopMaxMs)),
    youngMiB: sum((w) => w.youngBytes) / windows.length / 1048576,
    accepted: sum((w) => w.accepted),
    connected: sum((w) => w.connected),
    // A window with a full collection shows a drop, and what grew before it in that window is missed.
    promotedBytes: windows.reduce((total, window, i) => i === 0 ? total : total + Math.max(0, window.oldBytes - windows[i - 1]!.oldBytes), 0)
  }
}
