/**
 * `npm run bench`: tether's two relays side by side with their peers, on loopback, in one run.
 *
 * - TCP: direct vs `tether managed-apiserver-proxy` (the real CLI) vs socat vs haproxy (tcp
 *   mode). Bulk throughput with iperf3 (one stream) and the round trip of 1 KiB through an echo
 *   server at 1, 16 and 256 connections.
 * - HTTP: direct vs `tether service-relay` (its production layers with a static Service
 *   resolver, caller TokenReview on against a real kube-apiserver, answers cached) vs nginx as a
 *   keep-alive reverse proxy vs Go's `httputil.ReverseProxy`, twice: with the transport settings
 *   of the Go prototype (per-host idle pool left at Go's default of 2) and with a per-host pool
 *   of 1024. wrk with keep-alive at 1, 32 and 128 connections; the backend is nginx answering a
 *   1 KiB body.
 * - Service proxy: direct vs tether's service proxy (its production layers in hosted Relay mode,
 *   with and without the chart's runtimeEnv) vs a bare Node proxy (the floor) vs a Go
 *   `httputil.ReverseProxy` doing the same work, for a kube-apiserver request
 *   (TokenReview cached, impersonation) and a Relay-mode Service request, over TLS at 1, 32 and
 *   128 connections ({@link ServiceProxyBench}).
 *
 * Paths are measured in rounds (each round visits every path), and each figure is the median
 * over rounds, so slow drift of a shared machine lands on every path alike. The service proxy's
 * paths take turns within each row (request and connection count), in an order reversed every
 * round. Every process binds to 127.0.0.1, every load run is bounded in count and time, and
 * every child process is stopped when the run ends, also on failure or Ctrl-C.
 *
 * Missing tools are installed from Debian (`apt-get install socat haproxy iperf3 wrk
 * nginx-light golang-go`); nothing else is downloaded. The load tools (echo server, round-trip
 * client, the Go reverse proxy) are built from `tools.go` into a temporary folder.
 *
 * Options: `--quick` (one short round, results not written to RESULTS.md), `--only=tcp|http|service-proxy|footprint`,
 * `--rounds=N`, `--out=<file>`, `--profile=<dir>` (tether's processes write V8 CPU profiles
 * there, `node --cpu-prof`, when they stop), `--token-review-cache-ttl=<Go duration>` (the
 * relay's, default 10s as in production), `--paths=direct,tether,...` (measure only these paths; keys:
 * direct, tether, hosted-agent, hosted-agent-semi1, socat, haproxy, nginx, go-prototype, go-tuned, node; the service
 * proxy's also tether-no-runtime-env, tether-no-busy-poll and node-floor), `--conns=1,32` (HTTP: measure only
 * these of the concurrencies 1, 32 and 128), `--requests=apiserver,relay` (the service proxy: measure only these
 * requests).
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { DateTime, Duration, Effect } from "effect"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as BusyPoll from "../../src/http/BusyPoll.ts"
import * as Apiserver from "../../src/testing/Apiserver.ts"
import * as EnvtestAssets from "../../src/testing/EnvtestAssets.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import * as Children from "./Children.ts"
import { BenchError } from "./Children.ts"
import * as Cpu from "./Cpu.ts"
import * as Footprint from "./Footprint.ts"
import * as Report from "./Report.ts"
import * as ServiceProxyBench from "./ServiceProxyBench.ts"

// ---------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------

const argv = process.argv.slice(2)
const option = (name: string): string | undefined => {
  const prefix = `--${name}=`
  return argv.find((arg) => arg.startsWith(prefix))?.slice(prefix.length)
}
const known = new Set(["--quick"])
for (const arg of argv) {
  if (!known.has(arg) && !/^--(only|rounds|out|profile|token-review-cache-ttl|paths|conns|requests|footprint-idle)=/.test(arg)) {
    process.stderr.write(
      `unknown option ${arg}; options: --quick --only=tcp|http|service-proxy|footprint --rounds=N --out=<file> --profile=<dir> --token-review-cache-ttl=<duration> --paths=<key,...> --conns=<n,...> --requests=apiserver,relay --footprint-idle=<seconds>\n`
    )
    process.exit(2)
  }
}
const quick = argv.includes("--quick")
const only = option("only")
if (only !== undefined && only !== "tcp" && only !== "http" && only !== "service-proxy" && only !== "footprint") {
  process.stderr.write("--only must be tcp, http, service-proxy or footprint\n")
  process.exit(2)
}
const rounds = Math.max(1, Math.min(10, Number(option("rounds") ?? (quick ? 1 : 5)) || 1))
/** Each footprint round starts three apiservers and idles for `--footprint-idle`: at most three. */
const footprintRounds = Math.min(rounds, 3)
const footprintIdle = Duration.seconds(Math.max(1, Number(option("footprint-idle") ?? (quick ? 5 : 60)) || 60))

const here = Path.dirname(fileURLToPath(import.meta.url))
const repo = Path.resolve(here, "../..")
const profileDir = option("profile")
const cacheTtl = option("token-review-cache-ttl") ?? "10s"
const onlyPaths = option("paths")?.split(",")
const requestKeys = option("requests")?.split(",")
const unknownRequest = requestKeys?.find((key) => !ServiceProxyBench.scenarios.some((scenario) => scenario.key === key))
if (unknownRequest !== undefined) {
  process.stderr.write(`--requests takes apiserver and relay, not ${unknownRequest}\n`)
  process.exit(2)
}
const serviceProxyRequests = ServiceProxyBench.scenarios.filter((scenario) => requestKeys?.includes(scenario.key) ?? true)
/** The endpoints the options ask for. */
const selected = <A extends { readonly path: Report.Path }>(endpoints: ReadonlyArray<A>): ReadonlyArray<A> =>
  onlyPaths === undefined ? endpoints : endpoints.filter((endpoint) => onlyPaths.includes(endpoint.path.key))
const resultsPath = option("out") ??
  (quick || profileDir !== undefined || option("token-review-cache-ttl") !== undefined || onlyPaths !== undefined || requestKeys !== undefined ? undefined : Path.join(here, "RESULTS.md"))
/** Node flags for tether's own processes. */
const nodeFlags = profileDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${Path.resolve(profileDir)}`]

/** Seconds of each measured run (and the bound on it). */
const seconds = {
  iperf: quick ? 2 : 5,
  roundTrip: quick ? 1.5 : 3,
  wrk: quick ? 2 : 5,
  wrkWarmup: quick ? 1 : 3
}
/** Count bounds of the round-trip client (time usually ends a run first). */
const roundTripCount = (conns: number) => (conns === 1 ? 200_000 : 600_000)
const roundTripConns = [1, 16, 256] as const
const httpConns = [1, 32, 128].filter((conns) => option("conns")?.split(",").includes(String(conns)) ?? true)
const bodyBytes = 1024

const say = (line: string) => Effect.sync(() => process.stderr.write(`${line}\n`))

// ---------------------------------------------------------------------------------------------
// tools
// ---------------------------------------------------------------------------------------------

/** Binary on PATH -> Debian package that provides it. */
const packages: ReadonlyArray<readonly [string, string]> = [
  ["socat", "socat"],
  ["haproxy", "haproxy"],
  ["iperf3", "iperf3"],
  ["wrk", "wrk"],
  ["nginx", "nginx-light"],
  ["go", "golang-go"],
  ["setpriv", "util-linux"]
]

const ensurePackages = Effect.gen(function*() {
  const missing = packages.filter(([binary]) => !Children.onPath(binary)).map(([, name]) => name)
  if (missing.length === 0) return
  const install = `apt-get install -y --no-install-recommends ${missing.join(" ")}`
  if (process.getuid?.() !== 0) {
    return yield* new BenchError({ message: `missing tools; as root run: apt-get update && ${install}` })
  }
  yield* say(`installing from Debian: ${missing.join(" ")}`)
  const env = { DEBIAN_FRONTEND: "noninteractive" }
  yield* Children.run("apt-get", ["update"], { timeout: "5 minutes", env })
  yield* Children.run("apt-get", ["install", "-y", "--no-install-recommends", ...missing], { timeout: "15 minutes", env })
})

const firstLine = (text: string) => text.split("\n").find((line) => line.trim() !== "")?.trim() ?? "?"

const version = (command: string, args: ReadonlyArray<string>, pick: (output: string) => string = firstLine) =>
  Children.run(command, args, { timeout: "10 seconds", allowFailure: true }).pipe(
    Effect.map((output) => pick(`${output.stdout}\n${output.stderr}`)),
    Effect.orElseSucceed(() => "?")
  )

const describeMachine = Effect.gen(function*() {
  const cpuinfo = Fs.readFileSync("/proc/cpuinfo", "utf8")
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? Os.cpus()[0]?.model ?? "?"
  const nproc = (yield* Children.run("nproc", [], { timeout: "5 seconds" })).stdout.trim()
  const versions = [
    `node ${process.version}`,
    yield* version("go", ["version"], (out) => firstLine(out).replace(/^go version /, "")),
    yield* version("socat", ["-V"], (out) => /socat version ([\d.]+)/.exec(out)?.[1] ? `socat ${/socat version ([\d.]+)/.exec(out)?.[1]}` : "socat ?"),
    yield* version("haproxy", ["-v"], (out) => firstLine(out).replace(/^HAProxy version (\S+).*/, "haproxy $1")),
    yield* version("nginx", ["-v"], (out) => firstLine(out).replace(/^nginx version: nginx\//, "nginx ")),
    yield* version("iperf3", ["--version"], (out) => firstLine(out).replace(/^(iperf \S+).*/, "$1")),
    yield* version("wrk", ["-v"], (out) => firstLine(out).replace(/^(wrk \S+).*/, "$1"))
  ]
  return [
    `${model}, nproc ${nproc}, ${Math.round(Os.totalmem() / 2 ** 30)} GiB RAM, Linux ${Os.release()}`,
    versions.join(", "),
    `load average at the start: ${Os.loadavg().map((load) => load.toFixed(2)).join(", ")}; ` +
      "load generators, servers and relays all share these cores"
  ]
})

const buildTools = Effect.fn("bench.buildTools")(function*(work: string) {
  const out = Path.join(work, "tools")
  yield* Children.run("go", ["build", "-o", out, Path.join(here, "tools.go")], {
    timeout: "5 minutes",
    cwd: work,
    env: { GOCACHE: Path.join(work, "gocache"), GOPATH: Path.join(work, "gopath"), GOPROXY: "off", GO111MODULE: "off", GOFLAGS: "" }
  })
  return out
})

const workDir = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-bench-"))
    Fs.chmodSync(dir, 0o755) // nginx workers run as another user
    Children.removeOnDeath(dir)
    return dir
  }),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

const paths = {
  direct: { key: "direct", label: "direct" },
  tetherTcp: { key: "tether", label: "tether managed-apiserver-proxy" },
  hostedAgentTcp: { key: "hosted-agent", label: "tether hosted-agent (its TCP relay)" },
  hostedAgentSemiTcp: { key: "hosted-agent-semi1", label: "tether hosted-agent, node --max-semi-space-size=1 (variant)" },
  socat: { key: "socat", label: "socat" },
  haproxy: { key: "haproxy", label: "haproxy (tcp mode)" },
  tetherHttp: { key: "tether", label: "tether service-relay" },
  nginx: { key: "nginx", label: "nginx (keep-alive proxy)" },
  goPrototype: { key: "go-prototype", label: "Go ReverseProxy (prototype transport)" },
  goTuned: { key: "go-tuned", label: "Go ReverseProxy (1024 idle/host)" },
  nodeTcp: { key: "node", label: "bare Node `net` pipe (reference)" },
  nodeHttp: { key: "node", label: "bare Node `http` proxy (reference)" }
} satisfies Record<string, Report.Path>

interface Endpoint {
  readonly path: Report.Path
  readonly port: number
  /** Process groups doing the relaying, whose CPU time is charged to this path. */
  readonly groups: ReadonlyArray<number>
}

/** Busy share of the machine under which a measurement counts as started on a quiet machine. */
const quietThreshold = 0.15
const quietWaitMillis = quick ? 2_000 : 20_000
let measurements = 0
let noisy = 0

/**
 * Run one measurement through `endpoint` after waiting (bounded) for a quiet machine; also
 * returns the CPU seconds the relay's processes spent meanwhile.
 */
const measure = <A, E>(endpoint: Endpoint, run: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const busy = yield* Cpu.awaitQuiet(quietThreshold, quietWaitMillis)
    measurements++
    if (busy >= quietThreshold) {
      noisy++
      yield* say(`  (machine ${(busy * 100).toFixed(0)}% busy before this measurement)`)
    }
    const before = Cpu.groupSeconds(endpoint.groups)
    const result = yield* run
    return { result, cpuSeconds: endpoint.groups.length === 0 ? Number.NaN : Cpu.groupSeconds(endpoint.groups) - before }
  })

/**
 * The three TCP relays in front of `target` (which need not listen yet: each relay dials per
 * connection). Lives as long as the current scope.
 */
const tcpRelays = Effect.fn("bench.tcpRelays")(function*(work: string, name: string, target: number) {
  const kubeconfig = Path.join(work, `${name}.kubeconfig`)
  Fs.writeFileSync(
    kubeconfig,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      `- name: bench\n  cluster:\n    server: https://127.0.0.1:${target}`,
      "contexts:",
      "- name: bench\n  context:\n    cluster: bench\n    user: bench",
      "users:",
      "- name: bench\n  user: {}",
      "current-context: bench",
      ""
    ].join("\n")
  )
  const tetherPort = yield* Children.freePort
  const probePort = yield* Children.freePort
  const tether = yield* Children.server("tether managed-apiserver-proxy", process.execPath, [
    ...nodeFlags,
    tetherEntry(),
    "managed-apiserver-proxy",
    `--managed-kubeconfig=${kubeconfig}`,
    `--listen=127.0.0.1:${tetherPort}`,
    `--health-probe-bind-address=127.0.0.1:${probePort}`
  ], { _tag: "Prints", pattern: /relay listening/, port: tetherPort })

  // The same relay inside the hosted-agent runtime (supervisor, shared probes), fed the same file.
  const hostedPort = yield* Children.freePort
  const hostedProbePort = yield* Children.freePort
  const hosted = yield* Children.server("tether hosted-agent", process.execPath, [
    ...nodeFlags,
    tetherEntry(),
    "hosted-agent",
    "--components=apiserver-proxy",
    `--managed-kubeconfig=${kubeconfig}`,
    `--apiserver-proxy-listen=127.0.0.1:${hostedPort}`,
    `--health-probe-bind-address=127.0.0.1:${hostedProbePort}`
  ], { _tag: "Prints", pattern: /relay listening/, port: hostedPort })

  // The same again with the young generation capped (the footprint bench's variant): its cost here.
  const semiPort = yield* Children.freePort
  const semiProbePort = yield* Children.freePort
  const semi = yield* Children.server("tether hosted-agent (semi-space 1)", process.execPath, [
    ...nodeFlags,
    "--max-semi-space-size=1",
    tetherEntry(),
    "hosted-agent",
    "--components=apiserver-proxy",
    `--managed-kubeconfig=${kubeconfig}`,
    `--apiserver-proxy-listen=127.0.0.1:${semiPort}`,
    `--health-probe-bind-address=127.0.0.1:${semiProbePort}`
  ], { _tag: "Prints", pattern: /relay listening/, port: semiPort })

  const socatPort = yield* Children.freePort
  const socat = yield* Children.server("socat", "socat", [
    `TCP-LISTEN:${socatPort},bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay`,
    `TCP:127.0.0.1:${target},nodelay`
  ], { _tag: "Accepts", port: socatPort })

  const haproxyPort = yield* Children.freePort
  const haproxyConfig = Path.join(work, `${name}-haproxy.cfg`)
  Fs.writeFileSync(
    haproxyConfig,
    [
      "global",
      "  maxconn 8192",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 60s",
      "  timeout server 60s",
      "frontend relay",
      `  bind 127.0.0.1:${haproxyPort}`,
      "  default_backend target",
      "backend target",
      `  server target 127.0.0.1:${target}`,
      ""
    ].join("\n")
  )
  const haproxy = yield* Children.server("haproxy", "haproxy", ["-f", haproxyConfig, "-db"], { _tag: "Accepts", port: haproxyPort })

  const baseline = yield* Children.server("Node baseline (tcp)", process.execPath, [
    ...nodeFlags,
    Path.join(here, "NodeBaseline.ts"),
    "tcp",
    `--target=127.0.0.1:${target}`
  ], Children.printsPort)

  return [
    { path: paths.direct, port: target, groups: [] },
    { path: paths.tetherTcp, port: tetherPort, groups: [tether.pid] },
    { path: paths.hostedAgentTcp, port: hostedPort, groups: [hosted.pid] },
    { path: paths.hostedAgentSemiTcp, port: semiPort, groups: [semi.pid] },
    { path: paths.socat, port: socatPort, groups: [socat.pid] },
    { path: paths.haproxy, port: haproxyPort, groups: [haproxy.pid] },
    { path: paths.nodeTcp, port: baseline.port, groups: [baseline.pid] }
  ] satisfies ReadonlyArray<Endpoint>
})

const iperf = Effect.fn("bench.iperf")(function*(port: number, direction: Report.Direction) {
  const output = yield* Children.run(
    "iperf3",
    ["-c", "127.0.0.1", "-p", String(port), "-t", String(seconds.iperf), "-O", "1", "-J", ...(direction === "download" ? ["-R"] : [])],
    { timeout: Duration.seconds(seconds.iperf + 30) }
  )
  const result = JSON.parse(output.stdout) as {
    end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { bytes?: number } }
  }
  const bps = result.end?.sum_received?.bits_per_second
  const bytes = result.end?.sum_sent?.bytes // omitted second included: the CPU was spent on it too
  if (bps === undefined || bytes === undefined) return yield* new BenchError({ message: `iperf3 through port ${port} gave no result` })
  return { gbps: bps / 1e9, bytes }
})

interface RttOutput {
  readonly samples: number
  /** Round trips including the warm-up. */
  readonly total: number
  readonly errors: number
  readonly perSecond: number
  readonly p50us: number
  readonly p99us: number
  readonly firstError?: string
}

const roundTrip = Effect.fn("bench.roundTrip")(function*(tools: string, port: number, conns: number) {
  const output = yield* Children.run(tools, [
    "rtt",
    "-addr",
    `127.0.0.1:${port}`,
    "-conns",
    String(conns),
    "-size",
    String(bodyBytes),
    "-count",
    String(roundTripCount(conns)),
    "-duration",
    `${seconds.roundTrip}s`,
    "-warmup",
    "500ms"
  ], { timeout: Duration.seconds(seconds.roundTrip + 30) })
  return JSON.parse(output.stdout) as RttOutput
})

const tcpBench = Effect.fn("bench.tcp")(function*(work: string, tools: string) {
  yield* say("TCP: bulk throughput (iperf3)")
  const throughput = yield* Effect.scoped(Effect.gen(function*() {
    const target = yield* Children.freePort
    const endpoints = selected(yield* tcpRelays(work, "iperf", target))
    yield* Children.server("iperf3 server", "iperf3", ["-s", "-B", "127.0.0.1", "-p", String(target)], {
      _tag: "Accepts",
      port: target
    })
    const directions: ReadonlyArray<Report.Direction> = ["upload", "download"]
    const key = (endpoint: Endpoint, direction: Report.Direction) => `${endpoint.path.key}/${direction}`
    const gbps = new Map<string, Array<number>>()
    const cpu = new Map<string, Array<number>>()
    for (let round = 1; round <= rounds; round++) {
      for (const direction of directions) {
        for (const endpoint of endpoints) {
          const { cpuSeconds, result } = yield* measure(endpoint, iperf(endpoint.port, direction))
          const perGB = cpuSeconds / (result.bytes / 1e9)
          gbps.set(key(endpoint, direction), [...(gbps.get(key(endpoint, direction)) ?? []), result.gbps])
          cpu.set(key(endpoint, direction), [...(cpu.get(key(endpoint, direction)) ?? []), perGB])
          yield* say(
            `  round ${round} ${direction} ${endpoint.path.label}: ${result.gbps.toFixed(2)} Gbit/s` +
              (Number.isFinite(perGB) ? `, relay CPU ${perGB.toFixed(2)} s/GB` : "")
          )
        }
      }
    }
    return directions.flatMap((direction) =>
      endpoints.map((endpoint): Report.Throughput => ({
        path: endpoint.path,
        direction,
        gbps: gbps.get(key(endpoint, direction)) ?? [],
        cpuPerGB: cpu.get(key(endpoint, direction)) ?? []
      }))
    )
  }))

  yield* say("TCP: 1 KiB round trips")
  const roundTrips = yield* Effect.scoped(Effect.gen(function*() {
    const target = yield* Children.freePort
    const endpoints = selected(yield* tcpRelays(work, "echo", target))
    yield* Children.server("echo server", tools, ["echo", "-listen", `127.0.0.1:${target}`], Children.printsPort)
    const results = new Map<string, Array<RttOutput & { readonly cpuUs: number }>>()
    for (let round = 1; round <= rounds; round++) {
      for (const endpoint of endpoints) {
        for (const conns of roundTripConns) {
          const { cpuSeconds, result } = yield* measure(endpoint, roundTrip(tools, endpoint.port, conns))
          const cpuUs = (cpuSeconds * 1e6) / Math.max(1, result.total)
          const key = `${endpoint.path.key}/${conns}`
          results.set(key, [...(results.get(key) ?? []), { ...result, cpuUs }])
          yield* say(
            `  round ${round} ${endpoint.path.label} c=${conns}: p50 ${result.p50us.toFixed(0)} µs, p99 ${result.p99us.toFixed(0)} µs, ` +
              `${result.perSecond.toFixed(0)}/s${Number.isFinite(cpuUs) ? `, relay CPU ${cpuUs.toFixed(1)} µs/trip` : ""}` +
              `${result.errors > 0 ? `, ${result.errors} errors (${result.firstError})` : ""}`
          )
        }
      }
    }
    return endpoints.flatMap((endpoint) =>
      roundTripConns.map((conns): Report.RoundTrip => {
        const runs = results.get(`${endpoint.path.key}/${conns}`) ?? []
        return {
          path: endpoint.path,
          conns,
          p50us: Report.median(runs.map((run) => run.p50us)),
          p99us: Report.median(runs.map((run) => run.p99us)),
          perSecond: Report.median(runs.map((run) => run.perSecond)),
          cpuUs: Report.median(runs.map((run) => run.cpuUs)),
          errors: runs.reduce((sum, run) => sum + run.errors, 0)
        }
      })
    )
  }))
  return { throughput, roundTrips }
})

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

const nginxConfig = (dir: string, body: ReadonlyArray<string>, workers: string) =>
  [
    `worker_processes ${workers};`,
    "daemon off;",
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    "events { worker_connections 4096; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${dir}/body;`,
    `  proxy_temp_path ${dir}/proxy;`,
    `  fastcgi_temp_path ${dir}/fastcgi;`,
    `  uwsgi_temp_path ${dir}/uwsgi;`,
    `  scgi_temp_path ${dir}/scgi;`,
    "  keepalive_requests 10000000;",
    ...body.map((line) => `  ${line}`),
    "}",
    ""
  ].join("\n")

const nginx = Effect.fn("bench.nginx")(function*(work: string, name: string, body: ReadonlyArray<string>, workers: string, port: number) {
  const dir = Path.join(work, name)
  Fs.mkdirSync(dir, { mode: 0o755 })
  Fs.writeFileSync(Path.join(dir, "nginx.conf"), nginxConfig(dir, body, workers))
  return yield* Children.server(name, "nginx", ["-p", dir, "-c", Path.join(dir, "nginx.conf"), "-e", Path.join(dir, "error.log")], {
    _tag: "Accepts",
    port
  })
})

interface Answer {
  readonly status: number
  readonly bytes: number
}

/** One request with the benchmark's headers (the token only when given). */
const probe = (port: number, headers: Http.OutgoingHttpHeaders) =>
  Effect.callback<Answer, BenchError>((resume) => {
    const req = Http.get({ host: "127.0.0.1", port, path: "/", headers, agent: false, timeout: 10_000 }, (res) => {
      let bytes = 0
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.length
      })
      res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, bytes })))
    })
    req.on("timeout", () => req.destroy(new Error("timed out")))
    req.on("error", (error) => resume(Effect.fail(new BenchError({ message: `request to port ${port} failed: ${error.message}` }))))
    return Effect.sync(() => req.destroy())
  })

interface WrkOutput {
  readonly requests: number
  readonly durationUs: number
  readonly p50us: number
  readonly p99us: number
  readonly connectErrors: number
  readonly readErrors: number
  readonly writeErrors: number
  readonly statusErrors: number
  readonly timeouts: number
  readonly histogram: Report.Histogram
}

const wrkScript = Path.join(here, "request.lua")

const wrkArgs = (port: number, conns: number, duration: number, scheme: "http" | "https" = "http") => [
  "-t1",
  `-c${conns}`,
  `-d${duration}s`,
  "--timeout",
  "5s",
  "-s",
  wrkScript,
  `${scheme}://127.0.0.1:${port}/`
]

const wrk = Effect.fn("bench.wrk")(function*(
  port: number,
  conns: number,
  duration: number,
  env: NodeJS.ProcessEnv,
  scheme: "http" | "https" = "http"
) {
  const output = yield* Children.run("wrk", wrkArgs(port, conns, duration, scheme), { timeout: Duration.seconds(duration + 30), env })
  const lines = output.stdout.split("\n")
  const line = lines.find((text) => text.startsWith("BENCH_JSON "))
  const buckets = lines.find((text) => text.startsWith("BENCH_HISTOGRAM "))
  if (line === undefined || buckets === undefined) {
    return yield* new BenchError({ message: `wrk gave no result:\n${output.stdout}\n${output.stderr}` })
  }
  const histogram = new Map(
    buckets.slice("BENCH_HISTOGRAM ".length).split(",").filter((bucket) => bucket !== "").map((bucket) => {
      const [value, count] = bucket.split(":").map(Number)
      return [value ?? 0, count ?? 0] as const
    })
  )
  return { ...(JSON.parse(line.slice("BENCH_JSON ".length)) as Omit<WrkOutput, "histogram">), histogram }
})

/** TokenReviews the apiserver has answered so far (from its own `/metrics`). */
const tokenReviews = (apiserver: Apiserver.ApiserverInfo) =>
  Effect.gen(function*() {
    const options: Https.RequestOptions = { host: apiserver.host, port: apiserver.port, path: "/metrics", method: "GET" }
    yield* Effect.promise(() => Apiserver.kubeConfig(apiserver).applyToHTTPSOptions(options))
    const text = yield* Effect.callback<string, BenchError>((resume) => {
      const req = Https.request({ ...options, timeout: 10_000 }, (res) => {
        let body = ""
        res.setEncoding("utf8")
        res.on("data", (chunk: string) => {
          body += chunk
        })
        res.on("end", () => resume(Effect.succeed(body)))
      })
      req.on("timeout", () => req.destroy(new Error("timed out")))
      req.on("error", (error) => resume(Effect.fail(new BenchError({ message: `apiserver /metrics: ${error.message}` }))))
      req.end()
      return Effect.sync(() => req.destroy())
    })
    return text
      .split("\n")
      .filter((line) => line.startsWith("apiserver_request_total{") && line.includes('resource="tokenreviews"'))
      .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)
  })

let httpNote: string | undefined

/** One report row's figures from the runs of one path and concurrency. */
const summarize = (runs: ReadonlyArray<ServiceProxyBench.WrkRun & { readonly cpuUs: number }>) => {
  const latencies = Report.pooled(runs.map((run) => run.histogram))
  return {
    perSecond: Report.median(runs.map((run) => run.requests / (run.durationUs / 1e6))),
    p50us: Report.percentile(latencies, 50),
    p99us: Report.percentile(latencies, 99),
    cpuUs: Report.median(runs.map((run) => run.cpuUs)),
    errors: runs.reduce((sum, run) => sum + run.connectErrors + run.readErrors + run.writeErrors + run.statusErrors + run.timeouts, 0)
  }
}

const serviceProxyBench = (work: string, tools: string) =>
  Effect.gen(function*() {
    const { endpoints, paced, pauses, results } = yield* ServiceProxyBench.run({
      work,
      tools,
      rounds,
      conns: httpConns,
      wrkSeconds: seconds.wrk,
      warmupSeconds: seconds.wrkWarmup,
      cacheTtl,
      nodeFlags,
      shippedEnv: Footprint.shippedEnv(repo),
      paths: onlyPaths,
      scenarios: serviceProxyRequests,
      bodyBytes,
      say,
      wrk: (port, conns, duration, env, scheme) => wrk(port, conns, duration, env, scheme),
      measure
    })
    return { rows: ServiceProxyBench.rows(serviceProxyRequests, results, endpoints, httpConns, summarize, pauses), paced }
  })

const httpBench = Effect.fn("bench.http")(function*(work: string, tools: string) {
  yield* say("HTTP: starting a kube-apiserver for TokenReview, the backend and the proxies")
  const apiserver = yield* Apiserver.make({ name: "bench" })
  const callerNamespace = "bench"
  const callerName = "caller"
  const token = yield* Apiserver.serviceAccountToken(apiserver, callerNamespace, callerName, 3600)
  const tokenFile = Path.join(work, "caller-token")
  Fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 })

  const backendPort = yield* Children.freePort
  const body = "x".repeat(bodyBytes)
  yield* nginx(work, "nginx-backend", [
    `server { listen 127.0.0.1:${backendPort}; location / { default_type text/plain; return 200 "${body}"; } }`
  ], "1", backendPort)

  const nginxPort = yield* Children.freePort
  const nginxProxy = yield* nginx(work, "nginx-proxy", [
    `upstream backend { server 127.0.0.1:${backendPort}; keepalive 256; keepalive_requests 10000000; }`,
    `server { listen 127.0.0.1:${nginxPort};`,
    "  location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  ], "auto", nginxPort)

  const backendUrl = `http://127.0.0.1:${backendPort}`
  const goPrototype = yield* Children.server("Go ReverseProxy", tools, ["proxy", "-listen", "127.0.0.1:0", "-target", backendUrl], Children.printsPort)
  const goTuned = yield* Children.server(
    "Go ReverseProxy (tuned)",
    tools,
    ["proxy", "-listen", "127.0.0.1:0", "-target", backendUrl, "-idle-per-host", "1024"],
    Children.printsPort
  )

  const baseline = yield* Children.server("Node baseline (http)", process.execPath, [
    ...nodeFlags,
    Path.join(here, "NodeBaseline.ts"),
    "http",
    `--target=127.0.0.1:${backendPort}`
  ], Children.printsPort)

  const relayPort = yield* Children.freePort
  const relayProbePort = yield* Children.freePort
  const relay = yield* Children.server("tether service-relay", process.execPath, [
    ...nodeFlags,
    Path.join(here, "ServiceRelayProcess.ts"),
    `--kubeconfig=${apiserver.kubeconfigPath}`,
    `--listen=127.0.0.1:${relayPort}`,
    `--health-probe-bind-address=127.0.0.1:${relayProbePort}`,
    `--trusted-caller-username=system:serviceaccount:${callerNamespace}:${callerName}`,
    `--token-review-cache-ttl=${cacheTtl}`,
    "--resolve=bench.default.svc=127.0.0.1"
  ], { _tag: "Prints", pattern: /listening (\d+)/, port: relayPort })

  const endpoints: ReadonlyArray<Endpoint> = selected([
    { path: paths.direct, port: backendPort, groups: [] },
    { path: paths.tetherHttp, port: relayPort, groups: [relay.pid] },
    { path: paths.nginx, port: nginxPort, groups: [nginxProxy.pid] },
    { path: paths.goPrototype, port: goPrototype.port, groups: [goPrototype.pid] },
    { path: paths.goTuned, port: goTuned.port, groups: [goTuned.pid] },
    { path: paths.nodeHttp, port: baseline.port, groups: [baseline.pid] }
  ])

  // Every path answers the benchmark's request with the backend's body; the relay refuses a
  // request without the caller token, so its figures are with authentication on.
  const routing = {
    "cluster-proxy-proto": "http",
    "cluster-proxy-namespace": "default",
    "cluster-proxy-service": "bench",
    "cluster-proxy-port": String(backendPort)
  }
  for (const endpoint of endpoints) {
    const answer = yield* probe(endpoint.port, { ...routing, authorization: `Bearer ${token}` })
    if (answer.status !== 200 || answer.bytes !== bodyBytes) {
      return yield* new BenchError({
        message: `${endpoint.path.label} answered ${answer.status} with ${answer.bytes} bytes` +
          (endpoint.path === paths.tetherHttp ? `; relay output:\n${relay.output()}` : "")
      })
    }
  }
  const anonymous = yield* probe(relayPort, routing)
  if (anonymous.status !== 401) {
    return yield* new BenchError({ message: `the relay answered ${anonymous.status} to a request without a token, not 401` })
  }

  const env = { BENCH_TOKEN_FILE: tokenFile, BENCH_BACKEND_PORT: String(backendPort) }
  yield* say("HTTP: warming up every path")
  for (const endpoint of endpoints) yield* wrk(endpoint.port, 32, seconds.wrkWarmup, env)

  const results = new Map<string, Array<WrkOutput & { readonly cpuUs: number }>>()
  const reviewsBefore = yield* tokenReviews(apiserver)
  let relayed = 0
  for (let round = 1; round <= rounds; round++) {
    for (const endpoint of endpoints) {
      for (const conns of httpConns) {
        const { cpuSeconds, result } = yield* measure(endpoint, wrk(endpoint.port, conns, seconds.wrk, env))
        const cpuUs = (cpuSeconds * 1e6) / Math.max(1, result.requests)
        const key = `${endpoint.path.key}/${conns}`
        results.set(key, [...(results.get(key) ?? []), { ...result, cpuUs }])
        if (endpoint.path === paths.tetherHttp) relayed += result.requests
        const errors = result.connectErrors + result.readErrors + result.writeErrors + result.statusErrors + result.timeouts
        yield* say(
          `  round ${round} ${endpoint.path.label} c=${conns}: ${(result.requests / (result.durationUs / 1e6)).toFixed(0)} req/s, ` +
            `p99 ${(result.p99us / 1000).toFixed(2)} ms${Number.isFinite(cpuUs) ? `, relay CPU ${cpuUs.toFixed(0)} µs/req` : ""}` +
            `${errors > 0 ? `, ${errors} errors` : ""}`
        )
      }
    }
  }
  const reviews = (yield* tokenReviews(apiserver)) - reviewsBefore
  httpNote = `The service relay authenticated ${relayed.toLocaleString("en-US")} measured requests with ${reviews} ` +
    `TokenReviews (all requests carry the same token; answers cached for ${cacheTtl}).`
  return endpoints.flatMap((endpoint) =>
    httpConns.map((conns): Report.HttpResult => {
      const runs = results.get(`${endpoint.path.key}/${conns}`) ?? []
      const latencies = Report.pooled(runs.map((run) => run.histogram))
      return {
        path: endpoint.path,
        conns,
        perSecond: Report.median(runs.map((run) => run.requests / (run.durationUs / 1e6))),
        p50us: Report.percentile(latencies, 50),
        p99us: Report.percentile(latencies, 99),
        cpuUs: Report.median(runs.map((run) => run.cpuUs)),
        errors: runs.reduce(
          (sum, run) => sum + run.connectErrors + run.readErrors + run.writeErrors + run.statusErrors + run.timeouts,
          0
        )
      }
    })
  )
})

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

const main = Effect.gen(function*() {
  const started = yield* DateTime.now
  yield* ensurePackages
  const work = yield* workDir
  yield* say(`building the load tools (${Path.relative(repo, Path.join(here, "tools.go"))})`)
  const tools = yield* buildTools(work)
  const machine = yield* describeMachine

  const tcp = only === undefined || only === "tcp" ? yield* tcpBench(work, tools) : undefined
  let http: ReadonlyArray<Report.HttpResult> | undefined
  if (only === undefined || only === "http") {
    if (EnvtestAssets.resolveSync() === undefined) {
      yield* say("HTTP: skipped, no kube-apiserver assets (run `npm run envtest` first)")
    } else {
      http = yield* Effect.scoped(httpBench(work, tools))
    }
  }

  let serviceProxy: { readonly rows: ReadonlyArray<ServiceProxyBench.Rows>; readonly paced: ReadonlyArray<Report.Paced> } | undefined
  if (only === undefined || only === "http" || only === "service-proxy") {
    if (EnvtestAssets.resolveSync() === undefined) {
      yield* say("service proxy: skipped, no kube-apiserver assets (run `npm run envtest` first)")
    } else {
      serviceProxy = yield* Effect.scoped(serviceProxyBench(work, tools))
    }
  }

  let footprint: Array<ReadonlyArray<Footprint.Measured>> | undefined
  if (only === undefined || only === "footprint") {
    if (EnvtestAssets.resolveSync() === undefined) {
      yield* say("footprint: skipped, no kube-apiserver assets (run `npm run envtest` first)")
    } else {
      footprint = []
      for (let round = 1; round <= footprintRounds; round++) {
        yield* say(`footprint: round ${round}`)
        footprint.push(yield* Effect.scoped(Footprint.measure({ repo, work, idle: footprintIdle, loadRequests: quick ? 5 : 50, say })))
      }
    }
  }

  const command = ["npm run bench", ...(argv.length > 0 ? ["--", ...argv] : [])].join(" ")
  const markdown = Report.render({
    date: DateTime.formatIso(started).slice(0, 16).replace("T", " ") + " UTC",
    command,
    quick,
    machine,
    settings: [
      only === "footprint"
        ? `${footprintRounds} footprint round(s); each figure is the median over rounds`
        : `${rounds} round(s) (footprint: ${footprintRounds}); each figure is the median over rounds (every round visits every path in turn; the service proxy's paths run one after another for each row, in an order reversed every round), except HTTP ` +
          "p50 and p99, which are over the requests of all rounds together",
      `TCP throughput: \`iperf3 -c 127.0.0.1 -p <port> -t ${seconds.iperf} -O 1\` and the same with \`-R\` (server to client); one stream, first second omitted, to \`iperf3 -s\``,
      `TCP round trip: test/bench/tools.go \`rtt\`: ${bodyBytes} B written and read back, one in flight per connection, ` +
        `${seconds.roundTrip} s after 0.5 s warm-up (at most ${roundTripCount(1).toLocaleString("en-US")}/${roundTripCount(16).toLocaleString("en-US")} round trips), Go echo server`,
      "TCP peers: `socat TCP-LISTEN:<p>,fork,nodelay TCP:<target>,nodelay`; haproxy `mode tcp` with default threads; " +
        "tether is `node dist/tether.mjs managed-apiserver-proxy` (package.json \"bin\", the production build) with default flags, and the same relay inside " +
        "`tether hosted-agent --components=apiserver-proxy --managed-kubeconfig=<the same file>`, also started as " +
        "`node --max-semi-space-size=1 dist/tether.mjs hosted-agent ...` (a variant, not what ships)",
      `HTTP: \`wrk ${wrkArgs(0, 0, seconds.wrk).join(" ").replace("-c0", "-c<conns>").replace(":0/", ":<port>/").replace(wrkScript, "test/bench/request.lua")}\` ` +
        `after a ${seconds.wrkWarmup} s warm-up at 32 connections; the same request (bearer token and Cluster-Proxy-* routing headers) on every path`,
      `HTTP backend: nginx (1 worker) \`return 200\` with a ${bodyBytes} B body; nginx proxy: Debian defaults (\`worker_processes auto\`), ` +
        "upstream keepalive 256, HTTP/1.1 upstream; Go: `httputil.NewSingleHostReverseProxy`, transport MaxIdleConns 100, IdleConnTimeout 90s, " +
        "MaxIdleConnsPerHost Go's default (2, as in the prototype) or 1024, GOMAXPROCS default",
      "tether service-relay: test/bench/ServiceRelayProcess.ts, the layers of `tether service-relay` (TokenReview against a real " +
        `kube-apiserver, ${cacheTtl} answer cache, probes, metrics, JSON logs) with a static Service resolver; one Node process`,
      "service proxy: test/bench/ServiceProxyProcess.ts, the layers of `tether service-proxy` in hosted Relay mode (TLS, " +
        `TokenReview chain with a ${cacheTtl} cache against a real kube-apiserver, impersonation, metrics, probes, JSON logs), ` +
        `started with the chart's runtimeEnv (${Object.entries(Footprint.shippedEnv(repo)).map(([name, value]) => `${name}=${value}`).join(" ")}) ` +
        `as it ships (with adaptive busy polling up to ${BusyPoll.defaultMaxMicros}us, the default), without the runtimeEnv (a variant), and as it ships with \`--busy-poll=0s\` (a variant); the floor is test/bench/NodeFloorProxy.ts (node:https and an undici Pool, ` +
        "no admission, metrics or logs); the Go peer is tools.go `serviceproxy` (httputil.ReverseProxy, the same TokenReview with a map cache, the same " +
        "impersonation and relay headers, HTTP/1.1 upstream, 1024 idle connections per host); both in front of the Go TLS " +
        `backend (${bodyBytes} B body) standing in for the managed kube-apiserver; wrk over TLS with keep-alive`
    ],
    ...(tcp === undefined ? {} : { tcp }),
    ...(http === undefined ? {} : { http }),
    ...(serviceProxy === undefined ? {} : { serviceProxy: serviceProxy.rows, serviceProxyPaced: serviceProxy.paced }),
    ...(footprint === undefined ? {} : { footprint }),
    notes: [
      ...(tcp === undefined && http === undefined ? [] : [
        "The bare Node rows are references, not peers: a 20-line relay (test/bench/NodeBaseline.ts) with no authentication, " +
        "routing, header filtering, metrics, limits or Effect. They show what Node itself costs on this machine.",
        "Relay CPU is the CPU time of the relay's whole process group (all threads, nginx workers, socat's forks) during " +
        "the measurement, divided by the work done; the direct path has no relay.",
        ...(httpNote === undefined ? [] : [httpNote]),
        `${noisy} of ${measurements} measurements started while the machine was more than ${quietThreshold * 100}% busy ` +
        `after waiting up to ${quietWaitMillis / 1000} s for it to calm down (other work on a shared machine); ` +
        "the relay CPU columns are the least affected by that"
      ]),
      ...(footprint === undefined ? [] : [
        `Footprint: ${footprint.length} round(s), medians; each process serves its own managed cluster on real hub, hosting and ` +
        "managed apiservers (already answering), started alone and timed from spawn to its /readyz answering 200; then all idle " +
        `together for ${Duration.format(footprintIdle)} (RSS idle, CPU per idle minute); then each TCP relay carries 64 keep-alive TLS ` +
        `connections × ${quick ? 5 : 50} GET /version to the managed apiserver, and each service proxy 16 keep-alive TLS connections × ` +
        `${quick ? 5 : 50} GET /api/v1/namespaces/default/pods as a ServiceAccount of the managed cluster (token reviewed, request ` +
        "impersonated; RSS after relay load is after both). RSS and peak from /proc/<pid>/status " +
        "(VmRSS, VmHWM); the floor is `node -e 'setInterval(() => {}, 1 << 30)'` on the same Node binary. Rows " +
        "`hosted-agent (node <flags>)` are hosted-agent started with those Node flags, measured next to what ships (test/bench/Footprint.ts `variants`)."
      ])
    ]
  })
  process.stdout.write(markdown)
  if (resultsPath !== undefined) {
    Fs.writeFileSync(resultsPath, markdown)
    yield* say(`written to ${Path.relative(process.cwd(), resultsPath)}`)
  }
})

NodeRuntime.runMain(
  main.pipe(
    Effect.scoped,
    Effect.tapError((error) => say(`bench failed: ${error.message}`))
  ),
  { disableErrorReporting: true }
)
