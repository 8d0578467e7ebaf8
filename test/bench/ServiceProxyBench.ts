/**
 * The service proxy's rows of `npm run bench`: tether's service proxy (test/bench/ServiceProxyProcess.ts)
 * side by side with a Go `httputil.ReverseProxy` doing the same work (test/bench/tools.go
 * `serviceproxy`), both serving TLS, in front of the same TLS backend standing in for the
 * managed kube-apiserver, for two requests:
 * - a kube-apiserver request (`kubernetes` in `default`): the caller's token reviewed by a real
 *   kube-apiserver (answers cached), the caller impersonated, the proxy's own token sent on;
 * - a Service request in Relay mode: sent to the relay Service's `services/proxy` path with the
 *   client's credential moved to `Cluster-Proxy-Authorization` and the proxy's token set.
 *
 * Then, on one keep-alive connection at 50, 200 and 1,000 requests a second, the CPU that tether,
 * tether without busy polling and Go spend (what polling costs where wrk's runs never let a proxy
 * idle).
 *
 * The driver (test/bench/main.ts) hands over its load generator and measurement helpers.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Https from "node:https"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Yaml from "js-yaml"
import * as Apiserver from "../../src/testing/Apiserver.ts"
import { selfSigned } from "../support/local.ts"
import * as Children from "./Children.ts"
import * as Pauses from "./Pauses.ts"
import * as Report from "./Report.ts"

const here = Path.dirname(fileURLToPath(import.meta.url))

/** What one wrk run reports (as the driver parses it). */
export interface WrkRun {
  readonly requests: number
  readonly durationUs: number
  readonly connectErrors: number
  readonly readErrors: number
  readonly writeErrors: number
  readonly statusErrors: number
  readonly timeouts: number
  readonly histogram: Report.Histogram
}

export interface Endpoint {
  readonly path: Report.Path
  readonly port: number
  readonly groups: ReadonlyArray<number>
}

export interface Deps {
  readonly work: string
  readonly tools: string
  readonly rounds: number
  readonly conns: ReadonlyArray<number>
  readonly wrkSeconds: number
  readonly warmupSeconds: number
  readonly cacheTtl: string
  readonly nodeFlags: ReadonlyArray<string>
  /** The environment tether ships with (the chart's `runtimeEnv`). */
  readonly shippedEnv: Readonly<Record<string, string>>
  /** Path keys to measure (default: all but the diagnostic one). */
  readonly paths: ReadonlyArray<string> | undefined
  /** The requests to measure ({@link scenarios}, or some of them). */
  readonly scenarios: ReadonlyArray<Scenario>
  readonly bodyBytes: number
  readonly say: (line: string) => Effect.Effect<void>
  readonly wrk: (
    port: number,
    conns: number,
    seconds: number,
    env: NodeJS.ProcessEnv,
    scheme: "https"
  ) => Effect.Effect<WrkRun, Children.BenchError>
  readonly measure: <A, E>(
    endpoint: Endpoint,
    run: Effect.Effect<A, E>
  ) => Effect.Effect<{ readonly result: A; readonly cpuSeconds: number }, E>
}

export const paths = {
  direct: { key: "direct", label: "direct (the TLS backend)" },
  tether: { key: "tether", label: "tether service-proxy" },
  tetherWithoutRuntimeEnv: { key: "tether-no-runtime-env", label: "tether service-proxy, without runtimeEnv (variant)" },
  tetherNoBusyPoll: { key: "tether-no-busy-poll", label: "tether service-proxy, --busy-poll=0s (variant)" },
  floor: { key: "node-floor", label: "Node https + undici, nothing else (floor)" },
  go: { key: "go-tuned", label: "Go ReverseProxy, same work (1024 idle/host)" }
} satisfies Record<string, Report.Path>

/** Measured unless `--paths` names others. */
const defaultPaths: ReadonlyArray<string> = Object.values(paths).map((path) => path.key)

export interface Scenario {
  readonly key: "apiserver" | "relay"
  readonly label: string
}

export const scenarios: ReadonlyArray<Scenario> = [
  { key: "apiserver", label: "kube-apiserver request (TokenReview cached, impersonation)" },
  { key: "relay", label: "Service request in Relay mode (to the relay's services/proxy)" }
]

export interface Rows {
  readonly scenario: Scenario
  readonly rows: ReadonlyArray<Report.HttpResult>
  /** tether's collections and event-loop delay during its runs, by connection count. */
  readonly pauses: ReadonlyArray<{ readonly conns: number; readonly summary: Pauses.Summary }>
}

/** The routing headers of a scenario, as request.lua sends them (BENCH_ROUTE). */
const routing = (scenario: Scenario["key"]): Record<string, string> =>
  scenario === "apiserver"
    ? { "cluster-proxy-proto": "https", "cluster-proxy-namespace": "default", "cluster-proxy-service": "kubernetes", "cluster-proxy-port": "443" }
    : { "cluster-proxy-proto": "http", "cluster-proxy-namespace": "default", "cluster-proxy-service": "bench", "cluster-proxy-port": "8080" }

/** Requests each path and scenario serves before measuring, and the bound on that in seconds. */
const warmupRequests = 20_000
const warmupBound = 60

const probe = (port: number, headers: Record<string, string>) =>
  Effect.callback<{ readonly status: number; readonly bytes: number }, Children.BenchError>((resume) => {
    const req = Https.get(
      { host: "127.0.0.1", port, path: "/", headers, agent: false, timeout: 10_000, rejectUnauthorized: false },
      (res) => {
        let bytes = 0
        res.on("data", (chunk: Buffer) => {
          bytes += chunk.length
        })
        res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, bytes })))
      }
    )
    req.on("timeout", () => req.destroy(new Error("timed out")))
    req.on("error", (error) =>
      resume(Effect.fail(new Children.BenchError({ message: `request to port ${port} failed: ${error.message}` }))))
    return Effect.sync(() => req.destroy())
  })

/** The paced runs: one keep-alive connection, a request every 1/rate s, for what an idle-ish proxy costs. */
const pacedRates: ReadonlyArray<number> = [50, 200, 1000]
const pacedSeconds = 5

/** One paced run against `port`: the answers counted and the wall time it took (including the last answers). */
const paced = (port: number, rate: number, headers: Record<string, string>) =>
  Effect.callback<{ readonly answered: number; readonly seconds: number }, Children.BenchError>((resume) => {
    const agent = new Https.Agent({ keepAlive: true, maxSockets: 1 })
    const started = performance.now()
    let answered = 0
    let failure: Error | undefined
    const send = () => {
      const req = Https.get({ host: "127.0.0.1", port, path: "/", headers, agent, rejectUnauthorized: false }, (res) => {
        res.resume()
        res.on("end", () => void answered++)
      })
      req.on("error", (error) => void (failure ??= error))
    }
    const ticker = setInterval(send, 1000 / rate)
    let drain: NodeJS.Timeout | undefined
    const stop = setTimeout(() => {
      clearInterval(ticker)
      drain = setTimeout(() => {
        agent.destroy()
        resume(
          failure === undefined
            ? Effect.succeed({ answered, seconds: (performance.now() - started) / 1000 })
            : Effect.fail(new Children.BenchError({ message: `paced requests to port ${port} failed: ${failure.message}` }))
        )
      }, 200)
    }, pacedSeconds * 1000)
    return Effect.sync(() => {
      clearInterval(ticker)
      clearTimeout(stop)
      clearTimeout(drain)
      agent.destroy()
    })
  })

/**
 * Start the apiserver, backend and both proxies, check every path answers, then measure.
 * Lives as long as the current scope.
 */
export const run = Effect.fn("bench.serviceProxy")(function*(deps: Deps) {
  const { say, work } = deps
  yield* say("service proxy: starting a kube-apiserver for TokenReview, the TLS backend and the proxies")
  const apiserver = yield* Apiserver.make({ name: "bench-service-proxy" })
  const callerToken = yield* Apiserver.serviceAccountToken(apiserver, "bench", "caller", 3600)
  const dir = Path.join(work, "service-proxy")
  Fs.mkdirSync(dir, { recursive: true })
  const callerTokenFile = Path.join(dir, "caller-token")
  Fs.writeFileSync(callerTokenFile, `${callerToken}\n`, { mode: 0o600 })

  // The admin client certificate answers TokenReviews for both proxies.
  const admin = Yaml.load(apiserver.kubeconfigYaml) as {
    readonly users: ReadonlyArray<{ readonly user: Readonly<Record<string, string>> }>
  }
  const adminUser = admin.users[0]?.user ?? {}
  const file = (name: string, content: string) => {
    const path = Path.join(dir, name)
    Fs.writeFileSync(path, content, { mode: 0o600 })
    return path
  }
  const reviewCa = file("review-ca.pem", apiserver.caPem)
  const reviewCert = file("review.crt", Buffer.from(adminUser["client-certificate-data"] ?? "", "base64").toString("utf8"))
  const reviewKey = file("review.key", Buffer.from(adminUser["client-key-data"] ?? "", "base64").toString("utf8"))

  // The backend standing in for the managed apiserver, and the proxies' own token for it.
  const backendTls = selfSigned(dir, "backend", ["127.0.0.1"])
  const backend = yield* Children.server("TLS backend", deps.tools, [
    "https", "-listen", "127.0.0.1:0", "-size", String(deps.bodyBytes), "-cert", backendTls.certFile, "-key", backendTls.keyFile
  ], Children.printsPort)
  const proxyTokenFile = file("proxy-token", "bench-proxy-token\n")
  const managedKubeconfig = file("managed.kubeconfig", Yaml.dump({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "managed",
      cluster: { server: `https://127.0.0.1:${backend.port}`, "certificate-authority-data": Buffer.from(backendTls.cert).toString("base64") }
    }],
    users: [{ name: "proxy", user: { tokenFile: proxyTokenFile } }],
    contexts: [{ name: "managed", context: { cluster: "managed", user: "proxy" } }],
    "current-context": "managed"
  }))

  const serving = selfSigned(dir, "proxy", ["127.0.0.1", "localhost"])
  // Not beside the proxy's certificate and kubeconfig: a pod's Secret volumes are quiet, and
  // files written ten times a second there woke its file watches (which now ignore them).
  const pausesDir = Path.join(dir, "pauses")
  Fs.mkdirSync(pausesDir, { recursive: true })
  const pausesFile = Path.join(pausesDir, "tether-pauses.jsonl")
  const measured = deps.paths ?? defaultPaths
  const wanted = (path: Report.Path) => measured.includes(path.key)
  /** A tether service proxy started with `env` on top of the bench's own environment. */
  const startTether = Effect.fnUntraced(function*(name: string, env: NodeJS.ProcessEnv, flags: ReadonlyArray<string> = []) {
    const port = yield* Children.freePort
    const probePort = yield* Children.freePort
    const child = yield* Children.server(name, process.execPath, [
      ...deps.nodeFlags,
      Path.join(here, "ServiceProxyProcess.ts"),
      `--kubeconfig=${apiserver.kubeconfigPath}`,
      `--managed-kubeconfig=${managedKubeconfig}`,
      `--listen=127.0.0.1:${port}`,
      `--health-probe-bind-address=127.0.0.1:${probePort}`,
      `--cert=${serving.certFile}`,
      `--key=${serving.keyFile}`,
      `--token-review-cache-ttl=${deps.cacheTtl}`,
      ...flags
    ], { _tag: "Prints", pattern: /listening (\d+)/, port }, { env: { ...process.env, ...env } })
    return { ...child, port }
  })
  // As it ships (the chart's runtimeEnv, adaptive busy polling), recording its pauses; the
  // variant without the runtimeEnv; the one without busy polling (what polling buys and costs).
  const tether = yield* startTether("tether service-proxy", { ...deps.shippedEnv, BENCH_PAUSES: pausesFile })
  const variant = wanted(paths.tetherWithoutRuntimeEnv) ? yield* startTether("tether service-proxy (without runtimeEnv)", {}) : undefined
  // It records its pauses too (to a file nobody reads), so that the recorder's timer costs both
  // the same in the rows and paced runs that compare them.
  const sleeping = wanted(paths.tetherNoBusyPoll)
    ? yield* startTether("tether service-proxy (no busy polling)", { ...deps.shippedEnv, BENCH_PAUSES: Path.join(pausesDir, "no-busy-poll-pauses.jsonl") }, [
      "--busy-poll=0s"
    ])
    : undefined
  const startFloor = Effect.fnUntraced(function*() {
    const port = yield* Children.freePort
    return yield* Children.server("Node floor proxy", process.execPath, [
      ...deps.nodeFlags,
      Path.join(here, "NodeFloorProxy.ts"),
      `--listen-port=${port}`,
      `--cert=${serving.certFile}`,
      `--key=${serving.keyFile}`,
      `--upstream=https://127.0.0.1:${backend.port}`,
      `--upstream-ca=${backendTls.certFile}`,
      `--token-file=${proxyTokenFile}`
    ], { _tag: "Prints", pattern: /listening (\d+)/, port })
  })
  const floor = wanted(paths.floor) ? yield* startFloor() : undefined
  const go = yield* Children.server("Go service proxy", deps.tools, [
    "serviceproxy",
    "-listen", "127.0.0.1:0",
    "-cert", serving.certFile,
    "-key", serving.keyFile,
    "-upstream", `https://127.0.0.1:${backend.port}`,
    "-upstream-ca", backendTls.certFile,
    "-token-file", proxyTokenFile,
    "-review-url", apiserver.server,
    "-review-ca", reviewCa,
    "-review-cert", reviewCert,
    "-review-key", reviewKey,
    "-cache-ttl", deps.cacheTtl,
    "-idle-per-host", "1024"
  ], Children.printsPort)

  const endpoints: ReadonlyArray<Endpoint> = [
    { path: paths.direct, port: backend.port, groups: [] },
    { path: paths.tether, port: tether.port, groups: [tether.pid] },
    ...(variant === undefined ? [] : [{ path: paths.tetherWithoutRuntimeEnv, port: variant.port, groups: [variant.pid] }]),
    ...(sleeping === undefined ? [] : [{ path: paths.tetherNoBusyPoll, port: sleeping.port, groups: [sleeping.pid] }]),
    ...(floor === undefined ? [] : [{ path: paths.floor, port: floor.port, groups: [floor.pid] }]),
    { path: paths.go, port: go.port, groups: [go.pid] }
  ]

  // Every path answers both requests with the backend's body; both proxies refuse an
  // unauthenticated kube-apiserver request, so their figures are with authentication on.
  for (const scenario of deps.scenarios) {
    for (const endpoint of endpoints) {
      const answer = yield* probe(endpoint.port, { ...routing(scenario.key), authorization: `Bearer ${callerToken}` })
      if (answer.status !== 200 || answer.bytes !== deps.bodyBytes) {
        return yield* new Children.BenchError({
          message: `${endpoint.path.label} answered ${answer.status} with ${answer.bytes} bytes to the ${scenario.key} request` +
            (endpoint.path === paths.tether ? `; proxy output:\n${tether.output()}` : "")
        })
      }
    }
    // The floor authenticates nobody: it stands for what Node costs, not for a proxy.
    for (const endpoint of endpoints.filter((endpoint) => endpoint.path !== paths.direct && endpoint.path !== paths.floor)) {
      const anonymous = yield* probe(endpoint.port, routing("apiserver"))
      if (anonymous.status !== 401) {
        return yield* new Children.BenchError({
          message: `${endpoint.path.label} answered ${anonymous.status} to a kube-apiserver request without a token, not 401`
        })
      }
    }
  }

  const env = (scenario: Scenario) => ({ BENCH_TOKEN_FILE: callerTokenFile, BENCH_ROUTE: scenario.key })
  // Warm-up by request count, not time: a fresh Node process serving TLS on both sides needs
  // some 10k requests before its CPU per request settles (JIT), where Go is at speed from the
  // start. On a busy shared machine a timed warm-up left tether's code cold (a few hundred
  // requests), so its first measurements ran interpreted at several times the CPU per request,
  // which slowed it further. Every path gets the same warm-up, bounded in time.
  yield* say(`service proxy: warming up every path (at least ${warmupRequests} requests each, at most ${warmupBound} s)`)
  for (const scenario of deps.scenarios) {
    for (const endpoint of endpoints) {
      const started = Date.now()
      let served = 0
      while (served < warmupRequests && Date.now() - started < warmupBound * 1000) {
        served += (yield* deps.wrk(endpoint.port, 32, Math.max(3, deps.warmupSeconds), env(scenario), "https")).requests
      }
      yield* deps.wrk(endpoint.port, 1, Math.max(2, deps.warmupSeconds), env(scenario), "https")
    }
  }

  const results = new Map<string, Array<WrkRun & { readonly cpuUs: number }>>()
  const tetherRuns = new Map<string, Array<readonly [number, number]>>()
  // Every path's run of a row comes next to the others', in turns that reverse each round: this
  // machine's speed drifts over minutes (the Go proxy's CPU per request by 1.6× within one run),
  // and a ratio of runs made minutes apart measured the drift as much as the proxies.
  const inTurn = <A>(round: number, items: ReadonlyArray<A>): ReadonlyArray<A> => (round % 2 === 1 ? items : [...items].reverse())
  for (let round = 1; round <= deps.rounds; round++) {
    for (const scenario of deps.scenarios) {
      for (const conns of deps.conns) {
        for (const endpoint of inTurn(round, endpoints)) {
          const started = Date.now()
          const { cpuSeconds, result } = yield* deps.measure(
            endpoint,
            deps.wrk(endpoint.port, conns, deps.wrkSeconds, env(scenario), "https")
          )
          // tether's collections in this run, so that an outlying round can be told apart.
          let inside = ""
          if (endpoint.path === paths.tether) {
            const run = [started, Date.now()] as const
            const key = `${scenario.key}/${conns}`
            tetherRuns.set(key, [...(tetherRuns.get(key) ?? []), run])
            const pauses = Pauses.summarize(pausesFile, [run])
            if (pauses !== undefined) {
              inside = `; ${pauses.minorPerSecond.toFixed(0)} young GCs/s, ${pauses.majors} full, ${(pauses.gcShare * 100).toFixed(1)}% in GC, young generation ${pauses.youngMiB.toFixed(1)} MiB, ` +
                `${pauses.accepted} connections accepted, ${pauses.connected} opened upstream, ` +
                `${(pauses.promotedBytes / Math.max(1, result.requests)).toFixed(0)} B/request promoted`
            }
          }
          const cpuUs = (cpuSeconds * 1e6) / Math.max(1, result.requests)
          const key = `${scenario.key}/${endpoint.path.key}/${conns}`
          results.set(key, [...(results.get(key) ?? []), { ...result, cpuUs }])
          const errors = result.connectErrors + result.readErrors + result.writeErrors + result.statusErrors + result.timeouts
          yield* say(
            `  round ${round} ${scenario.key} ${endpoint.path.label} c=${conns}: ` +
              `${(result.requests / (result.durationUs / 1e6)).toFixed(0)} req/s` +
              `${Number.isFinite(cpuUs) ? `, proxy CPU ${cpuUs.toFixed(0)} µs/req` : ""}${inside}${errors > 0 ? `, ${errors} errors` : ""}`
          )
        }
      }
    }
  }
  // What the proxies cost at paced rates on one connection (the kube-apiserver request, so only
  // when it is measured): where busy polling spends CPU that the wrk runs, never idle, do not show.
  const pacedPaths = deps.scenarios.some((scenario) => scenario.key === "apiserver")
    ? endpoints.filter((endpoint) => endpoint.path === paths.tether || endpoint.path === paths.tetherNoBusyPoll || endpoint.path === paths.go)
    : []
  const pacedRuns = new Map<string, Array<{ readonly perSecond: number; readonly cpuMsPerSecond: number }>>()
  const headers = { ...routing("apiserver"), authorization: `Bearer ${callerToken}` }
  for (let round = 1; round <= deps.rounds; round++) {
    for (const rate of pacedRates) {
      for (const endpoint of inTurn(round, pacedPaths)) {
        const { cpuSeconds, result } = yield* deps.measure(endpoint, paced(endpoint.port, rate, headers))
        const run = { perSecond: result.answered / result.seconds, cpuMsPerSecond: (cpuSeconds * 1000) / result.seconds }
        const key = `${endpoint.path.key}/${rate}`
        pacedRuns.set(key, [...(pacedRuns.get(key) ?? []), run])
        yield* say(`  round ${round} paced ${endpoint.path.label} ${rate}/s: ${run.perSecond.toFixed(0)} answers/s, proxy CPU ${run.cpuMsPerSecond.toFixed(0)} ms/s`)
      }
    }
  }
  const pacedRows: ReadonlyArray<Report.Paced> = pacedPaths.flatMap((endpoint) =>
    pacedRates.map((rate) => {
      const runs = pacedRuns.get(`${endpoint.path.key}/${rate}`) ?? []
      return {
        path: endpoint.path,
        rate,
        perSecond: Report.median(runs.map((run) => run.perSecond)),
        cpuMsPerSecond: Report.median(runs.map((run) => run.cpuMsPerSecond))
      }
    })
  )
  const pauses = new Map(deps.scenarios.map((scenario) => [
    scenario.key,
    deps.conns.flatMap((conns) => {
      const summary = Pauses.summarize(pausesFile, tetherRuns.get(`${scenario.key}/${conns}`) ?? [])
      return summary === undefined ? [] : [{ conns, summary }]
    })
  ]))
  return { results, endpoints, pauses, paced: pacedRows }
})

/** Pool the runs of each path and connection count into report rows. */
export const rows = (
  measured: ReadonlyArray<Scenario>,
  results: ReadonlyMap<string, ReadonlyArray<WrkRun & { readonly cpuUs: number }>>,
  endpoints: ReadonlyArray<Endpoint>,
  conns: ReadonlyArray<number>,
  summarize: (runs: ReadonlyArray<WrkRun & { readonly cpuUs: number }>) => Omit<Report.HttpResult, "path" | "conns">,
  pauses: ReadonlyMap<Scenario["key"], Rows["pauses"]>
): ReadonlyArray<Rows> =>
  measured.map((scenario) => ({
    scenario,
    pauses: pauses.get(scenario.key) ?? [],
    rows: endpoints.flatMap((endpoint) =>
      conns.map((count): Report.HttpResult => ({
        path: endpoint.path,
        conns: count,
        ...summarize(results.get(`${scenario.key}/${endpoint.path.key}/${count}`) ?? [])
      }))
    )
  }))
