/**
 * The Relay path end to end through a real kube-apiserver's `services/proxy`:
 *
 *   client -> service proxy (in-process, Relay mode)
 *          -> managed kube-apiserver `.../services/http:cluster-proxy-service-relay:7444/proxy/...`
 *          -> service relay (`tether service-relay` as it ships (package.json "bin"), a real process)
 *          -> `hello.default.svc:8080` (an HTTP backend process)
 *
 * The apiserver refuses to proxy to loopback addresses, so the relay and the backend run inside
 * a network namespace this test creates (root only): a veth pair on a free /30 of 10.203.0.0/16,
 * the host side bound by the managed apiserver, the namespace side by the relay and the backend.
 * A selector-less Service, its Endpoints and a Pod whose `status.podIPs` holds the relay address
 * make the apiserver send the hop there (real-apiserver.md section 10). `hello.default.svc`
 * resolves inside the namespace through `/etc/netns/<ns>/hosts`. Everything (processes,
 * namespace, veth, /etc/netns files) is removed when the suite ends, also after a failure.
 */
import { type KubeConfig, CoreV1Api, PatchStrategy, RbacAuthorizationV1Api, setHeaderOptions } from "@kubernetes/client-node"
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Clock, Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ServiceProxyLayers from "../../layers/ServiceProxy.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"
import { ManagedCredentials } from "../../src/serviceproxy/ManagedCredentials.ts"
import { ServiceProxy } from "../../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../../src/serviceproxy/TokenReviewChain.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { send as sendTo } from "../support/send.ts"
import { noApiserver } from "../support/apiserver.ts"
import { netnsResource, spawnInNetns } from "../support/netns.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const addonNamespace = "open-cluster-management-agent-addon"
const relayName = "cluster-proxy-service-relay"
const relayPort = 7444
const backendPort = 8080
const clientCredential = `Bearer client-credential-${Crypto.randomBytes(6).toString("hex")}`

const logTail = (path: string) => {
  try {
    return Fs.readFileSync(path, "utf8").trimEnd().split("\n").slice(-20).join("\n")
  } catch {
    return "(no log)"
  }
}

/** Poll an HTTP URL inside the namespace until it answers `status`. */
const waitForHttp = (url: string, status: number, process: { readonly child: ChildProcess.ChildProcess; readonly label: string; readonly logPath: string }) =>
  Effect.gen(function*() {
    const deadline = (yield* Clock.currentTimeMillis) + 60_000
    while (true) {
      if (process.child.exitCode !== null) {
        return yield* Effect.die(new Error(`${process.label} exited with ${process.child.exitCode}:\n${logTail(process.logPath)}`))
      }
      const answer = yield* Effect.callback<number>((resume) => {
        const req = Http.get(url, { agent: false, timeout: 1_000 }, (res) => {
          res.resume()
          resume(Effect.succeed(res.statusCode ?? 0))
        })
        req.on("timeout", () => req.destroy())
        req.on("error", () => resume(Effect.succeed(0)))
      })
      if (answer === status) return
      if ((yield* Clock.currentTimeMillis) > deadline) return yield* Effect.die(new Error(`${process.label} never answered ${url}:\n${logTail(process.logPath)}`))
      yield* Effect.sleep("200 millis")
    }
  })

// The backend: echoes what reached it as JSON.
const backendSource = `
const http = require("node:http");
const [host, port] = [process.argv[1], Number(process.argv[2])];
http.createServer((req, res) => {
  let body = "";
  req.on("data", (d) => (body += d));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json", "x-backend": "netns-hello" });
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
  });
}).listen(port, host, () => console.log("backend listening"));
`

// ---------------------------------------------------------------------------------------------
// the suite
// ---------------------------------------------------------------------------------------------

describe.skipIf(noApiserver)("ServiceProxy Relay mode through a real services/proxy", () => {
  let scope: Scope.Closeable
  let proxyPort: number
  let proxyCa: string
  let relayLog: string
  const logs: Array<string> = []

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error("this test creates a network namespace and must run as root")
    scope = await Effect.runPromise(Scope.make())
    try {
      await Effect.runPromise(Effect.gen(function*() {
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-sp-relay-"))),
          (folder) => Effect.sync(() => Fs.rmSync(folder, { recursive: true, force: true }))
        )
        const netns = yield* netnsResource((ns) => `127.0.0.1 localhost\n${ns} hello.default.svc\n`)

        // The managed apiserver, reachable from the namespace on the host side of the veth.
        const managed = yield* Apiserver.make({ name: "relay-path-managed", bindAddress: netns.hostAddress })
        const kubeConfig: KubeConfig = Apiserver.kubeConfig(managed)
        const core = kubeConfig.makeApiClient(CoreV1Api)
        const rbac = kubeConfig.makeApiClient(RbacAuthorizationV1Api)
        const [proxyToken, relayToken] = yield* Effect.all([
          Apiserver.serviceAccountToken(managed, addonNamespace, "cluster-proxy", 3600),
          Apiserver.serviceAccountToken(managed, addonNamespace, relayName, 3600)
        ])
        yield* Effect.promise(async () => {
          // The relay reviews its callers (system:auth-delegator grants tokenreviews create).
          await rbac.createClusterRoleBinding({
            body: {
              metadata: { name: `${relayName}:${addonNamespace}` },
              roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "system:auth-delegator" },
              subjects: [{ kind: "ServiceAccount", name: relayName, namespace: addonNamespace }]
            }
          })
          // The proxy's ServiceAccount may use the relay Service's proxy subresource (spec 9.4).
          await rbac.createNamespacedRole({
            namespace: addonNamespace,
            body: {
              metadata: { name: `${relayName}-proxy` },
              rules: [{
                apiGroups: [""],
                resources: ["services/proxy"],
                resourceNames: [relayName, `http:${relayName}`, `http:${relayName}:${relayPort}`],
                verbs: ["get", "create", "update", "patch", "delete"]
              }]
            }
          })
          await rbac.createNamespacedRoleBinding({
            namespace: addonNamespace,
            body: {
              metadata: { name: `${relayName}-proxy` },
              roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: `${relayName}-proxy` },
              subjects: [{ kind: "ServiceAccount", name: "cluster-proxy", namespace: addonNamespace }]
            }
          })
          // A selector-less Service, a Pod carrying the relay address, and Endpoints pointing at it.
          await core.createNamespacedService({
            namespace: addonNamespace,
            body: { metadata: { name: relayName }, spec: { ports: [{ name: "http", port: relayPort, targetPort: relayPort }] } }
          })
          await core.createNamespacedPod({
            namespace: addonNamespace,
            body: { metadata: { name: relayName }, spec: { containers: [{ name: "relay", image: "tether" }] } }
          })
          await core.patchNamespacedPodStatus(
            {
              namespace: addonNamespace,
              name: relayName,
              body: { status: { podIP: netns.nsAddress, podIPs: [{ ip: netns.nsAddress }] } }
            },
            setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
          )
          await core.createNamespacedEndpoints({
            namespace: addonNamespace,
            body: {
              metadata: { name: relayName },
              subsets: [{
                addresses: [{ ip: netns.nsAddress, targetRef: { kind: "Pod", name: relayName, namespace: addonNamespace } }],
                ports: [{ name: "http", port: relayPort }]
              }]
            }
          })
        })

        // The backend and the relay, inside the namespace.
        const backend = yield* spawnInNetns(netns, "backend", ["-e", backendSource, netns.nsAddress, String(backendPort)], Path.join(dir, "backend.log"))
        const relayKubeconfig = Path.join(dir, "relay-kubeconfig")
        Fs.writeFileSync(relayKubeconfig, Apiserver.kubeconfigForToken(managed, relayToken), { mode: 0o600 })
        relayLog = Path.join(dir, "relay.log")
        const relay = yield* spawnInNetns(netns, "service-relay", [
          tetherEntry(),
          "service-relay",
          `--listen=${netns.nsAddress}:${relayPort}`,
          `--health-probe-bind-address=${netns.nsAddress}:8000`,
          `--kubeconfig=${relayKubeconfig}`,
          `--trusted-caller-username=system:serviceaccount:${addonNamespace}:cluster-proxy`
        ], relayLog)
        yield* waitForHttp(`http://${netns.nsAddress}:${backendPort}/`, 200, backend)
        yield* waitForHttp(`http://${netns.nsAddress}:8000/readyz`, 200, relay)

        // The service proxy, in Relay mode, with the managed kubeconfig of the generated Secret.
        const tlsDir = Path.join(dir, "tls")
        Fs.mkdirSync(tlsDir)
        ChildProcess.execFileSync("openssl", [
          "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
          "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
          "-keyout", Path.join(tlsDir, "tls.key"), "-out", Path.join(tlsDir, "tls.crt")
        ], { stdio: "ignore" })
        proxyCa = Fs.readFileSync(Path.join(tlsDir, "tls.crt"), "utf8")
        const managedKubeconfig = Path.join(dir, "managed-kubeconfig")
        Fs.writeFileSync(managedKubeconfig, Apiserver.kubeconfigForToken(managed, proxyToken), { mode: 0o600 })
        const layer = ServiceProxyLayers.layerNoDeps({
          listen: { host: "127.0.0.1", port: 0 },
          certFile: Path.join(tlsDir, "tls.crt"),
          keyFile: Path.join(tlsDir, "tls.key"),
          deployment: { _tag: "Hosted", mode: "Relay" },
          enableImpersonation: true,
          relay: { namespace: addonNamespace, name: relayName, port: relayPort }
        }).pipe(
          Layer.provide(TokenReviewChain.layer({ cacheTtl: "10 seconds" }).pipe(Layer.provide(ServiceProxyLayers.layerManagedCluster))),
          Layer.provideMerge(ManagedCredentials.layer({ source: { _tag: "Kubeconfig", path: managedKubeconfig } })),
          // Nothing may be resolved on this side in Relay mode.
          Layer.provide(ServiceResolver.layerStatic({})),
          Layer.provide(Probes.layerNoServer),
          Layer.provide(NodeServices.layer)
        )
        const context = yield* Layer.build(layer).pipe(
          Effect.provide(Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))]))
        )
        proxyPort = Context.get(context, ServiceProxy).address.port
      }).pipe(Scope.provide(scope)))
    } catch (error) {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      throw error
    }
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  const send = (options: { readonly path: string; readonly method?: string; readonly headers: Http.OutgoingHttpHeaders; readonly body?: string }) =>
    sendTo(proxyPort, { ...options, ca: [proxyCa] })

  const routing = {
    "cluster-proxy-proto": "http",
    "cluster-proxy-namespace": "default",
    "cluster-proxy-service": "hello",
    "cluster-proxy-port": String(backendPort)
  }

  it.live("reaches the Service through the apiserver and the relay with the caller's own credential, nothing internal", () =>
    Effect.gen(function*() {
      const reply = yield* send({
        method: "POST",
        path: "/echo/path?x=1&y=two",
        body: "payload",
        headers: {
          ...routing,
          authorization: clientCredential,
          "Impersonate-User": "system:admin",
          "Impersonate-Group": "system:masters",
          "Cluster-Proxy-Relay-Authorization": "Bearer spoofed",
          "Cluster-Proxy-Authorization": "Bearer spoofed",
          "x-request-id": "kept"
        }
      })
      assert.strictEqual(reply.status, 200, `${reply.body}\nrelay log:\n${logTail(relayLog)}`)
      assert.strictEqual(reply.headers["x-backend"], "netns-hello")
      const seen = JSON.parse(reply.body) as { method: string; url: string; headers: Record<string, string>; body: string }
      assert.strictEqual(seen.method, "POST")
      assert.strictEqual(seen.url, "/echo/path?x=1&y=two")
      assert.strictEqual(seen.body, "payload")
      assert.strictEqual(seen.headers["authorization"], clientCredential)
      assert.strictEqual(seen.headers["x-request-id"], "kept")
      for (const name of Object.keys(seen.headers)) assert.notMatch(name, /^(impersonate-|cluster-proxy-)/i)
    }))

  it.live("passes the relay's refusal of a bad target on, and a Service without a client credential gets none", () =>
    Effect.gen(function*() {
      const anonymous = yield* send({ path: "/", headers: routing })
      assert.strictEqual(anonymous.status, 200)
      assert.notProperty((JSON.parse(anonymous.body) as { headers: Record<string, string> }).headers, "authorization")
      // A name the relay cannot resolve inside the namespace: the relay answers 502 and it comes back.
      const unknown = yield* send({ path: "/", headers: { ...routing, "cluster-proxy-service": "nowhere" } })
      assert.strictEqual(unknown.status, 502)
    }))

  it.live("keeps no token in its logs", () =>
    Effect.sync(() => {
      assert.isFalse(logs.some((line) => /Bearer |eyJ/.test(line)))
      assert.isAbove(logs.length, 0)
    }))

})
