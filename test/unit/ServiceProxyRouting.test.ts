import { assert, describe, it } from "@effect/vitest"
import { Redacted, Result, Schema } from "effect"
import * as ApiserverUrl from "../../src/domain/ApiserverUrl.ts"
import type * as HttpHeaders from "../../src/domain/HttpHeaders.ts"
import * as Impersonation from "../../src/domain/Impersonation.ts"
import * as RequestPath from "../../src/domain/RequestPath.ts"
import * as ServiceProxyHeaders from "../../src/domain/ServiceProxyHeaders.ts"
import * as ServiceProxyMode from "../../src/domain/ServiceProxyMode.ts"
import * as TokenReview from "../../src/domain/TokenReview.ts"

const routing = (proto: string, namespace: string, service: string, port: string): HttpHeaders.Headers => ({
  "cluster-proxy-proto": proto,
  "cluster-proxy-namespace": namespace,
  "cluster-proxy-service": service,
  "cluster-proxy-port": port
})

const server = (url: string): ApiserverUrl.ApiserverUrl => Result.getOrThrow(ApiserverUrl.parseApiserverUrl(url))

const relay: ApiserverUrl.RelayService = { namespace: "addon-ns", name: "cluster-proxy-service-relay", port: 7444 }

const token = Redacted.make("managed-sa-token")

/** `text` with letters upper-cased where `mask` says so (cycled). */
const recase = (text: string, mask: ReadonlyArray<boolean>): string =>
  [...text].map((c, i) => (mask.length > 0 && mask[i % mask.length] ? c.toUpperCase() : c.toLowerCase())).join("")

const names = (headers: HttpHeaders.OutgoingHeaders): Array<string> => Object.keys(headers).sort()

describe("ServiceProxyRouting", () => {
  describe("parseMode", () => {
    it.each(["Disabled", "BestEffort", "Relay", " Relay "])("accepts %j", (input) => {
      assert.strictEqual(Result.getOrThrow(ServiceProxyMode.parseMode(input)), input.trim())
    })

    it.each(["", "relay", "best-effort", "Direct", "Relay,BestEffort"])("refuses %j, listing the three modes", (input) => {
      const result = ServiceProxyMode.parseMode(input)
      assert.isTrue(Result.isFailure(result))
      if (Result.isSuccess(result)) return
      assert.strictEqual(
        result.failure.message,
        `hosted-service-proxy-mode must be one of Disabled, BestEffort, or Relay; got ${JSON.stringify(input)}`
      )
    })
  })

  describe("classify and decide", () => {
    const hosted = (mode: ServiceProxyMode.Mode): ServiceProxyMode.Deployment => ({ _tag: "Hosted", mode })
    const direct: ServiceProxyMode.Deployment = { _tag: "Direct" }
    const decideFor = (deployment: ServiceProxyMode.Deployment, headers: HttpHeaders.Headers) =>
      ServiceProxyMode.decide(deployment, Result.getOrThrow(ServiceProxyMode.classify(headers)))

    it("follows the decision table", () => {
      const service = routing("http", "default", "hello", "8080")
      const kas = routing("https", "default", "kubernetes", "443")
      for (const deployment of [direct, hosted("Disabled"), hosted("BestEffort"), hosted("Relay")]) {
        assert.deepStrictEqual(decideFor(deployment, kas), { _tag: "Apiserver" })
      }
      assert.strictEqual(decideFor(direct, service)._tag, "Service")
      assert.strictEqual(decideFor(hosted("BestEffort"), service)._tag, "Service")
      assert.strictEqual(decideFor(hosted("Relay"), service)._tag, "Relay")
      assert.deepStrictEqual(decideFor(hosted("Disabled"), service), {
        _tag: "Refuse",
        status: 503,
        message: "service proxy disabled in hosted mode"
      })
      const relayed = decideFor(hosted("Relay"), service)
      assert.strictEqual(relayed._tag === "Relay" ? relayed.target.origin : "", "http://hello.default.svc:8080")
    })

    it.prop(
      "kubernetes in default is the kube-apiserver in any letter case, with any proto and port, so auth cannot be skipped",
      {
        nsMask: Schema.Array(Schema.Boolean),
        svcMask: Schema.Array(Schema.Boolean),
        proto: Schema.Literals(["http", "https", "HTTP"]),
        port: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 })),
        mode: Schema.Literals(["Disabled", "BestEffort", "Relay"])
      },
      ({ mode, nsMask, port, proto, svcMask }) => {
        const headers = routing(proto, recase("default", nsMask), recase("kubernetes", svcMask), String(port))
        const target = Result.getOrThrow(ServiceProxyMode.classify(headers))
        assert.strictEqual(target._tag, "KubeApiserver")
        assert.strictEqual(ServiceProxyMode.metricTarget(target), "kube-apiserver")
        assert.deepStrictEqual(ServiceProxyMode.decide(hosted(mode), target), { _tag: "Apiserver" })
        assert.deepStrictEqual(ServiceProxyMode.decide(direct, target), { _tag: "Apiserver" })
      }
    )

    it("refuses incomplete or invalid routing headers with the reason (target unknown)", () => {
      const missing = ServiceProxyMode.classify({ "cluster-proxy-proto": "http" })
      assert.isTrue(Result.isFailure(missing))
      if (Result.isFailure(missing)) assert.include(missing.failure.message, "invalid request headers")
      const invalid = ServiceProxyMode.classify(routing("http", "default", "a.b", "80"))
      assert.isTrue(Result.isFailure(invalid))
      assert.strictEqual(ServiceProxyMode.metricTarget(undefined), "unknown")
    })

    it("labels the metric mode Direct when not hosted", () => {
      assert.strictEqual(ServiceProxyMode.metricMode(direct), "Direct")
      assert.strictEqual(ServiceProxyMode.metricMode(hosted("Relay")), "Relay")
    })
  })

  describe("URLs", () => {
    it("parses the server URL, keeping a path prefix and dropping query and user info", () => {
      assert.deepStrictEqual(server("https://managed.example.com:6443"), {
        scheme: "https",
        hostname: "managed.example.com",
        port: 6443,
        authority: "managed.example.com:6443",
        pathPrefix: ""
      })
      assert.deepStrictEqual(server("https://user:pw@rancher.example.com/k8s/clusters/c-1/?x=1"), {
        scheme: "https",
        hostname: "rancher.example.com",
        port: 443,
        authority: "rancher.example.com:443",
        pathPrefix: "/k8s/clusters/c-1"
      })
      assert.strictEqual(server("https://[fd00::1]:6443").authority, "[fd00::1]:6443")
    })

    it.each(["managed.example.com:6443", "https://", "/only/a/path", "ftp://host"])("refuses %j without quoting it", (url) => {
      const result = ApiserverUrl.parseApiserverUrl(url)
      assert.isTrue(Result.isFailure(result))
      if (Result.isSuccess(result)) return
      assert.include(result.failure.message, "managed apiserver URL must include scheme and host")
      if (url.length > 8) assert.notInclude(result.failure.message, url)
    })

    it("builds the relay URL under the server's path prefix (the Go prototype dropped it)", () => {
      assert.strictEqual(
        ApiserverUrl.relayUrl(server("https://managed.example.com:6443"), relay, "/index.html"),
        "https://managed.example.com:6443/api/v1/namespaces/addon-ns/services/http:cluster-proxy-service-relay:7444/proxy/index.html"
      )
      assert.strictEqual(
        ApiserverUrl.relayUrl(server("https://host/k8s/clusters/c-1"), relay, "/a/b?x=1&y"),
        "https://host:443/k8s/clusters/c-1/api/v1/namespaces/addon-ns/services/http:cluster-proxy-service-relay:7444/proxy/a/b?x=1&y"
      )
      assert.strictEqual(
        ApiserverUrl.relayPath(server("https://host/prefix/"), relay, "/"),
        "/prefix/api/v1/namespaces/addon-ns/services/http:cluster-proxy-service-relay:7444/proxy/"
      )
    })

    it.prop(
      "a relay path always starts with the prefix and the relay Service and ends with the request path",
      {
        prefix: Schema.Array(Schema.String.check(Schema.isPattern(/^[a-z0-9-]{1,8}$/))),
        path: Schema.String.check(Schema.isPattern(/^\/[a-zA-Z0-9/_%?=&-]{0,30}$/))
      },
      ({ path, prefix }) => {
        const base = prefix.length === 0 ? "" : `/${prefix.join("/")}`
        const url = server(`https://host:6443${base}`)
        const built = ApiserverUrl.relayPath(url, relay, path)
        assert.isTrue(built.startsWith(`${base}/api/v1/namespaces/addon-ns/services/http:cluster-proxy-service-relay:7444/proxy/`))
        assert.isTrue(built.endsWith(path))
        assert.strictEqual(built.length, `${base}/api/v1/namespaces/addon-ns/services/http:cluster-proxy-service-relay:7444/proxy`.length + path.length)
      }
    )

    it("joins paths with exactly one slash", () => {
      assert.strictEqual(RequestPath.joinPath("", "/api"), "/api")
      assert.strictEqual(RequestPath.joinPath("/p/", "/api"), "/p/api")
      assert.strictEqual(RequestPath.joinPath("/p", "api"), "/p/api")
      assert.strictEqual(RequestPath.joinPath("/p", ""), "/p/")
    })

    it.each([
      ["/api/v1/pods?watch=1", "/api/v1/pods?watch=1"],
      ["http://example.com/a?b", "/a?b"],
      ["*", undefined],
      ["//evil.example/x", undefined],
      ["example.com:443", undefined],
      ["", undefined]
    ] as const)("reads the request target %j as %j", (url, expected) => {
      assert.strictEqual(RequestPath.requestPath(url), expected)
    })

    it.each([
      ["/a/../b", true],
      ["/..", true],
      ["/a/./b", true],
      ["/a/%2e%2E/b", true],
      ["/a/..%2fsecrets", true],
      ["/a/..%5Csecrets", true],
      ["/a\\..\\b", true],
      ["/a/b?path=../x", false],
      ["/a/...b/c..d/.e", false],
      ["/", false]
    ] as const)("finds dot segments in %j: %s", (path, expected) => {
      assert.strictEqual(RequestPath.hasDotSegment(path), expected)
    })

    it("validates the relay settings", () => {
      assert.isTrue(Result.isSuccess(ApiserverUrl.validateRelayService(relay)))
      assert.isTrue(Result.isFailure(ApiserverUrl.validateRelayService({ ...relay, name: "Bad_Name" })))
      assert.isTrue(Result.isFailure(ApiserverUrl.validateRelayService({ ...relay, namespace: "a/b" })))
      assert.isTrue(Result.isFailure(ApiserverUrl.validateRelayService({ ...relay, port: 0 })))
    })
  })

  describe("classifyReview", () => {
    const patterns = TokenReview.defaultErrorPatterns

    it("authenticates with user, uid, groups and extra", () => {
      const outcome = TokenReview.classifyReview({
        authenticated: true,
        user: { username: "system:serviceaccount:ns:sa", uid: "u-1", groups: ["system:serviceaccounts"], extra: { "a/b": ["1"] } }
      }, patterns)
      assert.deepStrictEqual(outcome, {
        _tag: "Authenticated",
        user: { username: "system:serviceaccount:ns:sa", uid: "u-1", groups: ["system:serviceaccounts"], extra: { "a/b": ["1"] } }
      })
    })

    it.each([
      "invalid bearer token",
      "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
      "Invalid Bearer Token"
    ])("reads the recognised rejection %j as not authenticated (try the next cluster)", (error) => {
      assert.strictEqual(TokenReview.classifyReview({ error, user: {} }, patterns)._tag, "NotAuthenticated")
    })

    it("checks status.error before authenticated: any other error fails closed", () => {
      for (const error of ["etcd unavailable", "webhook timed out", "token lookup failed"]) {
        assert.strictEqual(TokenReview.classifyReview({ error }, patterns)._tag, "Failed")
        assert.strictEqual(TokenReview.classifyReview({ error, authenticated: true, user: { username: "x" } }, patterns)._tag, "Failed")
      }
    })

    it("uses the configured patterns, case-insensitively; none means every error fails closed", () => {
      assert.strictEqual(TokenReview.classifyReview({ error: "Token Expired" }, ["token expired"])._tag, "NotAuthenticated")
      assert.strictEqual(TokenReview.classifyReview({ error: "invalid bearer token" }, ["token expired"])._tag, "Failed")
      assert.strictEqual(TokenReview.classifyReview({ error: "invalid bearer token" }, [])._tag, "Failed")
      assert.strictEqual(TokenReview.classifyReview({ error: "invalid bearer token" }, ["", " "])._tag, "Failed")
    })

    it("reads a missing or false authenticated without error as not authenticated, and no status or no username as a failure", () => {
      assert.deepStrictEqual(TokenReview.classifyReview(undefined, patterns), { _tag: "Failed", detail: "the TokenReview answer has no status" })
      assert.strictEqual(TokenReview.classifyReview({ user: {} }, patterns)._tag, "NotAuthenticated")
      assert.strictEqual(TokenReview.classifyReview({ authenticated: false }, patterns)._tag, "NotAuthenticated")
      assert.strictEqual(TokenReview.classifyReview({ authenticated: true, user: {} }, patterns)._tag, "Failed")
    })

    it.prop(
      "an error text never authenticates, whatever authenticated says",
      { error: Schema.String.check(Schema.isMinLength(1)), authenticated: Schema.Boolean },
      ({ authenticated, error }) => {
        const outcome = TokenReview.classifyReview({ error, authenticated, user: { username: "u" } }, patterns)
        if (error.trim() === "") return
        assert.notStrictEqual(outcome._tag, "Authenticated")
        assert.strictEqual(outcome._tag === "NotAuthenticated", error.toLowerCase().includes("invalid bearer token"))
      }
    )
  })

  describe("impersonation", () => {
    it("maps hub ServiceAccounts to cluster:hub:..., keeps other names and managed users", () => {
      assert.strictEqual(
        Impersonation.impersonatedUsername("hub", "system:serviceaccount:ns:reader"),
        "cluster:hub:system:serviceaccount:ns:reader"
      )
      assert.strictEqual(Impersonation.impersonatedUsername("hub", "alice"), "alice")
      assert.strictEqual(
        Impersonation.impersonatedUsername("managed", "system:serviceaccount:ns:reader"),
        "system:serviceaccount:ns:reader"
      )
    })

    it("prefixes a hub ServiceAccount's ServiceAccount groups like its name, and nobody else's groups", () => {
      const groups = ["system:serviceaccounts", "system:serviceaccounts:users", "system:authenticated", "developers"]
      assert.deepStrictEqual(Impersonation.impersonatedGroups("hub", "system:serviceaccount:users:mallory", groups), [
        "cluster:hub:system:serviceaccounts",
        "cluster:hub:system:serviceaccounts:users",
        "system:authenticated",
        "developers"
      ])
      assert.deepStrictEqual(Impersonation.impersonatedGroups("managed", "system:serviceaccount:users:mallory", groups), groups)
      assert.deepStrictEqual(Impersonation.impersonatedGroups("hub", "alice", groups), groups)
      // Not a ServiceAccount group, only a look-alike prefix.
      assert.deepStrictEqual(
        Impersonation.impersonatedGroups("hub", "system:serviceaccount:users:mallory", ["system:serviceaccountsx"]),
        ["system:serviceaccountsx", "system:authenticated"]
      )
    })

    it("adds system:authenticated once and drops duplicates", () => {
      assert.deepStrictEqual(Impersonation.impersonatedGroups("managed", "alice", ["a", "a", ""]), ["a", "system:authenticated"])
      assert.deepStrictEqual(Impersonation.impersonatedGroups("managed", "alice", ["system:authenticated", "b"]), ["system:authenticated", "b"])
    })

    it("builds user, group and escaped extra headers", () => {
      const headers = Result.getOrThrow(Impersonation.impersonationHeaders("hub", {
        username: "system:serviceaccount:ns:sa",
        groups: ["system:serviceaccounts", "system:serviceaccounts:ns"],
        extra: { "authentication.kubernetes.io/pod-name": ["p-1"], "Scopes": ["a", "b"], "100%": ["x"] }
      }))
      assert.deepStrictEqual(headers, {
        "impersonate-user": "cluster:hub:system:serviceaccount:ns:sa",
        "impersonate-group": ["cluster:hub:system:serviceaccounts", "cluster:hub:system:serviceaccounts:ns", "system:authenticated"],
        "impersonate-extra-authentication.kubernetes.io%2Fpod-name": ["p-1"],
        "impersonate-extra-scopes": ["a", "b"],
        "impersonate-extra-100%25": ["x"]
      })
    })

    it("refuses what cannot travel in a header instead of dropping it", () => {
      const bad = [
        { username: "", groups: [], extra: {} },
        { username: "a\r\nImpersonate-User: admin", groups: [], extra: {} },
        { username: "u", groups: ["g\n"], extra: {} },
        { username: "u", groups: [], extra: { k: ["v\u0000"] } },
        { username: "u", groups: ["\u{1F600}"], extra: {} }
      ]
      for (const user of bad) assert.isTrue(Result.isFailure(Impersonation.impersonationHeaders("managed", user)))
    })

    it.prop(
      "an escaped extra key is a header token and decodes back to the key",
      { key: Schema.String.check(Schema.isMinLength(1)) },
      ({ key }) => {
        const escaped = Impersonation.escapeExtraKey(key)
        assert.match(escaped, /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/)
        if (!key.isWellFormed()) return
        assert.strictEqual(decodeURIComponent(escaped), key)
      }
    )
  })

  describe("headers", () => {
    const client = {
      ...routing("https", "default", "kubernetes", "443"),
      authorization: "Bearer caller-token",
      "Impersonate-User": "system:admin",
      "impersonate-group": ["system:masters"],
      "Impersonate-Extra-Scopes": "all",
      "Cluster-Proxy-Authorization": "Bearer spoofed",
      "cluster-proxy-relay-authorization": "Bearer spoofed",
      connection: "keep-alive, X-Hop",
      "x-hop": "1",
      "accept": "application/json",
      host: "cluster-abc.open-cluster-management.proxy:7443"
    }

    it("impersonating: the caller's credential and impersonation replaced by the proxy's", () => {
      const impersonation = Result.getOrThrow(Impersonation.impersonationHeaders("managed", {
        username: "system:serviceaccount:team:reader",
        groups: ["system:serviceaccounts"],
        extra: {}
      }))
      const out = ServiceProxyHeaders.impersonatingHeaders(client, impersonation, token, "10.0.0.1:6443")
      assert.deepStrictEqual(names(out), ["accept", "authorization", "host", "impersonate-group", "impersonate-user"])
      assert.strictEqual(out["authorization"], "Bearer managed-sa-token")
      assert.strictEqual(out["impersonate-user"], "system:serviceaccount:team:reader")
      assert.deepStrictEqual(out["impersonate-group"], ["system:serviceaccounts", "system:authenticated"])
      assert.strictEqual(out["host"], "10.0.0.1:6443")
    })

    it("pass-through (impersonation off): the client's own credential and impersonation go on", () => {
      const out = ServiceProxyHeaders.passThroughHeaders(client, "10.0.0.1:6443")
      assert.deepStrictEqual(names(out), ["accept", "authorization", "host", "impersonate-extra-scopes", "impersonate-group", "impersonate-user"])
      assert.strictEqual(out["authorization"], "Bearer caller-token")
    })

    it("relay: Authorization moved, the proxy's token twice, routing headers from the target, no impersonation", () => {
      const target = { proto: "http", namespace: "default", service: "hello", port: 8080, hostname: "hello.default.svc", authority: "hello.default.svc:8080", origin: "http://hello.default.svc:8080" } as const
      const out = ServiceProxyHeaders.relayHeaders(
        { ...client, ...routing("HTTP", "default", "hello", "08080") },
        target,
        token,
        "managed.example.com:6443"
      )
      assert.deepStrictEqual(out, {
        accept: "application/json",
        "cluster-proxy-authorization": "Bearer caller-token",
        authorization: "Bearer managed-sa-token",
        "cluster-proxy-relay-authorization": "Bearer managed-sa-token",
        "cluster-proxy-proto": "http",
        "cluster-proxy-namespace": "default",
        "cluster-proxy-service": "hello",
        "cluster-proxy-port": "8080",
        host: "managed.example.com:6443"
      })
      // Without a client credential nothing is carried (a spoofed one is not either).
      const anonymous = ServiceProxyHeaders.relayHeaders({ "cluster-proxy-authorization": "Bearer spoofed" }, target, token, "h:1")
      assert.notProperty(anonymous, "cluster-proxy-authorization")
    })

    it("service: the client's Authorization kept, internal headers dropped, the upgrade pair kept", () => {
      const target = { proto: "http", namespace: "default", service: "hello", port: 8080, hostname: "hello.default.svc", authority: "hello.default.svc:8080", origin: "http://hello.default.svc:8080" } as const
      const out = ServiceProxyHeaders.serviceHeaders({ ...client, connection: "Upgrade", upgrade: "websocket" }, target)
      assert.deepStrictEqual(names(out), ["accept", "authorization", "connection", "host", "upgrade", "x-hop"])
      assert.strictEqual(out["authorization"], "Bearer caller-token")
      assert.strictEqual(out["upgrade"], "websocket")
      assert.strictEqual(out["host"], "hello.default.svc:8080")
    })

    describe("the fast path's flat forms send what the record forms send", () => {
      const target = { proto: "http", namespace: "default", service: "hello", port: 8080, hostname: "hello.default.svc", authority: "hello.default.svc:8080", origin: "http://hello.default.svc:8080" } as const
      const impersonation = Result.getOrThrow(Impersonation.impersonationHeaders("hub", {
        username: "system:serviceaccount:team:reader",
        groups: ["system:serviceaccounts", "system:serviceaccounts:team"],
        extra: { scopes: ["a", "b"] }
      }))
      /** Node's header record for these raw pairs: names lower-cased, the first Authorization and Host kept, other repeats joined. */
      const nodeRecord = (raw: ReadonlyArray<string>): HttpHeaders.Headers => {
        const out: Record<string, string> = {}
        for (let i = 0; i < raw.length; i += 2) {
          const name = raw[i]!.toLowerCase()
          const previous = out[name]
          if (previous === undefined) out[name] = raw[i + 1]!
          else if (name !== "authorization" && name !== "host") out[name] = `${previous}, ${raw[i + 1]!}`
        }
        return out
      }
      /** What an upstream reads: each name (lower-cased) with its values joined in order. */
      const received = (headers: ReadonlyArray<string> | HttpHeaders.OutgoingHeaders): Record<string, string> => {
        const flat: Array<string> = Array.isArray(headers)
          ? [...headers]
          : Object.entries(headers as HttpHeaders.OutgoingHeaders).flatMap(([name, value]) =>
            typeof value === "string" ? [name, value] : value.flatMap((one) => [name, one])
          )
        const out: Record<string, string> = {}
        for (let i = 0; i < flat.length; i += 2) {
          const name = flat[i]!.toLowerCase()
          out[name] = out[name] === undefined ? flat[i + 1]! : `${out[name]}, ${flat[i + 1]!}`
        }
        return out
      }
      const agree = (raw: ReadonlyArray<string>) => {
        const record = nodeRecord(raw)
        const { expect: _expect, ...impersonating } = ServiceProxyHeaders.impersonatingHeaders(record, impersonation, token, "10.0.0.1:6443")
        assert.deepStrictEqual(
          received(ServiceProxyHeaders.impersonatingRawHeaders(record, raw, impersonation, token, "10.0.0.1:6443")),
          received(impersonating),
          JSON.stringify(raw)
        )
        const { expect: _expected, ...relayed } = ServiceProxyHeaders.relayHeaders(record, target, token, "managed.example.com:6443")
        assert.deepStrictEqual(
          received(ServiceProxyHeaders.relayRawHeaders(record, raw, target, token, "managed.example.com:6443")),
          received(relayed),
          JSON.stringify(raw)
        )
      }

      it("on hand-picked requests", () => {
        const cases: ReadonlyArray<ReadonlyArray<string>> = [
          ["Host", "proxy:7443", "Authorization", "Bearer caller", "Accept", "*/*", "Cluster-Proxy-Proto", "https"],
          ["authorization", "Bearer a", "Authorization", "Bearer b", "X-Many", "1", "x-many", "2", "Expect", "100-continue"],
          ["Impersonate-User", "admin", "impersonate-group", "system:masters", "Cluster-Proxy-Authorization", "Bearer spoofed"],
          ["Connection", "keep-alive, X-Hop", "X-Hop", "1", "Keep-Alive", "timeout=5", "TE", "trailers", "Content-Length", "3"],
          ["X-Early", "1", "Connection", "x-early", "Proxy-Authorization", "Basic x", "Transfer-Encoding", "chunked"],
          ["Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Key", "k"],
          []
        ]
        for (const raw of cases) agree(raw)
      })

      it.prop(
        "on generated requests",
        {
          pairs: Schema.Array(Schema.Tuple([
            Schema.Literals([
              "Authorization", "Host", "Accept", "Connection", "Upgrade", "Expect", "Keep-Alive", "Transfer-Encoding",
              "Cluster-Proxy-Authorization", "Cluster-Proxy-Relay-Authorization", "Cluster-Proxy-Port", "Impersonate-User",
              "Impersonate-Extra-Scopes", "X-Hop", "X-Other", "Content-Type"
            ]),
            Schema.Literals(["Bearer t", "", "x-hop", "keep-alive, Upgrade", "websocket", "close", "1"]),
            Schema.Array(Schema.Boolean)
          ]))
        },
        ({ pairs }) => agree(pairs.flatMap(([name, value, mask]) => [recase(name, mask), value]))
      )
    })

    it("reads the caller's bearer token from Authorization only", () => {
      assert.strictEqual(Redacted.value(ServiceProxyHeaders.callerToken({ Authorization: "bearer abc" })!), "abc")
      assert.isUndefined(ServiceProxyHeaders.callerToken({ authorization: "Basic abc" }))
      assert.isUndefined(ServiceProxyHeaders.callerToken({ "cluster-proxy-relay-authorization": "Bearer abc" }))
      assert.isUndefined(ServiceProxyHeaders.callerToken({ authorization: ["Bearer a", "Bearer b"] }))
    })
  })
})
