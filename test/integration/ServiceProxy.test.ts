/**
 * The service proxy against two real kube-apiservers: a managed cluster and a hub. Callers hold
 * real ServiceAccount tokens of either cluster; the proxy reviews them (managed first, then
 * hub), impersonates them on the managed apiserver with its own ServiceAccount token, and RBAC
 * on the managed cluster decides, so a 200 or a 403 naming the user shows who the request ran
 * as. A recording TLS server stands in for the managed apiserver where the exact outgoing
 * headers matter; local HTTP backends stand in for Services (resolved through a static table).
 *
 * The proxy runs in-process, built the way `tether service-proxy` builds it
 * ({@link ServiceProxyLayers.layer}) or from its parts with test doubles where a test needs one.
 */
import {
  ApiException,
  AuthenticationV1Api,
  KubeConfig,
  RbacAuthorizationV1Api,
  type V1PolicyRule,
  type RbacV1Subject
} from "@kubernetes/client-node"
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, beforeEach, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Layer, Logger, Metric, References, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as ServiceProxyLayers from "../../layers/ServiceProxy.ts"
import type * as ApiserverUrl from "../../src/domain/ApiserverUrl.ts"
import type * as ServiceProxyMode from "../../src/domain/ServiceProxyMode.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { HubCluster, type KubeClient } from "../../src/kube/KubeClient.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"
import { ManagedCredentials, type Source } from "../../src/serviceproxy/ManagedCredentials.ts"
import { ServiceProxy, ServiceProxyError } from "../../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../../src/serviceproxy/TokenReviewChain.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { publish } from "../support/volume.ts"
import { eventually, NotYet, until } from "../support/eventually.ts"
import { send as sendTo, type SendOptions } from "../support/send.ts"
import { noApiserver } from "../support/apiserver.ts"
import { selfSigned } from "../support/local.ts"

const addonNamespace = "open-cluster-management-agent-addon"
const hubUser = "cluster:hub:system:serviceaccount:hub-team:hub-reader"
const managedUser = "system:serviceaccount:team:reader"

// ---------------------------------------------------------------------------------------------
// files: certificates and kubelet-style Secret volumes
// ---------------------------------------------------------------------------------------------

/** A client-node configuration that authenticates with `token` only. */
const tokenConnection = (info: Apiserver.ApiserverInfo, token: string) => Apiserver.connectionOf(Apiserver.kubeconfigForToken(info, token))

const sha256 = (text: string) => Crypto.createHash("sha256").update(text).digest("hex")

// ---------------------------------------------------------------------------------------------
// clients and backends
// ---------------------------------------------------------------------------------------------

let proxyCa: ReadonlyArray<string> = []

/** One HTTPS request to a proxy on loopback, on a fresh connection. */
const send = (port: number, options: Omit<SendOptions, "ca"> = {}) => sendTo(port, { ...options, ca: proxyCa })

const routing = (proto: string, namespace: string, service: string, port: number | string) => ({
  "cluster-proxy-proto": proto,
  "cluster-proxy-namespace": namespace,
  "cluster-proxy-service": service,
  "cluster-proxy-port": String(port)
})

const kas = (token?: string) => ({
  ...routing("https", "default", "kubernetes", 443),
  ...(token === undefined ? {} : { authorization: `Bearer ${token}` })
})

interface Seen {
  readonly method: string
  readonly url: string
  readonly headers: Http.IncomingHttpHeaders
}

const listen = (server: Net.Server): Promise<number> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve((server.address() as Net.AddressInfo).port))
  })

const close = (server: Http.Server | Https.Server): Promise<void> =>
  new Promise((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  })

/** The certificate a TLS server presents on a new connection, as a SHA-256 fingerprint. */
const servedFingerprint = (port: number): Effect.Effect<string> =>
  Effect.callback<string>((resume) => {
    const socket = Tls.connect({ host: "127.0.0.1", port, servername: "localhost", rejectUnauthorized: false }, () => {
      const fingerprint = socket.getPeerX509Certificate()?.fingerprint256 ?? ""
      socket.destroy()
      resume(Effect.succeed(fingerprint))
    })
    socket.on("error", (error) => resume(Effect.die(error)))
    return Effect.sync(() => socket.destroy())
  })

// ---------------------------------------------------------------------------------------------
// the suite
// ---------------------------------------------------------------------------------------------

describe.skipIf(noApiserver)("ServiceProxy (real hub and managed apiservers)", () => {
  let scope: Scope.Closeable
  let hub: Apiserver.ApiserverInfo
  let managed: Apiserver.ApiserverInfo
  let dir: string
  let tls: { readonly cert: string; readonly key: string }
  let tokens: {
    readonly proxy: string
    readonly noReview: string
    readonly rotatingA: string
    readonly rotatingB: string
    readonly reader: string
    readonly hubReader: string
  }
  let hubAdmin: KubeClient
  let managedKubeconfigDir: string
  let mainPort: number
  let backend: Http.Server
  let backendPort: number
  let deadPort: number
  const seen: Array<Seen> = []
  const logs: Array<string> = []
  const registry = new Map()

  const captureLogs = Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))])

  /** Build a proxy layer into the suite's scope; its port and services. */
  const start = <E>(layer: Layer.Layer<ServiceProxy | ManagedCredentials, E>, into: Scope.Scope = scope, metrics = registry) =>
    Layer.buildWithScope(layer, into).pipe(
      Effect.map((context) => ({
        port: Context.get(context, ServiceProxy).address.port,
        proxy: Context.get(context, ServiceProxy),
        credentials: Context.get(context, ManagedCredentials)
      })),
      Effect.provide(captureLogs),
      Effect.provideService(References.MinimumLogLevel, "Debug"),
      Effect.provideService(Metric.MetricRegistry, metrics)
    )

  /** A proxy from its parts: credentials from `source`, the chain over the managed client and `hubClient`. */
  const proxyLayer = (config: {
    readonly source: Source
    readonly deployment: ServiceProxyMode.Deployment
    readonly hubClient?: KubeClient
    readonly cacheTtl?: Duration.Input
    readonly enableImpersonation?: boolean
    readonly relay?: ApiserverUrl.RelayService
    readonly certFile?: string
    readonly keyFile?: string
    readonly busyPoll?: Duration.Input
  }) => {
    const credentials = ManagedCredentials.layer({ source: config.source, reloadInterval: "1 second" })
    const chain = TokenReviewChain.layer({ cacheTtl: config.cacheTtl ?? "10 seconds" }).pipe(
      Layer.provide(ServiceProxyLayers.layerManagedCluster),
      Layer.provide(config.hubClient === undefined ? Layer.empty : Layer.succeed(HubCluster, config.hubClient))
    )
    return ServiceProxyLayers.layerNoDeps({
      listen: { host: "127.0.0.1", port: 0 },
      certFile: config.certFile ?? Path.join(dir, "proxy.crt"),
      keyFile: config.keyFile ?? Path.join(dir, "proxy.key"),
      deployment: config.deployment,
      enableImpersonation: config.enableImpersonation ?? true,
      relay: config.relay,
      reloadInterval: "500 millis",
      busyPoll: config.busyPoll
    }).pipe(
      Layer.provide(chain),
      Layer.provideMerge(credentials),
      Layer.provide(ServiceResolver.layerStatic({
        "hello.default.svc": "127.0.0.1",
        "nowhere.default.svc": "127.0.0.1",
        "quiet.default.svc": "127.0.0.1"
      })),
      Layer.provide(Probes.layerNoServer),
      Layer.provide(NodeServices.layer)
    )
  }

  /** A managed kubeconfig (Secret-volume style) for `token` in a new folder; its path. */
  const managedKubeconfig = (name: string, token: string) => {
    const folder = Path.join(dir, name)
    publish(folder, { kubeconfig: Apiserver.kubeconfigForToken(managed, token) })
    return Path.join(folder, "kubeconfig")
  }

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-service-proxy-"))
    tls = selfSigned(dir, "proxy", ["localhost", "127.0.0.1"])
    proxyCa = [tls.cert]

    ;[hub, managed] = await Effect.runPromise(
      Effect.all([Apiserver.make({ name: "sp-hub" }), Apiserver.make({ name: "sp-managed" })], { concurrency: 2 }).pipe(Scope.provide(scope))
    )
    hubAdmin = ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(hub) })

    const [proxy, noReview, rotatingA, rotatingB, reader, hubReader] = await Effect.runPromise(Effect.all([
      Apiserver.serviceAccountToken(managed, addonNamespace, "cluster-proxy", 3600),
      Apiserver.serviceAccountToken(managed, addonNamespace, "no-review", 3600),
      Apiserver.serviceAccountToken(managed, addonNamespace, "rotating-a", 3600),
      Apiserver.serviceAccountToken(managed, addonNamespace, "rotating-b", 3600),
      Apiserver.serviceAccountToken(managed, "team", "reader", 3600),
      Apiserver.serviceAccountToken(hub, "hub-team", "hub-reader", 3600)
    ]))
    tokens = { proxy: proxy!, noReview: noReview!, rotatingA: rotatingA!, rotatingB: rotatingB!, reader: reader!, hubReader: hubReader! }

    // RBAC on the managed cluster: the proxy's ServiceAccounts may review tokens and impersonate
    // (the chart's impersonator ClusterRole); the managed reader and the hub reader may list pods
    // in `default` and nothing else.
    const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
    const impersonator: Array<V1PolicyRule> = [
      { apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"] },
      { apiGroups: ["authentication.k8s.io"], resources: ["userextras/*", "uids"], verbs: ["impersonate"] },
      { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }
    ]
    await rbac.createClusterRole({ body: { metadata: { name: "tether-impersonator" }, rules: impersonator } })
    for (const sa of ["cluster-proxy", "rotating-a", "rotating-b"]) {
      await rbac.createClusterRoleBinding({
        body: {
          metadata: { name: `tether-impersonator-${sa}` },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "tether-impersonator" },
          subjects: [{ kind: "ServiceAccount", name: sa, namespace: addonNamespace }]
        }
      })
    }
    await rbac.createNamespacedRole({
      namespace: "default",
      body: { metadata: { name: "pod-reader" }, rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list"] }] }
    })
    const readers: Array<RbacV1Subject> = [
      { kind: "ServiceAccount", name: "reader", namespace: "team" },
      { kind: "User", apiGroup: "rbac.authorization.k8s.io", name: hubUser }
    ]
    await rbac.createNamespacedRoleBinding({
      namespace: "default",
      body: {
        metadata: { name: "pod-readers" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "pod-reader" },
        subjects: readers
      }
    })

    backend = Http.createServer((req, res) => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers })
      req.resume()
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/json", "x-backend": "hello", trailer: "x-checksum" })
        res.write(JSON.stringify({ url: req.url }))
        res.addTrailers({ "x-checksum": "c0ffee" })
        res.end()
      })
    })
    backend.on("upgrade", (req, socket: Net.Socket) => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers })
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${req.headers.upgrade}\r\n\r\n`)
      socket.on("data", (data: Buffer) => socket.write(data.toString("latin1").toUpperCase()))
      socket.on("end", () => socket.end())
    })
    backendPort = await listen(backend)
    const dead = Net.createServer()
    deadPort = await listen(dead)
    await new Promise<void>((resolve) => dead.close(() => resolve()))

    // The main proxy, exactly as the command builds it: hosted, mode defaulted (Disabled), hub
    // TokenReview through the hub kubeconfig.
    managedKubeconfigDir = Path.join(dir, "managed")
    publish(managedKubeconfigDir, { kubeconfig: Apiserver.kubeconfigForToken(managed, tokens.proxy) })
    const main = ServiceProxyLayers.layer({
      listen: { host: "127.0.0.1", port: 0 },
      certFile: Path.join(dir, "proxy.crt"),
      keyFile: Path.join(dir, "proxy.key"),
      additionalServiceCa: undefined,
      hubKubeconfig: hub.kubeconfigPath,
      managedKubeconfig: Path.join(managedKubeconfigDir, "kubeconfig"),
      mode: undefined,
      enableImpersonation: true,
      tokenReviewCacheTtl: "10 seconds",
      tokenReviewErrorPatterns: [],
      serviceRelayName: "cluster-proxy-service-relay",
      serviceRelayPort: 7444,
      relayNamespace: undefined,
      maxIdleConnections: 100,
      idleConnectionTimeout: "90 seconds",
      tlsHandshakeTimeout: "10 seconds",
        expectContinueTimeout: "1 second"
    }).pipe(Layer.provide(Probes.layerNoServer))
    mainPort = (await Effect.runPromise(start(main))).port
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    if (backend !== undefined) await close(backend)
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
    // Whatever happened, no token may have been logged.
    if (tokens !== undefined) {
      for (const token of Object.values(tokens)) assert.isFalse(logs.some((line) => line.includes(token)), "a token was logged")
    }
  })

  beforeEach(() => {
    seen.length = 0
  })

  const podsIn = (namespace: string) => `/api/v1/namespaces/${namespace}/pods`

  it.live("managed ServiceAccount token: reviewed by the managed cluster, impersonated as itself", () =>
    Effect.gen(function*() {
      const allowed = yield* send(mainPort, { path: podsIn("default"), headers: kas(tokens.reader) })
      assert.strictEqual(allowed.status, 200, allowed.body)
      assert.strictEqual(JSON.parse(allowed.body).kind, "PodList")
      // RBAC on the managed cluster answers for that user: kube-system is forbidden, and the 403
      // passes through naming the user.
      const forbidden = yield* send(mainPort, { path: podsIn("kube-system"), headers: kas(tokens.reader) })
      assert.strictEqual(forbidden.status, 403)
      assert.include(JSON.parse(forbidden.body).message, `User "${managedUser}" cannot list resource "pods"`)
    }))

  it.live("hub ServiceAccount token: reviewed by the hub, impersonated as cluster:hub:system:serviceaccount:<ns>:<name>", () =>
    Effect.gen(function*() {
      const allowed = yield* send(mainPort, { path: `${podsIn("default")}?limit=5`, headers: kas(tokens.hubReader) })
      assert.strictEqual(allowed.status, 200, allowed.body)
      const forbidden = yield* send(mainPort, { path: podsIn("kube-system"), headers: kas(tokens.hubReader) })
      assert.strictEqual(forbidden.status, 403)
      assert.include(JSON.parse(forbidden.body).message, `User "${hubUser}" cannot list resource "pods"`)
      // Any case, proto and port of kubernetes.default is the apiserver: no way around the review.
      const sneaky = yield* send(mainPort, { path: podsIn("default"), headers: { ...routing("http", "Default", "KUBERNETES", 80), authorization: "Bearer nope" } })
      assert.strictEqual(sneaky.status, 401)
    }))

  it.live("a hub ServiceAccount does not inherit what the managed cluster grants its own ServiceAccounts of the same namespace", () =>
    Effect.gen(function*() {
      // On the managed cluster, the ServiceAccounts of namespace `hub-team` (a namespace that also
      // exists on the hub) may list pods in kube-public, by group.
      const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
      yield* Effect.promise(() =>
        rbac.createNamespacedRole({
          namespace: "kube-public",
          body: { metadata: { name: "pod-reader" }, rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["list"] }] }
        })
      )
      yield* Effect.promise(() =>
        rbac.createNamespacedRoleBinding({
          namespace: "kube-public",
          body: {
            metadata: { name: "hub-team-service-accounts" },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "pod-reader" },
            subjects: [{ kind: "Group", apiGroup: "rbac.authorization.k8s.io", name: "system:serviceaccounts:hub-team" }]
          }
        })
      )
      const managedOwn = yield* Apiserver.serviceAccountToken(managed, "hub-team", "local-reader", 3600)
      const own = yield* send(mainPort, { path: podsIn("kube-public"), headers: kas(managedOwn) })
      assert.strictEqual(own.status, 200, "the managed cluster's own ServiceAccount has the group's right")
      const fromHub = yield* send(mainPort, { path: podsIn("kube-public"), headers: kas(tokens.hubReader) })
      assert.strictEqual(fromHub.status, 403, fromHub.body)
      assert.include(JSON.parse(fromHub.body).message, `User "${hubUser}" cannot list resource "pods"`)
    }))

  it.live("drops the client's own Impersonate-* headers: the caller cannot choose whom to become", () =>
    Effect.gen(function*() {
      const reply = yield* send(mainPort, {
        path: podsIn("kube-system"),
        headers: {
          ...kas(tokens.hubReader),
          "Impersonate-User": "system:admin",
          "Impersonate-Group": "system:masters",
          "Impersonate-Extra-Scopes": "all"
        }
      })
      assert.strictEqual(reply.status, 403)
      assert.include(JSON.parse(reply.body).message, `User "${hubUser}"`)
    }))

  it.live("refuses a missing, invalid or tampered token with 401 and a clear message", () =>
    Effect.gen(function*() {
      const tampered = `${tokens.reader.slice(0, -4)}${tokens.reader.endsWith("AAAA") ? "BBBB" : "AAAA"}`
      const cases = [
        [kas(), "authentication failed: the request carries no bearer token"],
        [kas("not-a-token"), "authentication failed: token is neither valid for the managed cluster nor the hub cluster"],
        [kas(tampered), "authentication failed: token is neither valid for the managed cluster nor the hub cluster"],
        [{ ...kas(), authorization: `Basic ${Buffer.from("a:b").toString("base64")}` }, "authentication failed: the request carries no bearer token"]
      ] as const
      for (const [headers, message] of cases) {
        const reply = yield* send(mainPort, { path: podsIn("default"), headers })
        assert.strictEqual(reply.status, 401)
        assert.strictEqual(reply.body, `${message}\n`)
      }
    }))

  it.live("fails closed when a cluster cannot review: no fall-through to the next cluster", () =>
    Effect.gen(function*() {
      // The hub client's own credentials are rejected by the hub (401 on the TokenReview).
      const rejectedHub = ClientNodeKube.make({ cluster: "hub", connection: tokenConnection(hub, "not-a-valid-hub-credential") })
      const { port } = yield* start(proxyLayer({
        source: { _tag: "Kubeconfig", path: managedKubeconfig("bad-hub", tokens.proxy) },
        deployment: { _tag: "Hosted", mode: "Disabled" },
        hubClient: rejectedHub
      }))
      const hubCaller = yield* send(port, { path: podsIn("default"), headers: kas(tokens.hubReader) })
      assert.strictEqual(hubCaller.status, 401)
      assert.strictEqual(hubCaller.body, "hub cluster authentication failed: the TokenReview did not succeed\n")
      // The managed cluster still vouches for its own callers.
      assert.strictEqual((yield* send(port, { path: podsIn("default"), headers: kas(tokens.reader) })).status, 200)

      // The managed credentials may not create TokenReviews (403): every caller is refused, even
      // one the hub would have accepted.
      const { port: noReviewPort } = yield* start(proxyLayer({
        source: { _tag: "Kubeconfig", path: managedKubeconfig("no-review", tokens.noReview) },
        deployment: { _tag: "Hosted", mode: "Disabled" },
        hubClient: hubAdmin
      }))
      for (const token of [tokens.hubReader, tokens.reader]) {
        const reply = yield* send(noReviewPort, { path: podsIn("default"), headers: kas(token) })
        assert.strictEqual(reply.status, 401)
        assert.strictEqual(reply.body, "managed cluster authentication failed: the TokenReview did not succeed\n")
      }
      assert.isTrue(logs.some((line) => line.includes("TokenReview failed; refusing the caller") && line.includes("Forbidden")))
      assert.isTrue(logs.some((line) => line.includes("TokenReview failed; refusing the caller") && line.includes("Unauthorized")))
    }))

  it.live("Disabled mode answers a Service request with 503 at once", () =>
    Effect.gen(function*() {
      const startedAt = yield* Clock.currentTimeMillis
      const reply = yield* send(mainPort, {
        method: "POST",
        path: "/index.html",
        body: "x".repeat(10_000),
        headers: { ...routing("http", "default", "hello", backendPort), authorization: "Bearer anything" }
      })
      const elapsed = (yield* Clock.currentTimeMillis) - startedAt
      assert.strictEqual(reply.status, 503)
      assert.strictEqual(reply.body, "service proxy disabled in hosted mode\n")
      assert.isBelow(elapsed, 2000)
      assert.strictEqual(seen.length, 0)
    }))

  it.live("answers bad routing headers and dot-segment paths with 400", () =>
    Effect.gen(function*() {
      const missing = yield* send(mainPort, { headers: { "cluster-proxy-proto": "https" } })
      assert.strictEqual(missing.status, 400)
      assert.strictEqual(missing.body, "invalid request headers: Cluster-Proxy-Namespace is missing\n")
      const traversal = yield* send(mainPort, { path: "/api/v1/namespaces/default/pods/../../../secrets", headers: kas(tokens.reader) })
      assert.strictEqual(traversal.status, 400)
      assert.strictEqual(traversal.body, "invalid request path\n")
    }))

  it.live("BestEffort mode proxies to <svc>.<ns>.svc:<port> with the client's credential, internal headers stripped", () =>
    Effect.gen(function*() {
      // With five times the default busy-polling window: it changes when the event loop sleeps, nothing a request sees.
      const { port } = yield* start(proxyLayer({
        source: { _tag: "Kubeconfig", path: Path.join(managedKubeconfigDir, "kubeconfig") },
        deployment: { _tag: "Hosted", mode: "BestEffort" },
        busyPoll: "1 millis"
      }))
      const reply = yield* send(port, {
        method: "POST",
        path: "/a/b%20c?x=1&y",
        body: "payload",
        headers: {
          ...routing("http", "default", "hello", backendPort),
          authorization: "Bearer client-credential",
          "Cluster-Proxy-Authorization": "Bearer spoofed",
          "Impersonate-User": "system:admin",
          "x-request-id": "kept"
        }
      })
      assert.strictEqual(reply.status, 200, reply.body)
      assert.strictEqual(reply.headers["x-backend"], "hello")
      assert.strictEqual(reply.trailers["x-checksum"], "c0ffee")
      assert.strictEqual(seen.length, 1)
      const got = seen[0]!
      assert.strictEqual(got.method, "POST")
      assert.strictEqual(got.url, "/a/b%20c?x=1&y")
      assert.strictEqual(got.headers.authorization, "Bearer client-credential")
      assert.strictEqual(got.headers.host, `hello.default.svc:${backendPort}`)
      assert.strictEqual(got.headers["x-request-id"], "kept")
      for (const name of Object.keys(got.headers)) assert.notMatch(name, /^(impersonate-|cluster-proxy-)/)

      // An upgrade goes through and is spliced.
      const upgraded = yield* Effect.callback<string>((resume) => {
        const socket = Tls.connect({ host: "127.0.0.1", port, ca: [...proxyCa], servername: "localhost" }, () => {
          socket.write(
            `GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nCluster-Proxy-Proto: http\r\n` +
              `Cluster-Proxy-Namespace: default\r\nCluster-Proxy-Service: hello\r\nCluster-Proxy-Port: ${backendPort}\r\n\r\n`
          )
        })
        let data = ""
        socket.on("data", (chunk: Buffer) => {
          data += chunk.toString("latin1")
          if (data.includes("\r\n\r\n") && !data.includes("PING")) socket.write("ping")
          if (data.includes("PING")) {
            socket.destroy()
            resume(Effect.succeed(data))
          }
        })
        socket.on("error", (error) => resume(Effect.die(error)))
        return Effect.sync(() => socket.destroy())
      }).pipe(Effect.timeout("10 seconds"))
      assert.match(upgraded, /^HTTP\/1\.1 101 /)

      // A Service nobody listens on: 502 and nothing more.
      const down = yield* send(port, { headers: routing("http", "default", "nowhere", deadPort) })
      assert.strictEqual(down.status, 502)
      assert.strictEqual(down.body, "bad gateway\n")
      const unknown = yield* send(port, { headers: routing("http", "default", "unknown", backendPort) })
      assert.strictEqual(unknown.status, 502)
    }))

  it.live("Expect: 100-continue: the body follows the upstream's 100 Continue, or the timeout when none comes", () =>
    Effect.gen(function*() {
      const { port } = yield* start(proxyLayer({
        source: { _tag: "Kubeconfig", path: Path.join(managedKubeconfigDir, "kubeconfig") },
        deployment: { _tag: "Hosted", mode: "BestEffort" }
      }))
      // Node's server answers 100 Continue by itself.
      const eager = yield* send(port, {
        method: "POST",
        body: "with-continue",
        headers: { ...routing("http", "default", "hello", backendPort), expect: "100-continue", "content-length": "13" }
      })
      assert.strictEqual(eager.status, 200, eager.body)
      // A backend that never says 100 Continue and answers only once the body is in.
      const quiet = Net.createServer((socket) => {
        let data = ""
        socket.on("data", (chunk: Buffer) => {
          data += chunk.toString("latin1")
          const end = data.indexOf("\r\n\r\n")
          if (end >= 0 && data.length - end - 4 >= 7) {
            const body = data.slice(end + 4)
            socket.end(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`)
          }
        })
      })
      const quietPort = yield* Effect.promise(() => listen(quiet))
      yield* Effect.addFinalizer(() => Effect.sync(() => quiet.close()))
      const held = yield* send(port, {
        method: "POST",
        body: "payload",
        headers: { ...routing("http", "default", "quiet", quietPort), expect: "100-continue", "content-length": "7" }
      })
      assert.strictEqual(held.status, 200)
      assert.strictEqual(held.body, "payload")
    }))

  it.live("sends exactly the impersonation headers, the current token and the path prefix; relays to services/proxy", () =>
    Effect.gen(function*() {
      // A TLS server that records what the proxy sends the "managed apiserver". Its certificate
      // names only recorder.test, so the kubeconfig's tls-server-name must be honoured.
      const recorderTls = selfSigned(dir, "recorder", ["recorder.test"])
      const recorded: Array<Seen> = []
      const recorder = Https.createServer(recorderTls, (req, res) => {
        recorded.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers })
        req.resume()
        res.writeHead(200, { "content-type": "application/json" })
        res.end("{}")
      })
      const recorderPort = yield* Effect.promise(() => listen(recorder))
      yield* Effect.addFinalizer(() => Effect.promise(() => close(recorder)))
      const kubeconfig = [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "- name: m",
        "  cluster:",
        `    server: https://127.0.0.1:${recorderPort}/k8s/clusters/c-1`,
        `    certificate-authority-data: ${Buffer.from(recorderTls.cert).toString("base64")}`,
        "    tls-server-name: recorder.test",
        "users:",
        "- name: u",
        "  user:",
        "    tokenFile: token",
        "contexts:",
        "- name: m",
        "  context: { cluster: m, user: u }",
        "current-context: m",
        ""
      ].join("\n")
      const folder = Path.join(dir, "recorder-volume")
      publish(folder, { kubeconfig, token: "recorder-token-1\n" })

      // TokenReview goes to the real clusters; only the proxied hop goes to the recorder.
      const providers = [
        { source: "managed" as const, createTokenReview: ClientNodeKube.make({ cluster: "managed", connection: Apiserver.connection(managed) }).createTokenReview },
        { source: "hub" as const, createTokenReview: hubAdmin.createTokenReview }
      ]
      const layer = ServiceProxyLayers.layerNoDeps({
        listen: { host: "127.0.0.1", port: 0 },
        certFile: Path.join(dir, "proxy.crt"),
        keyFile: Path.join(dir, "proxy.key"),
        deployment: { _tag: "Hosted", mode: "Relay" },
        enableImpersonation: true,
        relay: { namespace: addonNamespace, name: "cluster-proxy-service-relay", port: 7444 }
      }).pipe(
        Layer.provide(TokenReviewChain.layerProviders(providers, { cacheTtl: "10 seconds" })),
        Layer.provideMerge(ManagedCredentials.layer({ source: { _tag: "Kubeconfig", path: Path.join(folder, "kubeconfig") }, reloadInterval: "1 second" })),
        Layer.provide(ServiceResolver.layerStatic({})),
        Layer.provide(Probes.layerNoServer),
        Layer.provide(NodeServices.layer)
      )
      const { credentials, port } = yield* start(layer, yield* Effect.scope)

      const apiserverReply = yield* send(port, {
        path: "/api/v1/namespaces/default/pods?watch=false",
        headers: { ...kas(tokens.hubReader), "Impersonate-User": "system:admin", "impersonate-group": "system:masters", "Cluster-Proxy-Authorization": "Bearer x" }
      })
      assert.strictEqual(apiserverReply.status, 200, apiserverReply.body)
      const toApiserver = recorded.at(-1)!
      assert.strictEqual(toApiserver.url, "/k8s/clusters/c-1/api/v1/namespaces/default/pods?watch=false")
      assert.strictEqual(toApiserver.headers.authorization, "Bearer recorder-token-1")
      assert.strictEqual(toApiserver.headers["impersonate-user"], hubUser)
      assert.strictEqual(toApiserver.headers["impersonate-group"], "cluster:hub:system:serviceaccounts, cluster:hub:system:serviceaccounts:hub-team, system:authenticated")
      assert.strictEqual(toApiserver.headers.host, `127.0.0.1:${recorderPort}`)
      for (const name of Object.keys(toApiserver.headers)) assert.notMatch(name, /^(cluster-proxy-|impersonate-extra-|impersonate-uid)/)

      // Relay: the relay Service's proxy subresource under the same prefix.
      const relayReply = yield* send(port, {
        path: "/index.html?x=1",
        headers: {
          ...routing("HTTP", "default", "hello", "08080"),
          authorization: "Bearer client-credential",
          "Impersonate-User": "system:admin",
          "cluster-proxy-relay-authorization": "Bearer spoofed"
        }
      })
      assert.strictEqual(relayReply.status, 200)
      const toRelay = recorded.at(-1)!
      assert.strictEqual(toRelay.url, `/k8s/clusters/c-1/api/v1/namespaces/${addonNamespace}/services/http:cluster-proxy-service-relay:7444/proxy/index.html?x=1`)
      assert.strictEqual(toRelay.headers.authorization, "Bearer recorder-token-1")
      assert.strictEqual(toRelay.headers["cluster-proxy-relay-authorization"], "Bearer recorder-token-1")
      assert.strictEqual(toRelay.headers["cluster-proxy-authorization"], "Bearer client-credential")
      assert.deepInclude(toRelay.headers, { "cluster-proxy-proto": "http", "cluster-proxy-namespace": "default", "cluster-proxy-service": "hello", "cluster-proxy-port": "8080" })
      for (const name of Object.keys(toRelay.headers)) assert.notMatch(name, /^impersonate-/)
      // A path that would climb out of services/.../proxy never leaves the proxy.
      const before = recorded.length
      const climbing = yield* send(port, { path: "/%2e%2e/%2e%2e/%2e%2e/secrets", headers: { ...routing("http", "default", "hello", 80) } })
      assert.strictEqual(climbing.status, 400)
      assert.strictEqual(recorded.length, before)

      // The token file changes: the next request carries the new token, no restart.
      publish(folder, { kubeconfig, token: "recorder-token-2" })
      yield* until(credentials.current, (current) => current.tokenId === sha256("recorder-token-2").slice(0, 12), "the new token is loaded")
      yield* send(port, { path: "/x", headers: { ...routing("http", "default", "hello", 80) } })
      assert.strictEqual(recorded.at(-1)?.headers.authorization, "Bearer recorder-token-2")
    }).pipe(Effect.scoped))

  it.live("with impersonation turned off, not hosted: the caller's own credential goes to the in-cluster apiserver", () =>
    Effect.gen(function*() {
      const podFolder = Path.join(dir, "serviceaccount")
      publish(podFolder, { token: tokens.proxy, "ca.crt": managed.caPem })
      const directRegistry = new Map()
      const { port } = yield* start(
        proxyLayer({
          source: {
            _tag: "InCluster",
            env: { KUBERNETES_SERVICE_HOST: managed.host, KUBERNETES_SERVICE_PORT: String(managed.port) },
            tokenPath: Path.join(podFolder, "token"),
            caPath: Path.join(podFolder, "ca.crt")
          },
          deployment: { _tag: "Direct" },
          enableImpersonation: false
        }),
        yield* Effect.scope,
        directRegistry
      )
      const own = yield* send(port, { path: podsIn("kube-system"), headers: kas(tokens.reader) })
      assert.strictEqual(own.status, 403)
      assert.include(JSON.parse(own.body).message, `User "${managedUser}"`)
      // The client's impersonation is evaluated with its own rights: the reader may not impersonate.
      const impersonating = yield* send(port, { path: podsIn("default"), headers: { ...kas(tokens.reader), "Impersonate-User": "system:admin" } })
      assert.strictEqual(impersonating.status, 403)
      assert.include(JSON.parse(impersonating.body).message, "cannot impersonate")
      // Not hosted: Services are reached directly whatever the mode would say.
      const service = yield* send(port, { headers: routing("http", "default", "hello", backendPort) })
      assert.strictEqual(service.status, 200)
      const count = yield* Metric.value(
        Metric.withAttributes(Metrics.serviceProxyRequestsTotal, { mode: "Direct", target: "kube-apiserver", result: "error" })
      ).pipe(Effect.provideService(Metric.MetricRegistry, directRegistry))
      assert.strictEqual(count.count, 2)
    }).pipe(Effect.scoped))

  it.live("a token rotation in the middle of traffic causes no failure and leaves no client on the old token", () =>
    Effect.gen(function*() {
      const folder = Path.join(dir, "rotating")
      publish(folder, { kubeconfig: Apiserver.kubeconfigForToken(managed, tokens.rotatingA) })
      // No TokenReview cache: every request reviews the caller with the managed credentials.
      const { credentials, port } = yield* start(
        proxyLayer({
          source: { _tag: "Kubeconfig", path: Path.join(folder, "kubeconfig") },
          deployment: { _tag: "Hosted", mode: "Disabled" },
          cacheTtl: 0
        }),
        yield* Effect.scope
      )
      const failures: Array<string> = []
      let ok = 0
      let okAfterRevoke = 0
      let revoked = false
      let stop = false
      const loop = Effect.gen(function*() {
        for (let i = 0; i < 1500 && !stop; i++) {
          const reply = yield* send(port, { path: podsIn("default"), headers: kas(tokens.reader) })
          if (reply.status !== 200) failures.push(`${reply.status}: ${reply.body.slice(0, 200)}`)
          else {
            ok++
            if (revoked) okAfterRevoke++
          }
        }
      })
      const traffic = yield* Effect.forkChild(Effect.all([loop, loop], { concurrency: 2, discard: true }))
      yield* Effect.sleep("1 second")

      publish(folder, { kubeconfig: Apiserver.kubeconfigForToken(managed, tokens.rotatingB) })
      yield* until(credentials.current, (current) => current.tokenId === sha256(tokens.rotatingB).slice(0, 12), "the rotated token is loaded")
      // Requests that picked the old token before the switch finish first.
      yield* Effect.sleep("500 millis")

      // Take every right from the old ServiceAccount: from now on any client still using the old
      // token would fail (TokenReview and impersonation alike).
      const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
      yield* Effect.promise(() => rbac.deleteClusterRoleBinding({ name: "tether-impersonator-rotating-a" }))
      const oldConfig = new KubeConfig()
      oldConfig.loadFromString(Apiserver.kubeconfigForToken(managed, tokens.rotatingA))
      const oldAuthn = oldConfig.makeApiClient(AuthenticationV1Api)
      yield* eventually(
        Effect.tryPromise({
          try: () => oldAuthn.createTokenReview({ body: { spec: { token: tokens.reader } } }),
          catch: (error) => (error instanceof ApiException ? error.code : -1)
        }).pipe(
          Effect.matchEffect({
            onSuccess: () => Effect.fail(new NotYet({ what: "the old token still has its rights" })),
            onFailure: (code) => code === 403 ? Effect.void : Effect.fail(new NotYet({ what: `unexpected answer ${code}` }))
          })
        ),
        { timeout: "15 seconds" }
      )
      revoked = true
      yield* Effect.sleep("2 seconds")
      stop = true
      yield* Fiber.join(traffic)

      assert.deepStrictEqual(failures, [])
      assert.isAbove(ok, 20)
      assert.isAbove(okAfterRevoke, 5, "requests after the old token lost its rights")
      assert.isTrue(logs.some((line) => line.includes("apiserver token reloaded")))
    }).pipe(Effect.scoped))

  it.live("reloads the serving certificate when its files change", () =>
    Effect.gen(function*() {
      const folder = Path.join(dir, "tls")
      const first = selfSigned(dir, "tls-1", ["localhost", "127.0.0.1"])
      const second = selfSigned(dir, "tls-2", ["localhost", "127.0.0.1"])
      publish(folder, { "tls.crt": first.cert, "tls.key": first.key })
      const { port } = yield* start(
        proxyLayer({
          source: { _tag: "Kubeconfig", path: Path.join(managedKubeconfigDir, "kubeconfig") },
          deployment: { _tag: "Hosted", mode: "Disabled" },
          certFile: Path.join(folder, "tls.crt"),
          keyFile: Path.join(folder, "tls.key")
        }),
        yield* Effect.scope
      )
      assert.strictEqual(yield* servedFingerprint(port), new Crypto.X509Certificate(first.cert).fingerprint256)
      publish(folder, { "tls.crt": second.cert, "tls.key": second.key })
      const want = new Crypto.X509Certificate(second.cert).fingerprint256
      yield* until(servedFingerprint(port), (fingerprint) => fingerprint === want, "the new certificate is served", { timeout: "10 seconds" })
      // A broken pair is refused and the current certificate stays: checked once the refusal is logged.
      const refusals = () => logs.filter((line) => line.includes("cannot reload the serving certificate")).length
      const refusedBefore = refusals()
      publish(folder, { "tls.crt": first.cert, "tls.key": second.key })
      yield* until(Effect.sync(refusals), (count) => count > refusedBefore, "the broken pair is refused", { timeout: "10 seconds" })
      assert.strictEqual(yield* servedFingerprint(port), want)
    }).pipe(Effect.scoped))

  it.live("refuses to start with unreadable credentials or certificate", () =>
    Effect.gen(function*() {
      const missingKubeconfig = yield* Effect.flip(start(proxyLayer({
        source: { _tag: "Kubeconfig", path: Path.join(dir, "absent", "kubeconfig") },
        deployment: { _tag: "Hosted", mode: "Disabled" }
      }), yield* Effect.scope))
      assert.include(String(missingKubeconfig), "cannot read the managed kubeconfig")
      const noToken = Path.join(dir, "no-token")
      publish(noToken, { kubeconfig: Apiserver.kubeconfigForToken(managed, "t").replace(/    token: .*\n/, "") })
      const tokenless = yield* Effect.flip(start(proxyLayer({
        source: { _tag: "Kubeconfig", path: Path.join(noToken, "kubeconfig") },
        deployment: { _tag: "Hosted", mode: "Disabled" }
      }), yield* Effect.scope))
      assert.include(String(tokenless), "managed kubeconfig does not contain a bearer token")
      const badCert = yield* Effect.flip(start(proxyLayer({
        source: { _tag: "Kubeconfig", path: Path.join(managedKubeconfigDir, "kubeconfig") },
        deployment: { _tag: "Hosted", mode: "Disabled" },
        certFile: Path.join(dir, "proxy.crt"),
        keyFile: Path.join(dir, "recorder.key")
      }), yield* Effect.scope))
      assert.instanceOf(badCert, ServiceProxyError)
      assert.include(String(badCert), "are not a usable pair")
    }).pipe(Effect.scoped))

  it.live("counts requests by mode, target and result", () =>
    Effect.gen(function*() {
      const count = (target: ServiceProxyMode.MetricTarget, result: "success" | "error") =>
        Metric.value(Metric.withAttributes(Metrics.serviceProxyRequestsTotal, { mode: "Disabled", target, result })).pipe(
          Effect.map((state) => state.count),
          Effect.provideService(Metric.MetricRegistry, registry)
        )
      const before = [yield* count("kube-apiserver", "success"), yield* count("kube-apiserver", "error"), yield* count("service", "error"), yield* count("unknown", "error")]
      yield* send(mainPort, { path: podsIn("default"), headers: kas(tokens.reader) })
      yield* send(mainPort, { path: podsIn("default"), headers: kas("junk") })
      yield* send(mainPort, { headers: routing("http", "default", "hello", 80) })
      yield* send(mainPort, { headers: {} })
      const after = [yield* count("kube-apiserver", "success"), yield* count("kube-apiserver", "error"), yield* count("service", "error"), yield* count("unknown", "error")]
      assert.deepStrictEqual(after.map((value, i) => value - before[i]!), [1, 1, 1, 1])
      const duration = yield* Metric.value(Metric.withAttributes(Metrics.serviceProxyRequestDuration, { mode: "Disabled", target: "kube-apiserver" })).pipe(
        Effect.provideService(Metric.MetricRegistry, registry)
      )
      assert.isAbove(duration.count, 0)
    }))
})
