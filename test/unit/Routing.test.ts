import { assert, describe, it } from "@effect/vitest"
import { Redacted, Result, Schema } from "effect"
import * as HttpHeaders from "../../src/domain/HttpHeaders.ts"
import * as RelayHeaders from "../../src/domain/RelayHeaders.ts"
import * as ServiceRouting from "../../src/domain/ServiceRouting.ts"

const routing = (proto: string, namespace: string, service: string, port: string): HttpHeaders.Headers => ({
  "cluster-proxy-proto": proto,
  "cluster-proxy-namespace": namespace,
  "cluster-proxy-service": service,
  "cluster-proxy-port": port
})

const origin = (headers: HttpHeaders.Headers): string => Result.getOrThrow(ServiceRouting.route(headers)).origin

const refusal = (headers: HttpHeaders.Headers): ServiceRouting.RoutingError => {
  const result = ServiceRouting.route(headers)
  assert.isTrue(Result.isFailure(result), `expected a refusal, got ${JSON.stringify(result)}`)
  if (Result.isSuccess(result)) throw new Error("unreachable")
  assert.strictEqual(result.failure.status, 400)
  return result.failure
}

/** `text` with the letters upper-cased where `mask` says so (cycled). */
const recase = (text: string, mask: ReadonlyArray<boolean>): string =>
  [...text].map((c, i) => (mask.length > 0 && mask[i % mask.length] ? c.toUpperCase() : c.toLowerCase())).join("")

// Strings close to valid names and ports, with the characters an injection would need.
const NameLike = Schema.String.check(Schema.isPattern(/^[a-zA-Z0-9.@:/ #?-]{0,12}$/))
const PortLike = Schema.String.check(Schema.isPattern(/^[0-9@:/+.-]{0,7}$/))

const names = (headers: HttpHeaders.OutgoingHeaders): Array<string> => Object.keys(headers).sort()

describe("Routing", () => {
  describe("route", () => {
    it.each([
      { given: ["http", "default", "hello", "8080"], expected: "http://hello.default.svc:8080" },
      { given: ["https", "open-cluster-management", "metrics-api", "443"], expected: "https://metrics-api.open-cluster-management.svc:443" },
      { given: ["HTTPS", "ns1", "a", "1"], expected: "https://a.ns1.svc:1" },
      { given: ["http", "0ns", "svc-2", "65535"], expected: "http://svc-2.0ns.svc:65535" },
      { given: [" http ", "default", "hello", "080"], expected: "http://hello.default.svc:80" },
      // The kube-apiserver check is on the exact pair; a look-alike is an ordinary Service.
      { given: ["https", "default", "kubernetes-dashboard", "443"], expected: "https://kubernetes-dashboard.default.svc:443" },
      { given: ["https", "kube-system", "kubernetes", "443"], expected: "https://kubernetes.kube-system.svc:443" }
    ])("routes $given to $expected", ({ expected, given }) => {
      const [proto, namespace, service, port] = given as [string, string, string, string]
      assert.strictEqual(origin(routing(proto, namespace, service, port)), expected)
    })

    it("returns every part of the target", () => {
      const target = Result.getOrThrow(ServiceRouting.route(routing("https", "team-a", "api", "8443")))
      assert.deepStrictEqual(target, {
        proto: "https",
        namespace: "team-a",
        service: "api",
        port: 8443,
        hostname: "api.team-a.svc",
        authority: "api.team-a.svc:8443",
        origin: "https://api.team-a.svc:8443"
      })
    })

    it("matches header names in any case", () => {
      const headers = {
        "CLUSTER-PROXY-PROTO": "http",
        "Cluster-Proxy-Namespace": "default",
        "cluster-proxy-SERVICE": "hello",
        "cluster-proxy-port": "80"
      }
      assert.strictEqual(origin(headers), "http://hello.default.svc:80")
    })

    it.each([
      { name: "no headers", headers: {}, message: "invalid request headers: Cluster-Proxy-Proto is missing" },
      { name: "no port", headers: { ...routing("http", "default", "hello", "80"), "cluster-proxy-port": undefined }, message: "invalid request headers: Cluster-Proxy-Port is missing" },
      { name: "empty service", headers: routing("http", "default", "", "80"), message: "invalid request headers: Cluster-Proxy-Service is missing" },
      { name: "blank namespace", headers: routing("http", "  ", "hello", "80"), message: "invalid request headers: Cluster-Proxy-Namespace is missing" },
      { name: "service twice", headers: { ...routing("http", "default", "hello", "80"), "cluster-proxy-service": ["a", "b"] }, message: "invalid request headers: Cluster-Proxy-Service is given more than once" },
      { name: "service twice in two cases", headers: { ...routing("http", "default", "hello", "80"), "Cluster-Proxy-Service": "evil" }, message: "invalid request headers: Cluster-Proxy-Service is given more than once" }
    ])("refuses a request with $name", ({ headers, message }) => {
      const error = refusal(headers)
      assert.strictEqual(error.reason, "MissingHeader")
      assert.strictEqual(error.message, message)
    })

    it.each(["ftp", "ws", "h2c", "file", "HTTP2", "https:", "gopher"])("refuses scheme %j", (proto) => {
      const error = refusal(routing(proto, "default", "hello", "80"))
      assert.strictEqual(error.reason, "UnsupportedScheme")
      assert.strictEqual(error.message, `unsupported target scheme ${JSON.stringify(proto)}`)
    })

    it.each([
      ["https", "default", "kubernetes", "443"],
      ["http", "default", "kubernetes", "80"],
      ["http", "Default", "Kubernetes", "6443"],
      ["https", "DEFAULT", "KUBERNETES", "1"],
      ["HTTP", "default", "kUbErNeTeS", "443"]
    ])("refuses the kube-apiserver as %s:%s/%s:%s", (proto, namespace, service, port) => {
      const error = refusal(routing(proto, namespace, service, port))
      assert.strictEqual(error.reason, "KubeApiserver")
      assert.strictEqual(error.message, "service relay does not proxy kube-apiserver requests")
    })

    it.each([
      ["http", "default.svc.cluster.local#", "hello", "80", "InvalidNamespace"],
      ["http", "kube-system.svc", "hello", "80", "InvalidNamespace"],
      ["http", "Team", "hello", "80", "InvalidNamespace"],
      ["http", "-ns", "hello", "80", "InvalidNamespace"],
      ["http", "a".repeat(64), "hello", "80", "InvalidNamespace"],
      ["http", "default", "user@evil.example", "80", "InvalidService"],
      ["http", "default", "evil.example/", "80", "InvalidService"],
      ["http", "default", "hello:99", "80", "InvalidService"],
      ["http", "default", "kubernetes.default", "80", "InvalidService"],
      ["http", "default", "1hello", "80", "InvalidService"],
      ["http", "default", "hel lo", "80", "InvalidService"],
      ["http", "default", "hello", "0", "InvalidPort"],
      ["http", "default", "hello", "65536", "InvalidPort"],
      ["http", "default", "hello", "http", "InvalidPort"],
      ["http", "default", "hello", "80@evil", "InvalidPort"],
      ["http", "default", "hello", "80/x", "InvalidPort"],
      ["http", "default", "hello", "-1", "InvalidPort"],
      ["http", "default", "hello", "+80", "InvalidPort"],
      ["http", "default", "hello", "8e3", "InvalidPort"]
    ])("refuses %s:%s/%s:%s as %s", (proto, namespace, service, port, reason) => {
      assert.strictEqual(refusal(routing(proto, namespace, service, port)).reason, reason)
    })

    it("quotes and shortens what it refuses", () => {
      const error = refusal(routing("http", "default", `x${"y".repeat(200)}`, "80"))
      assert.strictEqual(error.message, `invalid Cluster-Proxy-Service "x${"y".repeat(63)}...": must be a lower-case DNS label starting with a letter (RFC 1035)`)
    })

    it.prop(
      "an accepted target is always <label>.<label>.svc on the given port, never the kube-apiserver",
      {
        proto: Schema.Literals(["http", "https", "HTTP", "ftp", ""]),
        namespace: Schema.Union([Schema.String, NameLike]),
        service: Schema.Union([Schema.String, NameLike]),
        port: Schema.Union([Schema.String, PortLike])
      },
      ({ namespace, port, proto, service }) => {
        const result = ServiceRouting.route(routing(proto, namespace, service, port))
        if (Result.isFailure(result)) return
        const target = result.success
        assert.match(target.hostname, /^[a-z0-9-]{1,63}\.[a-z0-9-]{1,63}\.svc$/)
        assert.isFalse(ServiceRouting.isKubeApiserver(target.namespace, target.service))
        const url = new URL(`${target.origin}/path`)
        assert.strictEqual(url.hostname, target.hostname)
        assert.strictEqual(url.username, "")
        assert.strictEqual(url.pathname, "/path")
        assert.strictEqual(Number(url.port || (url.protocol === "https:" ? 443 : 80)), target.port)
      }
    )

    it.prop(
      "the kube-apiserver is refused in any letter case, with any proto and port",
      {
        nsMask: Schema.Array(Schema.Boolean),
        svcMask: Schema.Array(Schema.Boolean),
        proto: Schema.Literals(["http", "https", "Https"]),
        port: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))
      },
      ({ nsMask, port, proto, svcMask }) => {
        const error = refusal(routing(proto, recase("default", nsMask), recase("kubernetes", svcMask), String(port)))
        assert.strictEqual(error.reason, "KubeApiserver")
      }
    )
  })

  describe("isKubeApiserver", () => {
    it("recognises kubernetes in default only", () => {
      assert.isTrue(ServiceRouting.isKubeApiserver("default", "kubernetes"))
      assert.isTrue(ServiceRouting.isKubeApiserver("DeFault", "KUBERNETES"))
      assert.isFalse(ServiceRouting.isKubeApiserver("kube-system", "kubernetes"))
      assert.isFalse(ServiceRouting.isKubeApiserver("default", "kubernetes2"))
    })
  })

  describe("metricScheme", () => {
    it.each([
      [undefined, "unknown"],
      ["", "unknown"],
      ["http", "http"],
      ["HTTPS", "https"],
      ["ftp", "unsupported"],
      ["x".repeat(1000), "unsupported"]
    ] as const)("labels %j as %s", (proto, label) => {
      assert.strictEqual(ServiceRouting.metricScheme(proto), label)
    })
  })

  describe("stripInternalHeaders", () => {
    it("drops routing, credential-carrying, impersonation and hop-by-hop headers", () => {
      const stripped = ServiceRouting.stripInternalHeaders({
        ...routing("http", "default", "hello", "80"),
        "Cluster-Proxy-Authorization": "Bearer client",
        "cluster-proxy-relay-authorization": "Bearer relay",
        "Impersonate-User": "admin",
        "impersonate-group": ["system:masters", "x"],
        "Impersonate-Uid": "1",
        "Impersonate-Extra-Scopes": "all",
        connection: "keep-alive, X-Secret-Hop",
        "keep-alive": "timeout=5",
        "proxy-connection": "keep-alive",
        "proxy-authorization": "Basic abc",
        te: "trailers",
        trailer: "x",
        "transfer-encoding": "chunked",
        upgrade: "websocket",
        "x-secret-hop": "1",
        accept: "application/json",
        "X-Request-Id": "abc",
        "set-cookie": ["a=1", "b=2"]
      })
      assert.deepStrictEqual(stripped, { accept: "application/json", "x-request-id": "abc", "set-cookie": ["a=1", "b=2"] })
    })

    it("keeps Authorization (restoring it is a separate step)", () => {
      assert.deepStrictEqual(ServiceRouting.stripInternalHeaders({ Authorization: "Bearer x" }), { authorization: "Bearer x" })
    })

    it.prop(
      "no header named Cluster-Proxy-* or Impersonate-* survives, whatever its case; other end-to-end headers do",
      {
        headers: Schema.Array(Schema.Struct({
          prefix: Schema.Literals(["cluster-proxy-", "impersonate-", "x-", "", "cluster-proxy", "impersonate"]),
          suffix: Schema.String,
          mask: Schema.Array(Schema.Boolean),
          value: Schema.String
        }))
      },
      ({ headers }) => {
        const input: Record<string, string> = {}
        for (const h of headers) input[recase(h.prefix, h.mask) + h.suffix] = h.value
        const stripped = ServiceRouting.stripInternalHeaders(input)
        for (const name of Object.keys(stripped)) {
          assert.isFalse(/^(cluster-proxy-|impersonate-)/i.test(name), `${name} survived`)
        }
        for (const name of Object.keys(input)) {
          const lower = name.toLowerCase()
          // Look-alikes (`cluster-proxyX`, `impersonate_user`) go as well.
          const letters = lower.replace(/[^a-z0-9]/g, "")
          const internal = letters.startsWith("clusterproxy") || letters.startsWith("impersonate")
          if (!internal && !HttpHeaders.hopByHopHeaders.has(lower)) assert.property(stripped, lower)
        }
      }
    )
  })

  describe("stripHopByHop", () => {
    it("drops hop-by-hop response headers and those named in Connection, keeps the rest", () => {
      assert.deepStrictEqual(
        HttpHeaders.stripHopByHop({
          Connection: "close, x-hop",
          "transfer-encoding": "chunked",
          "x-hop": "1",
          "content-type": "text/plain",
          "set-cookie": ["a=1"]
        }),
        { "content-type": "text/plain", "set-cookie": ["a=1"] }
      )
    })
  })

  describe("stripHopByHopLowerCased", () => {
    it.prop(
      "gives what stripHopByHop gives for a head with lower-cased, merged names",
      {
        headers: Schema.Record(
          Schema.Union([
            Schema.Literals(["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "x-hop", "content-type"]),
            Schema.String.check(Schema.isPattern(/^[a-z-]{1,8}$/))
          ]),
          Schema.Union([Schema.String, Schema.Array(Schema.String)])
        )
      },
      ({ headers }) => {
        assert.deepStrictEqual(HttpHeaders.stripHopByHopLowerCased(headers), HttpHeaders.stripHopByHop(headers))
      }
    )

    it("drops what Connection names", () => {
      assert.deepStrictEqual(
        HttpHeaders.stripHopByHopLowerCased({ connection: "keep-alive, x-hop", "keep-alive": "timeout=5", "x-hop": "1", etag: "e" }),
        { etag: "e" }
      )
    })
  })

  describe("restoreAuthorization", () => {
    it.each([
      {
        name: "replaces the relay token with the client's credential",
        headers: { authorization: "Bearer relay-token", "cluster-proxy-authorization": "Bearer client-token", accept: "*/*" },
        expected: { authorization: "Bearer client-token", accept: "*/*" }
      },
      {
        name: "keeps non-bearer client credentials as they are",
        headers: { "Cluster-Proxy-Authorization": "Basic dXNlcjpwYXNz" },
        expected: { authorization: "Basic dXNlcjpwYXNz" }
      },
      {
        name: "removes the relay token when the client sent none",
        headers: { Authorization: "Bearer relay-token", accept: "*/*" },
        expected: { accept: "*/*" }
      },
      {
        name: "removes an ambiguous credential",
        headers: { "cluster-proxy-authorization": "Bearer a", "Cluster-Proxy-Authorization": "Bearer b" },
        expected: {}
      }
    ])("$name", ({ expected, headers }) => {
      assert.deepStrictEqual(RelayHeaders.restoreAuthorization(headers), expected)
    })

    it.prop(
      "Authorization is the client's credential or absent, never the relay token",
      { relay: Schema.String, client: Schema.optional(Schema.String), mask: Schema.Array(Schema.Boolean) },
      ({ client, mask, relay }) => {
        const headers: Record<string, string> = { [recase("authorization", mask)]: `Bearer ${relay}` }
        if (client !== undefined) headers[recase("cluster-proxy-authorization", mask)] = client
        const restored = RelayHeaders.restoreAuthorization(headers)
        assert.notProperty(restored, "cluster-proxy-authorization")
        if (client === undefined || client === "") assert.notProperty(restored, "authorization")
        else assert.strictEqual(restored["authorization"], client)
      }
    )
  })

  describe("bearerToken", () => {
    const token = (headers: HttpHeaders.Headers) => {
      const found = RelayHeaders.bearerToken(headers)
      return found === undefined ? undefined : Redacted.value(found)
    }

    it.each([
      { name: "Authorization", headers: { authorization: "Bearer abc.def" }, expected: "abc.def" },
      { name: "any case of the scheme", headers: { Authorization: "bEaReR abc" }, expected: "abc" },
      { name: "surrounding blanks", headers: { authorization: "Bearer \t abc  " }, expected: "abc" },
      { name: "the relay header", headers: { "cluster-proxy-relay-authorization": "Bearer relay" }, expected: "relay" },
      { name: "Authorization first", headers: { authorization: "Bearer a", "Cluster-Proxy-Relay-Authorization": "Bearer b" }, expected: "a" },
      { name: "the relay header behind a Basic Authorization", headers: { authorization: "Basic eA==", "cluster-proxy-relay-authorization": "Bearer b" }, expected: "b" },
      { name: "nothing", headers: {}, expected: undefined },
      { name: "an empty bearer", headers: { authorization: "Bearer " }, expected: undefined },
      { name: "two tokens", headers: { authorization: "Bearer a b" }, expected: undefined },
      { name: "Basic only", headers: { authorization: "Basic eA==" }, expected: undefined },
      { name: "the client's credential", headers: { "cluster-proxy-authorization": "Bearer client" }, expected: undefined }
    ])("reads $name, as a Redacted and as text for a cache lookup", ({ expected, headers }) => {
      assert.strictEqual(token(headers), expected)
      assert.strictEqual(RelayHeaders.bearerTokenText(headers), expected)
    })

    it("keeps the token redacted", () => {
      const found = RelayHeaders.bearerToken({ authorization: "Bearer sekret-token" })
      assert.isDefined(found)
      assert.notInclude(String(found), "sekret-token")
      assert.notInclude(JSON.stringify({ found }), "sekret-token")
    })
  })

  describe("forwardHeaders", () => {
    const target = Result.getOrThrow(ServiceRouting.route(routing("http", "default", "hello", "8080")))

    it("restores the client's credential, strips internal headers and sets Host", () => {
      const out = RelayHeaders.forwardHeaders({
        ...routing("http", "default", "hello", "8080"),
        host: "relay.example:7444",
        authorization: "Bearer relay-token",
        "cluster-proxy-authorization": "Bearer client-token",
        "cluster-proxy-relay-authorization": "Bearer relay-token",
        "impersonate-user": "admin",
        "content-length": "5",
        accept: "*/*"
      }, target)
      assert.deepStrictEqual(out, {
        host: "hello.default.svc:8080",
        authorization: "Bearer client-token",
        "content-length": "5",
        accept: "*/*"
      })
    })

    it("carries an upgrade through", () => {
      const out = RelayHeaders.forwardHeaders({ connection: "keep-alive, Upgrade", upgrade: "websocket", "sec-websocket-key": "k" }, target)
      assert.deepStrictEqual(names(out), ["connection", "host", "sec-websocket-key", "upgrade"])
      assert.strictEqual(out["connection"], "Upgrade")
      assert.strictEqual(out["upgrade"], "websocket")
    })

    it("does not invent an upgrade", () => {
      assert.strictEqual(HttpHeaders.upgradeProtocol({ upgrade: "websocket" }), undefined)
      assert.deepStrictEqual(names(RelayHeaders.forwardHeaders({ upgrade: "websocket" }, target)), ["host"])
    })
  })

  describe("forwardRawHeaders", () => {
    const target = Result.getOrThrow(ServiceRouting.route(routing("http", "default", "hello", "8080")))
    /** Flat name/value list to a lower-cased object, duplicates as arrays (as Node would see them upstream). */
    const asObject = (flat: ReadonlyArray<string>) => {
      const out: Record<string, string | Array<string>> = {}
      for (let i = 0; i < flat.length; i += 2) {
        const name = flat[i]!.toLowerCase()
        const previous = out[name]
        out[name] = previous === undefined ? flat[i + 1]! : [...(typeof previous === "string" ? [previous] : previous), flat[i + 1]!]
      }
      return out
    }
    const raw = (pairs: ReadonlyArray<readonly [string, string]>) => pairs.flat()

    it("restores the client's credential, strips internal, hop-by-hop and Expect headers, and sets Host first", () => {
      const out = RelayHeaders.forwardRawHeaders(raw([
        ["Cluster-Proxy-Proto", "http"],
        ["Cluster-Proxy-Namespace", "default"],
        ["Cluster-Proxy-Service", "hello"],
        ["Cluster-Proxy-Port", "8080"],
        ["Host", "relay.example:7444"],
        ["Authorization", "Bearer relay-token"],
        ["Cluster-Proxy-Authorization", "Bearer client-token"],
        ["Cluster-Proxy-Relay-Authorization", "Bearer relay-token"],
        ["Impersonate-User", "admin"],
        ["impersonate-group", "system:masters"],
        ["Connection", "keep-alive, X-Hop"],
        ["X-Hop", "dropped"],
        ["Keep-Alive", "timeout=5"],
        ["Transfer-Encoding", "chunked"],
        ["Expect", "100-continue"],
        ["Accept", "*/*"],
        ["X-Many", "1"],
        ["x-many", "2"]
      ]), target)
      assert.deepStrictEqual(out, [
        "host",
        "hello.default.svc:8080",
        "authorization",
        "Bearer client-token",
        "Accept",
        "*/*",
        "X-Many",
        "1",
        "x-many",
        "2"
      ])
    })

    it("sends no Authorization unless exactly one Cluster-Proxy-Authorization came", () => {
      const none = RelayHeaders.forwardRawHeaders(raw([["Authorization", "Bearer relay-token"]]), target)
      assert.deepStrictEqual(none, ["host", "hello.default.svc:8080"])
      const twice = RelayHeaders.forwardRawHeaders(
        raw([["Cluster-Proxy-Authorization", "Bearer a"], ["cluster-proxy-authorization", "Bearer b"]]),
        target
      )
      assert.deepStrictEqual(twice, ["host", "hello.default.svc:8080"])
    })

    it("agrees with forwardHeaders on plain requests", () => {
      const cases: ReadonlyArray<ReadonlyArray<readonly [string, string]>> = [
        [["Authorization", "Bearer relay"], ["Cluster-Proxy-Authorization", "Bearer client"], ["Accept", "application/json"]],
        [["Connection", "close"], ["Content-Length", "12"], ["Content-Type", "text/plain"], ["Impersonate-Extra-Scopes", "x"]],
        [["Cluster-Proxy-Relay-Authorization", "Bearer relay"], ["TE", "trailers"], ["Trailer", "x"], ["X-Forwarded-For", "10.0.0.1"]],
        [["Connection", "X-A, x-b"], ["X-A", "1"], ["X-B", "2"], ["X-C", "3"], ["Proxy-Authorization", "Basic x"]]
      ]
      for (const pairs of cases) {
        const fromRaw = asObject(RelayHeaders.forwardRawHeaders(raw(pairs), target))
        const fromObject = RelayHeaders.forwardHeaders(asObject(raw(pairs)), target)
        assert.deepStrictEqual(fromRaw, fromObject, JSON.stringify(pairs))
      }
    })
  })
})
