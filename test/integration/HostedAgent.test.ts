/**
 * `tether hosted-agent` (the command, run in-process) on three real kube-apiservers: hub (the
 * ManagedClusterAddOn), hosting (source and generated Secrets, the add-on Lease) and managed
 * (ServiceAccount, TokenRequest, TokenReview, impersonation).
 *
 * One process with all four components:
 * - provisions the generated Secret and serves one /readyz listing every component's checks;
 * - kubectl with the generated kubeconfig, pointed at its TCP relay, lists, watches, and is
 *   refused what RBAC refuses;
 * - a kube-apiserver request through its service proxy is reviewed and impersonated;
 * - the add-on Lease is renewed on the hosting cluster;
 * - a source change rotates the token while requests keep flowing through the service proxy and
 *   the relay with no failure, and the in-process consumers take the new token with no restart;
 * - closing the relay's listener restarts that component only: /readyz names it meanwhile, the
 *   service proxy keeps answering, and the restart shows in the metrics;
 * - no token appears in the logs.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, beforeAll, describe, it } from "@effect/vitest"
import { CoordinationV1Api, CoreV1Api, type V1Secret } from "@kubernetes/client-node"
import { Clock, Effect, Fiber } from "effect"
import { Command } from "effect/cli"
import * as ChildProcess from "node:child_process"
import { createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as HostedAgentCommand from "../../src/cli/commands/HostedAgent.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"
import { freePort, get, kubectl, selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import { useTrio } from "../support/trio.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const b64 = (s: string) => Buffer.from(s).toString("base64")
const unb64 = (s: string | undefined) => Buffer.from(s ?? "", "base64").toString("utf8")

const cluster = "c1"
const agentNamespace = "agent"

describe.skipIf(noApiserver)("hosted-agent (real apiservers)", () => {
  const clusters = useTrio()
  let hub!: Apiserver.ApiserverInfo
  let hosting!: Apiserver.ApiserverInfo
  let managed!: Apiserver.ApiserverInfo
  let dir!: string
  let tls!: ReturnType<typeof selfSigned>
  let readerToken!: string

  beforeAll(async () => {
    ;({ hub, hosting, managed } = clusters)
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-hosted-agent-"))
    tls = selfSigned(dir, "proxy", ["localhost", "127.0.0.1"])
    ;({ readerToken } = await Effect.runPromise(HostedInstall.prepare({ hub, hosting, managed }, cluster, agentNamespace)))
  })

  const hostingCore = () => Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
  const readGenerated = Effect.promise(() =>
    hostingCore().readNamespacedSecret({ namespace: agentNamespace, name: "cluster-proxy-managed-kubeconfig" }).catch(() => undefined)
  )
  const renewTime = Effect.promise(() =>
    Apiserver.kubeConfig(hosting).makeApiClient(CoordinationV1Api).readNamespacedLease({ namespace: agentNamespace, name: "cluster-proxy" })
      .then((lease) => String(lease.spec?.renewTime ?? ""))
      .catch(() => "")
  )

  /** The generated kubeconfig with its server pointed at the relay, as a file for kubectl. */
  const viaRelay = (secret: V1Secret, relayPort: number, name: string) => {
    const kubeconfig = unb64(secret.data?.["kubeconfig"]).replace(managed.server, `https://127.0.0.1:${relayPort}`)
    const file = Path.join(dir, name)
    Fs.writeFileSync(file, kubeconfig, { mode: 0o600 })
    return file
  }

  const kas = (token: string) => ({
    "cluster-proxy-proto": "https",
    "cluster-proxy-namespace": "default",
    "cluster-proxy-service": "kubernetes",
    "cluster-proxy-port": "443",
    authorization: `Bearer ${token}`
  })

  it.live("runs all four components in one process; a rotation reaches every consumer and a lost listener restarts only its component", () =>
    Effect.gen(function*() {
      const [probePort, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
      const logLines: Array<string> = []
      const originalLog = console.log
      console.log = (...args: Array<unknown>) => {
        logLines.push(args.map(String).join(" "))
      }
      yield* Effect.addFinalizer(() => Effect.sync(() => void (console.log = originalLog)))
      process.env["POD_NAMESPACE"] = agentNamespace
      const startedAt = yield* Clock.currentTimeMillis
      const agent = yield* Command.runWith(HostedAgentCommand.command, { version: "0" })([
        `--cluster-name=${cluster}`,
        `--kubeconfig=${hosting.kubeconfigPath}`,
        `--hub-kubeconfig=${hub.kubeconfigPath}`,
        "--token-expiration=1h",
        "--refresh-before=5m",
        `--health-probe-bind-address=127.0.0.1:${probePort}`,
        `--apiserver-proxy-listen=127.0.0.1:${relayPort}`,
        "--apiserver-proxy-drain-timeout=2s",
        `--service-proxy-listen=127.0.0.1:${proxyPort}`,
        `--cert=${tls.certFile}`,
        `--key=${tls.keyFile}`,
        "--renew-interval=1s",
        "--lease-duration=10s",
        "--enable-proxy-agent-health-check=false"
      ]).pipe(Effect.provide(NodeServices.layer), Effect.forkScoped)
      const base = `http://127.0.0.1:${probePort}`

      // Provisioned and ready, with every component's checks on one /readyz.
      const secret = yield* until(readGenerated, (s) => s !== undefined, "generated Secret")
      const ready = yield* until(get(`${base}/readyz?verbose`), (r) => r.status === 200, "ready")
      const readyAfter = (yield* Clock.currentTimeMillis) - startedAt
      for (const check of ["provisioner", "addon-lease", "apiserver-proxy", "service-proxy", "provisioner/token", "provisioner/watches", "apiserver-proxy/managed-apiserver", "service-proxy/service-proxy", "addon-lease/addon-lease"]) {
        assert.include(ready.body, `[+]${check} ok`)
      }
      assert.isBelow(readyAfter, 30_000)
      const firstToken = unb64(secret!.data?.["token"])

      // kubectl through the TCP relay with the generated credentials: list, watch, forbidden.
      const kubeconfig = viaRelay(secret!, relayPort, "via-relay")
      const namespaces = yield* kubectl(kubeconfig, ["get", "namespaces", "-o", "name"])
      assert.strictEqual(namespaces.code, 0, namespaces.stderr)
      assert.include(namespaces.stdout, `namespace/${agentNamespace}`)
      const forbidden = yield* kubectl(kubeconfig, ["get", "secrets", "-n", "kube-system"])
      assert.notStrictEqual(forbidden.code, 0)
      assert.include(forbidden.stderr, "forbidden")
      const watch = ChildProcess.spawn("kubectl", ["--kubeconfig", kubeconfig, "get", "configmaps", "-n", "default", "--watch", "-o", "name"])
      let watched = ""
      watch.stdout.on("data", (chunk: Buffer) => (watched += chunk.toString()))
      yield* Effect.addFinalizer(() => Effect.sync(() => watch.kill("SIGKILL")))
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api).createNamespacedConfigMap({ namespace: "default", body: { metadata: { name: "seen-through-relay" } } })
      )
      yield* until(Effect.sync(() => watched), (text) => text.includes("configmap/seen-through-relay"), "watch event through the relay")
      watch.kill("SIGKILL")

      // The service proxy reviews the caller's token and impersonates it: RBAC decides.
      const proxyCa = [tls.cert]
      const allowed = yield* send(proxyPort, { path: "/api/v1/namespaces/default/pods", headers: kas(readerToken), ca: proxyCa })
      assert.strictEqual(allowed.status, 200, allowed.body)
      const refused = yield* send(proxyPort, { path: "/api/v1/namespaces/kube-system/pods", headers: kas(readerToken), ca: proxyCa })
      assert.strictEqual(refused.status, 403)
      assert.include(refused.body, "system:serviceaccount:team:reader")

      // The Lease on the hosting cluster is renewed.
      const firstRenewal = yield* until(renewTime, (t) => t !== "", "Lease created")
      yield* until(renewTime, (t) => t !== "" && t !== firstRenewal, "Lease renewed")

      // A source change rotates the token while requests keep flowing through both front doors.
      let requests = 0
      const failures: Array<string> = []
      const traffic = yield* Effect.gen(function*() {
        while (true) {
          const reply = yield* send(proxyPort, { path: "/api/v1/namespaces/default/pods", headers: kas(readerToken), ca: proxyCa })
          requests++
          if (reply.status !== 200) failures.push(`service proxy ${reply.status}`)
          const run = yield* kubectl(kubeconfig, ["get", "namespace", agentNamespace, "-o", "name"])
          requests++
          if (run.code !== 0) failures.push(`relay: ${run.stderr.trim()}`)
        }
      }).pipe(Effect.forkScoped)
      yield* until(Effect.sync(() => requests), (n) => n >= 4, "traffic flowing")
      const changed = managed.kubeconfigYaml + "\npreferences: {}\n"
      yield* Effect.promise(() =>
        hostingCore().replaceNamespacedSecret({
          namespace: cluster,
          name: "external-managed-kubeconfig",
          body: { metadata: { name: "external-managed-kubeconfig", namespace: cluster }, data: { kubeconfig: b64(changed) } }
        })
      )
      const rotated = yield* until(readGenerated, (s) => s !== undefined && unb64(s.data?.["token"]) !== firstToken, "token rotated")
      const secondToken = unb64(rotated!.data?.["token"])
      const secondTokenId = createHash("sha256").update(secondToken).digest("hex").slice(0, 12)
      yield* until(
        Effect.sync(() => logLines.some((line) => line.includes("apiserver token reloaded") && line.includes(secondTokenId))),
        (seen) => seen,
        "the service proxy took the new token"
      )
      const afterRotation = requests
      yield* until(Effect.sync(() => requests), (n) => n >= afterRotation + 4, "traffic after the rotation")
      yield* Fiber.interrupt(traffic)
      assert.deepStrictEqual(failures, [])
      const restartsSoFar = (yield* get(`${base}/metrics`)).body
      assert.notMatch(restartsSoFar, /tether_component_restarts_total\{component="[a-z-]+"\} [1-9]/)

      // Closing the relay's listener restarts the relay alone.
      const listener = (process as unknown as { _getActiveHandles(): Array<unknown> })._getActiveHandles()
        .find((handle): handle is Net.Server => handle instanceof Net.Server && (handle.address() as Net.AddressInfo | null)?.port === relayPort)
      assert.isDefined(listener)
      listener!.close()
      const restarting = yield* until(get(`${base}/readyz`), (r) => r.status === 503, "readyz names the restarting relay")
      assert.match(restarting.body, /^apiserver-proxy: restarting after a failure \(attempt 1\): the listener on 127\.0\.0\.1:\d+ closed/m)
      assert.notInclude(restarting.body, "service-proxy")
      const during = yield* send(proxyPort, { path: "/api/v1/namespaces/default/pods", headers: kas(readerToken), ca: proxyCa })
      assert.strictEqual(during.status, 200)
      yield* until(get(`${base}/readyz`), (r) => r.status === 200, "ready again")
      const again = yield* kubectl(kubeconfig, ["get", "namespace", agentNamespace, "-o", "name"])
      assert.strictEqual(again.code, 0, again.stderr)
      const metrics = (yield* get(`${base}/metrics`)).body
      assert.match(metrics, /tether_component_restarts_total\{component="apiserver-proxy"\} 1/)
      assert.notMatch(metrics, /tether_component_restarts_total\{component="(provisioner|service-proxy|addon-lease)"\} [1-9]/)
      for (const series of ["cluster_proxy_managed_kubeconfig_token_expiration_seconds", "cluster_proxy_managed_apiserver_relay_connections_total", "cluster_proxy_service_proxy_requests_total", "cluster_proxy_addon_lease_updates_total"]) {
        assert.include(metrics, series)
      }

      yield* Fiber.interrupt(agent)
      const closed = yield* Effect.flip(get(`${base}/healthz`))
      assert.strictEqual(closed._tag, "GetFailed")
      for (const token of [firstToken, secondToken, readerToken]) {
        assert.isFalse(logLines.some((line) => line.includes(token)), "a token appeared in the logs")
      }
      assert.isAbove(logLines.length, 5)
    }), { timeout: 180_000 })

  it.live("the real process: SIGTERM stops the front doors first, drains the relay, then the Lease and the provisioner, and exits 0", () =>
    Effect.gen(function*() {
      yield* HostedInstall.prepare({ hub, hosting, managed }, "c2", "agent2")
      const [probePort, relayPort, proxyPort] = [yield* freePort, yield* freePort, yield* freePort]
      const child = ChildProcess.spawn(process.execPath, [
        tetherEntry(), "hosted-agent",
        "--cluster-name=c2", "--target-namespace=agent2", "--lease-namespace=agent2",
        `--kubeconfig=${hosting.kubeconfigPath}`, `--hub-kubeconfig=${hub.kubeconfigPath}`,
        `--health-probe-bind-address=127.0.0.1:${probePort}`,
        `--apiserver-proxy-listen=127.0.0.1:${relayPort}`, "--apiserver-proxy-drain-timeout=3s",
        `--service-proxy-listen=127.0.0.1:${proxyPort}`, `--cert=${tls.certFile}`, `--key=${tls.keyFile}`,
        "--enable-proxy-agent-health-check=false"
      ], { env: { ...process.env, POD_NAMESPACE: "agent2" }, stdio: ["ignore", "pipe", "pipe"] })
      let output = ""
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
      const exited = Effect.callback<number | null>((resume) => {
        if (child.exitCode !== null) return resume(Effect.succeed(child.exitCode))
        child.once("exit", (code) => resume(Effect.succeed(code)))
      })
      yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
      yield* until(get(`http://127.0.0.1:${probePort}/readyz`), (r) => r.status === 200, "ready", { timeout: "60 seconds" })

      // A long-lived connection through the relay: a kubectl watch.
      const secret = yield* until(
        Effect.promise(() => hostingCore().readNamespacedSecret({ namespace: "agent2", name: "cluster-proxy-managed-kubeconfig" })),
        () => true,
        "generated Secret"
      )
      const kubeconfig = viaRelay(secret, relayPort, "via-relay-c2")
      const watch = ChildProcess.spawn("kubectl", ["--kubeconfig", kubeconfig, "get", "namespaces", "--watch", "-o", "name"])
      let watched = ""
      watch.stdout.on("data", (chunk: Buffer) => (watched += chunk.toString()))
      yield* Effect.addFinalizer(() => Effect.sync(() => watch.kill("SIGKILL")))
      yield* until(Effect.sync(() => watched), (text) => text.includes("namespace/agent2"), "the watch runs through the relay")

      const stoppingAt = yield* Clock.currentTimeMillis
      child.kill("SIGTERM")
      const code = yield* exited
      const took = (yield* Clock.currentTimeMillis) - stoppingAt
      assert.strictEqual(code, 0, output)
      // The open watch held the relay's drain to its timeout (3 s), and not much longer.
      assert.isAtLeast(took, 2_500)
      assert.isBelow(took, 15_000)
      const order = output.split("\n").flatMap((line) => {
        const stopping = /"stopping component",\{"component":"([a-z-]+)"\}/.exec(line)
        if (stopping !== null) return [`stop ${stopping[1]}`]
        return line.includes("draining open connections") ? ["drain relay"] : []
      })
      assert.deepStrictEqual(order, ["stop service-proxy", "stop apiserver-proxy", "drain relay", "stop addon-lease", "stop provisioner"])
    }), { timeout: 120_000 })
})
