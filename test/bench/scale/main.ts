/**
 * `npm run bench:scale`: the credential controller at 10, 100 and 1,000 (cluster, add-on) pairs
 * on real apiservers (issue #12).
 *
 * Three kube-apiservers with audit logs: the hub holds one ManagedClusterAddOn per pair (in its
 * cluster's namespace, annotated for this hosting cluster), the hosting cluster one source
 * kubeconfig Secret per pair, and one managed apiserver stands in for every managed cluster with
 * one ServiceAccount per pair (the override annotations point each pair at its own objects, so
 * a pair costs one namespace on the hub and one object on each cluster).
 *
 * For each size the real `tether credential-controller` process (the shipped bundle) is started
 * fresh and measured: start to /readyz (every pair reconciled once), the requests it sent
 * (counted from the apiservers' audit logs, never from tether's metrics), then an idle window:
 * the requests in it other than watches (the target is 0), CPU and resident memory. At the
 * largest size, source changes one after another: the time until the generated Secret holds a
 * new token (p50, p99). The comparison with one single-cluster provisioner per pair is the
 * per-process figures of the footprint benchmark times the number of pairs.
 *
 * Then, at the largest size, a rotation storm (every token due again within a minute, source
 * changes timed against it, the TokenRequest rate from the audit log against the rate limit),
 * and two replicas (the split of keys, the takeover time after one is killed).
 *
 * All pairs' sources name the one managed apiserver with its admin credentials, so the controller
 * can serve them all through one managed-cluster client; `--distinct-credentials` gives each
 * source a token of its own (as distinct clusters would have), so each pair needs its own client.
 *
 * Bounded: `--pairs` (default 1000), `--sizes` (default 10,100,1000 up to `--pairs`), `--settle`
 * and `--idle` seconds (default 15 and 30), `--changes` (default 40), `--storm` seconds of
 * rotations (default 80), and a deadline of 25 minutes for the whole run. Writes `--out` (default
 * test/bench/scale/RESULTS.md) and prints it.
 */
import { CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api } from "@kubernetes/client-node"
import { Duration, Effect, Exit, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import { Apiserver, Fixtures } from "../../../src/testing/index.ts"
import { tetherEntry } from "../../../src/testing/TetherEntry.ts"
import { shippedEnv } from "../Footprint.ts"

const arg = (name: string, fallback: number) => {
  const given = process.argv.find((a) => a.startsWith(`--${name}=`))
  const value = given === undefined ? fallback : Number(given.split("=")[1])
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a whole number of at least 1`)
  return value
}
const pairs = arg("pairs", 1000)
const idleSeconds = arg("idle", 30)
const settleSeconds = arg("settle", 15)
const stormSeconds = arg("storm", 75)
/** `--quick`: the sizes' rows only (no storm, no replicas), for trying a change. */
const quick = process.argv.includes("--quick")
/** The chart's and image's runtimeEnv for every controller, unless `--bare` (node's defaults). */
const bare = process.argv.includes("--bare")
const controllerEnv = bare ? process.env : { ...process.env, ...shippedEnv(process.cwd()) }
const changes = arg("changes", 40)
/** `--distinct-credentials`: a token of its own in every pair's source (no shared managed client). */
const distinctCredentials = process.argv.includes("--distinct-credentials")
const out = process.argv.find((a) => a.startsWith("--out="))?.slice(6) ?? "test/bench/scale/RESULTS.md"
const sizesGiven = process.argv.find((a) => a.startsWith("--sizes="))?.slice(8)
const sizes = sizesGiven === undefined
  ? [10, 100, 1000].filter((n) => n < pairs).concat([pairs])
  : sizesGiven.split(",").map(Number).filter((n) => Number.isInteger(n) && n >= 1 && n <= pairs)
/** Extra node flags for the controller processes (profiling: `--cpu-prof`, `--heapsnapshot-signal=SIGUSR2`). */
const nodeArgs = (process.env["TETHER_SCALE_NODE_ARGS"] ?? "").split(" ").filter((a) => a !== "")

const hostingName = "hosting-bench"
const prefix = "credentials.tether.open-cluster-management.io"
const b64 = (s: string) => Buffer.from(s).toString("base64")
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Run `tasks` with at most `width` at once. */
const pool = async (count: number, width: number, task: (i: number) => Promise<unknown>) => {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) await task(next++)
  }))
}

const ignoreExisting = (error: { code?: number }) => {
  if (error.code !== 409) throw error
}

interface Proc {
  readonly child: ChildProcess.ChildProcess
  readonly port: number
  log: string
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = Net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as Net.AddressInfo).port
      server.close(() => resolve(port))
    })
    server.on("error", reject)
  })

const cpuSeconds = (pid: number) => {
  const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}
const rssMiB = (pid: number) => {
  const match = /VmRSS:\s+(\d+) kB/.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))
  return match === null ? Number.NaN : Number(match[1]) / 1024
}

const percentile = (values: ReadonlyArray<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN
}

const main = Effect.gen(function*() {
  const scope = yield* Scope.make("parallel")
  yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
  const started = Date.now()
  const [hub, hosting, managed] = yield* Effect.all([
    Apiserver.make({ name: "scale-hub", crds: [Fixtures.managedClusterAddOnCrd], auditLog: true }),
    Apiserver.make({ name: "scale-hosting", auditLog: true }),
    Apiserver.make({ name: "scale-managed", auditLog: true })
  ], { concurrency: "unbounded" }).pipe(Scope.provide(scope))
  console.log(`apiservers up in ${((Date.now() - started) / 1000).toFixed(1)} s`)

  const hostingCore = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
  const managedCore = Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api)
  const hubCore = Apiserver.kubeConfig(hub).makeApiClient(CoreV1Api)
  const hubCustom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
  const { group, plural, version } = Fixtures.managedClusterAddOnResource

  yield* Effect.promise(async () => {
    for (const ns of ["sources", "targets"]) await hostingCore.createNamespace({ body: { metadata: { name: ns } } })
    await managedCore.createNamespace({ body: { metadata: { name: "sas" } } })
  })
  // With --distinct-credentials every pair's source carries a token of its own (as 1,000 managed
  // clusters would have 1,000 credentials), so no two pairs can share a managed-cluster client.
  const tokens: Array<string> = []
  const tokenFor = async (i: number) => {
    while (tokens.length <= i) {
      const n = tokens.length
      // A distinct lifetime per pair: two TokenRequests in one second would otherwise return one JWT.
      const answer = await managedCore.createNamespacedServiceAccountToken({
        namespace: "bench",
        name: "bench-admin",
        body: { spec: { audiences: [], expirationSeconds: 7200 + n } }
      })
      tokens.push(answer.status?.token ?? "")
    }
    return tokens[i]!
  }
  if (distinctCredentials) {
    yield* Effect.promise(async () => {
      await managedCore.createNamespace({ body: { metadata: { name: "bench" } } })
      await managedCore.createNamespacedServiceAccount({ namespace: "bench", body: { metadata: { name: "bench-admin" } } })
      await Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api).createClusterRoleBinding({
        body: {
          metadata: { name: "bench-admin" },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "cluster-admin" },
          subjects: [{ kind: "ServiceAccount", name: "bench-admin", namespace: "bench" }]
        }
      })
    })
  }
  const managedCluster = Apiserver.kubeConfig(managed).getCurrentCluster()!
  const withToken = (token: string) =>
    [
      "apiVersion: v1",
      "kind: Config",
      `clusters: [{ name: managed, cluster: { server: "${managedCluster.server}", certificate-authority-data: "${managedCluster.caData}" } }]`,
      `users: [{ name: pair, user: { token: "${token}" } }]`,
      "contexts: [{ name: managed, context: { cluster: managed, user: pair } }]",
      "current-context: managed"
    ].join("\n")
  const sourceKubeconfig = async (i: number, salt = "") =>
    b64(`${distinctCredentials ? withToken(await tokenFor(i)) : managed.kubeconfigYaml}\n# pair ${i}${salt}\n`)
  let made = 0
  const grow = (to: number) =>
    Effect.promise(() =>
      pool(to - made, 24, async (j) => {
        const i = made + j
        const cluster = `c${i}`
        await managedCore.createNamespacedServiceAccount({ namespace: "sas", body: { metadata: { name: `sa-${i}` } } }).catch(ignoreExisting)
        await hostingCore.createNamespacedSecret({
          namespace: "sources",
          body: { metadata: { name: `src-${i}` }, data: { kubeconfig: await sourceKubeconfig(i) } }
        }).catch(ignoreExisting)
        await hubCore.createNamespace({ body: { metadata: { name: cluster } } }).catch(ignoreExisting)
        await hubCustom.createNamespacedCustomObject({
          group,
          version,
          plural,
          namespace: cluster,
          body: {
            apiVersion: `${group}/${version}`,
            kind: "ManagedClusterAddOn",
            metadata: {
              name: "cluster-proxy",
              annotations: {
                "addon.open-cluster-management.io/hosting-cluster-name": hostingName,
                [`${prefix}/service-account-namespace`]: "sas",
                [`${prefix}/service-account-name`]: `sa-${i}`,
                [`${prefix}/source-namespace`]: "sources",
                [`${prefix}/source-name`]: `src-${i}`,
                [`${prefix}/target-namespace`]: "targets",
                [`${prefix}/target-name`]: `kc-${i}`
              }
            },
            spec: { installNamespace: `addon-${cluster}` }
          }
        }).catch(ignoreExisting)
      }).then(() => void (made = to))
    )

  const auditCount = (info: Apiserver.ApiserverInfo) =>
    Effect.map(Apiserver.auditEvents(info), (events) => events.filter((e) => e.stage === "ResponseComplete"))
  const ours = (userAgent: string | undefined) =>
    (userAgent ?? "").startsWith("tether-credential-controller") || (userAgent ?? "").startsWith("tether-managed-kubeconfig-provisioner")
  const describeRequests = (events: ReadonlyArray<Apiserver.AuditEvent>) => {
    const counts = new Map<string, number>()
    for (const e of events) {
      if (!ours(e.userAgent)) continue
      const what = `${e.verb} ${e.objectRef?.resource ?? "?"}${e.objectRef?.subresource === undefined ? "" : `/${e.objectRef.subresource}`}`
      counts.set(what, (counts.get(what) ?? 0) + 1)
    }
    return counts
  }
  const snapshot = Effect.all([auditCount(hub), auditCount(hosting), auditCount(managed)])
  const since = (before: ReadonlyArray<ReadonlyArray<Apiserver.AuditEvent>>, after: ReadonlyArray<ReadonlyArray<Apiserver.AuditEvent>>) =>
    after.flatMap((events, i) => events.slice(before[i]!.length).map((e) => ({ ...e, cluster: ["hub", "hosting", "managed"][i]! })))

  const startController = (extra: ReadonlyArray<string> = ["--token-expiration=1h", "--refresh-before=10m"]) =>
    Effect.promise(async (): Promise<Proc> => {
      const port = await freePort()
      const child = ChildProcess.spawn(process.execPath, [
        ...nodeArgs, tetherEntry(), "credential-controller",
        `--kubeconfig=${hosting.kubeconfigPath}`, `--hub-kubeconfig=${hub.kubeconfigPath}`,
        `--hosting-cluster-name=${hostingName}`, ...extra,
        `--health-probe-bind-address=127.0.0.1:${port}`, "--log-level=warn"
      ], { stdio: ["ignore", "pipe", "pipe"], env: controllerEnv })
      const proc: Proc = { child, port, log: "" }
      process.once("exit", () => child.kill("SIGKILL"))
      const keep = (chunk: Buffer) => void (proc.log = (proc.log + chunk.toString()).slice(-20_000))
      child.stdout!.on("data", keep)
      child.stderr!.on("data", keep)
      return proc
    })
  const ready = (proc: Proc, timeoutMs: number) =>
    Effect.promise(async () => {
      const until = Date.now() + timeoutMs
      while (Date.now() < until) {
        if (proc.child.exitCode !== null) return false
        const status = await fetch(`http://127.0.0.1:${proc.port}/readyz`).then((r) => r.status, () => 0)
        if (status === 200) return true
        await sleep(100)
      }
      return false
    })
  const stop = (proc: Proc) =>
    Effect.promise(() =>
      new Promise<void>((resolve) => {
        // A killed child has a signalCode and no exitCode; its exit event has already fired.
        if (proc.child.exitCode !== null || proc.child.signalCode !== null) return resolve()
        proc.child.once("exit", () => resolve())
        proc.child.kill("SIGTERM")
        setTimeout(() => proc.child.kill("SIGKILL"), 10_000)
      })
    )

  /**
   * Source changes one after another, spread over the pairs, each timed until its generated
   * Secret holds a new token (polled every 20 ms); stops early once `untilMs` (epoch) has passed.
   */
  const measureChanges = (size: number, count: number, salt: string, untilMs: number) =>
    Effect.promise(async () => {
      const measured: Array<number> = []
      for (let k = 0; k < count && Date.now() < untilMs; k++) {
        const i = Math.floor((k * size) / count)
        const read = () => hostingCore.readNamespacedSecret({ namespace: "targets", name: `kc-${i}` }).then((s) => s.data?.["token"])
        const old = await read()
        const t = Date.now()
        await hostingCore.replaceNamespacedSecret({
          namespace: "sources",
          name: `src-${i}`,
          body: { metadata: { name: `src-${i}` }, data: { kubeconfig: await sourceKubeconfig(i, ` ${salt} ${k}`) } }
        })
        let seen = Number.NaN
        while (Date.now() - t < 30_000) {
          if ((await read()) !== old) {
            seen = Date.now() - t
            break
          }
          await sleep(20)
        }
        measured.push(seen)
      }
      return measured
    })

  /** The controller's gauge of owned keys, or undefined when /metrics does not answer. */
  const ownedKeys = (proc: Proc) =>
    fetch(`http://127.0.0.1:${proc.port}/metrics`).then(async (r) => {
      const match = /^tether_controller_owned_keys\{[^}]*\} (\d+)/m.exec(await r.text())
      return match === null ? undefined : Number(match[1])
    }, () => undefined)

  /** The most events of `times` (epoch ms, sorted) in any window of `windowMs`. */
  const busiest = (times: ReadonlyArray<number>, windowMs: number) => busiestWindow(times, windowMs).count
  /** The busiest window of `windowMs` over `times` (epoch ms, sorted): its count and its first event. */
  const busiestWindow = (times: ReadonlyArray<number>, windowMs: number) => {
    let count = 0
    let from = Number.NaN
    let first = 0
    for (let last = 0; last < times.length; last++) {
      while (times[last]! - times[first]! >= windowMs) first++
      if (last - first + 1 > count) {
        count = last - first + 1
        from = times[first]!
      }
    }
    return { count, from }
  }
  const at = (e: Apiserver.AuditEvent) => Date.parse(e.requestReceivedTimestamp)

  interface Row {
    readonly pairs: number
    readonly readyMs: number
    readonly startRequests: Map<string, number>
    readonly idleRequests: number
    readonly idleWatchesOpened: number
    readonly idleCpuShare: number
    readonly rssMiB: number
  }
  const rows: Array<Row> = []
  /** The 1-minute load average at the end of each measurement (the machine is shared). */
  const loads: Array<string> = []
  const noteLoad = (what: string) => loads.push(`${what} ${Os.loadavg()[0]!.toFixed(1)}`)
  let latencies: Array<number> = []

  for (const size of sizes) {
    yield* grow(size)
    // Previous runs wrote targets: start every size from none, so each run mints for every pair.
    yield* Effect.promise(() => hostingCore.deleteCollectionNamespacedSecret({ namespace: "targets" }))
    yield* Effect.sleep("1 second")
    const before = yield* snapshot
    const t0 = Date.now()
    const proc = yield* startController()
    const ok = yield* ready(proc, 240_000)
    const readyMs = Date.now() - t0
    if (!ok) {
      console.log(proc.log.slice(-4000))
      return yield* Effect.die(new Error(`${size} pairs: not ready within 240 s`))
    }
    console.log(`${size} pairs: ready in ${(readyMs / 1000).toFixed(1)} s`)
    const startRequests = describeRequests(since(before, yield* snapshot))

    // Idle: let the last writes' events settle, then a window with nothing due.
    yield* Effect.sleep(Duration.seconds(settleSeconds))
    const idleBefore = yield* snapshot
    const cpu0 = cpuSeconds(proc.child.pid!)
    yield* Effect.sleep(Duration.seconds(idleSeconds))
    const cpu1 = cpuSeconds(proc.child.pid!)
    const idleEvents = since(idleBefore, yield* snapshot).filter((e) => ours(e.userAgent))
    const row: Row = {
      pairs: size,
      readyMs,
      startRequests,
      idleRequests: idleEvents.filter((e) => e.verb !== "watch").length,
      idleWatchesOpened: idleEvents.filter((e) => e.verb === "watch").length,
      idleCpuShare: (cpu1 - cpu0) / idleSeconds,
      rssMiB: rssMiB(proc.child.pid!)
    }
    rows.push(row)
    noteLoad(`idle at ${size}`)
    if (process.env["TETHER_SCALE_PAUSE"] !== undefined) {
      console.log(`controller pid ${proc.child.pid}: pausing ${process.env["TETHER_SCALE_PAUSE"]} s`)
      yield* Effect.sleep(Duration.seconds(Number(process.env["TETHER_SCALE_PAUSE"])))
    }
    console.log(`${size} pairs: idle ${row.idleRequests} requests, CPU ${(row.idleCpuShare * 100).toFixed(2)} %, RSS ${row.rssMiB.toFixed(0)} MiB`)

    if (size === sizes[sizes.length - 1]) {
      latencies = yield* measureChanges(size, Math.min(changes, size), "quiet", Number.POSITIVE_INFINITY)
      console.log(`source change to new Secret: p50 ${percentile(latencies, 50)} ms, p99 ${percentile(latencies, 99)} ms`)
    }
    yield* stop(proc)
  }

  if (quick) {
    for (const row of rows) console.log(`${row.pairs}: ready ${row.readyMs} ms, idle CPU ${(row.idleCpuShare * 100).toFixed(2)} %, RSS ${row.rssMiB.toFixed(0)} MiB`)
    return
  }
  // Rotation storm at the largest size: tokens of 10 min (the TokenRequest minimum) with
  // --refresh-before=9m are refreshed at half their lifetime (the policy's floor), less up to
  // 10 s of jitter. Every pair mints at start within the start-up time (the rate limit spreads
  // those), so five minutes later every token falls due within about a minute. Source changes
  // are timed against that background.
  const size = sizes[sizes.length - 1]!
  yield* Effect.promise(() => hostingCore.deleteCollectionNamespacedSecret({ namespace: "targets" }))
  yield* Effect.sleep("1 second")
  const stormBefore = yield* snapshot
  const stormStart = Date.now()
  const stormProc = yield* startController(["--token-expiration=10m", "--refresh-before=9m"])
  if (!(yield* ready(stormProc, 240_000))) {
    console.log(stormProc.log.slice(-4000))
    return yield* Effect.die(new Error("storm: not ready within 240 s"))
  }
  const stormReadyMs = Date.now() - stormStart
  // The first mint is a second or so after the start: the first rotations are due from 290 s,
  // the last about the start-up time later.
  const firstRotationsDue = stormStart + 288_000
  const stormEnd = firstRotationsDue + Math.max(stormSeconds * 1000, stormReadyMs + 20_000)
  console.log(`storm: ${size} pairs ready in ${(stormReadyMs / 1000).toFixed(1)} s; rotations until ${new Date(stormEnd).toISOString()}`)
  yield* Effect.sleep(Duration.millis(Math.max(0, firstRotationsDue - Date.now())))
  const stormLatencies = yield* measureChanges(size, Math.min(changes, size), "storm", stormEnd - 5000)
  yield* Effect.sleep(Duration.millis(Math.max(0, stormEnd - Date.now())))
  const stormEvents = since(stormBefore, yield* snapshot).filter((e) => ours(e.userAgent))
  noteLoad("storm")
  Fs.writeFileSync(`${out}.storm.log`, stormProc.log)
  yield* stop(stormProc)
  const tokenTimes = stormEvents.filter((e) => e.verb === "create" && e.objectRef?.subresource === "token").map(at).sort((a, b) => a - b)
  const rotationRequests = describeRequests(stormEvents.filter((e) => at(e) >= firstRotationsDue && e.verb !== "watch" && e.verb !== "list"))
  // What the request limit covers: every request but the watches' list and watch calls.
  const limited = stormEvents.filter((e) => e.verb !== "watch" && e.verb !== "list")
  const limitedTimes = limited.map(at).sort((a, b) => a - b)
  const limitedMax10s = busiestWindow(limitedTimes, 10_000)
  const storm = {
    readyMs: stormReadyMs,
    mints: tokenTimes.filter((t) => t < firstRotationsDue).length,
    rotations: rotationRequests.get("create serviceaccounts/token") ?? 0,
    rotationRequests,
    windowSeconds: (stormEnd - firstRotationsDue) / 1000,
    tokenMax1s: busiest(tokenTimes, 1000),
    tokenMax10s: busiest(tokenTimes, 10_000),
    allMax1s: busiest(limitedTimes, 1000),
    allMax10s: limitedMax10s.count,
    allMax10sWindow: {
      startSeconds: (limitedMax10s.from - stormStart) / 1000,
      requests: describeRequests(limited.filter((e) => at(e) >= limitedMax10s.from && at(e) < limitedMax10s.from + 10_000))
    },
    latencies: stormLatencies
  }
  console.log(`storm: ${storm.rotations} TokenRequests in the ${storm.windowSeconds.toFixed(0)} s rotation window; busiest second ${storm.tokenMax1s}, busiest 10 s ${storm.tokenMax10s}; all requests busiest second ${storm.allMax1s}, 10 s ${storm.allMax10s} from ${storm.allMax10sWindow.startSeconds.toFixed(1)} s; changes p50 ${percentile(stormLatencies, 50)} ms p99 ${percentile(stormLatencies, 99)} ms`)

  // Two replicas sharing the pairs through member Leases; then one is killed.
  yield* Effect.promise(() => hostingCore.deleteCollectionNamespacedSecret({ namespace: "targets" }))
  yield* Effect.promise(() => hostingCore.createNamespace({ body: { metadata: { name: "shards" } } }).catch(ignoreExisting))
  yield* Effect.sleep("1 second")
  const shardArgs = (identity: string) => [
    "--token-expiration=1h", "--refresh-before=10m", "--shard-lease-namespace=shards", `--shard-identity=${identity}`
  ]
  const replicasStart = Date.now()
  const r1 = yield* startController(shardArgs("replica-a"))
  const r2 = yield* startController(shardArgs("replica-b"))
  const bothReady = (yield* ready(r1, 240_000)) && (yield* ready(r2, 240_000))
  if (!bothReady) {
    console.log(r1.log.slice(-3000), r2.log.slice(-3000))
    return yield* Effect.die(new Error("replicas: not ready within 240 s"))
  }
  const replicasReadyMs = Date.now() - replicasStart
  // Both have applied the two-member view once their gauges add up to every pair.
  const split = yield* Effect.promise(async () => {
    const until = Date.now() + 60_000
    while (Date.now() < until) {
      const [a, b] = [await ownedKeys(r1), await ownedKeys(r2)]
      if (a !== undefined && b !== undefined && a + b === size && a > 0 && b > 0) return [a, b]
      await sleep(200)
    }
    return [Number.NaN, Number.NaN]
  })
  noteLoad("replicas")
  const killedAt = Date.now()
  r1.child.kill("SIGKILL")
  const takeoverMs = yield* Effect.promise(async () => {
    while (Date.now() - killedAt < 120_000) {
      if ((await ownedKeys(r2)) === size) return Date.now() - killedAt
      await sleep(100)
    }
    return Number.NaN
  })
  yield* stop(r1)
  yield* stop(r2)
  console.log(`replicas: ready in ${(replicasReadyMs / 1000).toFixed(1)} s, split ${split.join("/")}, takeover ${takeoverMs} ms`)

  // The footprint benchmark's measured single-cluster provisioner process, for the comparison.
  const footprint = Fs.existsSync("test/bench/RESULTS-footprint.md") ? Fs.readFileSync("test/bench/RESULTS-footprint.md", "utf8") : ""
  const provisionerRow = /\| managed-kubeconfig-provisioner \| (\d+) \| (\d+) \| (\d+) \|[^|]*\| (\d+) \| (\d+) \|/.exec(footprint)

  const largest = rows[rows.length - 1]!
  const smallest = rows[0]!
  const slope = (f: (r: Row) => number) => (f(largest) - f(smallest)) / (largest.pairs - smallest.pairs)
  const lines: Array<string> = []
  lines.push("# Credential controller at scale")
  lines.push("")
  lines.push(`Run ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC with \`npm run bench:scale -- ${process.argv.slice(2).join(" ")}\`.`)
  lines.push("")
  lines.push(`Sources: ${distinctCredentials ? "each pair's source with a token of its own (`--distinct-credentials`): one managed-cluster client per pair" : "every pair's source names the managed apiserver with its admin credentials: the controller serves them all through one managed-cluster client (`--distinct-credentials` gives each its own)"}.`)
  lines.push("")
  lines.push(`Controller environment: ${bare ? "node's defaults (--bare)" : `the shipped runtimeEnv (${Object.entries(shippedEnv(process.cwd())).map(([k, v]) => `${k}=${v}`).join(" ")})`}.`)
  lines.push("")
  lines.push(`Machine: ${Os.cpus()[0]?.model ?? "?"}, ${Os.cpus().length} cores, 1-minute load average at the end of each measurement ${loads.join(", ")} (shared with other work: CPU and latency figures move with it, memory little); three kube-apiservers v1.20.2 on the same cores.`)
  lines.push("")
  lines.push("Each size starts `tether credential-controller` (the shipped bundle, hub mode, defaults: concurrency 8, 20 reconcile starts per second with bursts of 40, 50 API requests per second with bursts of 100) with no generated Secrets, so every pair mints once. Requests are counted from the apiservers' audit logs (user agents `tether-credential-controller` and `tether-managed-kubeconfig-provisioner`).")
  lines.push("")
  lines.push("| pairs | start to /readyz (s) | requests at start | requests per pair at start | requests in the idle window (non-watch) | watches opened in the idle window | idle CPU (% of a core) | RSS (MiB) |")
  lines.push("|---:|---:|---|---:|---:|---:|---:|---:|")
  for (const row of rows) {
    const total = [...row.startRequests.values()].reduce((a, b) => a + b, 0)
    const detail = [...row.startRequests].sort().map(([what, n]) => `${what} ${n}`).join("; ")
    lines.push(`| ${row.pairs} | ${(row.readyMs / 1000).toFixed(1)} | ${detail} | ${(total / row.pairs).toFixed(2)} | ${row.idleRequests} | ${row.idleWatchesOpened} | ${(row.idleCpuShare * 100).toFixed(2)} | ${row.rssMiB.toFixed(0)} |`)
  }
  lines.push("")
  if (largest.pairs !== smallest.pairs) lines.push(`- slope from ${smallest.pairs} to ${largest.pairs} pairs: RSS ${(slope((r) => r.rssMiB) * 1024).toFixed(1)} KiB per pair; idle CPU ${(slope((r) => r.idleCpuShare) * 100 * 1000).toFixed(2)} % of a core per 1,000 pairs`)
  lines.push(`- idle window ${idleSeconds} s, starting ${settleSeconds} s after /readyz (the last writes' events settle); target: 0 requests other than watches between deadlines (tokens live 1 h, refresh 10 min before expiry, so nothing is due)`)
  if (latencies.length > 0) {
    lines.push(`- source change to new generated Secret, ${latencies.length} changes one after another at ${largest.pairs} pairs (polled every 20 ms): p50 **${percentile(latencies, 50)} ms**, p99 **${percentile(latencies, 99)} ms** (target p99 ≤ 1 s); no background rotations`)
  }
  if (provisionerRow !== null) {
    const [rss, cpuPerMinute] = [Number(provisionerRow[3]), Number(provisionerRow[5])]
    lines.push(`- the same ${largest.pairs} pairs as ${largest.pairs} single-cluster provisioner processes, extrapolated from test/bench/RESULTS-footprint.md (idle RSS ${rss} MiB, ${cpuPerMinute} ms CPU per idle minute each): ${((rss * largest.pairs) / 1024).toFixed(1)} GiB and ${((cpuPerMinute * largest.pairs) / 60_000 * 100).toFixed(0)} % of a core, against ${largest.rssMiB.toFixed(0)} MiB and ${(largest.idleCpuShare * 100).toFixed(2)} % here: ${(largest.rssMiB / (rss * largest.pairs)).toFixed(4)}× the memory`)
  }
  lines.push("")
  lines.push(`## Rotation storm at ${size} pairs`)
  lines.push("")
  lines.push(`A fresh controller with \`--token-expiration=10m --refresh-before=9m\` (10 min is the TokenRequest minimum; the refresh policy never refreshes before half the lifetime, so each token is due 5 min after its mint, less up to 10 s of jitter) and no generated Secrets: it mints for every pair (ready in ${(storm.readyMs / 1000).toFixed(1)} s; ${storm.mints} TokenRequests before the rotations), so from 288 s after its start every token falls due within about the start-up time. The rotation window is the ${storm.windowSeconds.toFixed(0)} s from then. The configured limits: the request limit (\`--kube-api-qps=50 --kube-api-burst=100\`, the defaults: every request but the watches' list and watch calls, to the three apiservers together, at most 150 in any second and 600 in any 10 s where they leave the process) and the work queue's 20 reconcile starts per second with bursts of 40 (at most one TokenRequest per reconcile: 60 in any second, 240 in any 10 s).`)
  lines.push("")
  lines.push(`- all the controller's requests but the watches' list and watch calls, to the three apiservers together (their audit logs, the whole storm run, start-up included): busiest second **${storm.allMax1s}** (limit 150), busiest 10 s **${storm.allMax10s}** (limit 600), from ${storm.allMax10sWindow.startSeconds.toFixed(1)} s after the start: ${[...storm.allMax10sWindow.requests].map(([what, n]) => `${what} ${n}`).join("; ")}; counted on arrival, so transit times can bring requests a little closer than they left`)
  lines.push(`- TokenRequests (the managed apiserver's audit log): busiest second **${storm.tokenMax1s}**, busiest 10 s **${storm.tokenMax10s}** (the start limit's 60 and 240)`)
  const rotationTotal = [...storm.rotationRequests.values()].reduce((a, b) => a + b, 0)
  lines.push(`- in the rotation window: ${storm.rotations} rotations (TokenRequests, the timed source changes' included); requests ${[...storm.rotationRequests].sort().map(([what, n]) => `${what} ${n}`).join("; ")}: ${(rotationTotal / Math.max(1, storm.rotations)).toFixed(2)} requests per rotation (target ≤ 1 TokenRequest + 1 Secret write, + 1 status update only when a condition changes)`)
  lines.push(`- source change to new generated Secret during the rotations, ${storm.latencies.length} changes one after another: p50 **${percentile(storm.latencies, 50)} ms**, p99 **${percentile(storm.latencies, 99)} ms**, max ${Math.max(...storm.latencies)} ms (target p99 ≤ 1 s)`)
  lines.push("")
  lines.push(`## Two replicas at ${size} pairs`)
  lines.push("")
  lines.push(`Two controllers (\`--shard-lease-namespace=shards\`, identities replica-a and replica-b, default Lease duration 15 s, renewal every 5 s with up to 20 % jitter) started together with no generated Secrets: both ready in ${(replicasReadyMs / 1000).toFixed(1)} s; keys owned (\`tether_controller_owned_keys\`): **${split[0]} / ${split[1]}**. replica-a killed with SIGKILL (its Lease not released): replica-b owned all ${size} **${(takeoverMs / 1000).toFixed(1)} s** later (the bound: one Lease duration plus one renewal round, about 21 s).`)
  const text = lines.join("\n") + "\n"
  Fs.writeFileSync(out, text)
  console.log(text)
})

Effect.runPromise(Effect.scoped(main).pipe(Effect.timeout("25 minutes"))).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
