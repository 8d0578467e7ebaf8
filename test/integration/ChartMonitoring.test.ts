/**
 * The chart's monitoring objects (`monitoring.serviceMonitor`, `monitoring.prometheusRule`), as the
 * real helm renders them, checked by the real `promtool` (Debian's `prometheus` package) against
 * the series a real tether process exports.
 *
 * Without an apiserver:
 * - off by default; when on, each cluster gets a headless metrics Service per Deployment that
 *   selects that Deployment's pods by their metrics port names, and a ServiceMonitor that selects
 *   those Services and scrapes each port, in both layouts and on the managed side (Relay);
 * - the rendered PrometheusRule passes `promtool check rules`, and a bad margin is refused.
 * On real kube-apiservers (hub, hosting, managed):
 * - the rendered Services, ServiceMonitors and PrometheusRule pass `kubectl apply --dry-run=server
 *   --validate=strict` on clusters with minimal ServiceMonitor/PrometheusRule CRDs (written for
 *   these tests), and a misspelt field is refused, so that check can fail;
 * - `tether hosted-agent` runs against the three apiservers through faults the alerts are about
 *   (a missing source Secret, a port taken from the relay, hub watch connections cut, the managed
 *   apiserver gone from under the relay); its `/metrics` is scraped, and the names and labels of
 *   the scraped series (plus the target labels a ServiceMonitor adds: namespace, job, pod) are the
 *   input of `promtool test rules`, which proves that every alert fires for a sick pod, not for a
 *   healthy one, not for another install's pod, and not before its `for` has passed; the same test
 *   fails against rules whose alerts never fire, so it can fail.
 * A missing promtool skips the promtool checks only on a machine without the apiserver assets;
 * with TETHER_REQUIRE_APISERVER=1 (CI) it fails them.
 */
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api, type KubernetesObject, type V1Deployment, type V1Service } from "@kubernetes/client-node"
import { Effect, Exit, Scope } from "effect"
import { Command } from "effect/cli"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as HostedAgentCommand from "../../src/cli/commands/HostedAgent.ts"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import { freePort, get, kubectl, selfSigned } from "../support/local.ts"
import * as Helm from "../support/helm.ts"
import { prometheusRuleCrd, serviceMonitorCrd } from "../support/monitoringCrds.ts"

const namespace = "addon-ns"
const clusterName = "cluster-a"
const addonName = "cluster-proxy"
const hostingAnnotation = "addon.open-cluster-management.io/hosted-manifest-location"

const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-chart-monitoring-"))
afterAll(() => Fs.rmSync(dir, { recursive: true, force: true }))

interface Run {
  readonly code: number
  readonly output: string
}

/** Run a tool to its end, bounded in time; the exit code and stdout+stderr. */
const run = (file: string, args: ReadonlyArray<string>): Run => {
  const result = ChildProcess.spawnSync(file, [...args], { timeout: 60_000, encoding: "utf8", maxBuffer: 32 * 1024 * 1024 })
  return { code: result.status ?? -1, output: `${result.stdout ?? ""}${result.stderr ?? ""}${result.error === undefined ? "" : String(result.error)}` }
}

const promtool: string | undefined = (() => {
  const found = run("sh", ["-c", "command -v promtool"])
  return found.code === 0 ? found.output.trim() : undefined
})()
/** promtool checks skip only where the apiserver suites may skip too; in CI a missing promtool fails them. */
const noPromtool = promtool === undefined && process.env["TETHER_REQUIRE_APISERVER"] !== "1"

const promtoolRun = (args: ReadonlyArray<string>): Run => {
  assert.isDefined(promtool, "promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
  return run(promtool!, args)
}

// ---------------------------------------------------------------------------------------------
// renderings
// ---------------------------------------------------------------------------------------------

const on = ["monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true"]

const flags = (target: string, sets: ReadonlyArray<string>) => Helm.set(`target=${target}`, ...sets)

/** The chart rendered by the real helm for `target` with `sets`, as documents. */
const render = (target: string, sets: ReadonlyArray<string>) => Helm.template(namespace, flags(target, sets))

/** What helm says when it refuses to render. */
const refusal = (target: string, sets: ReadonlyArray<string>) => Effect.map(Effect.flip(Helm.template(namespace, flags(target, sets))), (error) => error.message)

const ofKind = <T extends KubernetesObject>(docs: ReadonlyArray<Helm.Doc>, kind: string): ReadonlyArray<T> =>
  docs.filter(({ object }) => object.kind === kind).map(({ object }) => object as T)

interface ServiceMonitor extends KubernetesObject {
  readonly spec: {
    readonly jobLabel: string
    readonly namespaceSelector: { readonly matchNames: ReadonlyArray<string> }
    readonly selector: { readonly matchLabels: Record<string, string> }
    readonly endpoints: ReadonlyArray<{ readonly port: string; readonly path: string; readonly interval?: string }>
  }
}

interface AlertRule {
  readonly alert: string
  readonly expr: string
  readonly for?: string
  readonly labels: Record<string, string>
  readonly annotations: Record<string, string>
}

interface PrometheusRule extends KubernetesObject {
  readonly spec: { readonly groups: ReadonlyArray<{ readonly name: string; readonly rules: ReadonlyArray<AlertRule> }> }
}

const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.entries(selector).every(([key, value]) => labels?.[key] === value)

/** A file in this test's folder holding `text`; its path. */
const writeFile = (name: string, text: string) => {
  const file = Path.join(dir, name)
  Fs.writeFileSync(file, text)
  return file
}

/** The rules file promtool reads: the PrometheusRule's groups (JSON is YAML). */
const rulesFile = (name: string, rule: PrometheusRule) => writeFile(name, JSON.stringify({ groups: rule.spec.groups }, null, 2))

const theRule = (docs: ReadonlyArray<Helm.Doc>): PrometheusRule => {
  const rules = ofKind<PrometheusRule>(docs, "PrometheusRule")
  assert.lengthOf(rules, 1)
  return rules[0]!
}

const alertsOf = (rule: PrometheusRule) => rule.spec.groups.flatMap((group) => group.rules)

/** The alerts the chart promises, one per condition an on-call engineer acts on. */
const alertNames = [
  "TetherManagedTokenExpiringSoon",
  "TetherManagedKubeconfigNotReady",
  "TetherManagedKubeconfigRefreshFailing",
  "TetherApiserverRelayDialErrors",
  "TetherWatchRestarting",
  "TetherAddonHealthCheckFailing",
  "TetherComponentDown",
  "TetherComponentRestarting"
]

describe("Helm chart monitoring (helm template, promtool check rules)", () => {
  it.live("off by default: no ServiceMonitor, PrometheusRule or metrics Service on either cluster", () =>
    Effect.gen(function*() {
      for (const target of ["hosting", "managed", "all"]) {
        const docs = yield* render(target, [`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.10/32}"])
        const kinds = docs.map(({ object }) => object.kind)
        assert.notInclude(kinds, "ServiceMonitor", target)
        assert.notInclude(kinds, "PrometheusRule", target)
        assert.isFalse(docs.some(({ object }) => object.metadata?.name?.endsWith("-metrics")), target)
      }
    }))

  it.live("each cluster's ServiceMonitor scrapes, through headless Services, every metrics port its Deployments open", () =>
    Effect.gen(function*() {
      const cases = [
        { name: "hosting, combined", target: "hosting", sets: [`clusterName=${clusterName}`] },
        { name: "hosting, split", target: "hosting", sets: [`clusterName=${clusterName}`, "layout=split"] },
        { name: "hosting, split, no proxies", target: "hosting", sets: [`clusterName=${clusterName}`, "layout=split", "enableServiceProxy=false", "enableKubeApiProxy=false"] },
        { name: "managed, Relay", target: "managed", sets: ["hostedServiceProxyMode=Relay", "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.10/32}"] },
        { name: "all, combined, Relay", target: "all", sets: [`clusterName=${clusterName}`, "hostedServiceProxyMode=Relay", "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.10/32}"] }
      ]
      for (const { name, sets, target } of cases) {
        const docs = yield* render(target, [...on, ...sets, "monitoring.serviceMonitor.labels.release=prom", "monitoring.serviceMonitor.interval=15s"])
        const placements = target === "all" ? [true, false] : [target === "hosting"]
        for (const hosting of placements) {
          const here = docs.filter(({ object }) => (object.metadata?.annotations?.[hostingAnnotation] === "hosting") === hosting)
          const where = `${name} (${hosting ? "hosting" : "managed"})`
          const monitors = ofKind<ServiceMonitor>(here, "ServiceMonitor")
          assert.lengthOf(monitors, 1, where)
          const monitor = monitors[0]!
          assert.strictEqual(monitor.metadata?.labels?.["release"], "prom", `${where}: the Prometheus's selector label`)
          assert.deepStrictEqual(monitor.spec.namespaceSelector.matchNames, [namespace], where)
          assert.strictEqual(monitor.spec.jobLabel, "open-cluster-management.io/addon", `${where}: job = the add-on name`)
          const services = ofKind<V1Service>(here, "Service").filter((s) => matches(monitor.spec.selector.matchLabels, s.metadata?.labels))
          const deployments = ofKind<V1Deployment>(here, "Deployment")
          assert.isAbove(deployments.length, 0, where)
          // Every tether container's metrics port is behind a selected Service, and every Service port
          // reaches a named container port of the pods it selects.
          const scraped = new Set<string>()
          for (const service of services) {
            assert.strictEqual(service.spec?.clusterIP, "None", `${where}: ${service.metadata?.name} is headless`)
            assert.strictEqual(service.metadata?.labels?.["open-cluster-management.io/addon"], addonName, `${where}: the job label's source`)
            const pods = deployments.filter((d) => matches(service.spec?.selector ?? {}, d.spec?.template.metadata?.labels))
            assert.lengthOf(pods, 1, `${where}: ${service.metadata?.name} selects one Deployment's pods`)
            const containerPorts = pods[0]!.spec!.template.spec!.containers.flatMap((c) => c.ports ?? [])
            for (const port of service.spec?.ports ?? []) {
              const target = containerPorts.find((p) => p.name === port.targetPort)
              assert.isDefined(target, `${where}: ${service.metadata?.name} port ${port.name} reaches a container port`)
              scraped.add(`${pods[0]!.metadata?.name}:${target!.containerPort}`)
              assert.include(monitor.spec.endpoints.map((e) => e.port), port.name, `${where}: the ServiceMonitor scrapes ${port.name}`)
            }
          }
          for (const endpoint of monitor.spec.endpoints) {
            assert.strictEqual(endpoint.path, "/metrics")
            assert.strictEqual(endpoint.interval, "15s")
          }
          const probePorts = deployments.flatMap((d) =>
            d.spec!.template.spec!.containers
              .filter((c) => c.command?.[0] === "tether")
              .map((c) => {
                const flag = c.args?.find((a) => a.startsWith("--health-probe-bind-address="))
                return `${d.metadata?.name}:${flag?.split(":").at(-1)}`
              })
          )
          assert.sameMembers([...scraped], probePorts, `${where}: exactly the /metrics port of each tether container`)
          assert.lengthOf(ofKind(here, "PrometheusRule"), hosting ? 1 : 0, `${where}: the rules live with the hosting side's series`)
        }
      }
    }))

  it.live("bad monitoring values are refused with a message naming the value", () =>
    Effect.gen(function*() {
      const refused = [
        ["monitoring.prometheusRule.tokenExpiryWarning=1h", "monitoring.prometheusRule.tokenExpiryWarning"],
        ["monitoring.prometheusRule.tokenExpiryWarning=0", "monitoring.prometheusRule.tokenExpiryWarning"],
        ["monitoring.prometheusRule.tokenExpiryWarning=soon", "monitoring.prometheusRule.tokenExpiryWarning"],
        ["monitoring.serviceMonitor.interval=fast", "monitoring.serviceMonitor.interval"],
        ["monitoring.serviceMonitor.enabeld=true", "enabeld"],
        ["monitoring.prometheusRule.runbookBaseUrl=wiki", "monitoring.prometheusRule.runbookBaseUrl"]
      ] as const
      for (const [set, named] of refused) {
        assert.include(yield* refusal("hosting", [...on, `clusterName=${clusterName}`, set]), named, set)
      }
    }))

  it.live.skipIf(noPromtool)("the rendered rules pass promtool check rules and hold every promised alert; the margin defaults to half the refresh lead", () =>
    Effect.gen(function*() {
      const rule = theRule(yield* render("hosting", [...on, `clusterName=${clusterName}`]))
      assert.sameMembers(alertsOf(rule).map((a) => a.alert), alertNames)
      const check = promtoolRun(["check", "rules", rulesFile("check-rules.json", rule)])
      assert.strictEqual(check.code, 0, check.output)
      assert.include(check.output, `SUCCESS: ${alertNames.length} rules found`)
      const expiring = alertsOf(rule).find((a) => a.alert === "TetherManagedTokenExpiringSoon")!
      assert.include(expiring.expr, "> 0 < 1800", "half of managedKubeConfigRefreshBefore=1h")
      const tuned = alertsOf(theRule(yield* render("hosting", [...on, `clusterName=${clusterName}`, "managedKubeConfigRefreshBefore=2h", "monitoring.prometheusRule.tokenExpiryWarning=45m"])))
      assert.include(tuned.find((a) => a.alert === "TetherManagedTokenExpiringSoon")!.expr, "> 0 < 2700")
      // promtool's check fails on a broken expression, so the check above can fail.
      const broken = { ...rule, spec: { groups: [{ name: "broken", rules: [{ ...expiring, expr: "cluster_proxy_managed_kubeconfig_token_expiration_seconds{ > 0" }] }] } }
      assert.notStrictEqual(promtoolRun(["check", "rules", rulesFile("broken-rules.json", broken)]).code, 0)
    }))
})

// ---------------------------------------------------------------------------------------------
// on real apiservers: the dry run, and the alerts on the series a real hosted-agent exports
// ---------------------------------------------------------------------------------------------

/** One series of a scrape: its name and labels. */
interface Series {
  readonly name: string
  readonly labels: Record<string, string>
  readonly value: number
}

/** The series of a Prometheus text exposition (comments dropped). */
const parseExposition = (text: string): ReadonlyArray<Series> =>
  text.split("\n").filter((line) => line !== "" && !line.startsWith("#")).map((line) => {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    assert.isNotNull(match, `an exposition line: ${line}`)
    const labels: Record<string, string> = {}
    for (const pair of (match![2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = JSON.parse(`"${pair[2]!}"`) as string
    }
    return { name: match![1]!, labels, value: Number(match![3]) }
  })

/** A series selector as promtool's input_series takes it. */
const selector = (name: string, labels: Record<string, string>) =>
  `${name}{${Object.entries(labels).map(([key, value]) => `${key}=${JSON.stringify(value)}`).join(",")}}`

/** A loopback TCP forwarder to `target`, whose connections can be cut and whose listener can go. */
const forwarder = (target: { readonly host: string; readonly port: number }) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly port: number; readonly cut: () => void; readonly close: () => void; readonly server: Net.Server }>((resume) => {
      const sockets = new Set<Net.Socket>()
      const server = Net.createServer((client) => {
        const upstream = Net.connect(target.port, target.host)
        for (const socket of [client, upstream]) {
          sockets.add(socket)
          socket.on("close", () => sockets.delete(socket))
          socket.on("error", () => {
            client.destroy()
            upstream.destroy()
          })
        }
        client.pipe(upstream)
        upstream.pipe(client)
      })
      const cut = () => {
        for (const socket of sockets) socket.destroy()
      }
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({ port: (server.address() as Net.AddressInfo).port, cut, close: () => (server.close(), cut()), server })))
    }),
    (forward) => Effect.sync(() => forward.close())
  )

describe.skipIf(noApiserver)("Helm chart monitoring on real kube-apiservers", () => {
  let scope: Scope.Closeable
  let hub: Apiserver.ApiserverInfo
  let hosting: Apiserver.ApiserverInfo
  let managed: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    ;[hub, hosting, managed] = await Effect.runPromise(
      Effect.all([
        Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
        Apiserver.make({ name: "hosting", crds: [serviceMonitorCrd, prometheusRuleCrd] }),
        Apiserver.make({ name: "managed", crds: [serviceMonitorCrd] })
      ], { concurrency: "unbounded" }).pipe(Scope.provide(scope))
    )
  }, 180_000)
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  const dryRun = (cluster: Apiserver.ApiserverInfo, name: string, docs: ReadonlyArray<Helm.Doc>) =>
    kubectl(cluster.kubeconfigPath, ["apply", "--dry-run=server", "--validate=strict", "-o", "name", "-f", writeFile(name, docs.map((d) => d.raw).join("\n---\n"))])

  it.live("the monitoring objects pass kubectl apply --dry-run=server --validate=strict on each cluster; a misspelt field is refused", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(hosting, namespace)
      yield* Apiserver.createNamespace(managed, namespace)
      for (const layout of ["combined", "split"]) {
        const docs = yield* render("all", [...on, `clusterName=${clusterName}`, `layout=${layout}`, "hostedServiceProxyMode=Relay", "serviceRelay.networkPolicy.apiserverCIDRs={10.0.0.10/32}", "monitoring.prometheusRule.alertLabels.team=platform", "monitoring.prometheusRule.runbookBaseUrl=https://runbooks.example/tether#"])
        const monitoring = docs.filter(({ object }) => ["ServiceMonitor", "PrometheusRule"].includes(object.kind ?? "") || object.metadata?.name?.endsWith("-metrics"))
        const parts = [
          [hosting, monitoring.filter(({ object }) => object.metadata?.annotations?.[hostingAnnotation] === "hosting")],
          [managed, monitoring.filter(({ object }) => object.metadata?.annotations?.[hostingAnnotation] !== "hosting")]
        ] as const
        for (const [cluster, part] of parts) {
          const kinds = part.map(({ object }) => object.kind)
          assert.include(kinds, "ServiceMonitor", `${layout} on ${cluster.name}`)
          const out = yield* dryRun(cluster, `dry-run-${layout}-${cluster.name}.yaml`, part)
          assert.strictEqual(out.code, 0, `${layout} on ${cluster.name}: ${out.stderr}`)
          assert.lengthOf(out.stdout.trim().split("\n"), part.length, `${layout} on ${cluster.name}: every object accepted`)
        }
        assert.include(parts[0][1].map(({ object }) => object.kind), "PrometheusRule")
      }
      // The CRDs' schemas are strict enough to catch a misspelling, so the dry run above can fail.
      const docs = yield* render("hosting", [...on, `clusterName=${clusterName}`])
      const misspellings = [
        ["scrapeTimeout:", "scrapeTimout:", "scrapeTimout"],
        ["annotations:\n            summary", "anotations:\n            summary", "anotations"],
        ["for: 5m", "for: five", "five"]
      ] as const
      for (const [from, to, named] of misspellings) {
        const bad = docs.map((d) => ({ ...d, raw: d.raw.replace(from, to) }))
        assert.notDeepEqual(bad, docs, `${to} is there to break`)
        // kubectl validates against the apiserver's OpenAPI document, which takes up the CRDs'
        // schemas some time after they are created: until then the misspelling reaches the
        // server, which refuses the objects for other reasons. Bounded.
        const out = yield* until(dryRun(hosting, "dry-run-bad.yaml", bad), (run) => run.stderr.includes(named), `kubectl names ${named}`, {
          timeout: "30 seconds",
          interval: "500 millis"
        })
        assert.notStrictEqual(out.code, 0, `refused: ${to}`)
      }
    }), { timeout: 120_000 })

  // -------------------------------------------------------------------------------------------
  // the alerts, on the series a real hosted-agent exports
  // -------------------------------------------------------------------------------------------

  /** How one alert is proven: which scraped series, and its values for a sick and a healthy pod. */
  interface Case {
    readonly alert: string
    /** The scraped series: the first one with this name whose labels include `having`. */
    readonly name: string
    readonly having?: Record<string, string>
    /** promtool expanding notation, one sample per minute. */
    readonly sick: string
    readonly healthy: string
    /** When the sick pod's alert fires. */
    readonly firingAt: string
    /** When the condition already holds but its `for` has not passed yet. */
    readonly pendingAt?: string
  }

  const cases: ReadonlyArray<Case> = [
    // 25 minutes left and falling, below the 30m margin: a refresh that did not happen.
    { alert: "TetherManagedTokenExpiringSoon", name: "cluster_proxy_managed_kubeconfig_token_expiration_seconds", sick: "1500-60x30", healthy: "86400-60x30", firingAt: "10m", pendingAt: "4m" },
    { alert: "TetherManagedKubeconfigNotReady", name: "cluster_proxy_managed_kubeconfig_token_expiration_seconds", sick: "0x30", healthy: "3600-60x30", firingAt: "10m", pendingAt: "4m" },
    { alert: "TetherManagedKubeconfigRefreshFailing", name: "cluster_proxy_managed_kubeconfig_refresh_total", having: { result: "error" }, sick: "0+1x40", healthy: "2+0x40", firingAt: "20m", pendingAt: "10m" },
    { alert: "TetherApiserverRelayDialErrors", name: "cluster_proxy_managed_apiserver_relay_dial_errors_total", sick: "0+1x40", healthy: "3+0x40", firingAt: "20m", pendingAt: "8m" },
    { alert: "TetherWatchRestarting", name: "tether_watch_restarts_total", having: { resource: "managedclusteraddon", result: "error" }, sick: "0+1x40", healthy: "1+0x40", firingAt: "15m", pendingAt: "5m" },
    { alert: "TetherAddonHealthCheckFailing", name: "cluster_proxy_addon_health_check_status", having: { check: "managed-token" }, sick: "0x30", healthy: "1x30", firingAt: "10m", pendingAt: "4m" },
    { alert: "TetherComponentDown", name: "tether_component_up", having: { component: "apiserver-proxy" }, sick: "0x30", healthy: "1x30", firingAt: "10m", pendingAt: "4m" },
    { alert: "TetherComponentRestarting", name: "tether_component_restarts_total", having: { component: "apiserver-proxy" }, sick: "0+1x40", healthy: "1+0x40", firingAt: "10m" }
  ]

  it.live.skipIf(noPromtool)("promtool test rules: each alert fires on the series a real hosted-agent exports, for a sick pod only, and only after its for", () =>
    Effect.gen(function*() {
      assert.sameMembers(cases.map((c) => c.alert), alertNames, "a case per alert")
      yield* HostedInstall.prepare({ hub, hosting, managed }, clusterName, namespace)
      const core = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
      const tls = selfSigned(dir, "service-proxy", ["localhost", "127.0.0.1"])
      const [probePort, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
      const metricsUrl = `http://127.0.0.1:${probePort}/metrics`
      const scrape = Effect.map(Effect.orElseSucceed(get(metricsUrl), () => ({ status: 0, body: "" })), (r) => parseExposition(r.body))
      const has = (name: string, having: Record<string, string> = {}) => (series: ReadonlyArray<Series>) =>
        series.some((s) => s.name === name && matches(having, s.labels))
      // Some counters are exported at 0 from the start, so a fault shows as a count of at least 1.
      const counted = (name: string, having: Record<string, string> = {}) => (series: ReadonlyArray<Series>) =>
        series.some((s) => s.name === name && matches(having, s.labels) && s.value >= 1)

      // The faults the alerts are about, each made for real:
      // - the source kubeconfig Secret is missing at start (refresh errors, no token);
      yield* Effect.promise(() => core.deleteNamespacedSecret({ namespace: clusterName, name: "external-managed-kubeconfig" }))
      // - the relay's listener closes under it (the apiserver-proxy component fails and restarts);
      // - the hub is reached through a forwarder whose connections are cut (broken watches);
      const hubForward = yield* forwarder(hub)
      const hubKubeconfig = writeFile("hub-kubeconfig", hub.kubeconfigYaml.replace(hub.server, `https://127.0.0.1:${hubForward.port}`))
      // - the managed apiserver is reached through a forwarder that goes away (relay dial errors).
      const managedForward = yield* forwarder(managed)

      const logLines: Array<string> = []
      const originalLog = console.log
      console.log = (...args: Array<unknown>) => void logLines.push(args.map(String).join(" "))
      yield* Effect.addFinalizer(() => Effect.sync(() => void (console.log = originalLog)))
      const showLogs = () => Effect.sync(() => console.error(logLines.slice(-60).join("\n")))
      process.env["POD_NAMESPACE"] = namespace
      yield* Command.runWith(HostedAgentCommand.command, { version: "0" })([
        `--cluster-name=${clusterName}`,
        `--kubeconfig=${hosting.kubeconfigPath}`,
        `--hub-kubeconfig=${hubKubeconfig}`,
        "--token-expiration=1h",
        "--refresh-before=5m",
        `--health-probe-bind-address=127.0.0.1:${probePort}`,
        `--apiserver-proxy-listen=127.0.0.1:${relayPort}`,
        `--service-proxy-listen=127.0.0.1:${proxyPort}`,
        `--cert=${tls.certFile}`,
        `--key=${tls.keyFile}`,
        "--renew-interval=1s",
        "--lease-duration=10s",
        "--enable-proxy-agent-health-check=false"
      ]).pipe(Effect.provide(NodeServices.layer), Effect.forkScoped)

      yield* until(scrape, counted("cluster_proxy_managed_kubeconfig_refresh_total", { result: "error" }), "a refresh error", { timeout: "60 seconds", interval: "500 millis" }).pipe(Effect.tapError(showLogs))
      const source = managed.kubeconfigYaml.replace(managed.server, `https://127.0.0.1:${managedForward.port}`)
      yield* Effect.promise(() =>
        core.createNamespacedSecret({ namespace: clusterName, body: { metadata: { name: "external-managed-kubeconfig" }, data: { kubeconfig: Buffer.from(source).toString("base64") } } })
      )

      const readyz = Effect.orElseSucceed(get(`http://127.0.0.1:${probePort}/readyz`), () => ({ status: 0, body: "" }))
      yield* until(readyz, (r) => r.status === 200, "hosted-agent ready", { timeout: "90 seconds", interval: "500 millis" }).pipe(Effect.tapError(showLogs))

      // (the agent runs in this process, so its relay's listener is at hand)
      const listener = (process as unknown as { _getActiveHandles(): Array<unknown> })._getActiveHandles()
        .find((handle): handle is Net.Server => handle instanceof Net.Server && (handle.address() as Net.AddressInfo | null)?.port === relayPort)
      assert.isDefined(listener, "the relay's listener")
      listener!.close()
      yield* until(scrape, counted("tether_component_restarts_total", { component: "apiserver-proxy" }), "the relay restarted", { timeout: "30 seconds" }).pipe(Effect.tapError(showLogs))
      yield* until(readyz, (r) => r.status === 200, "ready again after the restart", { timeout: "60 seconds", interval: "500 millis" }).pipe(Effect.tapError(showLogs))

      hubForward.cut()
      yield* until(scrape, counted("tether_watch_restarts_total", { resource: "managedclusteraddon", result: "error" }), "a broken hub watch", { timeout: "30 seconds" }).pipe(Effect.tapError(showLogs))

      managedForward.close()
      const dialed = Effect.callback<void>((resume) => {
        const socket = Net.connect(relayPort, "127.0.0.1", () => socket.write("GET /version HTTP/1.1\r\nHost: x\r\n\r\n"))
        socket.on("close", () => resume(Effect.void))
        socket.on("error", () => undefined)
      })
      yield* dialed
      yield* until(scrape, counted("cluster_proxy_managed_apiserver_relay_dial_errors_total"), "a relay dial error", { timeout: "30 seconds" }).pipe(Effect.tapError(showLogs))
      yield* until(scrape, has("cluster_proxy_addon_health_check_status", { check: "managed-token" }), "the add-on health check", { timeout: "30 seconds" }).pipe(Effect.tapError(showLogs))

      const body = (yield* get(metricsUrl)).body
      writeFile("scraped-metrics.txt", body)
      const scraped = parseExposition(body)

      // Every series a rule reads is one tether exports.
      const rule = theRule(yield* render("hosting", [...on, `clusterName=${clusterName}`, "monitoring.prometheusRule.alertLabels.team=platform", "monitoring.prometheusRule.runbookBaseUrl=https://runbooks.example/tether#"]))
      const names = new Set(scraped.map((s) => s.name))
      for (const alert of alertsOf(rule)) {
        const used = alert.expr.match(/\b(cluster_proxy|tether)_[a-z_]+\b/g) ?? []
        assert.isNotEmpty(used, alert.alert)
        for (const name of used) assert.isTrue(names.has(name), `${alert.alert} reads ${name}, which the scrape has`)
      }

      // The target labels a ServiceMonitor adds; a second install in another namespace must not alert here.
      const target = (pod: string, ns = namespace) => ({ namespace: ns, job: addonName, pod })
      const sickPod = `${addonName}-proxy-agent-sick`
      const fill = (text: string, labels: Record<string, string>) =>
        text.replace(/\{\{ \$labels\.([a-zA-Z_]+) \}\}/g, (_, label: string) => {
          assert.property(labels, label, `the alert's labels have ${label}`)
          return labels[label]!
        })
      const tests = cases.map((c) => {
        const series = scraped.find((s) => s.name === c.name && matches(c.having ?? {}, s.labels))
        assert.isDefined(series, `scraped: ${c.name} ${JSON.stringify(c.having ?? {})}`)
        const alert = alertsOf(rule).find((a) => a.alert === c.alert)!
        const labels = { ...series!.labels, ...target(sickPod), ...alert.labels }
        const annotations = Object.fromEntries(Object.entries(alert.annotations).map(([key, text]) => [key, fill(text, labels)]))
        for (const text of Object.values(annotations)) assert.notInclude(text, "{{", c.alert)
        return {
          name: c.alert,
          interval: "1m",
          input_series: [
            { series: selector(c.name, { ...series!.labels, ...target(sickPod) }), values: c.sick },
            { series: selector(c.name, { ...series!.labels, ...target(`${addonName}-proxy-agent-healthy`) }), values: c.healthy },
            { series: selector(c.name, { ...series!.labels, ...target(sickPod, "other-install") }), values: c.sick }
          ],
          alert_rule_test: [
            ...(c.pendingAt === undefined ? [] : [{ eval_time: c.pendingAt, alertname: c.alert, exp_alerts: [] }]),
            { eval_time: c.firingAt, alertname: c.alert, exp_alerts: [{ exp_labels: labels, exp_annotations: annotations }] }
          ]
        }
      })
      const rules = rulesFile("rules.json", rule)
      const suite = (rulesPath: string) => JSON.stringify({ rule_files: [Path.basename(rulesPath)], evaluation_interval: "1m", tests }, null, 2)
      const passed = promtoolRun(["test", "rules", writeFile("rules.test.json", suite(rules))])
      assert.strictEqual(passed.code, 0, passed.output)
      assert.include(passed.output, "SUCCESS")

      // The same tests fail against broken rules, for each alert the break touches: so they prove
      // the firing, the scoping to this install and the waiting for `for`.
      const mutate = (f: (r: AlertRule) => AlertRule): PrometheusRule => ({ ...rule, spec: { groups: rule.spec.groups.map((g) => ({ ...g, rules: g.rules.map(f) })) } })
      const mutants = [
        { name: "silent", rules: mutate((r) => ({ ...r, expr: "vector(0) > 1" })), failing: alertNames },
        { name: "unscoped", rules: mutate((r) => ({ ...r, expr: r.expr.replace(`namespace="${namespace}"`, `namespace=~".+"`) })), failing: alertNames },
        {
          name: "impatient",
          rules: mutate(({ for: _, ...r }) => r),
          failing: cases.filter((c) => c.pendingAt !== undefined).map((c) => c.alert)
        }
      ]
      for (const mutant of mutants) {
        const failed = promtoolRun(["test", "rules", writeFile(`${mutant.name}.test.json`, suite(rulesFile(`${mutant.name}-rules.json`, mutant.rules)))])
        assert.notStrictEqual(failed.code, 0, mutant.name)
        for (const name of mutant.failing) assert.include(failed.output, `alertname: ${name},`, `${mutant.name}: ${name}`)
      }
    }), { timeout: 240_000 })
})
