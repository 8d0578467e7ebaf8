/**
 * What each tether process costs to keep running, side by side with a bare Node process (the
 * floor) in one run: start to ready, resident memory when ready, after an idle period and under
 * relay load, the peak, and CPU per idle minute. The hosting-side processes of the split layout
 * (provisioner, managed-apiserver-proxy, service-proxy, addon-agent) are measured one by one and
 * summed; `hosted-agent` runs the same four components in one process. The service relay, which
 * runs on the managed cluster, is measured too (idle only: it is not loaded).
 *
 * Every tether process runs as it ships: the production build (`tetherEntry()`) with the chart's
 * and the image's `runtimeEnv` (`shippedEnv`). The floor is a bare `node` with default settings,
 * as the issue defines it; a second floor row with the shipped environment is labelled apart.
 *
 * Real apiservers stand in for hub, hosting and managed; every measured process serves its own
 * managed cluster (its own namespaces), so they do not share Secrets or Leases. Each process is
 * started alone (so its start time is its own), then all idle together for the idle period, then
 * the relays are loaded one at a time.
 *
 * Memory figures come from /proc/<pid>/status (VmRSS, VmHWM); CPU from /proc/<pid>/stat
 * (utime + stime).
 */
import { Clock, Duration, Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Https from "node:https"
import * as Path from "node:path"
import * as Yaml from "js-yaml"
import * as Apiserver from "../../src/testing/Apiserver.ts"
import * as Fixtures from "../../src/testing/fixtures/ManagedClusterAddOnCrd.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import { selfSigned } from "../support/local.ts"
import * as Children from "./Children.ts"
import { BenchError } from "./Children.ts"

export interface Measured {
  readonly name: string
  /** Spawn to /readyz 200, milliseconds (apiservers already answering). */
  readonly readyMs: number
  readonly rssReadyMiB: number
  readonly rssIdleMiB: number
  /** After the relay load (TCP relay and service proxy); undefined for processes with neither. */
  readonly rssLoadMiB: number | undefined
  /** VmHWM at the end. */
  readonly peakMiB: number
  /** CPU milliseconds per idle minute. */
  readonly idleCpuMsPerMinute: number
}

export interface Options {
  readonly repo: string
  readonly work: string
  readonly idle: Duration.Duration
  /**
   * Requests per connection of the relay load: 64 keep-alive TLS connections GET /version through
   * the TCP relay; 16 through the service proxy, each request reviewed and impersonated.
   */
  readonly loadRequests: number
  readonly say: (line: string) => Effect.Effect<void>
}

const mib = (kib: number) => kib / 1024

/** VmRSS and VmHWM of `pid`, in KiB. */
const memory = (pid: number) =>
  Effect.try({
    try: () => {
      const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
      const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN)
      return { rss: field("VmRSS"), hwm: field("VmHWM") }
    },
    catch: () => new BenchError({ message: `cannot read /proc/${pid}/status (the process exited?)` })
  })

const clockTicks = Number(ChildProcess.execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100

/** CPU time of `pid` so far, in milliseconds. */
const cpuMillis = (pid: number) =>
  Effect.try({
    try: () => {
      const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
      // Fields after the command name (which may hold spaces) start at index 2 (state).
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks
    },
    catch: () => new BenchError({ message: `cannot read /proc/${pid}/stat` })
  })

/**
 * `connections` keep-alive TLS connections, `requests` GETs of `path` each, to `port` trusting
 * `ca`; every answer must have status `expect`.
 */
const tlsLoad = (
  what: string,
  load: { readonly port: number; readonly ca: string; readonly path: string; readonly headers?: Record<string, string>; readonly connections: number; readonly requests: number; readonly expect: number }
) =>
  Effect.tryPromise({
    try: async () => {
      const agent = new Https.Agent({ keepAlive: true, maxSockets: load.connections, ca: load.ca })
      const one = () =>
        new Promise<void>((resolve, reject) => {
          const req = Https.get({ host: "127.0.0.1", port: load.port, path: load.path, headers: load.headers, agent }, (res) => {
            res.resume()
            res.on("end", () => (res.statusCode === load.expect ? resolve() : reject(new Error(`status ${res.statusCode}`))))
          })
          req.setTimeout(20_000, () => req.destroy(new Error("timeout")))
          req.on("error", reject)
        })
      await Promise.all(Array.from({ length: load.connections }, async () => {
        for (let i = 0; i < load.requests; i++) await one()
      }))
      agent.destroy()
    },
    catch: (error) => new BenchError({ message: `${what} load failed: ${String(error)}` })
  })

interface Spec {
  readonly name: string
  readonly args: (ports: { readonly probe: number; readonly relay: number; readonly proxy: number }) => ReadonlyArray<string>
  /** Runs the managed-apiserver TCP relay. */
  readonly relay: boolean
  /** Runs the service proxy: the reader token of its install, for reviewed and impersonated requests. */
  readonly proxyCaller?: string
  readonly env?: NodeJS.ProcessEnv
  /** Node flags before the entry (a variant of what ships, measured next to it). */
  readonly nodeFlags?: ReadonlyArray<string>
  /** Started with the shipped environment (`shippedEnv`): every tether process but the variants that leave it out. */
  readonly shipped: boolean
}

/**
 * The environment the chart and the image give every tether container (charts/tether/values.yaml
 * `runtimeEnv`; .ci/image/build sets the same): every tether process here runs with it, so the
 * bench measures what ships. The floor does not: it is a bare `node` with default settings.
 */
export const shippedEnv = (repo: string): Readonly<Record<string, string>> => {
  const values = Yaml.load(Fs.readFileSync(Path.join(repo, "charts/tether/values.yaml"), "utf8")) as { readonly runtimeEnv?: Record<string, unknown> }
  return Object.fromEntries(Object.entries(values.runtimeEnv ?? {}).map(([name, value]) => [name, String(value)]).filter(([, value]) => value !== ""))
}

/** A process started otherwise than it ships, measured next to it (rows named `<process> (<label>)`). */
export interface Variant {
  readonly label: string
  /** Leave out the shipped environment (`shippedEnv`). */
  readonly withoutShippedEnv?: boolean
  readonly nodeFlags?: ReadonlyArray<string>
  /** Added to (or replacing) the environment it starts with. */
  readonly env?: NodeJS.ProcessEnv
}

/**
 * Variants of hosted-agent, left out of the targets' ratios: without the shipped environment, so
 * what it saves shows in the same run.
 */
export const variants: ReadonlyArray<Variant> = [{ label: "without runtimeEnv", withoutShippedEnv: true }]

/**
 * Measure every process once; run inside a scope (apiservers and processes stop with it).
 */
export const measure = Effect.fn("bench.footprint")(function*(options: Options) {
  const { say, work } = options
  yield* say("footprint: starting hub, hosting and managed apiservers")
  const [hub, hosting, managed] = yield* Effect.all([
    Apiserver.make({ name: "fp-hub", crds: [Fixtures.managedClusterAddOnCrd] }),
    Apiserver.make({ name: "fp-hosting" }),
    Apiserver.make({ name: "fp-managed" })
  ], { concurrency: "unbounded" }).pipe(Effect.mapError((error) => new BenchError({ message: error.message })))
  const clusters = { hub, hosting, managed }
  const tls = selfSigned(work, "fp-tls", ["localhost", "127.0.0.1"])

  /** A managed cluster of its own, and (for the split consumers) the mounted generated kubeconfig. */
  const install = Effect.fn(function*(name: string) {
    const cluster = `fp-${name}`
    const agentNamespace = `fp-${name}-agent`
    const { readerToken } = yield* HostedInstall.prepare(clusters, cluster, agentNamespace)
    const token = yield* Apiserver.serviceAccountToken(managed, agentNamespace, "cluster-proxy", 3600)
    const kubeconfig = Path.join(work, `${cluster}.kubeconfig`)
    Fs.writeFileSync(kubeconfig, Apiserver.kubeconfigForToken(managed, token), { mode: 0o600 })
    return { cluster, agentNamespace, kubeconfig, readerToken }
  }, Effect.mapError((error) => new BenchError({ message: error.message })))

  const cert = [`--cert=${tls.certFile}`, `--key=${tls.keyFile}`]
  const probeAt = (port: number) => `--health-probe-bind-address=127.0.0.1:${port}`
  const specs: Array<Spec> = []
  const idleNode = () => ["-e", "setInterval(() => {}, 1 << 30)"]
  specs.push({ name: "bare Node (floor)", args: idleNode, relay: false, shipped: false })
  // Labelled apart: the floor with the shipped settings, not the floor the target names.
  specs.push({ name: "bare Node (with runtimeEnv)", args: idleNode, relay: false, shipped: true })
  const p = yield* install("provisioner")
  specs.push({
    name: "managed-kubeconfig-provisioner",
    shipped: true,
    relay: false,
    args: ({ probe }) => ["managed-kubeconfig-provisioner", `--cluster-name=${p.cluster}`, `--target-namespace=${p.agentNamespace}`, `--kubeconfig=${hosting.kubeconfigPath}`, `--hub-kubeconfig=${hub.kubeconfigPath}`, probeAt(probe)]
  })
  const r = yield* install("relay")
  specs.push({
    name: "managed-apiserver-proxy",
    shipped: true,
    relay: true,
    args: ({ probe, relay }) => ["managed-apiserver-proxy", `--managed-kubeconfig=${r.kubeconfig}`, `--listen=127.0.0.1:${relay}`, probeAt(probe)]
  })
  const s = yield* install("proxy")
  specs.push({
    name: "service-proxy",
    shipped: true,
    relay: false,
    proxyCaller: s.readerToken,
    env: { POD_NAMESPACE: s.agentNamespace },
    args: ({ probe, proxy }) => ["service-proxy", ...cert, `--managed-kubeconfig=${s.kubeconfig}`, `--hub-kubeconfig=${hub.kubeconfigPath}`, `--listen=127.0.0.1:${proxy}`, probeAt(probe)]
  })
  const a = yield* install("lease")
  specs.push({
    name: "addon-agent",
    shipped: true,
    relay: false,
    args: ({ probe }) => ["addon-agent", `--spoke-kubeconfig=${a.kubeconfig}`, `--cluster-name=${a.cluster}`, `--lease-namespace=${a.agentNamespace}`, `--kubeconfig=${hosting.kubeconfigPath}`, "--enable-proxy-agent-health-check=false", probeAt(probe)]
  })
  // The service relay runs on the managed cluster; it reviews callers' tokens there (the install's
  // admin kubeconfig of the managed cluster stands in for its in-cluster identity).
  const sr = yield* install("service-relay")
  specs.push({
    name: "service-relay",
    shipped: true,
    relay: false,
    args: ({ probe, proxy }) => [
      "service-relay", `--kubeconfig=${managed.kubeconfigPath}`, `--trusted-caller-username=system:serviceaccount:${sr.agentNamespace}:cluster-proxy`,
      `--listen=127.0.0.1:${proxy}`, probeAt(probe)
    ]
  })
  const h = yield* install("hosted")
  const hostedArgs = (install: typeof h) => (ports: { readonly probe: number; readonly relay: number; readonly proxy: number }) => [
    "hosted-agent", `--cluster-name=${install.cluster}`, `--target-namespace=${install.agentNamespace}`, `--lease-namespace=${install.agentNamespace}`,
    `--kubeconfig=${hosting.kubeconfigPath}`, `--hub-kubeconfig=${hub.kubeconfigPath}`, "--enable-proxy-agent-health-check=false",
    `--apiserver-proxy-listen=127.0.0.1:${ports.relay}`, `--service-proxy-listen=127.0.0.1:${ports.proxy}`, ...cert, probeAt(ports.probe)
  ]
  specs.push({
    name: "hosted-agent",
    shipped: true,
    relay: true,
    proxyCaller: h.readerToken,
    env: { POD_NAMESPACE: h.agentNamespace },
    args: hostedArgs(h)
  })
  for (const [i, variant] of variants.entries()) {
    const v = yield* install(`hosted-v${i + 1}`)
    specs.push({
      name: `hosted-agent (${variant.label})`,
      shipped: variant.withoutShippedEnv !== true,
      relay: true,
      proxyCaller: v.readerToken,
      env: { ...variant.env, POD_NAMESPACE: v.agentNamespace },
      ...(variant.nodeFlags === undefined ? {} : { nodeFlags: variant.nodeFlags }),
      args: hostedArgs(v)
    })
  }

  // Start each alone and time it to ready, from what ships (package.json "bin").
  const entry = tetherEntry()
  const shipped = shippedEnv(options.repo)
  const bareEnv = Object.fromEntries(Object.entries(process.env).filter(([name]) => !Object.hasOwn(shipped, name)))
  yield* say(`footprint: shipped environment ${JSON.stringify(shipped)}`)
  const started: Array<{ readonly spec: Spec; readonly pid: number; readonly relayPort: number; readonly proxyPort: number; readonly readyMs: number; readonly rssReady: number }> = []
  for (const spec of specs) {
    const ports = { probe: yield* Children.freePort, relay: yield* Children.freePort, proxy: yield* Children.freePort }
    const bare = spec.name.startsWith("bare Node")
    const args = bare ? spec.args(ports) : [...(spec.nodeFlags ?? []), entry, ...spec.args(ports)]
    const begin = yield* Clock.currentTimeMillis
    const server = yield* Children.server(
      spec.name,
      process.execPath,
      args,
      bare ? { _tag: "Started" } : { _tag: "Answers", url: `http://127.0.0.1:${ports.probe}/readyz`, port: ports.probe },
      { env: { ...bareEnv, ...(spec.shipped ? shipped : {}), ...spec.env }, startupTimeout: "60 seconds" }
    )
    const readyMs = bare ? Number.NaN : (yield* Clock.currentTimeMillis) - begin
    // The floor has nothing to get ready for; its figures are the idle ones.
    const { rss } = bare ? { rss: Number.NaN } : yield* memory(server.pid)
    started.push({ spec, pid: server.pid, relayPort: ports.relay, proxyPort: ports.proxy, readyMs, rssReady: rss })
    if (!bare) yield* say(`footprint: ${spec.name} ready in ${readyMs} ms, ${mib(rss).toFixed(0)} MiB`)
  }

  // Idle together.
  const cpuBefore = yield* Effect.forEach(started, (one) => cpuMillis(one.pid))
  yield* say(`footprint: idle for ${Duration.format(options.idle)}`)
  yield* Effect.sleep(options.idle)
  const cpuAfter = yield* Effect.forEach(started, (one) => cpuMillis(one.pid))
  const idle = yield* Effect.forEach(started, (one) => memory(one.pid))

  // Load the relays one at a time.
  const results: Array<Measured> = []
  for (const [i, one] of started.entries()) {
    let rssLoad: number | undefined
    if (one.spec.relay) {
      yield* say(`footprint: TCP relay load through ${one.spec.name}`)
      yield* tlsLoad("TCP relay", { port: one.relayPort, ca: managed.caPem, path: "/version", connections: 64, requests: options.loadRequests, expect: 200 })
      rssLoad = (yield* memory(one.pid)).rss
    }
    if (one.spec.proxyCaller !== undefined) {
      // A kube-apiserver request: the caller's token reviewed, the request impersonated, RBAC allows it.
      yield* say(`footprint: service proxy load through ${one.spec.name}`)
      yield* tlsLoad("service proxy", {
        port: one.proxyPort,
        ca: tls.cert,
        path: "/api/v1/namespaces/default/pods",
        headers: {
          "cluster-proxy-proto": "https",
          "cluster-proxy-namespace": "default",
          "cluster-proxy-service": "kubernetes",
          "cluster-proxy-port": "443",
          authorization: `Bearer ${one.spec.proxyCaller}`
        },
        connections: 16,
        requests: options.loadRequests,
        expect: 200
      })
      rssLoad = (yield* memory(one.pid)).rss
    }
    const end = yield* memory(one.pid)
    results.push({
      name: one.spec.name,
      readyMs: one.readyMs,
      rssReadyMiB: mib(one.rssReady),
      rssIdleMiB: mib(idle[i]!.rss),
      rssLoadMiB: rssLoad === undefined ? undefined : mib(rssLoad),
      peakMiB: mib(end.hwm),
      idleCpuMsPerMinute: (cpuAfter[i]! - cpuBefore[i]!) / Duration.toMinutes(options.idle)
    })
  }
  return results
})
