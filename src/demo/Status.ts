/**
 * The demo's status view, as pure functions: Prometheus text from the processes' `/metrics` into
 * samples, and a snapshot of what the demo observed into the lines it shows.
 *
 * @since 0.1.0
 */

/** One line of the Prometheus text format. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const sampleLine = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
const labelPair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/** The samples of a Prometheus text exposition; comments and malformed lines are skipped. */
export const parseMetrics = (text: string): ReadonlyArray<Sample> =>
  text.split("\n").flatMap((line) => {
    if (line.startsWith("#")) return []
    const match = sampleLine.exec(line.trim())
    if (match === null) return []
    const labels: Record<string, string> = {}
    for (const pair of (match[2] ?? "").matchAll(labelPair)) labels[pair[1]!] = pair[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c))
    const value = Number(match[3])
    return Number.isNaN(value) ? [] : [{ name: match[1]!, labels, value }]
  })

/** The sum of the samples named `name` whose labels include `match`. */
export const total = (samples: ReadonlyArray<Sample>, name: string, match: Readonly<Record<string, string>> = {}): number =>
  samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0)

/** Totals of `name` per value of `label`, in order of first appearance, zeros left out. */
export const byLabel = (samples: ReadonlyArray<Sample>, name: string, label: string): ReadonlyArray<readonly [string, number]> => {
  const sums = new Map<string, number>()
  for (const s of samples) if (s.name === name) sums.set(s.labels[label] ?? "", (sums.get(s.labels[label] ?? "") ?? 0) + s.value)
  return [...sums].filter(([, n]) => n > 0)
}

/** `1h02m`, `9m41s`, `12s`; negative durations read `0s`. */
export const formatDuration = (millis: number): string => {
  const seconds = Math.max(0, Math.floor(millis / 1000))
  const h = Math.floor(seconds / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m${String(s).padStart(2, "0")}s` : `${s}s`
}

/** `512 B`, `34.2 kB`, `1.5 MB` (powers of 1000). */
export const formatBytes = (bytes: number): string =>
  bytes < 1000 ? `${bytes} B` : bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`

/** `HH:MM:SS` (UTC) of a time. */
export const clock = (millis: number): string => new Date(millis).toISOString().slice(11, 19)

export interface Rotation {
  readonly at: number
  readonly why: "source changed" | "refresh"
}

/** What the demo last observed; `undefined` where it has nothing (yet). */
export interface Snapshot {
  readonly now: number
  readonly token?: { readonly issuedAt: number; readonly expiresAt: number } | undefined
  readonly rotations: ReadonlyArray<Rotation>
  readonly condition?: { readonly status: string; readonly reason: string; readonly since: string } | undefined
  readonly leaseRenewedAt?: number | undefined
  /** hosted-agent's `/metrics`; `undefined` while it does not answer. */
  readonly agent?: ReadonlyArray<Sample> | undefined
  /** service-relay's `/metrics`; `undefined` while it does not answer or when it does not run. */
  readonly relay?: ReadonlyArray<Sample> | undefined
  readonly relayRuns: boolean
}

const list = (pairs: ReadonlyArray<readonly [string, number]>) => pairs.length === 0 ? "none yet" : pairs.map(([k, n]) => `${k} ${n}`).join(", ")

/** The status block: one line per component. */
export const render = (s: Snapshot): ReadonlyArray<string> => {
  const { agent, relay } = s
  const last = s.rotations.at(-1)
  const token = s.token === undefined
    ? "not provisioned yet"
    : `expires in ${formatDuration(s.token.expiresAt - s.now)} (issued ${clock(s.token.issuedAt)}, lifetime ${formatDuration(s.token.expiresAt - s.token.issuedAt)})` +
      ` · rotations ${s.rotations.length}${last === undefined ? "" : ` (last ${clock(last.at)}, ${last.why})`}`
  const condition = s.condition === undefined ? "not set yet" : `ManagedKubeconfigReady=${s.condition.status} (${s.condition.reason}) since ${s.condition.since.slice(11, 19)}`
  const lease = s.leaseRenewedAt === undefined
    ? "not created yet"
    : `renewed ${formatDuration(s.now - s.leaseRenewedAt)} ago` + (agent === undefined ? "" : ` · updates: ${list(byLabel(agent, "cluster_proxy_addon_lease_updates_total", "result"))}`)
  const tcp = agent === undefined
    ? "metrics unavailable"
    : `connections ${total(agent, "cluster_proxy_managed_apiserver_relay_connections_total")} (open ${total(agent, "cluster_proxy_managed_apiserver_relay_connections_active")})` +
      ` · bytes up ${formatBytes(total(agent, "cluster_proxy_managed_apiserver_relay_bytes_total", { direction: "upstream" }))}` +
      `, down ${formatBytes(total(agent, "cluster_proxy_managed_apiserver_relay_bytes_total", { direction: "downstream" }))}` +
      ` · dial errors ${total(agent, "cluster_proxy_managed_apiserver_relay_dial_errors_total")}`
  const proxy = agent === undefined
    ? "metrics unavailable"
    : ["kube-apiserver", "service"].map((target) => {
      const results = byLabel(agent.filter((x) => x.labels["target"] === target), "cluster_proxy_service_proxy_requests_total", "result")
      return `${target}: ${list(results)}`
    }).join(" · ")
  const relayLine = !s.relayRuns ? "not running (no network namespace)" : relay === undefined ? "metrics unavailable" : `requests ${list(byLabel(relay, "cluster_proxy_service_relay_requests_total", "result"))}`
  return [
    `token        ${token}`,
    `hub          ${condition}`,
    `lease        ${lease}`,
    `tcp relay    ${tcp}`,
    `svc proxy    ${proxy}`,
    `svc relay    ${relayLine}`
  ]
}
