/**
 * `npm run demo`: the whole hosted flow, live, on one machine.
 *
 * 1. Finds (or builds, with progress) kube-apiserver and etcd, and starts three of them: hub and
 *    hosting on loopback, managed on the host side of a network namespace the demo creates (its
 *    `services/proxy` will not dial loopback endpoints).
 * 2. Creates what OCM and the chart would (see Install.ts) and runs the hosted install as real
 *    child processes of the tether CLI: `tether hosted-agent` (provisioner, TCP relay, service
 *    proxy in Relay mode, add-on Lease) on the "hosting" side, and `tether service-relay` with a
 *    backend Service inside the namespace on the "managed" side.
 * 3. Shows a status view (token expiry and rotations, hub condition, Lease renewals, relay
 *    connections and bytes, service-proxy requests by result), prints commands to paste in
 *    another terminal, and runs those same commands: kubectl through the TCP relay with the
 *    generated kubeconfig, curl through the service proxy to the backend via the service relay
 *    (and to the kube-apiserver, impersonated), and a source change that rotates the token while
 *    a request loop keeps going, with every failure counted.
 * 4. Runs until Ctrl-C (`--quick`: stops after the checks), then stops every process and removes
 *    the namespace and every temporary folder.
 *
 * Without root (or `ip`), no namespace can be made: the demo says so, runs the managed apiserver
 * on loopback and leaves out the service relay and the Service path.
 *
 * Plain-output contract (the Demo test parses it): `PASS <check>: …` / `FAIL <check>: …` per check,
 * `ROTATION requests=<n> failed=<n>`, `LEFT netns <name>`, `LEFT folder <path>`, `LEFT pid <pid>`
 * for what teardown must remove, and `SUMMARY passed=<n> failed=<n> skipped=<n>` last.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node"
import { Clock, Data, Duration, Effect, Fiber, Option, Result, Schedule } from "effect"
import * as ChildProcess from "node:child_process"
import { createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ManagedKubeconfigSecret from "../domain/ManagedKubeconfigSecret.ts"
import { Apiserver, EnvtestAssets, Fixtures } from "../testing/index.ts"
import * as Install from "./Install.ts"
import * as Netns from "./Netns.ts"
import * as Processes from "./Processes.ts"
import * as Requests from "./Requests.ts"
import * as Screen from "./Screen.ts"
import * as Status from "./Status.ts"
import * as Watchdog from "./Watchdog.ts"

class DemoFailed extends Data.TaggedError("DemoFailed")<{ readonly message: string }> {}

const quick = process.argv.includes("--quick")
const screen = Screen.make()
const say = screen.event
const checks: Array<{ readonly name: string; readonly outcome: "PASS" | "FAIL" | "SKIP"; readonly detail: string }> = []
const check = (name: string, outcome: "PASS" | "FAIL" | "SKIP", detail: string) =>
  Effect.suspend(() => {
    checks.push({ name, outcome, detail })
    return say(`${outcome} ${name}: ${detail}`)
  })

let netnsMade = false

const tokenId = (token: string) => createHash("sha256").update(token).digest("hex").slice(0, 12)
const unb64 = (s: string | undefined) => Buffer.from(s ?? "", "base64").toString("utf8")

const freePort: Effect.Effect<number> = Effect.callback<number>((resume) => {
  const probe = Net.createServer().listen(0, "127.0.0.1", () => {
    const port = (probe.address() as Net.AddressInfo).port
    probe.close(() => resume(Effect.succeed(port)))
  })
})

/** Poll `probe` every 250 ms until it holds; fails with `what` after `limit`. */
const waitFor = <E>(what: string, probe: Effect.Effect<boolean, E>, limit: Duration.Input, logPath?: string) =>
  probe.pipe(
    Effect.repeat({ schedule: Schedule.spaced("250 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({
      duration: limit,
      orElse: () =>
        Effect.fail(
          new DemoFailed({
            message: `timed out after ${Duration.format(Duration.fromInputUnsafe(limit))} waiting for ${what}` +
              (logPath === undefined ? "" : `; last lines of its log:\n${Processes.logTail(logPath)}`)
          })
        )
    })
  )

// ---------------------------------------------------------------------------------------------
// 1. the apiserver binaries, with progress while they are built

const assets = Effect.gen(function*() {
  const found = EnvtestAssets.lookup()
  if (Result.isSuccess(found)) return yield* say(`kube-apiserver and etcd: ${Path.dirname(found.success.kubeApiserver)} (${found.success.source})`)
  yield* say(`kube-apiserver ${EnvtestAssets.kubernetesVersion} and etcd are not on this machine yet: building them once into ${EnvtestAssets.cacheDir()}`)
  yield* say("(about 4 minutes on 2 cores; the [envtest] lines below are its steps)")
  const startedAt = yield* Clock.currentTimeMillis
  const ticker = yield* Clock.currentTimeMillis.pipe(
    Effect.flatMap((now) => say(`  still building ... ${Status.formatDuration(now - startedAt)} so far`)),
    Effect.delay("30 seconds"),
    Effect.forever,
    Effect.forkChild
  )
  yield* EnvtestAssets.ensure.pipe(Effect.mapError((error) => new DemoFailed({ message: error.message })), Effect.ensuring(Fiber.interrupt(ticker)))
  yield* say(`built in ${Status.formatDuration((yield* Clock.currentTimeMillis) - startedAt)}`)
})

// ---------------------------------------------------------------------------------------------
// the whole demo

const main = Effect.gen(function*() {
  yield* say(`tether demo: hosted mode end to end on this machine${quick ? " (--quick)" : ""}. Ctrl-C stops it and removes everything.`)
  yield* assets
  for (const tool of ["kubectl", "curl", "openssl"]) {
    if (!Requests.has(tool)) yield* say(`note: ${tool} is not installed; the steps that run it will be skipped`)
  }

  // Everything below lives in this folder or is registered with the scope; LEFT lines name it for checking.
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const folder = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-demo-"))
      Watchdog.register({ dir: folder })
      return folder
    }),
    (folder) =>
      Effect.sync(() => {
        Fs.rmSync(folder, { recursive: true, force: true })
        Watchdog.unregister({ dir: folder })
      })
  )
  yield* say(`LEFT folder ${dir}`)

  const stale = Netns.removeStale()
  if (stale.length > 0) yield* say(`removed network namespaces left by earlier runs that were killed: ${stale.join(", ")}`)
  const netns = yield* Netns.make([`${Install.backend.name}.${Install.backend.namespace}.svc`]).pipe(
    Effect.catchTag("NetnsUnavailable", (error) =>
      say(
        `no network namespace (${error.message}). The managed apiserver's services/proxy refuses loopback endpoints, ` +
          "so the service relay and the Service path are left out; run as root to see them."
      ).pipe(Effect.as(undefined)))
  )
  if (netns !== undefined) {
    netnsMade = true
    yield* say(`LEFT netns ${netns.name}`)
    yield* say(`network namespace ${netns.name}: managed apiserver on ${netns.hostAddress}, service relay and backend on ${netns.nsAddress}`)
  }

  yield* say("starting three kube-apiservers with their etcds (hub, hosting, managed) ...")
  const [hub, hosting, managed] = yield* Effect.all([
    Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
    Apiserver.make({ name: "hosting" }),
    Apiserver.make({ name: "managed", ...(netns === undefined ? {} : { bindAddress: netns.hostAddress, extraIpSans: ["127.0.0.1"] }) })
  ], { concurrency: "unbounded" }).pipe(Effect.mapError((error) => new DemoFailed({ message: error.message })))
  for (const info of [hub, hosting, managed]) {
    yield* say(`  ${info.name.padEnd(8)} ${info.server}  admin kubeconfig ${info.kubeconfigPath}`)
    yield* say(`LEFT folder ${info.dir}`)
    yield* say(`LEFT pid ${info.pids.apiserver}`)
    yield* say(`LEFT pid ${info.pids.etcd}`)
  }
  const clusters = { hub, hosting, managed }

  yield* say(`creating what OCM and the chart would: source Secret, add-on, ServiceAccounts and RBAC${netns === undefined ? "" : ", relay Service and backend Service"} ...`)
  const installed = yield* Install.install(clusters, netns?.nsAddress)

  // The service proxy's serving certificate.
  const certFile = Path.join(dir, "service-proxy.crt")
  const keyFile = Path.join(dir, "service-proxy.key")
  ChildProcess.execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", keyFile, "-out", certFile
  ], { stdio: "ignore" })
  const proxyCa = Fs.readFileSync(certFile, "utf8")
  const readerTokenFile = Path.join(dir, "reader.token")
  Fs.writeFileSync(readerTokenFile, installed.readerToken, { mode: 0o600 })

  // -------------------------------------------------------------------------------------------
  // 2. the processes, as the chart runs them

  yield* say("tether CLI: package.json's bin (built first if it is missing or older than the sources) ...")
  const tether = yield* Effect.try({
    try: Processes.tetherCommand,
    catch: (error) => new DemoFailed({ message: `cannot find or build the tether CLI (try npm run build): ${error instanceof Error ? error.message : String(error)}` })
  })
  yield* say(`tether CLI: ${tether.join(" ")}`)
  const log = (name: string) => Path.join(dir, `${name}.log`)
  let relayProbe: string | undefined
  if (netns !== undefined) {
    const inNetns = ["ip", "netns", "exec", netns.name]
    const backend = yield* Processes.spawn("backend", [...inNetns, process.execPath, Path.join(Processes.root, "src/demo/backend.ts"), netns.nsAddress, String(Install.backend.port)], log("backend"))
    const relayKubeconfig = Path.join(dir, "service-relay.kubeconfig")
    Fs.writeFileSync(relayKubeconfig, Apiserver.kubeconfigForToken(managed, installed.relayToken), { mode: 0o600 })
    const relayArgs = [
      "service-relay",
      `--listen=${netns.nsAddress}:${Install.relayPort}`,
      `--health-probe-bind-address=${netns.nsAddress}:${Install.relayProbePort}`,
      `--kubeconfig=${relayKubeconfig}`,
      `--trusted-caller-username=${Install.trustedCaller}`
    ]
    yield* say(`managed side: ip netns exec ${netns.name} tether ${relayArgs.join(" ")}`)
    const relay = yield* Processes.spawn("service-relay", [...inNetns, ...tether, ...relayArgs], log("service-relay"))
    yield* say(`LEFT pid ${backend.pid}`)
    yield* say(`LEFT pid ${relay.pid}`)
    relayProbe = `http://${netns.nsAddress}:${Install.relayProbePort}`
    yield* waitFor("the service relay's /readyz", Processes.running(relay).pipe(
      Effect.andThen(Requests.request({ url: `${relayProbe}/readyz`, timeoutMs: 2_000 })),
      Effect.map((reply) => reply.status === 200)
    ), "90 seconds", relay.logPath)
    yield* waitFor("the backend", Processes.running(backend).pipe(
      Effect.andThen(Requests.request({ url: `http://${netns.nsAddress}:${Install.backend.port}/`, timeoutMs: 2_000 })),
      Effect.map((reply) => reply.status === 200)
    ), "30 seconds", backend.logPath)
  }

  const [probePort, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
  const agentArgs = [
    "hosted-agent",
    "--components=provisioner,addon-lease,apiserver-proxy,service-proxy",
    `--cluster-name=${Install.cluster}`,
    `--addon-name=${Install.addonName}`,
    `--source-namespace=${Install.cluster}`,
    `--source-name=${Install.sourceSecret}`,
    `--target-namespace=${Install.agentNamespace}`,
    `--target-name=${Install.generatedSecret}`,
    `--managed-service-account-namespace=${Install.agentNamespace}`,
    `--managed-service-account-name=${Install.addonName}`,
    "--token-expiration=10m",
    "--refresh-before=5m",
    `--kubeconfig=${hosting.kubeconfigPath}`,
    `--hub-kubeconfig=${hub.kubeconfigPath}`,
    `--addon-namespace=${Install.cluster}`,
    "--lease-duration=20s",
    "--renew-interval=5s",
    "--enable-proxy-agent-health-check=false",
    `--apiserver-proxy-listen=127.0.0.1:${relayPort}`,
    "--apiserver-proxy-drain-timeout=5s",
    `--service-proxy-listen=127.0.0.1:${proxyPort}`,
    `--cert=${certFile}`,
    `--key=${keyFile}`,
    "--hosted-service-proxy-mode=Relay",
    `--service-relay-name=${Install.relayName}`,
    `--service-relay-port=${Install.relayPort}`,
    `--health-probe-bind-address=127.0.0.1:${probePort}`
  ]
  yield* say(`hosting side: POD_NAMESPACE=${Install.agentNamespace} tether ${agentArgs.join(" ")}`)
  const agent = yield* Processes.spawn("hosted-agent", [...tether, ...agentArgs], log("hosted-agent"), { POD_NAMESPACE: Install.agentNamespace })
  yield* say(`LEFT pid ${agent.pid}`)
  const agentProbe = `http://127.0.0.1:${probePort}`
  yield* waitFor("hosted-agent's /readyz", Processes.running(agent).pipe(
    Effect.andThen(Requests.request({ url: `${agentProbe}/readyz`, timeoutMs: 2_000 })),
    Effect.map((reply) => reply.status === 200)
  ), "90 seconds", agent.logPath)
  // Runs first when the scope closes (Ctrl-C, --quick's end, a failure): say what happens next.
  yield* Effect.addFinalizer(() => screen.release.pipe(Effect.andThen(say("stopping every process the demo started and removing what it made ..."))))
  yield* say(`hosted-agent ready: provisioner, addon-lease, apiserver-proxy and service-proxy (logs: ${agent.logPath})`)

  // -------------------------------------------------------------------------------------------
  // 3. the status view, fed by the processes' /metrics and the apiservers

  const hostingCore = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
  const hostingLeases = Apiserver.kubeConfig(hosting).makeApiClient(CoordinationV1Api)
  const hubCustom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
  const { group, plural, version } = Fixtures.managedClusterAddOnResource
  const viaRelay = Path.join(dir, "managed-via-relay.kubeconfig")
  const relayServer = `https://127.0.0.1:${relayPort}`

  const seen = {
    token: "",
    sourceHash: "",
    snapshot: { now: Date.now(), rotations: [], relayRuns: netns !== undefined } as Status.Snapshot,
    condition: ""
  }
  const metrics = (url: string | undefined) =>
    Requests.request({ url: `${url}/metrics`, timeoutMs: 2_000 }).pipe(
      Effect.map((r) => (r.status === 200 ? Status.parseMetrics(r.body) : undefined)),
      Effect.when(Effect.succeed(url !== undefined)),
      Effect.map(Option.getOrUndefined)
    )
  const observe = (force: boolean) =>
    Effect.gen(function*() {
      const [secret, addon, lease, agentMetrics, relayMetrics] = yield* Effect.all([
        Effect.promise(() => hostingCore.readNamespacedSecret({ namespace: Install.agentNamespace, name: Install.generatedSecret }).catch(() => undefined)),
        Effect.promise(() =>
          hubCustom.getNamespacedCustomObject({ group, version, plural, namespace: Install.cluster, name: Install.addonName }).catch(() => undefined) as Promise<
            { status?: { conditions?: Array<{ type: string; status: string; reason: string; lastTransitionTime: string }> } } | undefined
          >
        ),
        Effect.promise(() => hostingLeases.readNamespacedLease({ namespace: Install.agentNamespace, name: Install.addonName }).catch(() => undefined)),
        metrics(agentProbe),
        metrics(relayProbe)
      ], { concurrency: "unbounded" })
      const now = Date.now()
      const annotations = secret?.metadata?.annotations ?? {}
      const token = unb64(secret?.data?.[ManagedKubeconfigSecret.tokenKey])
      const previous = seen.snapshot
      let rotations = previous.rotations
      let tokenWindow = previous.token
      if (token !== "" && token !== seen.token) {
        const sourceHash = annotations[ManagedKubeconfigSecret.sourceHashAnnotation] ?? ""
        tokenWindow = {
          issuedAt: Date.parse(annotations[ManagedKubeconfigSecret.issuedAtAnnotation] ?? "") || now,
          expiresAt: Date.parse(annotations[ManagedKubeconfigSecret.expirationAnnotation] ?? "") || now
        }
        // The generated kubeconfig, pointed at the TCP relay: what a user of the relay gets.
        const kubeconfig = unb64(secret?.data?.[ManagedKubeconfigSecret.kubeconfigKey]).replace(managed.server, relayServer)
        Fs.writeFileSync(viaRelay, kubeconfig, { mode: 0o600 })
        if (seen.token === "") {
          yield* say(`generated Secret ${Install.agentNamespace}/${Install.generatedSecret}: token ${tokenId(token)} (sha256 prefix), expires ${Status.clock(tokenWindow.expiresAt)}`)
        } else {
          const why = sourceHash !== seen.sourceHash ? "source changed" : "refresh"
          rotations = [...rotations, { at: tokenWindow.issuedAt, why }]
          yield* say(`token rotated (${why}): ${tokenId(seen.token)} -> ${tokenId(token)}, expires ${Status.clock(tokenWindow.expiresAt)}; ${viaRelay} rewritten`)
        }
        seen.token = token
        seen.sourceHash = sourceHash
      }
      const c = addon?.status?.conditions?.find((x) => x.type === "ManagedKubeconfigReady")
      const condition = c === undefined ? undefined : { status: c.status, reason: c.reason, since: c.lastTransitionTime }
      const conditionText = c === undefined ? "" : `${c.status} (${c.reason})`
      if (conditionText !== seen.condition) {
        seen.condition = conditionText
        yield* say(`hub: ManagedKubeconfigReady=${conditionText}`)
      }
      const renew = lease?.spec?.renewTime
      seen.snapshot = {
        now,
        token: tokenWindow,
        rotations,
        condition,
        leaseRenewedAt: renew === undefined ? undefined : new Date(renew as unknown as string).getTime(),
        agent: agentMetrics,
        relay: relayMetrics,
        relayRuns: netns !== undefined
      }
      yield* screen.status(Status.render(seen.snapshot), force)
    })
  yield* observe(false).pipe(Effect.delay("1 second"), Effect.forever, Effect.forkScoped)
  yield* waitFor("the generated Secret and the hub condition", Effect.sync(() => seen.token !== "" && seen.condition.startsWith("True")), "60 seconds")

  // -------------------------------------------------------------------------------------------
  // 4. the commands to paste, and the demo running them

  const routing = (proto: string, namespace: string, service: string, port: number) =>
    `-H 'cluster-proxy-proto: ${proto}' -H 'cluster-proxy-namespace: ${namespace}' -H 'cluster-proxy-service: ${service}' -H 'cluster-proxy-port: ${port}'`
  const commands = {
    kubectl: `kubectl --kubeconfig ${viaRelay} get namespaces`,
    service: `curl -sS --fail-with-body --cacert ${certFile} ${
      routing("http", Install.backend.namespace, Install.backend.name, Install.backend.port)
    } https://127.0.0.1:${proxyPort}/hello/world`,
    apiserver: `curl -sS --fail-with-body --cacert ${certFile} -H "authorization: Bearer $(cat ${readerTokenFile})" ${
      routing("https", "default", "kubernetes", 443)
    } https://127.0.0.1:${proxyPort}/api/v1/namespaces/default/pods`,
    rotate: `kubectl --kubeconfig ${hosting.kubeconfigPath} -n ${Install.cluster} get secret ${Install.sourceSecret} -o jsonpath='{.data.kubeconfig}' | base64 -d > ${dir}/source.kubeconfig` +
      ` && echo "# edited $(date +%s%N)" >> ${dir}/source.kubeconfig` +
      ` && kubectl --kubeconfig ${hosting.kubeconfigPath} -n ${Install.cluster} create secret generic ${Install.sourceSecret} --from-file=kubeconfig=${dir}/source.kubeconfig --dry-run=client -o yaml` +
      ` | kubectl --kubeconfig ${hosting.kubeconfigPath} replace -f -`,
    watchSecret: `kubectl --kubeconfig ${hosting.kubeconfigPath} -n ${Install.agentNamespace} get secret ${Install.generatedSecret} -o yaml`,
    condition: `kubectl --kubeconfig ${hub.kubeconfigPath} -n ${Install.cluster} get managedclusteraddons ${Install.addonName} -o jsonpath='{.status.conditions}'`,
    lease: `kubectl --kubeconfig ${hosting.kubeconfigPath} -n ${Install.agentNamespace} get lease ${Install.addonName} -o yaml`,
    metrics: `curl -s ${agentProbe}/metrics | grep -E '^(cluster_proxy|tether_component)'`
  }
  yield* screen.text([
    "",
    "Try it in another terminal while the demo runs:",
    "  # kubectl through the TCP relay, with the generated kubeconfig (rewritten on each rotation)",
    `  ${commands.kubectl}`,
    ...(netns === undefined ? [] : [
      "  # a Service through the service proxy (Relay mode) -> managed apiserver services/proxy -> service relay -> backend",
      `  ${commands.service}`
    ]),
    "  # the managed kube-apiserver through the service proxy: the caller's token reviewed, then impersonated",
    `  ${commands.apiserver}`,
    "  # rotate the token: change the source kubeconfig (a comment changes its hash)",
    `  ${commands.rotate}`,
    "  # what the provisioner writes, the hub condition, the Lease, the metrics",
    `  ${commands.watchSecret}`,
    `  ${commands.condition}`,
    `  ${commands.lease}`,
    `  ${commands.metrics}`,
    ""
  ])

  const runChecked = (name: string, tool: string, command: string, ok: (run: Requests.Run) => string | undefined) =>
    Effect.gen(function*() {
      if (!Requests.has(tool)) return yield* check(name, "SKIP", `${tool} is not installed`)
      yield* say(`$ ${command}`)
      const run = yield* Requests.shell(command)
      const output = `${run.stdout}${run.stderr}`.trim()
      yield* screen.text(output.split("\n").slice(0, 12).map((line) => `    ${line}`))
      const problem = run.code !== 0 ? `exit code ${run.code}` : ok(run)
      yield* problem === undefined ? check(name, "PASS", "as shown above") : check(name, "FAIL", problem)
    })

  yield* runChecked("kubectl-via-tcp-relay", "kubectl", commands.kubectl, (run) =>
    run.stdout.includes(Install.agentNamespace) ? undefined : `the output does not list ${Install.agentNamespace}`)
  if (netns === undefined) {
    yield* check("service-via-service-relay", "SKIP", "no network namespace (see above)")
  } else {
    yield* runChecked("service-via-service-relay", "curl", commands.service, (run) => {
      const answer = (() => {
        try {
          return JSON.parse(run.stdout) as { url?: string; headers?: Array<string> }
        } catch {
          return undefined
        }
      })()
      if (answer?.url !== "/hello/world") return "the backend's answer did not come back"
      const leaked = (answer.headers ?? []).filter((h) => /^(authorization|impersonate-|cluster-proxy-)/.test(h))
      return leaked.length === 0 ? undefined : `the backend saw internal headers: ${leaked.join(", ")}`
    })
  }
  yield* runChecked("apiserver-via-service-proxy", "curl", commands.apiserver, (run) =>
    run.stdout.includes(`"kind":"PodList"`) || run.stdout.includes(`"kind": "PodList"`) ? undefined : "no PodList in the answer")

  // -------------------------------------------------------------------------------------------
  // 5. a rotation under traffic

  yield* say("rotation under traffic: a request loop through every path, then the source change ...")
  const kubeHeaders = { "cluster-proxy-proto": "https", "cluster-proxy-namespace": "default", "cluster-proxy-service": "kubernetes", "cluster-proxy-port": "443" }
  const paths: Array<{ readonly name: string; readonly send: Effect.Effect<Requests.Reply> }> = [
    {
      name: "tcp relay",
      send: Effect.suspend(() =>
        Requests.request({
          url: `${relayServer}/api/v1/namespaces/${Install.agentNamespace}`,
          headers: { authorization: `Bearer ${seen.token}` },
          ca: [managed.caPem]
        })
      )
    },
    {
      name: "service proxy -> kube-apiserver",
      send: Requests.request({
        url: `https://127.0.0.1:${proxyPort}/api/v1/namespaces/default/pods`,
        headers: { ...kubeHeaders, authorization: `Bearer ${installed.readerToken}` },
        ca: [proxyCa]
      })
    },
    ...(netns === undefined ? [] : [{
      name: "service proxy -> service relay -> backend",
      send: Requests.request({
        url: `https://127.0.0.1:${proxyPort}/loop`,
        headers: { "cluster-proxy-proto": "http", "cluster-proxy-namespace": "default", "cluster-proxy-service": "hello", "cluster-proxy-port": "8080" },
        ca: [proxyCa]
      })
    }])
  ]
  const loop = { requests: 0, failures: [] as Array<string>, stop: false }
  // Bounded in count (and each request in time); stopped as soon as the rotation has been seen through.
  const traffic = yield* Effect.gen(function*() {
    for (let round = 0; round < 2_000 && !loop.stop; round++) {
      for (const path of paths) {
        const reply = yield* path.send
        loop.requests++
        if (reply.status !== 200) loop.failures.push(`${path.name}: ${reply.status === 0 ? reply.error : `HTTP ${reply.status}`}`)
      }
    }
  }).pipe(Effect.forkScoped)
  yield* waitFor("traffic", Effect.sync(() => loop.requests >= 3 * paths.length), "30 seconds")
  const before = seen.token
  const requestsBefore = loop.requests
  yield* say(`$ ${commands.rotate}`)
  const edited = yield* Requests.shell(commands.rotate)
  if (edited.code !== 0) yield* screen.text(`${edited.stdout}${edited.stderr}`.trim().split("\n").map((line) => `    ${line}`))
  const rotated = yield* waitFor("the rotation", Effect.sync(() => seen.token !== before), "30 seconds").pipe(Effect.as(true), Effect.orElseSucceed(() => false))
  const newId = tokenId(seen.token)
  const reloaded = rotated
    ? yield* waitFor(
      "the service proxy to take the new token",
      Effect.sync(() => Fs.readFileSync(agent.logPath, "utf8").split("\n").some((line) => line.includes("apiserver token reloaded") && line.includes(newId))),
      "30 seconds"
    ).pipe(Effect.as(true), Effect.orElseSucceed(() => false))
    : false
  if (reloaded) yield* say(`hosted-agent's service proxy took token ${newId} in process (no restart)`)
  const afterReload = loop.requests
  yield* waitFor("traffic after the rotation", Effect.sync(() => loop.requests >= afterReload + 3 * paths.length), "30 seconds").pipe(Effect.ignore)
  loop.stop = true
  yield* Fiber.join(traffic)
  yield* say(`ROTATION requests=${loop.requests} failed=${loop.failures.length} (${requestsBefore} before the edit, ${loop.requests - afterReload} after the new token was in use)`)
  const rotationProblem = edited.code !== 0
    ? `the source edit failed (exit code ${edited.code})`
    : !rotated
    ? "the token did not change within 30 s of the source edit"
    : !reloaded
    ? "the service proxy did not report the new token within 30 s"
    : loop.failures.length > 0
    ? `${loop.failures.length} failed requests: ${[...new Set(loop.failures)].slice(0, 3).join("; ")}`
    : undefined
  yield* rotationProblem === undefined
    ? check("rotation-under-traffic", "PASS", `${loop.requests} requests through ${paths.length} paths, none failed`)
    : check("rotation-under-traffic", "FAIL", `${rotationProblem}; last lines of ${agent.logPath}:\n${Processes.logTail(agent.logPath)}`)
  yield* observe(true)

  const count = (outcome: string) => checks.filter((c) => c.outcome === outcome).length
  if (!quick) {
    yield* say("all set. The status below keeps updating (the scheduled refresh comes about 5 minutes after each token's issue); Ctrl-C stops everything.")
    return yield* Effect.never
  }
  yield* screen.release
  yield* say(`SUMMARY passed=${count("PASS")} failed=${count("FAIL")} skipped=${count("SKIP")}`)
  if (count("FAIL") > 0) return yield* new DemoFailed({ message: `${count("FAIL")} check(s) failed` })
}).pipe(
  Effect.scoped,
  Effect.ensuring(Effect.suspend(() => say(`stopped every process; removed the temporary folders${netnsMade ? " and the network namespace" : ""}`)))
)

// A closed terminal stops the demo like Ctrl-C does (the runtime handles SIGINT and SIGTERM).
process.once("SIGHUP", () => process.kill(process.pid, "SIGTERM"))

NodeRuntime.runMain(
  main.pipe(Effect.tapError((error) => Effect.sync(() => process.stderr.write(`demo failed: ${error.message}\n`)))),
  { disableErrorReporting: true }
)
