/**
 * The service relay against a real kube-apiserver (TokenReview with real ServiceAccount tokens)
 * and real HTTP and HTTPS backends on loopback. Service names resolve through a static table
 * (`hello.default.svc` -> 127.0.0.1), so no cluster DNS is needed; https backends are still
 * verified under the Service name.
 *
 * Clients are Node's http client, raw sockets (upgrades, slow headers) and curl.
 */
import { afterAll, assert, beforeAll, beforeEach, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Logger, Metric, Redacted, References, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ServiceRelayLayers from "../../layers/ServiceRelay.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { type KubeClient, ManagedCluster } from "../../src/kube/KubeClient.ts"
import { KubeError } from "../../src/kube/KubeError.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { CallerAuthenticator } from "../../src/relay/CallerAuthenticator.ts"
import { loadServiceCa } from "../../src/http/Trust.ts"
import { ServiceRelay, ServiceRelayError } from "../../src/relay/ServiceRelay.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { holds, type Options as Polling } from "../support/eventually.ts"
import { send } from "../support/send.ts"
import { noApiserver } from "../support/apiserver.ts"

const trustedNamespace = "open-cluster-management-agent-addon"
const trustedUser = `system:serviceaccount:${trustedNamespace}:cluster-proxy`
const clientCredential = `Bearer client-credential-${Crypto.randomBytes(8).toString("hex")}`

// ---------------------------------------------------------------------------------------------
// backends: record what reaches them
// ---------------------------------------------------------------------------------------------

interface Seen {
  readonly backend: string
  readonly method: string
  readonly url: string
  readonly headers: Http.IncomingHttpHeaders
  readonly upgrade: boolean
  /** The relay's side of the connection: equal for requests that reused a pooled connection. */
  readonly remotePort: number | undefined
}

const seen: Array<Seen> = []
let foreverClosed = 0

const record = (backend: string, req: Http.IncomingMessage, upgrade: boolean) =>
  seen.push({ backend, method: req.method ?? "", url: req.url ?? "", headers: req.headers, upgrade, remotePort: req.socket.remotePort })

const backendHandler = (backend: string) => (req: Http.IncomingMessage, res: Http.ServerResponse) => {
  record(backend, req, false)
  if (req.url === "/echo") {
    res.writeHead(200, { "content-type": "application/octet-stream" })
    req.pipe(res)
    return
  }
  req.resume()
  if (req.url === "/forever") {
    // Streams until the relay closes the connection (a log follow, say).
    res.writeHead(200, { "content-type": "text/plain" })
    const tick = setInterval(() => res.write("tick\n"), 10)
    res.once("close", () => {
      clearInterval(tick)
      foreverClosed++
    })
    return
  }
  if (req.url === "/trailers") {
    res.writeHead(200, { "content-type": "text/plain", trailer: "x-checksum" })
    res.write("part")
    res.addTrailers({ "x-checksum": "c0ffee" })
    res.end()
    return
  }
  if (req.url === "/slow") {
    setTimeout(() => res.end("slow done"), 800)
    return
  }
  req.on("end", () => {
    const path = (req.url ?? "").split("?")[0] ?? ""
    const status = path.startsWith("/status/") ? Number(path.slice("/status/".length)) : 200
    res.writeHead(status, {
      "content-type": "application/json",
      "x-backend": backend,
      "set-cookie": ["a=1", "b=2"]
    })
    res.end(JSON.stringify({ backend, url: req.url }))
  })
}

const backendUpgrade = (backend: string) => (req: Http.IncomingMessage, socket: Net.Socket, head: Buffer) => {
  record(backend, req, true)
  socket.on("error", () => socket.destroy())
  if (req.url === "/ws-refuse") {
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nrefused")
    return
  }
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${req.headers.upgrade}\r\nX-Backend: ${backend}\r\n\r\n`)
  socket.write("welcome:")
  if (head.length > 0) socket.write(head.toString("latin1").toUpperCase())
  socket.on("data", (data: Buffer) => socket.write(data.toString("latin1").toUpperCase()))
  socket.on("end", () => socket.end())
}

const listen = (server: Net.Server): Promise<number> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve((server.address() as Net.AddressInfo).port))
  })

const close = (server: Http.Server): Promise<void> =>
  new Promise((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  })

/** A loopback port nothing listens on. */
const deadPort = async (): Promise<number> => {
  const server = Net.createServer()
  const port = await listen(server)
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

// ---------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------

const curl = (args: ReadonlyArray<string>): Effect.Effect<{ readonly status: number; readonly body: string }> =>
  Effect.callback((resume) => {
    ChildProcess.execFile("curl", ["-sS", "--max-time", "20", "-w", "\n%{http_code}", ...args], (error, stdout, stderr) => {
      // Not error.message: it repeats the command line, tokens included.
      if (error !== null) return resume(Effect.die(new Error(`curl exited with ${String(error.code)}: ${stderr}`)))
      const cut = stdout.lastIndexOf("\n")
      resume(Effect.succeed({ status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) }))
    })
  })

/** A raw TCP connection that collects everything it receives. */
const openRaw = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly socket: Net.Socket; readonly received: () => string; readonly closed: () => boolean }>(
      (resume) => {
        const socket = Net.connect({ host: "127.0.0.1", port })
        let data = ""
        let isClosed = false
        socket.on("data", (chunk: Buffer) => (data += chunk.toString("latin1")))
        socket.on("close", () => (isClosed = true))
        socket.once("connect", () => resume(Effect.succeed({ socket, received: () => data, closed: () => isClosed })))
        socket.once("error", (error) => resume(Effect.die(error)))
      }
    ),
    ({ socket }) => Effect.sync(() => socket.destroy())
  )

/** Real sockets answer within milliseconds: poll often. */
const poll = (timeout: Duration.Input = "10 seconds"): Polling => ({ timeout, interval: "10 millis" })

const routingHeaders = (proto: string, namespace: string, service: string, port: number | string) => ({
  "cluster-proxy-proto": proto,
  "cluster-proxy-namespace": namespace,
  "cluster-proxy-service": service,
  "cluster-proxy-port": String(port)
})

// ---------------------------------------------------------------------------------------------
// pieces that need no apiserver
// ---------------------------------------------------------------------------------------------

describe("ServiceRelay startup checks", () => {
  it.effect("skips a missing CA file, refuses one that is not PEM, reads certificates", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-relay-ca-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      assert.deepStrictEqual(yield* loadServiceCa(Path.join(dir, "absent.pem")), [])
      assert.deepStrictEqual(yield* loadServiceCa(undefined), [])

      Fs.writeFileSync(Path.join(dir, "junk.pem"), "not a certificate")
      const junk = yield* Effect.flip(loadServiceCa(Path.join(dir, "junk.pem")))
      assert.strictEqual(junk._tag, "ServiceCaError")
      assert.include(junk.message, "no PEM certificate found")

      Fs.writeFileSync(Path.join(dir, "bad.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
      assert.include((yield* Effect.flip(loadServiceCa(Path.join(dir, "bad.pem")))).message, "certificate 1 does not parse")

      ChildProcess.execFileSync("openssl", [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=ca-test", "-keyout", Path.join(dir, "k.pem"), "-out", Path.join(dir, "c.pem")
      ], { stdio: "ignore" })
      const pem = Fs.readFileSync(Path.join(dir, "c.pem"), "utf8")
      Fs.writeFileSync(Path.join(dir, "two.pem"), `${pem}\n${pem}`)
      assert.strictEqual((yield* loadServiceCa(Path.join(dir, "two.pem"))).length, 2)
    }))

  it.effect("refuses to start without a trusted caller username", () =>
    Effect.gen(function*() {
      const layer = ServiceRelayLayers.layerNoDeps({
        listen: { host: "127.0.0.1", port: 0 },
        additionalServiceCa: undefined,
        trustedCallerUsernames: [" ", ","],
        tokenReviewCacheTtl: "10 seconds",
        kubeconfig: undefined
      }).pipe(
        Layer.provide(ServiceResolver.layerStatic({})),
        Layer.provide(Layer.succeed(ManagedCluster, {} as KubeClient))
      )
      const error = yield* Effect.flip(Layer.build(layer))
      assert.instanceOf(error, ServiceRelayError)
      assert.strictEqual(error.reason, "Config")
      assert.include(error.message, "--trusted-caller-username")
      assert.deepStrictEqual(ServiceRelayLayers.trustedUsernames(["a, b", "c", "a", " "]), ["a", "b", "c"])
    }))
})

// ---------------------------------------------------------------------------------------------
// the relay against a real apiserver
// ---------------------------------------------------------------------------------------------

describe.skipIf(noApiserver)("ServiceRelay (real kube-apiserver)", () => {
  let scope: Scope.Closeable
  let managed: Apiserver.ApiserverInfo
  let managedClient: KubeClient
  let tokens: { readonly trusted: string; readonly untrusted: string; readonly tampered: string }
  let dir: string
  let caFile: string
  let helloServer: Http.Server
  let secureServer: Https.Server
  let helloPort: number
  let securePort: number
  let nowherePort: number
  let relayPort: number
  let reviews = 0
  const logs: Array<string> = []
  const registry = new Map()

  const captureLogs = Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))])

  const resolverTable = () =>
    ServiceResolver.layerStatic({
      "hello.default.svc": "127.0.0.1",
      "secure.default.svc": "127.0.0.1",
      "impostor.default.svc": "127.0.0.1", // served by the https backend, whose certificate does not name it
      "nowhere.default.svc": "127.0.0.1"
    })

  // The relay under test, built the way `tether service-relay` builds it but on loopback, with a
  // static resolver and a TokenReview client that counts calls.
  const relayLayer = (tuning: ServiceRelayLayers.Options["tuning"] = {}) =>
    ServiceRelayLayers.layerNoDeps({
      listen: { host: "127.0.0.1", port: 0 },
      additionalServiceCa: caFile,
      trustedCallerUsernames: [`${trustedUser},system:serviceaccount:other:someone`],
      tokenReviewCacheTtl: "10 seconds",
      kubeconfig: undefined,
      tuning
    }).pipe(
      Layer.provide(resolverTable()),
      Layer.provide(Layer.succeed(ManagedCluster, {
        ...managedClient,
        createTokenReview: (review) => Effect.suspend(() => {
          reviews++
          return managedClient.createTokenReview(review)
        })
      }))
    )

  const startRelay = (into: Scope.Scope, tuning?: ServiceRelayLayers.Options["tuning"]) =>
    Layer.buildWithScope(relayLayer(tuning), into).pipe(
      Effect.map((context) => Context.get(context, ServiceRelay).address.port),
      Effect.provide(captureLogs),
      Effect.provideService(References.MinimumLogLevel, "All"),
      Effect.provideService(Metric.MetricRegistry, registry)
    )

  const trusted = () => ({ authorization: `Bearer ${tokens.trusted}` })

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-service-relay-"))
    ChildProcess.execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
      "-subj", "/CN=secure.default.svc", "-addext", "subjectAltName=DNS:secure.default.svc",
      "-keyout", Path.join(dir, "tls.key"), "-out", Path.join(dir, "tls.crt")
    ], { stdio: "ignore" })
    caFile = Path.join(dir, "tls.crt")

    helloServer = Http.createServer(backendHandler("hello"))
    helloServer.on("upgrade", backendUpgrade("hello"))
    secureServer = Https.createServer(
      { key: Fs.readFileSync(Path.join(dir, "tls.key")), cert: Fs.readFileSync(caFile) },
      backendHandler("secure")
    )
    secureServer.on("upgrade", backendUpgrade("secure"))
    ;[helloPort, securePort, nowherePort] = await Promise.all([listen(helloServer), listen(secureServer), deadPort()])

    managed = await Effect.runPromise(Apiserver.make({ name: "relay-managed" }).pipe(Scope.provide(scope)))
    managedClient = ClientNodeKube.make({ cluster: "managed", connection: Apiserver.connection(managed) })
    const [trustedToken, untrustedToken] = await Effect.runPromise(Effect.all([
      Apiserver.serviceAccountToken(managed, trustedNamespace, "cluster-proxy", 3600),
      Apiserver.serviceAccountToken(managed, "default", "intruder", 3600)
    ]))
    const last = trustedToken.slice(-4)
    tokens = {
      trusted: trustedToken,
      untrusted: untrustedToken,
      tampered: `${trustedToken.slice(0, -4)}${last === "AAAA" ? "BBBB" : "AAAA"}`
    }
    relayPort = await Effect.runPromise(startRelay(scope))
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    await Promise.all([helloServer, secureServer].filter((s) => s !== undefined).map(close))
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
  })

  beforeEach(() => {
    seen.length = 0
  })

  it.live("routes by the Cluster-Proxy headers to http and https Services, path and query kept", () =>
    Effect.gen(function*() {
      const cases = [
        { proto: "http", service: "hello", port: helloPort, path: "/ping?x=1", backend: "hello" },
        { proto: "HTTP", service: "hello", port: helloPort, path: "/a/b%20c?y=2&z", backend: "hello" },
        { proto: "https", service: "secure", port: securePort, path: "/secure/path?q=1", backend: "secure" }
      ]
      for (const c of cases) {
        seen.length = 0
        const reply = yield* send(relayPort, { path: c.path, headers: { ...trusted(), ...routingHeaders(c.proto, "default", c.service, c.port) } })
        assert.strictEqual(reply.status, 200, reply.body)
        assert.deepStrictEqual(JSON.parse(reply.body), { backend: c.backend, url: c.path })
        assert.strictEqual(reply.headers["x-backend"], c.backend)
        assert.deepStrictEqual(reply.headers["set-cookie"], ["a=1", "b=2"])
        assert.strictEqual(seen.length, 1)
        assert.strictEqual(seen[0]?.url, c.path)
        assert.strictEqual(seen[0]?.headers.host, `${c.service}.default.svc:${c.port}`)
      }
      // Status, method and body pass through.
      const created = yield* send(relayPort, {
        method: "POST",
        path: "/status/201",
        body: "payload",
        headers: { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) }
      })
      assert.strictEqual(created.status, 201)
      assert.strictEqual(seen.at(-1)?.method, "POST")

      // Upstream connections are pooled: sequential requests reuse one.
      seen.length = 0
      for (let i = 0; i < 3; i++) {
        yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("https", "default", "secure", securePort) } })
      }
      assert.strictEqual(new Set(seen.map((s) => s.remotePort)).size, 1)
    }))

  it.live("verifies https backends under the Service name, so a wrong certificate is a 502", () =>
    Effect.gen(function*() {
      const reply = yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("https", "default", "impostor", securePort) } })
      assert.strictEqual(reply.status, 502)
      assert.strictEqual(reply.body, "bad gateway\n")
      assert.strictEqual(seen.length, 0)
      assert.isTrue(logs.some((line) => line.includes("upstream request failed") && line.includes("impostor.default.svc")))
    }))

  it.live("gives the backend the client's Authorization from Cluster-Proxy-Authorization, never the relay token", () =>
    Effect.gen(function*() {
      const headers = routingHeaders("http", "default", "hello", helloPort)
      // The relay token in Authorization (a direct caller) ...
      yield* send(relayPort, { headers: { ...trusted(), ...headers, "cluster-proxy-authorization": clientCredential } })
      // ... and in Cluster-Proxy-Relay-Authorization (through the apiserver, which drops Authorization).
      yield* send(relayPort, {
        headers: { ...headers, "cluster-proxy-relay-authorization": `Bearer ${tokens.trusted}`, "cluster-proxy-authorization": clientCredential }
      })
      // Without a client credential the backend gets no Authorization at all.
      yield* send(relayPort, { headers: { ...trusted(), ...headers } })
      assert.strictEqual(seen.length, 3)
      assert.strictEqual(seen[0]?.headers.authorization, clientCredential)
      assert.strictEqual(seen[1]?.headers.authorization, clientCredential)
      assert.isUndefined(seen[2]?.headers.authorization)
      for (const request of seen) {
        assert.notInclude(JSON.stringify(request.headers), tokens.trusted)
        assert.notProperty(request.headers, "cluster-proxy-authorization")
        assert.notProperty(request.headers, "cluster-proxy-relay-authorization")
      }
    }))

  it.live("strips Cluster-Proxy-*, Impersonate-* and hop-by-hop headers in any case", () =>
    Effect.gen(function*() {
      const reply = yield* send(relayPort, {
        headers: {
          ...trusted(),
          ...routingHeaders("http", "default", "hello", helloPort),
          "Impersonate-User": "system:admin",
          "impersonate-group": ["system:masters", "system:authenticated"],
          "IMPERSONATE-UID": "0",
          "Impersonate-Extra-Scopes": "everything",
          "Cluster-Proxy-Something-New": "x",
          Connection: "X-Hop-Header",
          "X-Hop-Header": "1",
          "Proxy-Authorization": "Basic eDp5",
          "X-Request-Id": "kept"
        }
      })
      assert.strictEqual(reply.status, 200)
      const headers = seen[0]?.headers ?? {}
      for (const name of Object.keys(headers)) {
        assert.notMatch(name, /^(impersonate-|cluster-proxy-)/i)
        assert.notInclude(["x-hop-header", "proxy-authorization"], name)
      }
      assert.strictEqual(headers["x-request-id"], "kept")
    }))

  it.live("refuses bad routing with 400 and forwards nothing", () =>
    Effect.gen(function*() {
      const base = { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) }
      const cases: ReadonlyArray<readonly [Http.OutgoingHttpHeaders, string]> = [
        [{ ...trusted(), ...routingHeaders("http", "default", "hello", helloPort), "cluster-proxy-port": "" }, "invalid request headers: Cluster-Proxy-Port is missing"],
        [{ ...trusted(), "cluster-proxy-proto": "http" }, "invalid request headers: Cluster-Proxy-Namespace is missing"],
        [{ ...base, "cluster-proxy-proto": "ftp" }, "unsupported target scheme \"ftp\""],
        [{ ...base, "cluster-proxy-service": "kubernetes" }, "service relay does not proxy kube-apiserver requests"],
        [{ ...base, "cluster-proxy-proto": "https", "cluster-proxy-namespace": "Default", "cluster-proxy-service": "KUBERNETES", "cluster-proxy-port": "443" }, "service relay does not proxy kube-apiserver requests"],
        [{ ...base, "cluster-proxy-service": "hello@127.0.0.1" }, "invalid Cluster-Proxy-Service \"hello@127.0.0.1\": must be a lower-case DNS label starting with a letter (RFC 1035)"],
        [{ ...base, "cluster-proxy-port": "99999" }, "invalid Cluster-Proxy-Port \"99999\": must be a port number between 1 and 65535"]
      ]
      for (const [headers, message] of cases) {
        const reply = yield* send(relayPort, { headers })
        assert.strictEqual(reply.status, 400, message)
        assert.strictEqual(reply.body, `${message}\n`)
      }
      const viaCurl = yield* curl([
        "-H", `Authorization: Bearer ${tokens.trusted}`,
        "-H", "Cluster-Proxy-Proto: http", "-H", "Cluster-Proxy-Namespace: DEFAULT", "-H", "Cluster-Proxy-Service: Kubernetes",
        "-H", "Cluster-Proxy-Port: 80",
        `http://127.0.0.1:${relayPort}/api/v1/secrets`
      ])
      assert.strictEqual(viaCurl.status, 400)
      assert.strictEqual(viaCurl.body, "service relay does not proxy kube-apiserver requests\n")
      assert.strictEqual(seen.length, 0)
    }))

  it.live("answers 401 before anything else for a missing, invalid, tampered or untrusted token", () =>
    Effect.gen(function*() {
      const target = routingHeaders("http", "default", "hello", helloPort)
      const cases: ReadonlyArray<Http.OutgoingHttpHeaders> = [
        target,
        { ...target, authorization: "Bearer not-a-token" },
        { ...target, authorization: `Bearer ${tokens.tampered}` },
        { ...target, authorization: `Bearer ${tokens.untrusted}` },
        { ...target, "cluster-proxy-relay-authorization": `Bearer ${tokens.untrusted}` },
        // The client's credential is not the relay caller's.
        { ...target, "cluster-proxy-authorization": `Bearer ${tokens.trusted}` },
        { ...target, authorization: `Basic ${Buffer.from(`x:${tokens.trusted}`).toString("base64")}` },
        // Authentication comes before routing: no token and no routing headers is still 401.
        {}
      ]
      for (const headers of cases) {
        const reply = yield* send(relayPort, { method: "POST", body: "must not arrive", headers })
        assert.strictEqual(reply.status, 401, JSON.stringify(Object.keys(headers)))
        assert.strictEqual(reply.body, "unauthorized\n")
      }
      const viaCurl = yield* curl([
        "-H", `Authorization: Bearer ${tokens.untrusted}`,
        "-H", "Cluster-Proxy-Proto: http", "-H", "Cluster-Proxy-Namespace: default", "-H", "Cluster-Proxy-Service: hello",
        "-H", `Cluster-Proxy-Port: ${helloPort}`,
        `http://127.0.0.1:${relayPort}/`
      ])
      assert.strictEqual(viaCurl.status, 401)
      assert.strictEqual(seen.length, 0, "the backend must see no request")
      assert.isTrue(logs.some((line) => line.includes("is not a trusted relay caller") && line.includes("system:serviceaccount:default:intruder")))
    }))

  it.live("asks TokenReview once per token per cache period, refusals included", () =>
    Effect.gen(function*() {
      const target = routingHeaders("http", "default", "hello", helloPort)
      const fresh = yield* Apiserver.serviceAccountToken(managed, "default", "second-intruder", 3600)
      const before = reviews
      for (let i = 0; i < 3; i++) {
        assert.strictEqual((yield* send(relayPort, { headers: { ...target, authorization: `Bearer ${fresh}` } })).status, 401)
      }
      assert.strictEqual(reviews - before, 1)
      const [replies] = yield* Effect.all([
        Effect.forEach(Array.from({ length: 5 }), () => send(relayPort, { headers: { ...target, authorization: "Bearer concurrent-junk" } }), { concurrency: 5 })
      ])
      assert.deepStrictEqual(replies.map((r) => r.status), [401, 401, 401, 401, 401])
      assert.strictEqual(reviews - before, 2, "concurrent requests with one token share a TokenReview")
    }))

  it.live("streams 64 MiB up and back with back-pressure, never holding the body", () =>
    Effect.gen(function*() {
      const size = 64 * 1024 * 1024
      const chunk = Crypto.randomBytes(1024 * 1024)
      // The echo backend answers while the upload runs. The client first does not read the answer:
      // with back-pressure through every hop the upload must stall after what the socket and
      // stream buffers hold; a relay that buffered bodies would take all 64 MiB. Then the client
      // reads, and the rest flows.
      const result = yield* Effect.callback<{
        readonly stalledAt: number | undefined
        readonly received: number
        readonly sentDigest: string
        readonly receivedDigest: string
        readonly firstByteBeforeUploadEnd: boolean
      }>((resume) => {
        const sent = Crypto.createHash("sha256")
        const got = Crypto.createHash("sha256")
        let written = 0
        let received = 0
        let stalledAt: number | undefined
        let firstByteAt: number | undefined
        let uploadEndedAt: number | undefined
        let response: Http.IncomingMessage | undefined
        let stallTimer: NodeJS.Timeout | undefined
        const read = () => {
          response?.on("data", (data: Buffer) => {
            firstByteAt ??= performance.now()
            received += data.length
            got.update(data)
          })
          response?.on("end", () =>
            resume(Effect.succeed({
              stalledAt,
              received,
              sentDigest: sent.digest("hex"),
              receivedDigest: got.digest("hex"),
              firstByteBeforeUploadEnd: firstByteAt !== undefined && uploadEndedAt !== undefined && firstByteAt < uploadEndedAt
            })))
        }
        const req = Http.request({
          host: "127.0.0.1",
          port: relayPort,
          method: "PUT",
          path: "/echo",
          agent: false,
          headers: { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort), "content-type": "application/octet-stream" }
        }, (res) => {
          response = res
          if (stalledAt !== undefined || uploadEndedAt !== undefined) read()
        })
        req.on("error", (error) => resume(Effect.die(error)))
        const pump = () => {
          clearTimeout(stallTimer)
          while (written < size) {
            written += chunk.length
            sent.update(chunk)
            if (!req.write(chunk)) {
              req.once("drain", pump)
              if (stalledAt === undefined) {
                // No drain for a while: everything between here and the backend is full.
                stallTimer = setTimeout(() => {
                  stalledAt = written
                  if (response !== undefined) read()
                }, 500)
              }
              return
            }
          }
          req.end(() => {
            uploadEndedAt = performance.now()
            // Never stalled (the body went somewhere): read anyway so the assertions say so.
            if (stalledAt === undefined && response !== undefined) read()
          })
        }
        pump()
        return Effect.sync(() => {
          clearTimeout(stallTimer)
          req.destroy()
        })
      })
      assert.isDefined(result.stalledAt, "the upload never stalled while nobody read the answer")
      assert.isBelow(result.stalledAt ?? size, size / 2, `${Math.round((result.stalledAt ?? 0) / 1048576)} MiB were taken before the stall`)
      assert.strictEqual(result.received, size)
      assert.strictEqual(result.receivedDigest, result.sentDigest)
      assert.isTrue(result.firstByteBeforeUploadEnd, "the echo must arrive before the upload ends")
      console.info(`[ServiceRelay.test] upload stalled after ${Math.round((result.stalledAt ?? 0) / 1048576)} MiB of 64 with the reader paused`)
    }), 60_000)

  it.live("carries a WebSocket-style upgrade through, authenticated and stripped like any request", () =>
    Effect.gen(function*() {
      const conn = yield* openRaw(relayPort)
      conn.socket.write(
        "GET /ws?stream=1 HTTP/1.1\r\n" +
          "Host: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
          `Authorization: Bearer ${tokens.trusted}\r\nCluster-Proxy-Authorization: ${clientCredential}\r\n` +
          `Cluster-Proxy-Proto: http\r\nCluster-Proxy-Namespace: default\r\nCluster-Proxy-Service: hello\r\nCluster-Proxy-Port: ${helloPort}\r\n` +
          "Impersonate-User: system:admin\r\nImpersonate-Group: system:masters\r\n\r\nearly"
      )
      yield* holds(() => conn.received().includes("welcome:EARLY"), "the 101 and the early bytes echoed", poll())
      assert.match(conn.received(), /^HTTP\/1\.1 101 Switching Protocols\r\n/)
      assert.match(conn.received(), /\r\nX-Backend: hello\r\n/)
      conn.socket.write("ping")
      yield* holds(() => conn.received().endsWith("PING"), "ping echoed", poll())
      conn.socket.write("second")
      yield* holds(() => conn.received().endsWith("SECOND"), "second echoed", poll())

      const upgrade = seen.find((s) => s.upgrade)
      assert.isDefined(upgrade)
      assert.strictEqual(upgrade?.url, "/ws?stream=1")
      assert.strictEqual(upgrade?.headers.upgrade, "websocket")
      assert.strictEqual(upgrade?.headers.authorization, clientCredential)
      for (const name of Object.keys(upgrade?.headers ?? {})) assert.notMatch(name, /^(impersonate-|cluster-proxy-)/i)

      conn.socket.end()
      yield* holds(conn.closed, "both sides closed", poll())

      // The same through an https Service.
      const secure = yield* openRaw(relayPort)
      secure.socket.write(
        "GET /tls-ws HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
          `Cluster-Proxy-Relay-Authorization: Bearer ${tokens.trusted}\r\n` +
          `Cluster-Proxy-Proto: https\r\nCluster-Proxy-Namespace: default\r\nCluster-Proxy-Service: secure\r\nCluster-Proxy-Port: ${securePort}\r\n\r\n`
      )
      yield* holds(() => secure.received().includes("welcome:"), "the 101 from the https backend", poll())
      assert.match(secure.received(), /^HTTP\/1\.1 101 [^]*\r\nX-Backend: secure\r\n/)
      secure.socket.write("over tls")
      yield* holds(() => secure.received().endsWith("OVER TLS"), "echo over tls", poll())
    }).pipe(Effect.scoped))

  it.live("refuses an unauthenticated upgrade with 401 and passes a backend's refusal on", () =>
    Effect.gen(function*() {
      const request = (path: string, auth: string) =>
        `GET ${path} HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n${auth}` +
        `Cluster-Proxy-Proto: http\r\nCluster-Proxy-Namespace: default\r\nCluster-Proxy-Service: hello\r\nCluster-Proxy-Port: ${helloPort}\r\n\r\n`

      const anonymous = yield* openRaw(relayPort)
      anonymous.socket.write(request("/exec", ""))
      yield* holds(anonymous.closed, "the 401 and the close", poll())
      assert.match(anonymous.received(), /^HTTP\/1\.1 401 Unauthorized\r\n/)
      assert.isTrue(anonymous.received().endsWith("\r\n\r\nunauthorized\n"))

      const untrusted = yield* openRaw(relayPort)
      untrusted.socket.write(request("/exec", `Authorization: Bearer ${tokens.untrusted}\r\n`))
      yield* holds(untrusted.closed, "the 401 and the close", poll())
      assert.match(untrusted.received(), /^HTTP\/1\.1 401 /)
      assert.strictEqual(seen.length, 0, "the backend must see no upgrade")

      const refused = yield* openRaw(relayPort)
      refused.socket.write(request("/ws-refuse", `Authorization: Bearer ${tokens.trusted}\r\n`))
      yield* holds(refused.closed, "the backend's answer and the close", poll())
      assert.match(refused.received(), /^HTTP\/1\.1 403 Forbidden\r\n/)
      assert.isTrue(refused.received().endsWith("refused"))
    }).pipe(Effect.scoped))

  it.live("answers a dead or unknown backend with a bare 502", () =>
    Effect.gen(function*() {
      const dead = yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("http", "default", "nowhere", nowherePort) } })
      assert.strictEqual(dead.status, 502)
      assert.strictEqual(dead.body, "bad gateway\n")
      const unknown = yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("http", "default", "ghost", helloPort) } })
      assert.strictEqual(unknown.status, 502)
      assert.strictEqual(unknown.body, "bad gateway\n")
      const viaCurl = yield* curl([
        "-X", "POST", "--data-binary", "some body",
        "-H", `Authorization: Bearer ${tokens.trusted}`,
        "-H", "Cluster-Proxy-Proto: http", "-H", "Cluster-Proxy-Namespace: default", "-H", "Cluster-Proxy-Service: nowhere",
        "-H", `Cluster-Proxy-Port: ${nowherePort}`,
        `http://127.0.0.1:${relayPort}/x`
      ])
      assert.strictEqual(viaCurl.status, 502)
      assert.strictEqual(viaCurl.body, "bad gateway\n")
      // The detail is in the log, not in the answer.
      assert.isTrue(logs.some((line) => line.includes("upstream request failed") && line.includes(`nowhere.default.svc:${nowherePort}`)))
      assert.isTrue(logs.some((line) => line.includes("cannot resolve the target service") && line.includes("ghost.default.svc")))
    }))

  it.live("answers Expect: 100-continue itself and sends the whole body on without the header", () =>
    Effect.gen(function*() {
      const body = "x".repeat(100_000)
      const reply = yield* curl([
        "-X", "POST", "--data-binary", body, "-H", "Expect: 100-continue",
        "-H", `Authorization: Bearer ${tokens.trusted}`,
        "-H", "Cluster-Proxy-Proto: http", "-H", "Cluster-Proxy-Namespace: default", "-H", "Cluster-Proxy-Service: hello",
        "-H", `Cluster-Proxy-Port: ${helloPort}`,
        `http://127.0.0.1:${relayPort}/echo`
      ])
      assert.strictEqual(reply.status, 200)
      assert.strictEqual(reply.body, body)
      assert.strictEqual(seen[0]?.headers.expect, undefined)
    }))

  /** A request for the endless `/forever` answer, once its first bytes have arrived. */
  const streaming = () =>
    Effect.callback<Http.ClientRequest>((resume) => {
      const req = Http.request({
        host: "127.0.0.1",
        port: relayPort,
        path: "/forever",
        headers: { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) },
        agent: false
      }, (res) => res.once("data", () => resume(Effect.succeed(req))))
      req.on("error", () => {})
      req.end()
    })

  it.live("passes response trailers on", () =>
    Effect.gen(function*() {
      const reply = yield* send(relayPort, {
        path: "/trailers",
        headers: { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) }
      })
      assert.strictEqual(reply.status, 200)
      assert.strictEqual(reply.body, "part")
      assert.strictEqual(reply.trailers["x-checksum"], "c0ffee")
    }))

  it.live("a client that goes away mid-response ends the upstream request too", () =>
    Effect.gen(function*() {
      const before = foreverClosed
      const first = yield* streaming()
      first.destroy()
      yield* holds(() => foreverClosed > before, "the backend's response is closed", poll())
    }))

  it.live("works for curl as a client, with a body", () =>
    Effect.gen(function*() {
      const reply = yield* curl([
        "-X", "POST", "--data-binary", "hello from curl",
        "-H", "Cluster-Proxy-Relay-Authorization: Bearer " + tokens.trusted,
        "-H", `Cluster-Proxy-Authorization: ${clientCredential}`,
        "-H", "Cluster-Proxy-Proto: https", "-H", "Cluster-Proxy-Namespace: default", "-H", "Cluster-Proxy-Service: secure",
        "-H", `Cluster-Proxy-Port: ${securePort}`,
        `http://127.0.0.1:${relayPort}/status/202?from=curl`
      ])
      assert.strictEqual(reply.status, 202)
      assert.deepStrictEqual(JSON.parse(reply.body), { backend: "secure", url: "/status/202?from=curl" })
      assert.strictEqual(seen[0]?.headers.authorization, clientCredential)
      assert.strictEqual(seen[0]?.headers["content-length"], "15")
    }))

  it.live("refuses an oversized header block with 431", () =>
    Effect.gen(function*() {
      const reply = yield* send(relayPort, { headers: { ...trusted(), "x-big": "a".repeat(100 * 1024) } })
      assert.strictEqual(reply.status, 431)
      assert.strictEqual(seen.length, 0)
    }))

  it.live("cuts a client that does not finish its headers, and drains in-flight requests on shutdown", () =>
    Effect.gen(function*() {
      const own = yield* Scope.make()
      // A short upstream idle timeout too: it must close idle pooled connections only, never a
      // request that is waiting for its answer (/slow takes 800 ms).
      const port = yield* startRelay(own, { headersTimeout: "1 second", shutdownTimeout: "4 seconds", idleConnectionTimeout: "200 millis" })

      const slowloris = yield* openRaw(port)
      const started = Date.now()
      slowloris.socket.write("GET / HTTP/1.1\r\nHost: relay\r\n")
      yield* holds(slowloris.closed, "the relay to close the slow connection", poll("5 seconds"))
      const took = Date.now() - started
      assert.isAtLeast(took, 900)
      assert.isBelow(took, 4000)
      assert.match(slowloris.received(), /^HTTP\/1\.1 408 /)

      // A keep-alive client with a slow request in flight while the scope closes.
      const agent = new Http.Agent({ keepAlive: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const headers = { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) }
      const warm = yield* send(port, { agent, headers })
      assert.strictEqual(warm.status, 200)
      const slow = yield* Effect.forkChild(send(port, { agent, path: "/slow", headers }))
      yield* holds(() => seen.some((s) => s.url === "/slow"), "the slow request to reach the backend", poll())
      const [closing] = yield* Effect.timed(Scope.close(own, Exit.void))
      const reply = yield* Fiber.await(slow)
      assert.isTrue(Exit.isSuccess(reply), "the in-flight request must complete during shutdown")
      if (Exit.isSuccess(reply)) {
        assert.strictEqual(reply.value.status, 200)
        assert.strictEqual(reply.value.body, "slow done")
      }
      // It waited for the slow response, not for the idle keep-alive connection or the timeout.
      assert.isAtLeast(Duration.toMillis(closing), 300)
      assert.isBelow(Duration.toMillis(closing), 3500)
      const refused = yield* Effect.exit(send(port, { headers }))
      assert.isTrue(Exit.isFailure(refused), "the port must be closed")
    }).pipe(Effect.scoped))

  it.live("counts requests by scheme and result", () =>
    Effect.gen(function*() {
      const count = (scheme: Metrics.RelayScheme, result: "success" | "error") =>
        Metric.value(Metric.withAttributes(Metrics.serviceRelayRequestsTotal, { scheme, result })).pipe(
          Effect.map((state) => state.count),
          Effect.provideService(Metric.MetricRegistry, registry)
        )
      const before = {
        httpOk: yield* count("http", "success"),
        unknown: yield* count("unknown", "error"),
        unsupported: yield* count("unsupported", "error"),
        httpsError: yield* count("https", "error")
      }
      yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("http", "default", "hello", helloPort) } })
      yield* send(relayPort, { headers: routingHeaders("http", "default", "hello", helloPort) })
      yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("gopher", "default", "hello", helloPort) } })
      yield* send(relayPort, { headers: { ...trusted(), "cluster-proxy-proto": "http" } })
      yield* send(relayPort, { headers: { ...trusted(), ...routingHeaders("https", "default", "hello", helloPort), "cluster-proxy-service": "impostor" } })
      assert.strictEqual((yield* count("http", "success")) - before.httpOk, 1)
      assert.strictEqual((yield* count("unknown", "error")) - before.unknown, 2, "no token, and a missing routing header")
      assert.strictEqual((yield* count("unsupported", "error")) - before.unsupported, 1)
      assert.strictEqual((yield* count("https", "error")) - before.httpsError, 1)
    }))

  it.live("counts a streamed answer, with its time to the head, once its first bytes are out, not when it ends", () =>
    Effect.gen(function*() {
      const observe = Effect.gen(function*() {
        const counter = yield* Metric.value(
          Metric.withAttributes(Metrics.serviceRelayRequestsTotal, { scheme: "http", result: "success" })
        )
        const histogram = yield* Metric.value(Metric.withAttributes(Metrics.serviceRelayRequestDuration, { scheme: "http" }))
        return { count: counter.count, timed: histogram.count }
      }).pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const before = yield* observe
      const request = yield* streaming()
      const during = yield* observe
      request.destroy()
      assert.strictEqual(during.count - before.count, 1, "counted while the answer still streams")
      assert.strictEqual(during.timed - before.timed, 1)
    }))

  describe("CallerAuthenticator", () => {
    const authenticator = (client: KubeClient, options: { readonly cacheTtl: Duration.Input; readonly maxCacheEntries?: number }) =>
      CallerAuthenticator.layer({ trustedUsernames: [trustedUser], ...options }).pipe(
        Layer.provide(Layer.succeed(ManagedCluster, client))
      )

    const counting = () => {
      const counter = { calls: 0 }
      const client: KubeClient = {
        ...managedClient,
        createTokenReview: (review) => Effect.suspend(() => {
          counter.calls++
          return managedClient.createTokenReview(review)
        })
      }
      return { counter, client }
    }

    it.effect("caches answers for the TTL, then asks again", () =>
      Effect.gen(function*() {
        const { client, counter } = counting()
        const context = yield* Layer.build(authenticator(client, { cacheTtl: "10 seconds" }))
        const auth = Context.get(context, CallerAuthenticator)
        const good = Redacted.make(tokens.trusted)
        const bad = Redacted.make(tokens.untrusted)
        assert.strictEqual((yield* auth.authenticate(good)).username, trustedUser)
        assert.strictEqual((yield* auth.authenticate(good)).username, trustedUser)
        assert.strictEqual((yield* Effect.flip(auth.authenticate(bad))).reason, "Untrusted")
        assert.strictEqual((yield* Effect.flip(auth.authenticate(bad))).reason, "Untrusted")
        assert.strictEqual(counter.calls, 2)
        yield* TestClock.adjust("11 seconds")
        yield* auth.authenticate(good)
        yield* Effect.flip(auth.authenticate(bad))
        assert.strictEqual(counter.calls, 4)
        assert.strictEqual((yield* Effect.flip(auth.authenticate(undefined))).reason, "NoToken")
        assert.strictEqual(counter.calls, 4)
      }))

    it.effect("keeps at most maxCacheEntries answers, dropping the oldest", () =>
      Effect.gen(function*() {
        const { client, counter } = counting()
        const auth = Context.get(yield* Layer.build(authenticator(client, { cacheTtl: "1 minute", maxCacheEntries: 2 })), CallerAuthenticator)
        for (const token of ["junk-a", "junk-b", "junk-c"]) yield* Effect.flip(auth.authenticate(Redacted.make(token)))
        assert.strictEqual(counter.calls, 3)
        yield* Effect.flip(auth.authenticate(Redacted.make("junk-c")))
        yield* Effect.flip(auth.authenticate(Redacted.make("junk-b")))
        assert.strictEqual(counter.calls, 3)
        yield* Effect.flip(auth.authenticate(Redacted.make("junk-a"))) // evicted
        assert.strictEqual(counter.calls, 4)
      }))

    it.effect("refuses when TokenReview fails, without caching the failure or leaking the token", () =>
      Effect.gen(function*() {
        const counter = { calls: 0 }
        const token = tokens.trusted
        const failing: KubeClient = {
          ...managedClient,
          createTokenReview: () =>
            Effect.suspend(() => {
              counter.calls++
              return counter.calls === 1
                ? Effect.fail(new KubeError({ cluster: "managed", operation: "create tokenreview", reason: "Unavailable", detail: `webhook echoed ${token}` }))
                : managedClient.createTokenReview({ spec: { token } })
            })
        }
        const auth = Context.get(yield* Layer.build(authenticator(failing, { cacheTtl: "1 minute" })), CallerAuthenticator)
        const error = yield* Effect.flip(auth.authenticate(Redacted.make(token)))
        assert.strictEqual(error.reason, "ReviewFailed")
        assert.notInclude(error.message, token)
        assert.include(error.message, "webhook echoed [redacted]")
        assert.strictEqual((yield* auth.authenticate(Redacted.make(token))).username, trustedUser)
        assert.strictEqual(counter.calls, 2)
      }))

    it.effect("with a zero TTL asks every time", () =>
      Effect.gen(function*() {
        const { client, counter } = counting()
        const auth = Context.get(yield* Layer.build(authenticator(client, { cacheTtl: 0 })), CallerAuthenticator)
        yield* auth.authenticate(Redacted.make(tokens.trusted))
        yield* auth.authenticate(Redacted.make(tokens.trusted))
        assert.strictEqual(counter.calls, 2)
      }))
  })

  // Runs last: everything above has logged by now.
  it.live("never logs a token or the client's credential", () =>
    Effect.gen(function*() {
      assert.isAbove(logs.length, 5)
      const secrets = [tokens.trusted, tokens.untrusted, tokens.tampered, clientCredential.slice("Bearer ".length)]
      for (const line of logs) {
        for (const secret of secrets) {
          // Any 24-character piece of a token would be a leak.
          for (let i = 0; i + 24 <= secret.length; i += 12) {
            assert.notInclude(line, secret.slice(i, i + 24), "a log line carries token material")
          }
        }
      }
    }))
})
