/**
 * Soak of the two HTTP proxies, each the shipped bundle as its own process (`tether service-relay`,
 * `tether service-proxy`), against one real kube-apiserver. Bounded: a fixed number of rounds, each
 * bounded in time.
 *
 * Every round, through each proxy:
 * 1. clients that abort mid-answer: each opens a streaming answer (a backend stream through the
 *    relay, a watch through the service proxy), reads its first bytes, and the gauges then read
 *    exactly that many requests and connections open; then they go away;
 * 2. a burst of keep-alive connections, each sending several requests one after another (and,
 *    through the relay, a few upgrades spliced and closed): every answer is checked;
 * 3. once the clients close, the open-request, open-connection and open-upgrade gauges (read from
 *    `/metrics`) are back to 0 and the process's file descriptors back to where they were; the heap
 *    after a forced GC is read ({@link spawnSoaked}).
 * After the last round: the retained heap did not grow, and the resident size plateaus (later
 * rounds together grow it less than the first did). The processes run with the chart's
 * `runtimeEnv`: without its 1 MiB semi-spaces V8 grows the young generation in steps under these
 * bursts, and the resident size rose by 13 to 21 MB every few rounds with a flat heap.
 *
 * The relay reviews its caller (TokenReview) on the apiserver and forwards to a loopback HTTP
 * backend (`soak.default.svc`, resolved by the preload's cluster-DNS stand-in). The service proxy
 * reviews its callers on the apiserver and impersonates them there, reading a ConfigMap; the
 * apiserver's audit log must show every one of those reads exactly once. Upstream keep-alive
 * connections are closed after 1 s idle (the backend's timeout, the proxy's `--idle-conn-timeout`),
 * so that descriptors can return to the baseline between rounds. `SOAK_ROUNDS` lengthens the run by
 * hand.
 */
import { RbacAuthorizationV1Api, CoreV1Api } from "@kubernetes/client-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { grantImpersonator, proxyUser } from "../support/impersonation.ts"
import { until } from "../support/eventually.ts"
import { freePort, get, selfSigned } from "../support/local.ts"
import { send } from "../support/send.ts"
import { formatMemory, type Memory, scrape, type Soaked, spawnSoaked } from "../support/soak.ts"

const rounds = Number(process.env["SOAK_ROUNDS"] ?? 5)
const clients = 150
const perClient = 8
const aborting = 20
const upgrades = 10

/** What the backend answers: the path and enough padding that both directions copy buffers. */
const padding = "p".repeat(4 * 1024)
const answerFor = (url: string) => `${url}\n${padding}`

const gauges = (prefix: string) => [`${prefix}_requests_active`, `${prefix}_connections_active`, `${prefix}_upgrades_active`] as const

/** A streaming answer whose first bytes have arrived; `cut` goes away mid-answer. */
const openStream = (port: number, path: string, headers: Http.OutgoingHttpHeaders, ca?: string) =>
  Effect.callback<{ readonly status: number; readonly cut: () => void }>((resume) => {
    const options = { host: "127.0.0.1", port, path, headers, agent: false as const, timeout: 30_000 }
    const onResponse = (res: Http.IncomingMessage) =>
      res.once("data", () => resume(Effect.succeed({ status: res.statusCode ?? 0, cut: () => req.destroy() })))
    const req = ca === undefined ? Http.request(options, onResponse) : Https.request({ ...options, ca, servername: "localhost" }, onResponse)
    req.on("timeout", () => req.destroy(new Error("stream timed out")))
    req.on("error", (error) => resume(Effect.die(error)))
    req.end()
  })

/** An upgrade through the relay: switched, one echo, closed by the client; whether it all happened. */
const upgradeOnce = (port: number, headers: Readonly<Record<string, string>>) =>
  Effect.callback<boolean>((resume) => {
    const socket = Net.connect(port, "127.0.0.1")
    let received = ""
    let echoed = false
    const lines = Object.entries({ ...headers, connection: "Upgrade", upgrade: "soak" }).map(([k, v]) => `${k}: ${v}\r\n`).join("")
    socket.on("connect", () => socket.write(`GET /ws HTTP/1.1\r\nHost: relay\r\n${lines}\r\n`))
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString("latin1")
      if (received.startsWith("HTTP/1.1 101 ") && received.includes("\r\n\r\n") && !received.includes("ping")) socket.write("ping")
      if (received.endsWith("ping") && !echoed) {
        echoed = true
        socket.end()
      }
    })
    socket.on("error", () => socket.destroy())
    socket.on("close", () => resume(Effect.succeed(echoed)))
    socket.setTimeout(30_000, () => socket.destroy())
  })

describe.skipIf(noApiserver)("HTTP proxies soak (the bundled processes, repeated keep-alive bursts)", () => {
  let scope: Scope.Closeable
  let dir!: string
  let managed!: Apiserver.ApiserverInfo
  let backend!: Http.Server
  let backendPort!: number
  let tls!: { readonly certFile: string; readonly keyFile: string; readonly cert: string }
  let proxyToken!: string
  let readerToken!: string
  const running: Array<Soaked> = []

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-http-soak-"))
    managed = await Effect.runPromise(Apiserver.make({ name: "http-soak", auditLog: true }).pipe(Scope.provide(scope)))
    // The proxy's ServiceAccount reviews tokens and impersonates (the chart's impersonator role);
    // the reader may read ConfigMaps in `default`.
    ;({ proxy: proxyToken, reader: readerToken } = await Effect.runPromise(grantImpersonator(managed, "soak-impersonator")))
    const kubeConfig = Apiserver.kubeConfig(managed)
    const rbac = kubeConfig.makeApiClient(RbacAuthorizationV1Api)
    await rbac.createNamespacedRole({
      namespace: "default",
      body: { metadata: { name: "soak-reader" }, rules: [{ apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list", "watch"] }] }
    })
    await rbac.createNamespacedRoleBinding({
      namespace: "default",
      body: {
        metadata: { name: "soak-reader" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "soak-reader" },
        subjects: [{ kind: "ServiceAccount", name: "reader", namespace: "team" }]
      }
    })
    await kubeConfig.makeApiClient(CoreV1Api).createNamespacedConfigMap({
      namespace: "default",
      body: { metadata: { name: "soak" }, data: { padding } }
    })

    backend = Http.createServer((req, res) => {
      if (req.url === "/stream") {
        res.writeHead(200, { "content-type": "text/plain" })
        const tick = setInterval(() => res.write("tick\n"), 10)
        res.write("tick\n")
        res.once("close", () => clearInterval(tick))
        return
      }
      req.resume()
      req.on("end", () => res.end(answerFor(req.url ?? "")))
    })
    // Idle upstream connections close after 1 s, so descriptors can return to the baseline.
    backend.keepAliveTimeout = 1_000
    backend.on("upgrade", (_req, socket: Net.Socket) => {
      socket.on("error", () => socket.destroy())
      socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: soak\r\n\r\n")
      socket.pipe(socket)
    })
    backendPort = await new Promise<number>((resolve) =>
      backend.listen(0, "127.0.0.1", () => resolve((backend.address() as Net.AddressInfo).port))
    )
    tls = selfSigned(dir, "proxy", ["localhost", "127.0.0.1"])
  })

  afterAll(async () => {
    for (const proxy of running) await proxy.stop()
    if (backend !== undefined) {
      backend.closeAllConnections()
      await new Promise((resolve) => backend.close(resolve))
    }
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
  })

  interface Target {
    readonly name: string
    readonly proxy: Soaked
    readonly port: number
    readonly metrics: string
    readonly prefix: string
    /** One keep-alive request; whether the answer is the right one. */
    readonly request: (agent: Http.Agent, n: number) => Effect.Effect<boolean>
    readonly agent: () => Http.Agent
    readonly stream: Effect.Effect<{ readonly status: number; readonly cut: () => void }>
    readonly upgrade?: Effect.Effect<boolean>
  }

  /**
   * Start a proxy process and wait until `/readyz` shows its check passing (a `/readyz` asked
   * before the check is registered passes with no checks at all).
   */
  const start = (name: string, args: (port: number, health: number) => ReadonlyArray<string>, serviceAddress?: string) =>
    Effect.gen(function*() {
      const port = yield* freePort
      const health = yield* freePort
      const proxy = spawnSoaked(dir, name, args(port, health), serviceAddress === undefined ? {} : { serviceAddress })
      running.push(proxy)
      yield* until(
        get(`http://127.0.0.1:${health}/readyz?verbose`).pipe(Effect.orElseSucceed(() => ({ status: 0, body: "" }))),
        (r) => (r.status === 200 && r.body.includes(`[+]${name} ok`)) || proxy.child.exitCode !== null,
        `${name} ready`,
        { timeout: "60 seconds", interval: "200 millis" }
      )
      assert.isNull(proxy.child.exitCode, `${name} exited:\n${proxy.logTail()}`)
      return { proxy, port, metrics: `http://127.0.0.1:${health}/metrics` }
    })

  const soak = (target: Target) =>
    Effect.gen(function*() {
      const { name, proxy } = target
      const open = scrape(target.metrics, gauges(target.prefix))
      const allClosed = (what: string) =>
        until(open, (values) => values.every((v) => v === 0), `${name} ${what}: requests, connections and upgrades open back to 0`, {
          timeout: "20 seconds",
          interval: "50 millis"
        })
      // One request first. Baseline: the descriptors before it, plus at most the connection to
      // the apiserver its TokenReview opened (kept by the kube client), once the upstream
      // connection has gone idle and closed.
      const readyFds = proxy.fds()
      const warm = target.agent()
      assert.isTrue(yield* target.request(warm, 0), `${name}: the first request failed\n${proxy.logTail()}`)
      warm.destroy()
      yield* allClosed("after the first request")
      yield* until(Effect.sync(proxy.fds), (n) => n <= readyFds + 1, `${name}: descriptors settled after the first request`, {
        timeout: "20 seconds",
        interval: "100 millis"
      })
      const baseFds = proxy.fds()
      const start = yield* proxy.memory
      const after: Array<Memory> = []
      const fdsAfter: Array<number> = []
      for (let round = 1; round <= rounds; round++) {
        yield* Effect.gen(function*() {
          // 1. Streams open mid-answer: exactly these are open now.
          const streams = yield* Effect.all(Array.from({ length: aborting }, () => target.stream), { concurrency: "unbounded" })
          assert.deepStrictEqual(streams.map((s) => s.status), streams.map(() => 200), `${name} round ${round}: streams`)
          const during = yield* open
          assert.deepStrictEqual(during, [aborting, aborting, 0], `${name} round ${round}: requests, connections, upgrades open mid-answer`)
          for (const stream of streams) stream.cut()

          // 2. The keep-alive burst (and upgrades through the relay).
          const agents = Array.from({ length: clients }, target.agent)
          const answers = yield* Effect.forEach(
            agents,
            (agent, c) => Effect.forEach(Array.from({ length: perClient }, (_, i) => c * perClient + i), (n) => target.request(agent, n)),
            { concurrency: "unbounded" }
          )
          const spliced = target.upgrade === undefined
            ? []
            : yield* Effect.all(Array.from({ length: upgrades }, () => target.upgrade!), { concurrency: "unbounded" })
          for (const agent of agents) agent.destroy()
          const wrong = answers.flat().filter((ok) => !ok).length
          assert.strictEqual(wrong, 0, `${name} round ${round}: ${wrong} of ${clients * perClient} answers wrong\n${proxy.logTail()}`)
          assert.isTrue(spliced.every((ok) => ok), `${name} round ${round}: an upgrade did not echo`)

          // 3. Back to nothing open, descriptors back to the baseline.
          yield* allClosed(`round ${round}`)
          yield* until(Effect.sync(proxy.fds), (n) => n <= baseFds, `${name} round ${round}: descriptors back to ${baseFds}`, {
            timeout: "20 seconds",
            interval: "100 millis"
          })
          fdsAfter.push(proxy.fds())
          after.push(yield* proxy.memory)
        }).pipe(Effect.timeoutOrElse({
          duration: "90 seconds",
          orElse: () => Effect.die(new Error(`${name} round ${round} took over 90 s`))
        }))
      }
      const first = after[0]!
      const last = after.at(-1)!
      const figures = [start, ...after].map(formatMemory)
      console.log(
        `${name} soak: ${rounds} rounds of ${clients} keep-alive connections x ${perClient} requests, ${aborting} aborted streams` +
          `${target.upgrade === undefined ? "" : `, ${upgrades} upgrades`}; descriptors ${baseFds} before, ${fdsAfter.join(", ")} after each round;` +
          ` after each forced GC (start, then rounds):\n${figures.join("\n")}`
      )
      // Retained: what the heap holds after a full collection does not grow with the rounds.
      assert.isAtMost(last.heapUsed - first.heapUsed, 2 * 2 ** 20, `${name}: retained heap grew: ${figures.join("; ")}`)
      // Plateau: all later rounds together grow the resident size less than the first round did.
      assert.isBelow(last.rss - first.rss, first.rss - start.rss, `${name}: resident size did not plateau: ${figures.join("; ")}`)
    })

  it.live(`service-relay: ${rounds} rounds of ${clients} keep-alive connections x ${perClient} requests`, () =>
    Effect.gen(function*() {
      const { metrics, port, proxy } = yield* start("service-relay", (port, health) => [
        "service-relay",
        `--listen=127.0.0.1:${port}`,
        `--health-probe-bind-address=127.0.0.1:${health}`,
        `--kubeconfig=${managed.kubeconfigPath}`,
        `--trusted-caller-username=${proxyUser}`
      ], "127.0.0.1")
      const headers = {
        authorization: `Bearer ${proxyToken}`,
        "cluster-proxy-proto": "http",
        "cluster-proxy-namespace": "default",
        "cluster-proxy-service": "soak",
        "cluster-proxy-port": String(backendPort)
      }
      yield* soak({
        name: "service-relay",
        proxy,
        port,
        metrics,
        prefix: "cluster_proxy_service_relay",
        agent: () => new Http.Agent({ keepAlive: true, maxSockets: 1 }),
        request: (agent, n) =>
          send(port, { agent, path: `/r/${n}`, headers }).pipe(Effect.map((reply) => reply.status === 200 && reply.body === answerFor(`/r/${n}`))),
        stream: openStream(port, "/stream", headers),
        upgrade: upgradeOnce(port, headers)
      })
    }), { timeout: 300_000 })

  it.live(`service-proxy: ${rounds} rounds of ${clients} keep-alive TLS connections x ${perClient} impersonated requests`, () =>
    Effect.gen(function*() {
      const managedKubeconfig = Path.join(dir, "managed.kubeconfig")
      Fs.writeFileSync(managedKubeconfig, Apiserver.kubeconfigForToken(managed, proxyToken), { mode: 0o600 })
      const { metrics, port, proxy } = yield* start("service-proxy", (port, health) => [
        "service-proxy",
        `--listen=127.0.0.1:${port}`,
        `--health-probe-bind-address=127.0.0.1:${health}`,
        `--cert=${tls.certFile}`,
        `--key=${tls.keyFile}`,
        `--managed-kubeconfig=${managedKubeconfig}`,
        "--idle-conn-timeout=1s"
      ])
      const headers = {
        authorization: `Bearer ${readerToken}`,
        "cluster-proxy-proto": "https",
        "cluster-proxy-namespace": "default",
        "cluster-proxy-service": "kubernetes",
        "cluster-proxy-port": "443"
      }
      const path = "/api/v1/namespaces/default/configmaps/soak"
      const reads = Effect.map(Apiserver.auditEvents(managed), (events) =>
        events.filter((e) => e.stage === "ResponseComplete" && e.verb === "get" && e.requestURI === path && e.user.username === proxyUser).length)
      const readsBefore = yield* reads
      yield* soak({
        name: "service-proxy",
        proxy,
        port,
        metrics,
        prefix: "cluster_proxy_service_proxy",
        agent: () => new Https.Agent({ keepAlive: true, maxSockets: 1, servername: "localhost" }),
        request: (agent, _n) =>
          send(port, { agent, path, headers, ca: [tls.cert] }).pipe(Effect.map((reply) => {
            if (reply.status !== 200) return false
            const read = JSON.parse(reply.body) as { readonly metadata?: { readonly name?: string }; readonly data?: { readonly padding?: string } }
            return read.metadata?.name === "soak" && read.data?.padding === padding
          })),
        stream: openStream(port, "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0", headers, tls.cert)
      })
      // Every read reached the apiserver once, impersonated by the proxy's ServiceAccount.
      const expected = readsBefore + 1 + rounds * clients * perClient
      yield* until(reads, (n) => n >= expected, `audit log: ${expected} reads`, { timeout: "20 seconds", interval: "200 millis" })
      assert.strictEqual(yield* reads, expected, "reads of the ConfigMap in the audit log")
    }), { timeout: 300_000 })
})
