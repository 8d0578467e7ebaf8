/**
 * The hosted install as deployed: the chart rendered by the real helm for both clusters of hosted
 * mode, applied to real kube-apiservers (hub, hosting, managed), and every rendered pod run the
 * way a kubelet would run it (test/support/kubelet.ts): each container's command, arguments and
 * environment as a process of the `tether` package.json names, its Secret and ConfigMap volumes
 * kept in sync from the real objects with the kubelet's atomic `..data` swap, its identity a token
 * of the rendered ServiceAccount. The hosting pod shares this machine's loopback (declared ports
 * mapped to free ones); the managed pod (the service relay) and the Services behind it run in a
 * network namespace, where the managed apiserver's `services/proxy` can reach them.
 *
 *   kubectl ──TCP──> hosted-agent :8443 (TCP relay) ──────────────> managed kube-apiserver
 *   client ──TLS──> hosted-agent :7443 (service proxy, Relay) ──> managed services/proxy
 *                                       ──> service relay :7444 (netns) ──> hello / hello-tls
 *
 * The scenarios run in order on one install: what lands on which cluster; provisioning and the
 * hub condition; kubectl through the TCP relay; Services over HTTP and HTTPS through the relay;
 * a serving certificate swapped in its Secret volume; a token rotation under continuous traffic
 * through both relays; the metrics each component promises; switching hostedServiceProxyMode;
 * the split layout, whose containers read the generated Secret from their volume, through another
 * rotation under traffic; and the add-on's deletion with the cleanup Job, which leaves no
 * generated Secret and no process. About two minutes on two busy cores, most of it the three
 * apiservers' start and the pod replacements.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api, CustomObjectsApi, type KubernetesObject } from "@kubernetes/client-node"
import { Effect, Exit, Fiber, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { until } from "../support/eventually.ts"
import * as Helm from "../support/helm.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import * as Kubelet from "../support/kubelet.ts"
import { get, kubectl, type Run, selfSigned } from "../support/local.ts"
import { type Netns, netnsResource, spawnInNetns } from "../support/netns.ts"
import { send } from "../support/send.ts"

const cluster = "cluster-a"
const namespace = "open-cluster-management-agent-addon"
const agentDeployment = "cluster-proxy-proxy-agent"
const relayDeployment = "cluster-proxy-service-relay"
const provisionerDeployment = "cluster-proxy-managed-kubeconfig-provisioner"
const generatedSecret = "cluster-proxy-managed-kubeconfig"
const sourceSecret = "external-managed-kubeconfig"
const certSecret = "cluster-proxy-service-proxy-server-certificates"
const hubSecret = "cluster-proxy-hub-kubeconfig"
const hostingAnnotation = "addon.open-cluster-management.io/hosted-manifest-location"
const [httpPort, httpsPort] = [8080, 8443]
type Mode = "Relay" | "BestEffort" | "Disabled"
type Layout = "combined" | "split"

const b64 = (s: string) => Buffer.from(s).toString("base64")
const unb64 = (s: string | undefined) => Buffer.from(s ?? "", "base64").toString("utf8")
const tokenId = (token: string) => Crypto.createHash("sha256").update(token).digest("hex").slice(0, 12)

// The Services behind the relay: each answers with what reached it.
const backendSource = `
const [name, host, port, cert, key] = process.argv.slice(1);
const handler = (req, res) => {
  let body = "";
  req.on("data", (d) => (body += d));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json", "x-backend": name });
    res.end(JSON.stringify({ method: req.method, url: req.url, authorization: req.headers.authorization ?? null, body }));
  });
};
const server = cert
  ? require("node:https").createServer({ cert: require("node:fs").readFileSync(cert), key: require("node:fs").readFileSync(key) }, handler)
  : require("node:http").createServer(handler);
server.listen(Number(port), host);
`

/** One value of a Prometheus text exposition: the sum over the series of `name` whose labels include `labels`. */
const sample = (text: string, name: string, labels: Readonly<Record<string, string>> = {}): number | undefined => {
  let total: number | undefined
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ([^ ]+)/.exec(line)
    if (match === null || match[1] !== name) continue
    const have = Object.fromEntries([...(match[3] ?? "").matchAll(/([a-zA-Z_]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]))
    if (Object.entries(labels).every(([key, value]) => have[key] === value)) total = (total ?? 0) + Number(match[4])
  }
  return total
}

const id = (object: KubernetesObject) => `${object.kind}/${object.metadata?.namespace ?? ""}/${object.metadata?.name}`

describe.skipIf(noApiserver)("e2e: the chart as deployed on hub, hosting and managed", () => {
  let scope: Scope.Closeable
  let dir: string
  let netns: Netns
  let hub: Apiserver.ApiserverInfo
  let hosting: Apiserver.ApiserverInfo
  let managed: Apiserver.ApiserverInfo
  let hostingNode: Kubelet.Node
  let managedNode: Kubelet.Node
  let readerToken: string
  let proxyCa: string
  /** What is applied on each cluster now. */
  const applied = new Map<string, ReadonlyArray<Helm.Doc>>()
  const seenTokens = new Set<string>()

  const hostingFlags = (mode: Mode, layout: Layout) =>
    Helm.set(
      "target=hosting",
      `layout=${layout}`,
      `clusterName=${cluster}`,
      `hostedServiceProxyMode=${mode}`,
      // Short enough that the Lease and a SIGTERM show within the test's time.
      "agent.addonAgent.renewInterval=5s",
      "agent.addonAgent.leaseDuration=20s",
      "agent.managedApiserverProxy.drainTimeout=2s"
    )
  const managedFlags = (mode: Mode) =>
    Helm.set(
      "target=managed",
      `hostedServiceProxyMode=${mode}`,
      `serviceRelay.networkPolicy.apiserverCIDRs={${netns.hostAddress}/32}`,
      "serviceRelay.additionalServiceCAConfigMap=service-ca"
    )

  /**
   * Apply a rendering to a cluster and delete what the previous rendering had and this one lacks,
   * as the add-on manager's ManifestWork does; then let the node run what the cluster now says.
   */
  const deploy = (target: Apiserver.ApiserverInfo, docs: ReadonlyArray<Helm.Doc>) =>
    Effect.gen(function*() {
      const previous = applied.get(target.name) ?? []
      const next = new Set(docs.map((d) => id(d.object)))
      const gone = previous.filter((d) => !next.has(id(d.object)))
      if (docs.length > 0) succeeded(yield* kubectl(target.kubeconfigPath, ["apply", "-f", "-"], docs.map((d) => d.raw).join("\n---\n")), `apply on ${target.name}`)
      if (gone.length > 0) {
        succeeded(yield* kubectl(target.kubeconfigPath, ["delete", "--ignore-not-found", "--wait=false", "-f", "-"], gone.map((d) => d.raw).join("\n---\n")), `delete on ${target.name}`)
      }
      applied.set(target.name, docs)
    })

  const succeeded = (run: Run, what: string) => {
    assert.strictEqual(run.code, 0, `${what}: ${run.stderr}`)
    return run.stdout
  }

  const install = (mode: Mode, layout: Layout = "combined") =>
    Effect.gen(function*() {
      const [hostingDocs, managedDocs] = yield* Effect.all([Helm.template(namespace, hostingFlags(mode, layout)), Helm.template(namespace, managedFlags(mode))], { concurrency: 2 })
      yield* deploy(hosting, hostingDocs)
      yield* deploy(managed, managedDocs)
      yield* Effect.all([hostingNode.sync, managedNode.sync], { concurrency: 2 })
      yield* (yield* hostingNode.pod(agentDeployment)).ready
      if (layout === "split") yield* (yield* hostingNode.pod(provisionerDeployment)).ready
      if (mode === "Relay") yield* (yield* managedNode.pod(relayDeployment)).ready
    })

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error("the e2e creates a network namespace and must run as root")
    scope = await Effect.runPromise(Scope.make())
    const setup = Effect.gen(function*() {
      dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-e2e-"))),
        (folder) => Effect.sync(() => Fs.rmSync(folder, { recursive: true, force: true }))
      )
      netns = yield* netnsResource((ns) => `127.0.0.1 localhost\n${ns} hello.default.svc\n${ns} hello-tls.default.svc\n`)
      ;[hub, hosting, managed] = yield* Effect.all([
        Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
        Apiserver.make({ name: "hosting" }),
        // Bound where the relay's namespace reaches it; 127.0.0.1 too, for clients through the TCP relay.
        Apiserver.make({ name: "managed", bindAddress: netns.hostAddress, extraIpSans: ["127.0.0.1"] })
      ], { concurrency: "unbounded" })

      // What OCM provides before the add-on's manifests arrive: the source kubeconfig, the
      // add-on, the hub kubeconfig of the add-on agent, the service proxy's serving certificate.
      ;({ readerToken } = yield* HostedInstall.prepare({ hub, hosting, managed }, cluster, namespace))
      const hubToken = yield* Apiserver.serviceAccountToken(hub, cluster, "cluster-proxy-agent", 3600)
      succeeded(yield* kubectl(hub.kubeconfigPath, ["apply", "-f", "-"], hubRbac), "hub RBAC")
      const proxyTls = selfSigned(dir, "service-proxy", ["localhost", "127.0.0.1"])
      proxyCa = proxyTls.cert
      const helloTls = selfSigned(dir, "hello-tls", ["hello-tls.default.svc"])
      const hostingCore = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
      yield* Effect.promise(async () => {
        await hostingCore.createNamespacedSecret({
          namespace,
          body: { metadata: { name: certSecret }, type: "kubernetes.io/tls", data: { "tls.crt": b64(proxyTls.cert), "tls.key": b64(proxyTls.key) } }
        })
        await hostingCore.createNamespacedSecret({
          namespace,
          body: { metadata: { name: hubSecret }, data: { kubeconfig: b64(Apiserver.kubeconfigForToken(hub, hubToken)) } }
        })
        await Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api).createNamespacedConfigMap({
          namespace,
          body: { metadata: { name: "service-ca" }, data: { "service-ca.crt": helloTls.cert } }
        })
      })
      seenTokens.add(readerToken).add(hubToken)

      // The Services behind the relay, in the namespace.
      yield* spawnInNetns(netns, "hello", ["-e", backendSource, "hello", netns.nsAddress, String(httpPort)], Path.join(dir, "hello.log"))
      yield* spawnInNetns(netns, "hello-tls", ["-e", backendSource, "hello-tls", netns.nsAddress, String(httpsPort), helloTls.certFile, helloTls.keyFile], Path.join(dir, "hello-tls.log"))
      yield* until(get(`http://${netns.nsAddress}:${httpPort}/`), (r) => r.status === 200, "the hello backend")

      hostingNode = yield* Kubelet.makeNode({ cluster: hosting, namespace, dir: Path.join(dir, "hosting-node"), network: { _tag: "Loopback" } })
      managedNode = yield* Kubelet.makeNode({ cluster: managed, namespace, dir: Path.join(dir, "managed-node"), network: { _tag: "Netns", netns } })
      yield* install("Relay")
    })
    try {
      await Effect.runPromise(setup.pipe(Scope.provide(scope)))
    } catch (error) {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      throw error
    }
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  // The add-on agent's hub identity: read its ManagedClusterAddOn, write its status, review tokens.
  const hubRbac = `
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cluster-proxy-agent, namespace: ${cluster}}
rules:
  - {apiGroups: [addon.open-cluster-management.io], resources: [managedclusteraddons], verbs: [get, list, watch]}
  - {apiGroups: [addon.open-cluster-management.io], resources: [managedclusteraddons/status], verbs: [update, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cluster-proxy-agent, namespace: ${cluster}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cluster-proxy-agent}
subjects: [{kind: ServiceAccount, name: cluster-proxy-agent, namespace: ${cluster}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: cluster-proxy-agent-reviews}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects: [{kind: ServiceAccount, name: cluster-proxy-agent, namespace: ${cluster}}]
`

  const readGenerated = Effect.promise(() =>
    Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api).readNamespacedSecret({ namespace, name: generatedSecret }).catch(() => undefined)
  )
  const generatedToken = Effect.map(until(readGenerated, (s) => s?.data?.["token"] !== undefined, "the generated Secret"), (s) => unb64(s?.data?.["token"]))

  /** The generated kubeconfig aimed at the TCP relay of the agent pod (as the proxy-agent reaches it). */
  const viaRelay = (name: string, token?: string) =>
    Effect.gen(function*() {
      const secret = yield* until(readGenerated, (s) => s !== undefined, "the generated Secret")
      const pod = yield* hostingNode.pod(agentDeployment)
      let kubeconfig = unb64(secret?.data?.["kubeconfig"]).replace(managed.server, `https://127.0.0.1:${pod.port(8443)}`)
      if (token !== undefined) kubeconfig = kubeconfig.replace(/token: .*/, `token: ${token}`)
      const file = Path.join(dir, name)
      Fs.writeFileSync(file, kubeconfig, { mode: 0o600 })
      return file
    })

  const serviceHeaders = (proto: "http" | "https", service: string, port: number) => ({
    "cluster-proxy-proto": proto,
    "cluster-proxy-namespace": "default",
    "cluster-proxy-service": service,
    "cluster-proxy-port": String(port)
  })
  const kubeApiHeaders = (token: string) => ({
    "cluster-proxy-proto": "https",
    "cluster-proxy-namespace": "default",
    "cluster-proxy-service": "kubernetes",
    "cluster-proxy-port": "443",
    authorization: `Bearer ${token}`
  })
  /** A request to the agent pod's service proxy (:7443). */
  const viaServiceProxy = (options: Parameters<typeof send>[1]) =>
    Effect.flatMap(hostingNode.pod(agentDeployment), (pod) => send(pod.port(7443), { ca: [proxyCa], ...options }))

  const scrape = (pod: Kubelet.Pod) => Effect.map(get(pod.url(8000, "/metrics")), (r) => r.body)

  it.live("the resource split: hosting objects on the hosting cluster only, the managed ones on the managed cluster only", () =>
    Effect.gen(function*() {
      const hostingDocs = applied.get("hosting") ?? []
      const managedDocs = applied.get("managed") ?? []
      for (const { object } of hostingDocs) {
        assert.strictEqual(object.metadata?.annotations?.[hostingAnnotation], "hosting", `${id(object)} is placed on the hosting cluster`)
        assert.include([namespace, cluster], object.metadata?.namespace, `${id(object)} is namespaced`)
      }
      for (const { object } of managedDocs) assert.isUndefined(object.metadata?.annotations?.[hostingAnnotation], id(object))
      const kinds = (docs: ReadonlyArray<Helm.Doc>) => [...new Set(docs.map((d) => d.object.kind))].sort()
      assert.deepStrictEqual(kinds(hostingDocs), ["Deployment", "Job", "Role", "RoleBinding", "Service", "ServiceAccount"])
      assert.deepStrictEqual(kinds(managedDocs), ["ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"])

      // What each apiserver holds, by the chart's label: exactly its own rendering.
      const listed = (target: Apiserver.ApiserverInfo) =>
        Effect.map(
          kubectl(target.kubeconfigPath, [
            "get",
            "serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,deployments,services,jobs,networkpolicies",
            "-A",
            "-l",
            "app.kubernetes.io/name=tether",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}"
          ]),
          (run) => succeeded(run, `list on ${target.name}`).trim().split("\n").filter((line) => line !== "").sort()
        )
      assert.deepStrictEqual(yield* listed(hosting), hostingDocs.map((d) => id(d.object)).sort())
      assert.deepStrictEqual(yield* listed(managed), managedDocs.map((d) => id(d.object)).sort())
      assert.deepStrictEqual(yield* listed(hub), [])

      // One process per rendered container: hosted-agent on the hosting side, the relay on the managed side.
      const agent = yield* hostingNode.pod(agentDeployment)
      const relay = yield* managedNode.pod(relayDeployment)
      assert.deepStrictEqual(agent.containers.map((c) => c.name), ["hosted-agent"])
      assert.deepStrictEqual(relay.containers.map((c) => c.name), ["service-relay"])
      assert.strictEqual(agent.container("hosted-agent").argv[1], tetherEntry())
      assert.include(agent.container("hosted-agent").argv, "hosted-agent")
      assert.include(relay.container("service-relay").argv, "service-relay")
      // The apiserver sends services/proxy to the relay's pod through the Endpoints of its Service.
      const endpoints = succeeded(yield* kubectl(managed.kubeconfigPath, ["get", "endpoints", relayDeployment, "-n", namespace, "-o", "jsonpath={.subsets[0].addresses[0].ip}"]), "relay Endpoints")
      assert.strictEqual(endpoints, netns.nsAddress)
    }))

  it.live("provisioning: the generated Secret for the managed cluster, the hub condition, the add-on Lease", () =>
    Effect.gen(function*() {
      const secret = yield* until(readGenerated, (s) => s?.data?.["kubeconfig"] !== undefined, "the generated Secret")
      const token = unb64(secret?.data?.["token"])
      seenTokens.add(token)
      assert.include(unb64(secret?.data?.["kubeconfig"]), managed.server)
      // The token is the managed ServiceAccount's, as the managed apiserver reviews it.
      const review = JSON.parse(succeeded(
        yield* kubectl(managed.kubeconfigPath, ["create", "-f", "-", "-o", "json"], JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token } })),
        "TokenReview"
      )) as { status?: { authenticated?: boolean; user?: { username?: string } } }
      assert.isTrue(review.status?.authenticated)
      assert.strictEqual(review.status?.user?.username, `system:serviceaccount:${namespace}:cluster-proxy`)

      const { group, plural, version } = Fixtures.managedClusterAddOnResource
      const hubCustom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
      type Addon = { status?: { conditions?: ReadonlyArray<{ type: string; status: string; reason?: string }> } }
      const addon = yield* until(
        Effect.promise(() => hubCustom.getNamespacedCustomObject({ group, version, plural, namespace: cluster, name: "cluster-proxy" }) as Promise<Addon>),
        (a) => a.status?.conditions?.some((c) => c.type === "ManagedKubeconfigReady" && c.status === "True") === true,
        "ManagedKubeconfigReady=True on the hub"
      )
      assert.isDefined(addon.status?.conditions?.find((c) => c.type === "ManagedKubeconfigReady"))

      const lease = yield* until(
        Effect.map(kubectl(hosting.kubeconfigPath, ["get", "lease", "cluster-proxy", "-n", namespace, "-o", "jsonpath={.spec.renewTime}"]), (r) => (r.code === 0 ? r.stdout : "")),
        (t) => t !== "",
        "the add-on Lease",
        { timeout: "60 seconds" }
      )
      yield* until(
        Effect.map(kubectl(hosting.kubeconfigPath, ["get", "lease", "cluster-proxy", "-n", namespace, "-o", "jsonpath={.spec.renewTime}"]), (r) => r.stdout),
        (t) => t !== "" && t !== lease,
        "the add-on Lease renewed",
        { timeout: "60 seconds" }
      )
    }), { timeout: 150_000 })

  it.live("kubectl through the TCP relay: list, watch, forbidden, unauthorized", () =>
    Effect.gen(function*() {
      const kubeconfig = yield* viaRelay("via-relay")
      const list = yield* kubectl(kubeconfig, ["get", "namespaces", "-o", "name"])
      assert.strictEqual(list.code, 0, list.stderr)
      assert.include(list.stdout, `namespace/${namespace}`)

      const watch = ChildProcess.spawn("kubectl", ["--kubeconfig", kubeconfig, "get", "configmaps", "-n", "default", "--watch", "-o", "name"])
      let watched = ""
      watch.stdout.on("data", (chunk: Buffer) => (watched += chunk.toString()))
      yield* Effect.addFinalizer(() => Effect.sync(() => watch.kill("SIGKILL")))
      yield* until(Effect.sync(() => watch.exitCode), (code) => code === null, "watch running")
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api).createNamespacedConfigMap({ namespace: "default", body: { metadata: { name: "seen-through-relay" } } })
      )
      yield* until(Effect.sync(() => watched), (text) => text.includes("configmap/seen-through-relay"), "the watch event through the relay")
      watch.kill("SIGKILL")

      const forbidden = yield* kubectl(kubeconfig, ["get", "secrets", "-n", "kube-system"])
      assert.notStrictEqual(forbidden.code, 0)
      assert.match(forbidden.stderr, /forbidden/i)
      assert.include(forbidden.stderr, `system:serviceaccount:${namespace}:cluster-proxy`)

      // A token the managed apiserver does not know (a hub ServiceAccount's): 401 from the managed apiserver.
      const stranger = yield* Apiserver.serviceAccountToken(hub, "default", "stranger", 600)
      seenTokens.add(stranger)
      const unauthorized = yield* kubectl(yield* viaRelay("via-relay-stranger", stranger), ["get", "namespaces"])
      assert.notStrictEqual(unauthorized.code, 0)
      assert.match(unauthorized.stderr, /Unauthorized/)
    }))

  it.live("Services through Relay mode: HTTP and HTTPS backends via services/proxy and the service relay; the kube-apiserver path impersonates", () =>
    Effect.gen(function*() {
      const plain = yield* viaServiceProxy({
        method: "POST",
        path: "/echo?x=1",
        body: "payload",
        headers: { ...serviceHeaders("http", "hello", httpPort), authorization: "Bearer client-credential" }
      })
      assert.strictEqual(plain.status, 200, plain.body)
      assert.strictEqual(plain.headers["x-backend"], "hello")
      assert.deepStrictEqual(JSON.parse(plain.body), { method: "POST", url: "/echo?x=1", authorization: "Bearer client-credential", body: "payload" })

      const tls = yield* viaServiceProxy({ path: "/secure", headers: serviceHeaders("https", "hello-tls", httpsPort) })
      assert.strictEqual(tls.status, 200, tls.body)
      assert.strictEqual(tls.headers["x-backend"], "hello-tls")
      assert.strictEqual((JSON.parse(tls.body) as { url: string }).url, "/secure")
      // The relay trusts the HTTPS Service by the CA in its mounted ConfigMap, and nothing else:
      // the same name on the HTTP port does not speak TLS.
      const mismatch = yield* viaServiceProxy({ path: "/", headers: serviceHeaders("https", "hello", httpPort) })
      assert.strictEqual(mismatch.status, 502)

      const allowed = yield* viaServiceProxy({ path: "/api/v1/namespaces/default/pods", headers: kubeApiHeaders(readerToken) })
      assert.strictEqual(allowed.status, 200, allowed.body)
      const refused = yield* viaServiceProxy({ path: "/api/v1/namespaces/kube-system/pods", headers: kubeApiHeaders(readerToken) })
      assert.strictEqual(refused.status, 403)
      assert.include(refused.body, "system:serviceaccount:team:reader")
    }))

  it.live("the serving certificate's Secret changes: the kubelet-style volume swaps ..data and the same process serves the new certificate", () =>
    Effect.gen(function*() {
      const pod = yield* hostingNode.pod(agentDeployment)
      const pid = pod.container("hosted-agent").child.pid
      const volume = Path.join(dir, "hosting-node", pod.name, "volumes", "service-proxy-certs")
      const before = Fs.readlinkSync(Path.join(volume, "..data"))
      assert.strictEqual(Fs.readlinkSync(Path.join(volume, "tls.crt")), "..data/tls.crt")
      const served = (port: number) =>
        Effect.callback<string>((resume) => {
          const socket = Tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
            resume(Effect.succeed(socket.getPeerX509Certificate()?.fingerprint256 ?? ""))
            socket.destroy()
          })
          socket.on("error", () => resume(Effect.succeed("")))
        })
      const next = selfSigned(dir, "service-proxy-2", ["localhost", "127.0.0.1"])
      const nextFingerprint = new Crypto.X509Certificate(next.cert).fingerprint256
      assert.notStrictEqual(yield* served(pod.port(7443)), nextFingerprint)
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api).replaceNamespacedSecret({
          namespace,
          name: certSecret,
          body: { metadata: { name: certSecret, namespace }, type: "kubernetes.io/tls", data: { "tls.crt": b64(next.cert), "tls.key": b64(next.key) } }
        })
      )
      yield* until(served(pod.port(7443)), (fingerprint) => fingerprint === nextFingerprint, "the new certificate served")
      assert.notStrictEqual(Fs.readlinkSync(Path.join(volume, "..data")), before, "..data was swapped")
      assert.isFalse(Fs.existsSync(Path.join(volume, before)), "the previous version is gone")
      assert.strictEqual(pod.container("hosted-agent").child.pid, pid)
      assert.isUndefined(Kubelet.exitReport(pod.container("hosted-agent")))
      proxyCa = next.cert
      const reply = yield* viaServiceProxy({ path: "/", headers: serviceHeaders("http", "hello", httpPort) })
      assert.strictEqual(reply.status, 200)
    }))

  /**
   * Change the source kubeconfig while kubectl runs through the TCP relay and requests go through
   * the service proxy and the service relay, one after another in two loops; `taken` says when the
   * service proxy uses the new token. Every request must succeed; the two tokens are the result.
   */
  const rotateUnderTraffic = (name: string, taken: (tokenId: string) => Effect.Effect<boolean>, change: string) =>
    Effect.gen(function*() {
      const firstToken = yield* generatedToken
      const kubeconfig = yield* viaRelay(name)
      let relayed = 0
      let served = 0
      const failures: Array<string> = []
      const tcpTraffic = yield* Effect.gen(function*() {
        while (true) {
          const run = yield* kubectl(kubeconfig, ["get", "namespace", namespace, "-o", "name"])
          relayed++
          if (run.code !== 0) failures.push(`TCP relay: ${run.stderr.trim()}`)
        }
      }).pipe(Effect.forkScoped)
      const serviceTraffic = yield* Effect.gen(function*() {
        while (true) {
          const reply = yield* viaServiceProxy({ path: `/loop/${served}`, headers: serviceHeaders("http", "hello", httpPort) })
          served++
          if (reply.status !== 200) failures.push(`service relay: ${reply.status} ${reply.body}`)
        }
      }).pipe(Effect.forkScoped)
      yield* until(Effect.sync(() => Math.min(relayed, served)), (n) => n >= 3, "traffic through both relays")

      // A source change: the provisioner mints a new token at once.
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api).replaceNamespacedSecret({
          namespace: cluster,
          name: sourceSecret,
          body: { metadata: { name: sourceSecret, namespace: cluster }, data: { kubeconfig: b64(managed.kubeconfigYaml + change) } }
        })
      )
      const rotated = yield* until(readGenerated, (s) => s?.data?.["token"] !== undefined && unb64(s.data["token"]) !== firstToken, "the token rotated")
      const secondToken = unb64(rotated?.data?.["token"])
      seenTokens.add(secondToken)
      // The service proxy's managed client (the relay hop's credential) took the new token.
      yield* until(taken(tokenId(secondToken)), (seen) => seen, "the service proxy took the new token")
      const [relayedAt, servedAt] = [relayed, served]
      yield* until(Effect.sync(() => Math.min(relayed - relayedAt, served - servedAt)), (n) => n >= 5, "traffic after the rotation")
      yield* Fiber.interrupt(tcpTraffic)
      yield* Fiber.interrupt(serviceTraffic)
      assert.deepStrictEqual(failures, [])
      assert.isAtLeast(relayed, 8)
      assert.isAtLeast(served, 8)
      return { firstToken, secondToken }
    })

  const reloadedIn = (container: Kubelet.Container) => (id: string) =>
    Effect.sync(() => container.output.text.split("\n").some((line) => line.includes("apiserver token reloaded") && line.includes(id)))

  it.live("a token rotation during continuous traffic through both relays fails no request", () =>
    Effect.gen(function*() {
      const agent = (yield* hostingNode.pod(agentDeployment)).container("hosted-agent")
      yield* rotateUnderTraffic("via-relay-rotation", reloadedIn(agent), "\npreferences: {}\n")
    }), { timeout: 120_000 })

  it.live("the metrics each component promises, scraped from /metrics of the agent pod and the relay pod", () =>
    Effect.gen(function*() {
      const agentPod = yield* hostingNode.pod(agentDeployment)
      // The last kubectl of the test before has exited, but its relayed connection may still be
      // closing: wait (bounded) for the TCP relay to count it as ended.
      const agent = yield* until(
        scrape(agentPod),
        (text) => sample(text, "cluster_proxy_managed_apiserver_relay_connections_active", {}) === 0,
        "no relayed connection is active",
        { timeout: "10 seconds" }
      )
      const relay = yield* scrape(yield* managedNode.pod(relayDeployment))
      const at = (text: string, name: string, labels: Record<string, string> = {}) => {
        const value = sample(text, name, labels)
        assert.isDefined(value, `${name}${JSON.stringify(labels)} is exported`)
        return value!
      }
      // provisioner: a success for the first token and for the rotation; a token of 24h ahead.
      assert.isAtLeast(at(agent, "cluster_proxy_managed_kubeconfig_refresh_total", { result: "success" }), 2)
      const remaining = at(agent, "cluster_proxy_managed_kubeconfig_token_expiration_seconds")
      assert.isAbove(remaining, 23 * 3600)
      assert.isAtMost(remaining, 24 * 3600)
      assert.isAbove(at(agent, "cluster_proxy_managed_kubeconfig_token_expiration_timestamp_seconds"), Date.now() / 1000)
      // TCP relay: every kubectl run was a connection, none failed to dial.
      assert.isAtLeast(at(agent, "cluster_proxy_managed_apiserver_relay_connections_total"), 10)
      assert.strictEqual(at(agent, "cluster_proxy_managed_apiserver_relay_connections_active"), 0)
      assert.strictEqual(at(agent, "cluster_proxy_managed_apiserver_relay_dial_errors_total"), 0)
      // service proxy: Relay-mode Services and kube-apiserver requests.
      assert.isAtLeast(at(agent, "cluster_proxy_service_proxy_requests_total", { mode: "Relay", target: "service", result: "success" }), 10)
      assert.isAtLeast(at(agent, "cluster_proxy_service_proxy_requests_total", { mode: "Relay", target: "kube-apiserver", result: "success" }), 1)
      // the add-on Lease and the supervisor.
      assert.isAtLeast(at(agent, "cluster_proxy_addon_lease_updates_total", { result: "renewed" }), 1)
      for (const component of ["provisioner", "addon-lease", "apiserver-proxy", "service-proxy"]) {
        assert.strictEqual(at(agent, "tether_component_up", { component }), 1, component)
        // A labelled counter: its series appears with the first restart.
        assert.strictEqual(sample(agent, "tether_component_restarts_total", { component }) ?? 0, 0, component)
      }
      // service relay: the HTTP and HTTPS Services, and the TLS mismatch as an error.
      assert.isAtLeast(at(relay, "cluster_proxy_service_relay_requests_total", { scheme: "http", result: "success" }), 10)
      assert.isAtLeast(at(relay, "cluster_proxy_service_relay_requests_total", { scheme: "https", result: "success" }), 1)
      assert.isAtLeast(at(relay, "cluster_proxy_service_relay_requests_total", { scheme: "https", result: "error" }), 1)
    }))

  it.live("switching hostedServiceProxyMode: Disabled answers 503, BestEffort dials from the hosting side, Relay again reaches the Services", () =>
    Effect.gen(function*() {
      const request = viaServiceProxy({ path: "/", headers: serviceHeaders("http", "hello", httpPort) })
      const relayPid = (yield* managedNode.pod(relayDeployment)).container("service-relay").child.pid

      yield* install("Disabled")
      // The managed side has no relay any more: its objects, its process, its Pod and Endpoints are gone.
      assert.isFalse((applied.get("managed") ?? []).some((d) => d.object.kind === "Deployment"))
      assert.isTrue(Exit.isFailure(yield* Effect.exit(managedNode.pod(relayDeployment))), "no relay pod")
      assert.isFalse(managedNode.processes().some((child) => child.pid === relayPid && child.exitCode === null && child.signalCode === null))
      const relayService = yield* kubectl(managed.kubeconfigPath, ["get", "service,endpoints,pods,networkpolicies", "-n", namespace, "-o", "name"])
      assert.strictEqual(succeeded(relayService, "managed objects").trim(), "")
      const agent = (yield* hostingNode.pod(agentDeployment)).container("hosted-agent")
      assert.include(agent.argv, "--hosted-service-proxy-mode=Disabled")
      const disabled = yield* request
      assert.strictEqual(disabled.status, 503)
      assert.include(disabled.body, "disabled")
      const kubeApi = yield* viaServiceProxy({ path: "/api/v1/namespaces/default/pods", headers: kubeApiHeaders(readerToken) })
      assert.strictEqual(kubeApi.status, 200, "the kube-apiserver path does not depend on the mode")

      // BestEffort dials <svc>.<ns>.svc from the hosting side, where the name does not resolve.
      yield* install("BestEffort")
      assert.include((yield* hostingNode.pod(agentDeployment)).container("hosted-agent").argv, "--hosted-service-proxy-mode=BestEffort")
      const bestEffort = yield* request
      assert.strictEqual(bestEffort.status, 502, bestEffort.body)

      yield* install("Relay")
      const relayed = yield* request
      assert.strictEqual(relayed.status, 200, relayed.body)
      assert.strictEqual(relayed.headers["x-backend"], "hello")
      const metrics = yield* scrape(yield* hostingNode.pod(agentDeployment))
      assert.strictEqual(sample(metrics, "cluster_proxy_service_proxy_requests_total", { mode: "Relay", target: "service", result: "success" }), 1, "a fresh process counts its own")
    }), { timeout: 180_000 })

  it.live("the split layout: one container per component, each reading the generated Secret from its volume, follows a rotation under traffic", () =>
    Effect.gen(function*() {
      yield* install("Relay", "split")
      const agent = yield* hostingNode.pod(agentDeployment)
      assert.deepStrictEqual(agent.containers.map((c) => c.name), ["addon-agent", "service-proxy", "managed-apiserver-proxy"])
      assert.deepStrictEqual((yield* hostingNode.pod(provisionerDeployment)).containers.map((c) => c.name), ["managed-kubeconfig-provisioner"])
      const volume = Path.join(dir, "hosting-node", agent.name, "volumes", "managed-kubeconfig")
      for (const c of agent.containers) assert.include(c.argv.join(" "), Path.join(volume, "kubeconfig"), `${c.name} reads the mounted kubeconfig`)
      const before = Fs.readlinkSync(Path.join(volume, "..data"))

      const { secondToken } = yield* rotateUnderTraffic("via-relay-split", reloadedIn(agent.container("service-proxy")), "\npreferences: {}\n# rotated again, in the split layout\n")
      // The kubelet-style swap brought the new version to every container of the pod, none restarted.
      assert.notStrictEqual(Fs.readlinkSync(Path.join(volume, "..data")), before)
      assert.strictEqual(Fs.readFileSync(Path.join(volume, "token"), "utf8"), secondToken)
      for (const c of agent.containers) assert.isUndefined(Kubelet.exitReport(c), `${c.name} still runs`)
      // Each container serves its own component's series on its own port.
      const provisionerPod = yield* hostingNode.pod(provisionerDeployment)
      const series: ReadonlyArray<readonly [Kubelet.Pod, number, string, Record<string, string>]> = [
        [provisionerPod, 8000, "cluster_proxy_managed_kubeconfig_refresh_total", { result: "success" }],
        [agent, 8888, "cluster_proxy_addon_lease_updates_total", { result: "renewed" }],
        [agent, 8000, "cluster_proxy_service_proxy_requests_total", { mode: "Relay", target: "service", result: "success" }],
        [agent, 8001, "cluster_proxy_managed_apiserver_relay_connections_total", {}]
      ]
      for (const [pod, port, name, labels] of series) {
        const text = (yield* get(pod.url(port, "/metrics"))).body
        assert.isAtLeast(sample(text, name, labels) ?? 0, 1, `${name} on :${port}`)
      }

      // Back to the default layout: the provisioner Deployment and its process go.
      const provisioner = (yield* hostingNode.pod(provisionerDeployment)).containers[0]!
      yield* install("Relay")
      assert.isTrue(Exit.isFailure(yield* Effect.exit(hostingNode.pod(provisionerDeployment))))
      assert.isTrue(provisioner.child.exitCode !== null || provisioner.child.signalCode !== null)
      const reply = yield* viaServiceProxy({ path: "/", headers: serviceHeaders("http", "hello", httpPort) })
      assert.strictEqual(reply.status, 200, reply.body)
    }), { timeout: 180_000 })

  it.live("add-on deletion: the provisioner removes the generated Secret, the cleanup Job exits 0, and no process is left", () =>
    Effect.gen(function*() {
      // Everything the test saw stays out of every log.
      for (const pod of [yield* hostingNode.pod(agentDeployment), yield* managedNode.pod(relayDeployment)]) {
        for (const container of pod.containers) {
          for (const token of seenTokens) assert.notInclude(container.output.text, token, `${pod.name}/${container.name} logged a token`)
        }
      }
      // The add-on manager deletes the add-on; its pre-delete finalizer holds it while the Job runs.
      const { group, plural, version } = Fixtures.managedClusterAddOnResource
      const hubCustom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
      const finalizer = "cluster.open-cluster-management.io/hosting-addon-pre-delete"
      succeeded(
        yield* kubectl(hub.kubeconfigPath, ["patch", "managedclusteraddons.addon.open-cluster-management.io", "cluster-proxy", "-n", cluster, "--type=merge", "-p", JSON.stringify({ metadata: { finalizers: [finalizer] } })]),
        "finalizer"
      )
      yield* Effect.promise(() => hubCustom.deleteNamespacedCustomObject({ group, version, plural, namespace: cluster, name: "cluster-proxy" }))
      yield* until(readGenerated, (s) => s === undefined, "the provisioner deletes the generated Secret once the add-on is deleting")

      const job = yield* hostingNode.runJob("cluster-proxy-managed-kubeconfig-cleanup")
      assert.strictEqual(job.code, 0, job.output)
      assert.strictEqual(job.attempts, 1)

      // The Job done, the manager removes the finalizer and the manifests from both clusters.
      succeeded(
        yield* kubectl(hub.kubeconfigPath, ["patch", "managedclusteraddons.addon.open-cluster-management.io", "cluster-proxy", "-n", cluster, "--type=merge", "-p", JSON.stringify({ metadata: { finalizers: null } })]),
        "remove the finalizer"
      )
      yield* deploy(hosting, [])
      yield* deploy(managed, [])
      yield* Effect.all([hostingNode.sync, managedNode.sync], { concurrency: 2 })

      // Every process either node started has exited, and nothing running names this install's folder.
      for (const child of [...hostingNode.processes(), ...managedNode.processes()]) {
        assert.isTrue(child.exitCode !== null || child.signalCode !== null, `pid ${child.pid} still runs`)
      }
      const leftovers = Fs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
        try {
          return Fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(Path.join(dir, "hosting-node")) ||
            Fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(Path.join(dir, "managed-node"))
        } catch {
          return false
        }
      })
      assert.deepStrictEqual(leftovers, [])
      // The agent stopped with the Secret gone: nothing wrote it back.
      assert.isUndefined(yield* readGenerated)
      const left = succeeded(yield* kubectl(managed.kubeconfigPath, ["get", "pods,endpoints", "-n", namespace, "-o", "name"]), "managed pods")
      assert.strictEqual(left.trim(), "")
    }), { timeout: 120_000 })
})
