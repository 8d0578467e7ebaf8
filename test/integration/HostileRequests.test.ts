/**
 * The hostile-request corpus (test/corpus/requests.json) against the two HTTP proxies, each
 * started once: the service relay (plain HTTP, callers reviewed by a real kube-apiserver) and the
 * service proxy (TLS, hosted BestEffort mode, kube-apiserver callers reviewed and impersonated on
 * the same real apiserver). A recording HTTP backend stands in for every Service.
 *
 * Every case is written to a raw socket (net or tls) exactly as the corpus spells it and states
 * the answer it must get: the status (and the statuses of every response on the connection), a
 * fragment of the body, and whether anything reached the backend. On top of the per-case
 * answers: no token in any answer or log line, no internal header or look-alike at the backend,
 * and no backend request that does not belong to a case.
 *
 * Case fields (all optional but `name`): `to` (relay | proxy, default both); `method`, `target`,
 * `version` of the request line; `host: false` drops `Host`; `auth: false` drops the caller's
 * `Authorization: Bearer {{token}}`; `route` overrides routing values (null drops one, false drops
 * all four); `headers` are further lines (`repeat` copies them with `{{i}}` numbered); `close:
 * false` leaves out `Connection: close`; `body`, sent only after a `100 Continue` when
 * `bodyAfterContinue`; `raw` is the whole message instead. Placeholders: `{{token}}`,
 * `{{backendPort}}`, `{{big:N}}` (N letters), `{{random}}`, and in `raw` `{{caseHeader}}`,
 * `{{auth}}`, `{{route}}`. `expect` holds for both proxies unless `relay` or `proxy` says otherwise:
 * `status`, `statuses`, `body` (a fragment), `forwarded`, `stripped` (header names the backend must
 * not see), `seen` (header values it must see, null for absent), `url` (the target it must see).
 */
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Logger, References, Scope } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { ManagedCluster } from "../../src/kube/KubeClient.ts"
import { CallerAuthenticator } from "../../src/relay/CallerAuthenticator.ts"
import { ServiceRelay } from "../../src/relay/ServiceRelay.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"
import { ManagedCredentials } from "../../src/serviceproxy/ManagedCredentials.ts"
import { ServiceProxy } from "../../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../../src/serviceproxy/TokenReviewChain.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { grantImpersonator, proxyUser } from "../support/impersonation.ts"
import { selfSigned } from "../support/local.ts"

type Proxy = "relay" | "proxy"

interface Expect {
  readonly status: number
  readonly statuses?: ReadonlyArray<number>
  readonly body?: string
  readonly forwarded?: boolean
  readonly stripped?: ReadonlyArray<string>
  readonly seen?: Readonly<Record<string, string | null>>
  readonly url?: string
}

interface Case {
  readonly name: string
  readonly to?: Proxy
  readonly method?: string
  readonly target?: string
  readonly version?: string
  readonly host?: boolean
  readonly auth?: boolean
  readonly route?: false | Readonly<Record<string, string | null>>
  readonly headers?: ReadonlyArray<string>
  readonly repeat?: number
  readonly close?: boolean
  readonly body?: string
  readonly bodyAfterContinue?: boolean
  readonly raw?: string
  readonly expect?: Expect
  readonly relay?: Expect
  readonly proxy?: Expect
}

const cases = (JSON.parse(Fs.readFileSync(new URL("../corpus/requests.json", import.meta.url), "utf8")) as { readonly cases: ReadonlyArray<Case> }).cases
const routingNames = { proto: "Cluster-Proxy-Proto", namespace: "Cluster-Proxy-Namespace", service: "Cluster-Proxy-Service", port: "Cluster-Proxy-Port" } as const

/** A header name a backend must never see: internal, or spelt like an internal one. */
const looksInternal = (name: string) => {
  const letters = name.toLowerCase().replace(/[^a-z0-9]/g, "")
  return letters.startsWith("clusterproxy") || letters.startsWith("impersonate")
}

interface Seen {
  readonly id: string | undefined
  readonly url: string
  readonly headers: Http.IncomingHttpHeaders
  readonly rawHeaders: ReadonlyArray<string>
}

interface Exchange {
  readonly received: string
  readonly statuses: ReadonlyArray<number>
}

const statusesOf = (text: string): ReadonlyArray<number> =>
  text.split("\r\n").flatMap((line) => {
    const match = /^HTTP\/1\.[01] (\d{3}) /.exec(line)
    return match === null ? [] : [Number(match[1])]
  })

/** Write `head` (and `body`, maybe after a 100 Continue) on a fresh connection; everything received until it closes. */
const exchange = (connect: () => Net.Socket, head: Buffer, body: Buffer | undefined, bodyAfterContinue: boolean, keepOpen: boolean) =>
  Effect.callback<Exchange>((resume) => {
    const socket = connect()
    const chunks: Array<Buffer> = []
    let bodySent = body === undefined || !bodyAfterContinue
    let done = false
    const finish = () => {
      if (done) return
      done = true
      clearTimeout(limit)
      socket.destroy()
      const received = Buffer.concat(chunks).toString("latin1")
      resume(Effect.succeed({ received, statuses: statusesOf(received) }))
    }
    // Bounded: a case that neither answers nor closes is reported with what it got.
    const limit = setTimeout(finish, 10_000)
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk)
      const text = Buffer.concat(chunks).toString("latin1")
      if (!bodySent && /^HTTP\/1\.1 100 /.test(text)) {
        bodySent = true
        socket.write(body!)
      }
      // An upgraded connection stays open: its 101 head is the answer.
      if (keepOpen && /^HTTP\/1\.1 101 [^\r]*\r\n[\s\S]*?\r\n\r\n/.test(text)) finish()
    })
    socket.on("error", () => {})
    socket.on("close", finish)
    socket.write(head)
    if (body !== undefined && !bodyAfterContinue) socket.write(body)
    return Effect.sync(finish)
  })

describe.skipIf(noApiserver)("hostile requests (corpus) against the service relay and the service proxy", () => {
  let scope: Scope.Closeable
  let dir: string
  let managed: Apiserver.ApiserverInfo
  let backend: Http.Server
  let backendPort: number
  let ports: Record<Proxy, number>
  let proxyCa: string
  let tokens: { readonly caller: string; readonly proxy: string; readonly reader: string }
  const seen: Array<Seen> = []
  const logs: Array<string> = []
  const answers: Array<string> = []

  const captureLogs = Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))])

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-hostile-"))
    proxyCa = selfSigned(dir, "proxy", ["localhost", "127.0.0.1"]).cert

    // Larger header limits than the proxies': what they let through must reach it.
    backend = Http.createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
      seen.push({ id: req.headers["x-corpus-case"] as string | undefined, url: req.url ?? "", headers: req.headers, rawHeaders: req.rawHeaders })
      req.resume()
      req.on("end", () => res.end(JSON.stringify({ url: req.url })))
    })
    backend.on("upgrade", (req: Http.IncomingMessage, socket: Net.Socket) => {
      seen.push({ id: req.headers["x-corpus-case"] as string | undefined, url: req.url ?? "", headers: req.headers, rawHeaders: req.rawHeaders })
      socket.on("error", () => socket.destroy())
      socket.end(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${req.headers.upgrade}\r\n\r\n`)
    })
    backendPort = await new Promise<number>((resolve) => backend.listen(0, "127.0.0.1", () => resolve((backend.address() as Net.AddressInfo).port)))

    managed = await Effect.runPromise(Apiserver.make({ name: "hostile" }).pipe(Scope.provide(scope)))
    // The proxy runs as the add-on's ServiceAccount, allowed to review tokens and impersonate.
    const { proxy: caller, reader } = await Effect.runPromise(grantImpersonator(managed, "tether-impersonator"))
    tokens = { caller, proxy: caller, reader }
    const kubeconfig = Path.join(dir, "managed-kubeconfig")
    Fs.writeFileSync(kubeconfig, Apiserver.kubeconfigForToken(managed, tokens.proxy), { mode: 0o600 })

    const resolver = ServiceResolver.layerStatic({ "hello.default.svc": "127.0.0.1" })
    const relay = ServiceRelay.layer({ listen: { host: "127.0.0.1", port: 0 } }).pipe(
      Layer.provide(CallerAuthenticator.layer({ trustedUsernames: [proxyUser], cacheTtl: "1 minute" })),
      Layer.provide(Layer.succeed(ManagedCluster, ClientNodeKube.make({ cluster: "managed", connection: Apiserver.connection(managed) }))),
      Layer.provide(resolver)
    )
    const credentials = ManagedCredentials.layer({ source: { _tag: "Kubeconfig", path: kubeconfig } })
    const proxy = ServiceProxy.layer({
      listen: { host: "127.0.0.1", port: 0 },
      certFile: Path.join(dir, "proxy.crt"),
      keyFile: Path.join(dir, "proxy.key"),
      deployment: { _tag: "Hosted", mode: "BestEffort" },
      enableImpersonation: true
    }).pipe(
      Layer.provide(TokenReviewChain.layer({ cacheTtl: "1 minute" }).pipe(
        Layer.provide(Layer.effect(ManagedCluster, Effect.map(ManagedCredentials, (current) => current.client)))
      )),
      Layer.provideMerge(credentials),
      Layer.provide(resolver),
      Layer.provide(NodeServices.layer)
    )
    const context = await Effect.runPromise(
      Layer.buildWithScope(Layer.mergeAll(relay, proxy), scope).pipe(
        Effect.provide(captureLogs),
        Effect.provideService(References.MinimumLogLevel, "All")
      )
    )
    ports = { relay: Context.get(context, ServiceRelay).address.port, proxy: Context.get(context, ServiceProxy).address.port }
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    if (backend !== undefined) {
      backend.closeAllConnections()
      await new Promise<void>((resolve) => backend.close(() => resolve()))
    }
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
  })

  const fill = (text: string, token: string, i = 0) =>
    text
      .replaceAll("{{token}}", token)
      .replaceAll("{{backendPort}}", String(backendPort))
      .replaceAll("{{random}}", Crypto.randomBytes(6).toString("hex"))
      .replaceAll("{{i}}", String(i))
      .replace(/\{\{big:(\d+)\}\}/g, (_, n: string) => "a".repeat(Number(n)))

  /** The request head of a case, as bytes. */
  const compose = (c: Case, id: string, token: string): Buffer => {
    const route: Readonly<Record<string, string | null>> | undefined = c.route === false
      ? undefined
      : { proto: "http", namespace: "default", service: "hello", port: "{{backendPort}}", ...c.route }
    const routeLines = route === undefined
      ? []
      : Object.entries(routingNames).flatMap(([key, name]) => {
        const value = route[key]
        return value === null || value === undefined ? [] : [`${name}: ${value}`]
      })
    if (c.raw !== undefined) {
      const raw = c.raw
        .replaceAll("{{caseHeader}}", `X-Corpus-Case: ${id}`)
        .replaceAll("{{auth}}", "Authorization: Bearer {{token}}")
        .replaceAll("{{route}}", routeLines.join("\r\n"))
      return Buffer.from(fill(raw, token), "utf8")
    }
    const extra = Array.from({ length: c.repeat ?? 1 }, (_, i) => (c.headers ?? []).map((line) => fill(line, token, i))).flat()
    const lines = [
      `${c.method ?? "GET"} ${fill(c.target ?? "/corpus", token)} ${c.version ?? "HTTP/1.1"}`,
      ...(c.host === false ? [] : ["Host: corpus.test"]),
      `X-Corpus-Case: ${id}`,
      ...(c.auth === false ? [] : [`Authorization: Bearer ${token}`]),
      ...routeLines.map((line) => fill(line, token)),
      ...extra,
      ...(c.close === false || extra.some((line) => /^connection:/i.test(line)) ? [] : ["Connection: close"])
    ]
    return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "utf8")
  }

  const run = (proxy: Proxy) =>
    Effect.gen(function*() {
      const token = proxy === "relay" ? tokens.caller : tokens.reader
      const connect = proxy === "relay"
        ? () => Net.connect({ host: "127.0.0.1", port: ports.relay })
        : () => Tls.connect({ host: "127.0.0.1", port: ports.proxy, servername: "localhost", ca: [proxyCa] })
      const mine = cases.flatMap((c, index) => (c.to === undefined || c.to === proxy ? [{ c, id: `${proxy}-${index}` }] : []))
      const failures: Array<string> = []
      yield* Effect.forEach(mine, ({ c, id }) =>
        Effect.gen(function*() {
          const expect = c[proxy] ?? c.expect
          if (expect === undefined) return failures.push(`${c.name}: the case states no answer for the ${proxy}`)
          const body = c.body === undefined ? undefined : Buffer.from(fill(c.body, token), "utf8")
          const keepOpen = c.close === false
          const got = yield* exchange(connect, compose(c, id, token), body, c.bodyAfterContinue === true, keepOpen)
          answers.push(got.received)
          const problems: Array<string> = []
          const first = got.statuses[0] ?? 0
          if (first !== expect.status) problems.push(`status ${first}, expected ${expect.status}`)
          if (expect.statuses !== undefined && got.statuses.join(",") !== expect.statuses.join(",")) {
            problems.push(`statuses [${got.statuses.join(",")}], expected [${expect.statuses.join(",")}]`)
          }
          if (expect.body !== undefined && !got.received.includes(expect.body)) problems.push(`no ${JSON.stringify(expect.body)} in the answer`)
          const reached = seen.filter((request) => request.id === id)
          if (expect.forwarded !== undefined && (reached.length > 0) !== expect.forwarded) {
            problems.push(expect.forwarded ? "the backend saw nothing" : "the backend saw the request")
          }
          for (const request of reached) {
            for (const name of expect.stripped ?? []) {
              if (request.rawHeaders.some((raw, i) => i % 2 === 0 && raw.toLowerCase() === name)) problems.push(`the backend saw ${name}`)
            }
            for (const [name, value] of Object.entries(expect.seen ?? {})) {
              if ((request.headers[name] ?? null) !== value) problems.push(`the backend saw ${name}: ${String(request.headers[name])}`)
            }
            if (expect.url !== undefined && request.url !== expect.url) problems.push(`the backend saw ${request.url}`)
          }
          if (problems.length > 0) failures.push(`${c.name}: ${problems.join("; ")} (got ${JSON.stringify(got.received.slice(0, 160))})`)
        }), { concurrency: 8, discard: true })
      return { tried: mine.length, failures }
    })

  for (const proxy of ["relay", "proxy"] as const) {
    it.live(`every case gets its stated answer from the ${proxy === "relay" ? "service relay" : "service proxy"}`, () =>
      Effect.gen(function*() {
        const { failures, tried } = yield* run(proxy)
        assert.isAbove(tried, 150)
        assert.strictEqual(failures.length, 0, `${failures.length} of ${tried} cases answered otherwise:\n${failures.join("\n")}`)
      }))
  }

  it.live("nothing leaked: no token in an answer or a log line, nothing internal at the backend, no request without a case", () =>
    Effect.sync(() => {
      assert.isAbove(answers.length, 300, "the corpus ran first")
      for (const token of Object.values(tokens)) {
        assert.isFalse(answers.some((answer) => answer.includes(token)), "a token came back in an answer")
        assert.isFalse(logs.some((line) => line.includes(token)), "a token was logged")
      }
      for (const request of seen) {
        assert.isDefined(request.id, `a backend request belongs to no case: ${request.url}`)
        for (let i = 0; i < request.rawHeaders.length; i += 2) {
          assert.isFalse(looksInternal(request.rawHeaders[i]!), `case ${request.id}: the backend saw ${request.rawHeaders[i]}`)
          // The relay caller's (and the proxy's own) token never goes further.
          assert.notInclude(request.rawHeaders[i + 1]!, tokens.caller, `case ${request.id}: the backend saw the relay caller's token`)
        }
      }
    }))
})
