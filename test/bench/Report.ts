/**
 * The benchmark's results as Markdown: absolute numbers, ratios against the direct path and
 * against each peer, and the targets of issue 3 checked against what was measured. Pure.
 *
 * @since 0.1.0
 */

import type * as Footprint from "./Footprint.ts"
import type * as Pauses from "./Pauses.ts"

/** One path through which the load went (direct, tether, a peer). */
export interface Path {
  readonly key: string
  readonly label: string
}

/** Which way the bulk data flows through the relay: from the connecting client, or to it. */
export type Direction = "upload" | "download"

export const directionLabel: Record<Direction, string> = {
  upload: "client → server (`iperf3`)",
  download: "server → client (`iperf3 -R`)"
}

export interface Throughput {
  readonly path: Path
  readonly direction: Direction
  /** Gbit/s of each round. */
  readonly gbps: ReadonlyArray<number>
  /** CPU seconds of the relay's processes per GB moved, each round (NaN for direct). */
  readonly cpuPerGB: ReadonlyArray<number>
}

export interface RoundTrip {
  readonly path: Path
  readonly conns: number
  /** Median over rounds. */
  readonly p50us: number
  readonly p99us: number
  readonly perSecond: number
  /** CPU microseconds of the relay's processes per round trip (NaN for direct). */
  readonly cpuUs: number
  readonly errors: number
}

export interface HttpResult {
  readonly path: Path
  readonly conns: number
  /** Median over rounds. */
  readonly perSecond: number
  /** Over the requests of all rounds together. */
  readonly p50us: number
  readonly p99us: number
  /** CPU microseconds of the relay's processes per request (NaN for direct). */
  readonly cpuUs: number
  /** Socket errors, timeouts and non-2xx answers over all rounds. */
  readonly errors: number
}

export interface Report {
  readonly date: string
  readonly command: string
  readonly machine: ReadonlyArray<string>
  readonly settings: ReadonlyArray<string>
  readonly quick: boolean
  readonly tcp?: { readonly throughput: ReadonlyArray<Throughput>; readonly roundTrips: ReadonlyArray<RoundTrip> }
  readonly http?: ReadonlyArray<HttpResult>
  /** The service proxy's rows, one table per request kind. */
  readonly serviceProxy?: ReadonlyArray<{
    readonly scenario: { readonly label: string }
    readonly rows: ReadonlyArray<HttpResult>
    readonly pauses: ReadonlyArray<{ readonly conns: number; readonly summary: Pauses.Summary }>
  }>
  /** The service proxy's CPU at paced rates on one connection (kube-apiserver request). */
  readonly serviceProxyPaced?: ReadonlyArray<Paced>
  /** One list per round. */
  readonly footprint?: ReadonlyArray<ReadonlyArray<Footprint.Measured>>
  readonly notes: ReadonlyArray<string>
}

/** A proxy's CPU at a paced request rate on one keep-alive connection (medians over rounds). */
export interface Paced {
  readonly path: Path
  readonly rate: number
  readonly perSecond: number
  readonly cpuMsPerSecond: number
}

/** Latency samples as distinct values (µs) with their counts, as wrk's script API gives them. */
export type Histogram = ReadonlyMap<number, number>

/** The samples of several runs together. */
export const pooled = (histograms: ReadonlyArray<Histogram>): Histogram => {
  const all = new Map<number, number>()
  for (const histogram of histograms) {
    for (const [value, count] of histogram) all.set(value, (all.get(value) ?? 0) + count)
  }
  return all
}

/** The smallest value at or below which `p` percent of the samples lie (NaN without samples). */
export const percentile = (histogram: Histogram, p: number): number => {
  const values = [...histogram.keys()].sort((a, b) => a - b)
  const total = values.reduce((sum, value) => sum + (histogram.get(value) ?? 0), 0)
  const rank = Math.max(1, Math.ceil((p / 100) * total))
  let seen = 0
  for (const value of values) {
    seen += histogram.get(value) ?? 0
    if (seen >= rank) return value
  }
  return Number.NaN
}

export const median = (values: ReadonlyArray<number>): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const fixed = (value: number, digits: number) => (Number.isFinite(value) ? value.toFixed(digits) : "–")
const ratio = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}×` : "–")
const thousands = (value: number) => (Number.isFinite(value) ? Math.round(value).toLocaleString("en-US") : "–")
const micros = (value: number) => (value >= 10_000 ? `${fixed(value / 1000, 1)} ms` : `${fixed(value, 0)} µs`)
const signedMicros = (value: number) => (Number.isFinite(value) ? `${value >= 0 ? "+" : "−"}${fixed(Math.abs(value), 0)}` : "–")

const table = (head: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string =>
  [
    `| ${head.join(" | ")} |`,
    `|${head.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`,
    ...rows.map((row) => `| ${row.join(" | ")} |`)
  ].join("\n")

const tetherKey = "tether"
const directKey = "direct"

const throughputSection = (rows: ReadonlyArray<Throughput>): string => {
  const value = (key: string) => median(rows.find((row) => row.path.key === key)?.gbps ?? [])
  const direct = value(directKey)
  const tether = value(tetherKey)
  const tetherCpu = median(rows.find((row) => row.path.key === tetherKey)?.cpuPerGB ?? [])
  return table(
    ["path", "Gbit/s", "each round", "÷ direct", "tether ÷ this", "relay CPU s/GB", "tether CPU ÷ this"],
    rows.map((row) => {
      const gbps = median(row.gbps)
      const cpu = median(row.cpuPerGB)
      const isTether = row.path.key === tetherKey
      return [
        row.path.label,
        `**${fixed(gbps, 2)}**`,
        row.gbps.map((g) => fixed(g, 1)).join(", "),
        ratio(gbps / direct),
        isTether || row.path.key === directKey ? "" : ratio(tether / gbps),
        fixed(cpu, 2),
        isTether || !Number.isFinite(cpu) ? "" : ratio(tetherCpu / cpu)
      ]
    })
  )
}

const roundTripSection = (rows: ReadonlyArray<RoundTrip>): string => {
  const find = (key: string, conns: number) => rows.find((row) => row.path.key === key && row.conns === conns)
  return table(
    [
      "path",
      "conns",
      "p50",
      "p99",
      "round trips/s",
      "p50 − direct (µs)",
      "p50 ÷ direct",
      "p99 ÷ direct",
      "tether p50 ÷ this",
      "tether p99 ÷ this",
      "relay CPU µs/trip",
      "tether CPU ÷ this"
    ],
    rows.map((row) => {
      const direct = find(directKey, row.conns)
      const tether = find(tetherKey, row.conns)
      const isDirect = row.path.key === directKey
      const isTether = row.path.key === tetherKey
      return [
        row.path.label,
        String(row.conns),
        `**${micros(row.p50us)}**`,
        micros(row.p99us),
        thousands(row.perSecond) + (row.errors > 0 ? ` (${row.errors} errors)` : ""),
        isDirect || direct === undefined ? "" : signedMicros(row.p50us - direct.p50us),
        isDirect || direct === undefined ? "" : ratio(row.p50us / direct.p50us),
        isDirect || direct === undefined ? "" : ratio(row.p99us / direct.p99us),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.p50us / row.p50us),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.p99us / row.p99us),
        fixed(row.cpuUs, 1),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.cpuUs / row.cpuUs)
      ]
    })
  )
}

const httpSection = (rows: ReadonlyArray<HttpResult>): string => {
  const find = (key: string, conns: number) => rows.find((row) => row.path.key === key && row.conns === conns)
  return table(
    [
      "path",
      "conns",
      "req/s",
      "p50",
      "p99",
      "req/s ÷ direct",
      "p99 ÷ direct",
      "tether req/s ÷ this",
      "tether p99 ÷ this",
      "relay CPU µs/req",
      "tether CPU ÷ this"
    ],
    rows.map((row) => {
      const direct = find(directKey, row.conns)
      const tether = find(tetherKey, row.conns)
      const isDirect = row.path.key === directKey
      const isTether = row.path.key === tetherKey
      return [
        row.path.label,
        String(row.conns),
        `**${thousands(row.perSecond)}**` + (row.errors > 0 ? ` (${row.errors} errors)` : ""),
        micros(row.p50us),
        micros(row.p99us),
        isDirect || direct === undefined ? "" : ratio(row.perSecond / direct.perSecond),
        isDirect || direct === undefined ? "" : ratio(row.p99us / direct.p99us),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.perSecond / row.perSecond),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.p99us / row.p99us),
        fixed(row.cpuUs, 0),
        isTether || tether === undefined || isDirect ? "" : ratio(tether.cpuUs / row.cpuUs)
      ]
    })
  )
}

const directions = (rows: ReadonlyArray<Throughput>): ReadonlyArray<Direction> => [...new Set(rows.map((row) => row.direction))]

const verdict = (ok: boolean) => (ok ? "met" : "**not met**")

/** The targets of issue 3, section 4, against this run. */
const targets = (report: Report): ReadonlyArray<string> => {
  const lines: Array<string> = []
  const tcp = report.tcp
  if (tcp !== undefined) {
    for (const direction of directions(tcp.throughput)) {
      const gbps = (key: string) =>
        median(tcp.throughput.find((row) => row.path.key === key && row.direction === direction)?.gbps ?? [])
      const tether = gbps(tetherKey)
      const haproxy = gbps("haproxy")
      if (Number.isFinite(tether) && Number.isFinite(haproxy)) {
        lines.push(
          `- TCP throughput ≥ haproxy, ${directionLabel[direction]}: ${fixed(tether, 2)} vs ${fixed(haproxy, 2)} Gbit/s ` +
            `(${ratio(tether / haproxy)}): ${verdict(tether >= haproxy)}.`
        )
      }
      // Issue 10: the same relay running inside hosted-agent (supervisor, shared probes) keeps it.
      const hosted = gbps("hosted-agent")
      if (Number.isFinite(hosted) && Number.isFinite(haproxy)) {
        lines.push(
          `- TCP throughput inside hosted-agent ≥ haproxy, ${directionLabel[direction]}: ${fixed(hosted, 2)} vs ` +
            `${fixed(haproxy, 2)} Gbit/s (${ratio(hosted / haproxy)}): ${verdict(hosted >= haproxy)}.`
        )
      }
    }
    const added = [...new Set(tcp.roundTrips.map((row) => row.conns))].map((conns) => {
      const find = (key: string) => tcp.roundTrips.find((row) => row.path.key === key && row.conns === conns)
      return { conns, added: (find(tetherKey)?.p50us ?? Number.NaN) - (find(directKey)?.p50us ?? Number.NaN) }
    })
    const single = added.find((row) => row.conns === 1)
    if (single !== undefined && Number.isFinite(single.added)) {
      lines.push(
        `- Added p50 latency ≤ 100 µs (1 connection): ${signedMicros(single.added)} µs: ${verdict(single.added <= 100)}. ` +
          `Under load: ${added.filter((row) => row.conns !== 1).map((row) => `${signedMicros(row.added)} µs at ${row.conns}`).join(", ")}.`
      )
    }
  }
  if (report.http !== undefined) {
    const rows = report.http
    for (const peer of ["go-prototype", "go-tuned"]) {
      const parts = [...new Set(rows.map((row) => row.conns))].map((conns) => {
        const tether = rows.find((row) => row.path.key === tetherKey && row.conns === conns)
        const go = rows.find((row) => row.path.key === peer && row.conns === conns)
        if (tether === undefined || go === undefined) return undefined
        const rps = tether.perSecond / go.perSecond
        const p99 = tether.p99us / go.p99us
        return { conns, rps, p99, ok: rps >= 1 && p99 <= 1.2 }
      }).filter((part) => part !== undefined)
      const label = rows.find((row) => row.path.key === peer)?.path.label
      if (label === undefined || parts.length === 0) continue
      lines.push(
        `- HTTP req/s ≥ ${label} with p99 ≤ 1.2× of it: ` +
          parts.map((part) => `c=${part.conns}: ${ratio(part.rps)} req/s, ${ratio(part.p99)} p99 (${verdict(part.ok)})`).join("; ") + "."
      )
    }
    const nginx = [...new Set(rows.map((row) => row.conns))].map((conns) => {
      const tether = rows.find((row) => row.path.key === tetherKey && row.conns === conns)
      const peer = rows.find((row) => row.path.key === "nginx" && row.conns === conns)
      return tether === undefined || peer === undefined ? undefined : `c=${conns}: ${ratio(tether.perSecond / peer.perSecond)}`
    }).filter((part) => part !== undefined)
    if (nginx.length > 0) lines.push(`- Stretch, HTTP req/s vs nginx: ${nginx.join("; ")}.`)
  }
  // As shipped, and without busy polling when that row was measured.
  const proxies = [{ key: tetherKey, name: "Service proxy" }, { key: "tether-no-busy-poll", name: "Service proxy without busy polling" }]
  for (const { key, name } of proxies) {
    for (const { rows, scenario } of report.serviceProxy ?? []) {
      const parts = [...new Set(rows.map((row) => row.conns))].map((conns) => {
        const tether = rows.find((row) => row.path.key === key && row.conns === conns)
        const go = rows.find((row) => row.path.key === "go-tuned" && row.conns === conns)
        if (tether === undefined || go === undefined) return undefined
        const rps = tether.perSecond / go.perSecond
        const p99 = tether.p99us / go.p99us
        return `c=${conns}: ${ratio(rps)} req/s, ${ratio(p99)} p99 (${verdict(rps >= 1 && p99 <= 1.2)})`
      }).filter((part) => part !== undefined)
      if (parts.length > 0) lines.push(`- ${name}, ${scenario.label}: req/s ≥ the Go proxy with p99 ≤ 1.2× of it: ${parts.join("; ")}.`)
    }
  }
  return lines
}

export const render = (report: Report): string => {
  const parts: Array<string> = []
  parts.push("# tether relay benchmark")
  if (report.quick) parts.push("> **Quick run** (`--quick`): short and single-round; not for comparison.")
  parts.push(`Run ${report.date} with \`${report.command}\`.`)
  parts.push(["Machine:", ...report.machine.map((line) => `- ${line}`)].join("\n"))
  parts.push(["Settings:", ...report.settings.map((line) => `- ${line}`)].join("\n"))
  const goals = targets(report)
  if (goals.length > 0) parts.push(["## Against the targets of issue 3", "", ...goals].join("\n"))
  if (report.tcp !== undefined) {
    parts.push("## TCP: `tether managed-apiserver-proxy` and peers")
    for (const direction of directions(report.tcp.throughput)) {
      parts.push(`### Bulk throughput, ${directionLabel[direction]}, one stream`)
      parts.push(throughputSection(report.tcp.throughput.filter((row) => row.direction === direction)))
    }
    parts.push("### 1 KiB round trip (echo), one request in flight per connection")
    parts.push(roundTripSection(report.tcp.roundTrips))
  }
  if (report.http !== undefined) {
    parts.push("## HTTP: `tether service-relay` (caller TokenReview on, cached) and peers")
    parts.push("wrk with keep-alive, GET answered with a 1 KiB body.")
    parts.push(httpSection(report.http))
  }
  if (report.serviceProxy !== undefined) {
    parts.push("## HTTP: tether's service proxy and a Go proxy doing the same work")
    parts.push("wrk with keep-alive over TLS, GET answered with a 1 KiB body by a TLS backend standing in for the managed apiserver.")
    for (const { pauses, rows, scenario } of report.serviceProxy) {
      parts.push(`### ${scenario.label}`)
      parts.push(httpSection(rows))
      if (pauses.length > 0) parts.push(pausesSection(pauses))
    }
    if (report.serviceProxyPaced !== undefined && report.serviceProxyPaced.length > 0) parts.push(pacedSection(report.serviceProxyPaced))
  }
  if (report.footprint !== undefined && report.footprint.length > 0) {
    parts.push("## Footprint: each process against the bare Node floor")
    parts.push(footprintSection(report.footprint))
  }
  if (report.notes.length > 0) parts.push(["## Notes", "", ...report.notes.map((note) => `- ${note}`)].join("\n"))
  return `${parts.join("\n\n")}\n`
}

/** Proxy CPU at paced rates, with each path's ratio to tether as shipped. */
const pacedSection = (rows: ReadonlyArray<Paced>): string => {
  const rates = [...new Set(rows.map((row) => row.rate))]
  const paths = [...new Map(rows.map((row) => [row.path.key, row.path])).values()]
  const find = (key: string, rate: number) => rows.find((row) => row.path.key === key && row.rate === rate)
  return [
    "### CPU at paced rates (kube-apiserver request, one keep-alive connection, a request every 1/rate s for 5 s)",
    "",
    "Proxy CPU in milliseconds per second of wall time (answers per second achieved); ÷ tether: against tether as shipped.",
    "",
    `| path | ${rates.map((rate) => `${rate} req/s`).join(" | ")} | ${rates.map((rate) => `÷ tether at ${rate}`).join(" | ")} |`,
    `|---|${rates.map(() => "---:").join("|")}|${rates.map(() => "---:").join("|")}|`,
    ...paths.map((path) =>
      `| ${path.label} | ${rates.map((rate) => {
        const row = find(path.key, rate)
        return row === undefined ? "–" : `${row.cpuMsPerSecond.toFixed(0)} ms/s (${row.perSecond.toFixed(0)})`
      }).join(" | ")} | ${rates.map((rate) => {
        const row = find(path.key, rate)
        const tether = find(tetherKey, rate)
        return row === undefined || tether === undefined ? "–" : ratio(row.cpuMsPerSecond / tether.cpuMsPerSecond)
      }).join(" | ")} |`
    )
  ].join("\n")
}

/** tether's garbage collections and event-loop delay during its measured runs (test/bench/Pauses.ts). */
const pausesSection = (pauses: ReadonlyArray<{ readonly conns: number; readonly summary: Pauses.Summary }>): string =>
  [
    "Inside tether's process during those runs (all rounds; event-loop delay per 100 ms window, 10 ms resolution):",
    "",
    "| conns | young-generation GCs/s | time in GC | full GCs | longest GC | event-loop delay p99, worst window | longest event-loop delay | its window: CPU, connections accepted |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...pauses.map(({ conns, summary }) =>
      `| ${conns} | ${summary.minorPerSecond.toFixed(0)} | ${(summary.gcShare * 100).toFixed(1)}% | ${summary.majors} | ` +
      `${summary.longestGcMs.toFixed(1)} ms | ${summary.loopP99Ms.toFixed(1)} ms | ${summary.loopMaxMs.toFixed(1)} ms | ` +
      `${summary.worst.cpuMs.toFixed(0)} ms, ${summary.worst.accepted} |`
    )
  ].join("\n")

const splitLayout = ["managed-kubeconfig-provisioner", "managed-apiserver-proxy", "service-proxy", "addon-agent"]

/** Medians over rounds per process, the split layout's sum, and the ratios the targets name. */
export const footprintSection = (rounds: ReadonlyArray<ReadonlyArray<Footprint.Measured>>): string => {
  const names = rounds[0]!.map((row) => row.name)
  const med = (name: string, pick: (row: Footprint.Measured) => number | undefined) => {
    const values = rounds.map((round) => round.find((row) => row.name === name)).map((row) => (row === undefined ? undefined : pick(row)))
      .filter((value): value is number => value !== undefined && Number.isFinite(value))
    return values.length === 0 ? undefined : median(values)
  }
  const fmt = (value: number | undefined, digits = 0) => (value === undefined ? "–" : value.toFixed(digits))
  const floor = med("bare Node (floor)", (row) => row.rssIdleMiB)
  const lines = [
    "| process | start to ready (ms) | RSS ready (MiB) | RSS idle (MiB) | RSS after relay load (MiB) | peak RSS (MiB) | CPU per idle minute (ms) | idle RSS / floor |",
    "|---|---:|---:|---:|---:|---:|---:|---:|"
  ]
  for (const name of names) {
    const idle = med(name, (row) => row.rssIdleMiB)
    lines.push(
      `| ${name} | ${name.startsWith("bare") ? "–" : fmt(med(name, (row) => row.readyMs))} | ${fmt(med(name, (row) => row.rssReadyMiB))} | ${fmt(idle)} | ` +
        `${fmt(med(name, (row) => row.rssLoadMiB))} | ${fmt(med(name, (row) => row.peakMiB))} | ${fmt(med(name, (row) => row.idleCpuMsPerMinute))} | ` +
        `${idle === undefined || floor === undefined ? "–" : `${(idle / floor).toFixed(2)}×`} |`
    )
  }
  const sum = (pick: (row: Footprint.Measured) => number | undefined) => {
    const parts = splitLayout.map((name) => med(name, pick))
    return parts.some((part) => part === undefined) ? undefined : parts.reduce((a, b) => a! + b!, 0)
  }
  const splitIdle = sum((row) => row.rssIdleMiB)
  const splitPeak = sum((row) => row.peakMiB)
  lines.push(
    `| split layout (sum of the four) | – | ${fmt(sum((row) => row.rssReadyMiB))} | ${fmt(splitIdle)} | – | ${fmt(splitPeak)} | ` +
      `${fmt(sum((row) => row.idleCpuMsPerMinute))} | ${splitIdle === undefined || floor === undefined ? "–" : `${(splitIdle / floor).toFixed(2)}×`} |`
  )
  const combined = med("hosted-agent", (row) => row.rssIdleMiB)
  const largest = Math.max(...splitLayout.map((name) => med(name, (row) => row.rssIdleMiB) ?? 0))
  const ratios: Array<string> = []
  if (combined !== undefined && splitIdle !== undefined) {
    ratios.push(`- hosted-agent idle RSS / split layout sum: **${(combined / splitIdle).toFixed(2)}×** (target ≤ 0.35×)`)
    ratios.push(`- hosted-agent idle RSS / largest split process: **${(combined / largest).toFixed(2)}×** (target ≤ 1.3×)`)
  }
  // What ships: not the floor, not a variant with Node flags of its own.
  const shipped = names.filter((name) => !name.startsWith("bare") && !name.startsWith("hosted-agent ("))
  if (floor !== undefined) {
    const worst = Math.max(...shipped.map((name) => med(name, (row) => row.rssIdleMiB) ?? 0))
    ratios.push(`- largest idle RSS / bare Node floor: **${(worst / floor).toFixed(2)}×** (target ≤ 2×)`)
  }
  const hostedPeak = med("hosted-agent", (row) => row.peakMiB)
  for (const name of names.filter((name) => name.startsWith("hosted-agent ("))) {
    const idle = med(name, (row) => row.rssIdleMiB)
    const peak = med(name, (row) => row.peakMiB)
    if (idle === undefined || peak === undefined || combined === undefined || hostedPeak === undefined) continue
    ratios.push(
      `- ${name} / hosted-agent as it ships, same run: idle ${(idle / combined).toFixed(2)}×, ` +
        `peak ${(peak / hostedPeak).toFixed(2)}× (a variant, not what ships)`
    )
  }
  const slowest = Math.max(...shipped.map((name) => med(name, (row) => row.readyMs) ?? 0))
  ratios.push(`- slowest start to ready: **${(slowest / 1000).toFixed(2)} s** (target ≤ 2 s)`)
  return [lines.join("\n"), "", ...ratios].join("\n")
}
