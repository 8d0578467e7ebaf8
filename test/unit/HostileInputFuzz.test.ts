/**
 * Beyond the fixed hostile-input corpus (test/corpus): properties of the routing, header,
 * TokenReview and kubeconfig parsers over Schema arbitraries built from hostile fragments (dot
 * segments in every spelling, separators, unicode look-alikes, control bytes, quotes, YAML
 * syntax). Each parser must never throw and always give a typed answer; what it accepts must be
 * exactly what it promises (targets that round-trip, paths that stay under their prefix, headers
 * that carry nothing internal), and no error text may carry a credential.
 */
import { assert, describe, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import * as Yaml from "js-yaml"
import * as ApiserverUrl from "../../src/domain/ApiserverUrl.ts"
import * as HttpHeaders from "../../src/domain/HttpHeaders.ts"
import * as Impersonation from "../../src/domain/Impersonation.ts"
import * as Kubeconfig from "../../src/domain/Kubeconfig.ts"
import * as RelayHeaders from "../../src/domain/RelayHeaders.ts"
import * as RequestPath from "../../src/domain/RequestPath.ts"
import * as ServerEndpoint from "../../src/domain/ServerEndpoint.ts"
import * as ServiceProxyMode from "../../src/domain/ServiceProxyMode.ts"
import * as ServiceRouting from "../../src/domain/ServiceRouting.ts"
import * as TokenReview from "../../src/domain/TokenReview.ts"

const runs = { arbitrary: { runs: 400 } }

/** A string made of hostile fragments (and arbitrary text), joined. */
const fragments = (pieces: ReadonlyArray<string>, max = 8) =>
  Schema.Array(Schema.Union([Schema.Literals(pieces as [string, ...Array<string>]), Schema.String])).check(Schema.isMaxLength(max))

const nameParts = ["a", "z", "0", "9", "-", ".", "_", "A", "@", ":", "/", " ", "\t", "%2e", "é", "\u0435", "\u200b", "kubernetes", "default", "hello"]
const routingValue = fragments(nameParts, 6)
const pathParts = ["/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\", "a", "api", "?", "#", "%", ";", "%00", "é"]
const urlParts = ["https://h:0", "https://", "http://", "ftp://", "://", "h", "host.example", "[::1]", "::1", ":", ":0", ":00", ":443", ":65536", ":-1", "@", "user:secret-pw@", "/", "/k8s/clusters/c-1", "?q", "#f", " ", "%", "\n"]
const headerNameParts = ["Impersonate", "impersonate", "-", "_", ".", "~", "User", "Group", "Cluster", "Proxy", "cluster", "proxy", "Authorization", "Connection", "Host", "X", "Port", "Service"]

const join = (parts: ReadonlyArray<string>) => parts.join("")

/** RFC 3986 remove_dot_segments after the decoding a lenient server might do: where the path really goes. */
const normalised = (path: string) => {
  const decoded = (path.split("?", 1)[0] ?? "").replace(/%2e/gi, ".").replace(/%2f/gi, "/").replace(/%5c/gi, "/").replaceAll("\\", "/")
  const out: Array<string> = []
  for (const segment of decoded.split("/")) {
    if (segment === "..") out.pop()
    else if (segment !== ".") out.push(segment)
  }
  return out.join("/")
}

const looksInternal = (name: string) => {
  const letters = name.toLowerCase().replace(/[^a-z0-9]/g, "")
  return letters.startsWith("clusterproxy") || letters.startsWith("impersonate")
}

describe("routing parsers under fuzzing", () => {
  it.prop(
    "route never throws; an accepted target is a Service host and round-trips through its own headers",
    { proto: routingValue, namespace: routingValue, service: routingValue, port: fragments(["0", "1", "8", "80", "443", "65535", "65536", " ", "-", "+", "e", "x"], 4) },
    (parts) => {
      const headers = {
        "cluster-proxy-proto": join(parts.proto),
        "cluster-proxy-namespace": join(parts.namespace),
        "cluster-proxy-service": join(parts.service),
        "cluster-proxy-port": join(parts.port)
      }
      const routed = ServiceRouting.route(headers)
      if (Result.isFailure(routed)) {
        assert.strictEqual(routed.failure._tag, "RoutingError")
        assert.strictEqual(routed.failure.status, 400)
        return
      }
      const target = routed.success
      assert.match(target.hostname, /^[a-z][-a-z0-9]*\.[a-z0-9][-a-z0-9]*\.svc$/)
      assert.isTrue(target.port >= 1 && target.port <= 65535)
      assert.isFalse(ServiceRouting.isKubeApiserver(target.namespace, target.service))
      const again = ServiceRouting.route({
        "Cluster-Proxy-Proto": target.proto,
        "Cluster-Proxy-Namespace": target.namespace,
        "Cluster-Proxy-Service": target.service,
        "Cluster-Proxy-Port": String(target.port)
      })
      assert.deepStrictEqual(again, Result.succeed(target))
    },
    runs
  )

  it.prop(
    "requestPath never throws and gives an origin-form path or nothing",
    { parts: fragments([...pathParts, "http://", "https://", "*", "HTTP://x"], 8) },
    ({ parts }) => {
      const path = RequestPath.requestPath(join(parts))
      if (path !== undefined) {
        assert.isTrue(path.startsWith("/"))
        assert.isFalse(path.startsWith("//"))
      }
    },
    runs
  )

  it.prop(
    "no path accepted under a prefix escapes it, whatever dot segments, encodings or backslashes it uses",
    { parts: fragments(pathParts, 10) },
    ({ parts }) => {
      const path = RequestPath.requestPath(`/${join(parts)}`)
      if (path === undefined || RequestPath.hasDotSegment(path)) return
      const prefix = "/api/v1/namespaces/addon/services/http:relay:7444/proxy"
      assert.isTrue(
        normalised(RequestPath.joinPath(prefix, path)).startsWith(normalised(prefix)),
        `${path} leaves ${prefix}`
      )
    },
    runs
  )

  it.prop(
    "server URLs: never a throw, never the URL's password in an error, an accepted one dialable",
    { parts: fragments(urlParts, 8) },
    ({ parts }) => {
      const server = join(parts)
      const endpoint = ServerEndpoint.fromServerUrl(server)
      const url = ApiserverUrl.parseApiserverUrl(server)
      if (Result.isFailure(endpoint)) assert.notInclude(endpoint.failure.message, "secret-pw")
      if (Result.isFailure(url)) assert.notInclude(url.failure.message, "secret-pw")
      if (Result.isSuccess(endpoint)) {
        assert.isTrue(endpoint.success.port >= 1 && endpoint.success.port <= 65535, `port ${endpoint.success.port} from ${server}`)
        assert.notStrictEqual(endpoint.success.host, "")
      }
      if (Result.isSuccess(url)) assert.isFalse(url.success.pathPrefix.endsWith("/"))
    },
    runs
  )
})

describe("service proxy decisions under fuzzing", () => {
  it.prop(
    "classify never throws; kubernetes in default is the apiserver in any letter case and with any port, never a Service",
    {
      namespace: Schema.Literals(["default", "DEFAULT", "Default", "kube-system", "defau1t"]),
      service: Schema.Literals(["kubernetes", "KUBERNETES", "Kubernetes", "kubernetes-x"]),
      proto: fragments(["http", "HTTPS", "https", " ", "ftp", "s"], 3),
      port: routingValue
    },
    ({ namespace, port, proto, service }) => {
      const classified = ServiceProxyMode.classify({
        "cluster-proxy-proto": join(proto),
        "cluster-proxy-namespace": namespace,
        "cluster-proxy-service": service,
        "cluster-proxy-port": join(port)
      })
      const apiserver = namespace.toLowerCase() === "default" && service.toLowerCase() === "kubernetes"
      // Any port; the proto must still be http or https (a garbage proto is refused first).
      const usable = ["http", "https"].includes(join(proto).trim().toLowerCase()) && join(port).trim() !== ""
      if (apiserver && usable) assert.deepStrictEqual(classified, Result.succeed({ _tag: "KubeApiserver" }))
      if (Result.isSuccess(classified) && classified.success._tag === "Service") assert.isFalse(apiserver)
    },
    runs
  )

  const text = fragments(["a", "system:serviceaccount:users:mallory", "system:serviceaccounts", ":users", "system:", "serviceaccount", ":", "\r", "\n", "\r\nImpersonate-User: admin", "\u0000", "\t", " ", "é", "\u2028", "%", "/", "=", "cluster:hub:"], 6)
  it.prop(
    "impersonation headers never carry a control character or a bad header name, and a hub ServiceAccount never keeps a managed group",
    { source: Schema.Literals(["managed", "hub"]), username: text, groups: Schema.Array(text).check(Schema.isMaxLength(4)), extraKey: text, extraValue: text },
    ({ extraKey, extraValue, groups, source, username }) => {
      const user = { username: join(username), groups: groups.map(join), extra: { [join(extraKey)]: [join(extraValue)] } }
      const result = Impersonation.impersonationHeaders(source, user)
      if (Result.isFailure(result)) {
        assert.strictEqual(result.failure._tag, "ImpersonationError")
        return
      }
      for (const [name, value] of Object.entries(result.success)) {
        assert.match(name, /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, `header name ${JSON.stringify(name)}`)
        for (const one of typeof value === "string" ? [value] : value) assert.notMatch(one, /[\u0000-\u0008\u000a-\u001f\u007f\u0100-\uffff]/)
      }
      const sent = result.success["impersonate-group"]
      const sentGroups = typeof sent === "string" ? [sent] : sent ?? []
      if (source === "hub" && user.username.startsWith("system:serviceaccount:")) {
        assert.isFalse(sentGroups.some((group) => group === "system:serviceaccounts" || group.startsWith("system:serviceaccounts:")))
      }
    },
    runs
  )
})

describe("header hygiene under fuzzing", () => {
  const headerName = fragments(headerNameParts, 5).check(Schema.isMinLength(1))
  const rawHeaders = Schema.Array(Schema.Struct({ name: headerName, value: Schema.String })).check(Schema.isMaxLength(12))

  it.prop(
    "what the relay forwards carries nothing internal, no credential but the restored one, and its own Host",
    { headers: rawHeaders },
    ({ headers }) => {
      const raw = headers.flatMap(({ name, value }) => [join(name), value])
      const target = Result.getOrThrow(ServiceRouting.route({
        "cluster-proxy-proto": "http",
        "cluster-proxy-namespace": "default",
        "cluster-proxy-service": "hello",
        "cluster-proxy-port": "80"
      }))
      const out = RelayHeaders.forwardRawHeaders(raw, target)
      assert.deepStrictEqual(out.slice(0, 2), ["host", target.authority])
      const restored = raw.filter((_, i) => i % 2 === 0).filter((name) => name.toLowerCase() === "cluster-proxy-authorization")
      for (let i = 0; i < out.length; i += 2) {
        const name = out[i]!.toLowerCase()
        assert.isFalse(looksInternal(name), `forwarded ${out[i]}`)
        if (i > 0) assert.notStrictEqual(name, "host")
        if (name === "authorization") assert.strictEqual(restored.length, 1)
      }
    },
    runs
  )

  it.prop(
    "repeatedHeader names exactly the first single-valued header seen twice",
    { names: Schema.Array(Schema.Literals(["Host", "host", "Authorization", "AUTHORIZATION", "Cluster-Proxy-Port", "cluster-proxy-port", "X-Other", "Cluster_Proxy_Port"])).check(Schema.isMaxLength(8)) },
    ({ names }) => {
      const raw = names.flatMap((name) => [name, "v"])
      const counted = new Map<string, number>()
      let expected: string | undefined
      for (const name of names) {
        const lower = name.toLowerCase()
        if (!ServiceRouting.singleHeaders.has(lower)) continue
        counted.set(lower, (counted.get(lower) ?? 0) + 1)
        if (expected === undefined && counted.get(lower) === 2) expected = lower
      }
      const found = ServiceRouting.repeatedHeader(raw)
      assert.strictEqual(found?.reason, expected === undefined ? undefined : "RepeatedHeader")
      if (expected !== undefined) assert.include(found?.message ?? "", ServiceRouting.singleHeaders.get(expected) ?? "")
      assert.strictEqual(HttpHeaders.repeatedHeader(raw, new Set(ServiceRouting.singleHeaders.keys())), expected)
    },
    runs
  )
})

describe("TokenReview answers under fuzzing", () => {
  const anything = Schema.Union([Schema.String, Schema.Finite, Schema.Boolean, Schema.Null, Schema.Array(Schema.String), Schema.Record(Schema.String, Schema.String)])
  const status = Schema.Struct({
    authenticated: Schema.optional(Schema.Union([Schema.Boolean, anything])),
    error: Schema.optional(Schema.Union([Schema.Literals(["invalid bearer token", "etcd down", ""]), anything])),
    user: Schema.optional(Schema.Union([
      Schema.Struct({
        username: Schema.optional(anything),
        uid: Schema.optional(anything),
        groups: Schema.optional(anything),
        extra: Schema.optional(Schema.Union([Schema.Record(Schema.String, Schema.Array(Schema.String)), anything]))
      }),
      anything
    ]))
  })

  it.prop(
    "classifyReview never throws; only a well-formed answer authenticates or lets the next cluster be asked",
    { status: Schema.Union([status, anything]) },
    ({ status }) => {
      const outcome = TokenReview.classifyReview(status as TokenReview.ReviewStatus, TokenReview.defaultErrorPatterns)
      if (outcome._tag === "Failed") return
      const s = status as Record<string, unknown>
      assert.isTrue(typeof s === "object" && s !== null && !Array.isArray(s))
      assert.isTrue(s["authenticated"] == null || typeof s["authenticated"] === "boolean")
      assert.isTrue(s["error"] == null || typeof s["error"] === "string")
      if (outcome._tag === "Authenticated") {
        assert.strictEqual(s["authenticated"], true)
        assert.isTrue(outcome.user.username !== "" && typeof outcome.user.username === "string")
        assert.isTrue(outcome.user.groups.every((group) => typeof group === "string"))
      }
    },
    runs
  )
})

describe("kubeconfig reader under fuzzing", () => {
  const secret = "s3cr3t-token-value"
  const scalar = Schema.Union([
    Schema.Literals([secret, "", "~", "null", "true", "https://h:6443", "ZGF0YQ==", "not base64!", "/etc/passwd", "a"]),
    Schema.Finite,
    Schema.Boolean,
    Schema.Null
  ])
  const value = Schema.Union([scalar, Schema.Array(scalar).check(Schema.isMaxLength(3)), Schema.Record(Schema.Literals(["name", "token", "server", "command"]), scalar)])
  const body = Schema.Record(
    Schema.Literals(["server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify", "token", "tokenFile", "client-certificate", "client-certificate-data", "client-key", "client-key-data", "exec", "auth-provider", "as", "proxy-url", "tls-server-name"]),
    value
  )
  // Names are quoted in messages by design; the token is planted in credential fields only.
  const name = Schema.Union([Schema.Literals(["c", "u", "", "ctx"]), Schema.Finite, Schema.Null])
  const contextBody = Schema.Struct({ cluster: Schema.optional(name), user: Schema.optional(name) })
  const entry = Schema.Struct({
    name,
    cluster: Schema.optional(Schema.Union([body, value])),
    user: Schema.optional(Schema.Union([body, value])),
    context: Schema.optional(Schema.Union([contextBody, name]))
  })
  const document = Schema.Struct({
    clusters: Schema.optional(Schema.Union([Schema.Array(entry).check(Schema.isMaxLength(3)), value])),
    users: Schema.optional(Schema.Union([Schema.Array(entry).check(Schema.isMaxLength(3)), value])),
    contexts: Schema.optional(Schema.Union([Schema.Array(entry).check(Schema.isMaxLength(3)), value])),
    "current-context": Schema.optional(name)
  })

  const readers: Readonly<Record<string, (text: string) => Result.Result<unknown, Kubeconfig.KubeconfigError>>> = {
    parseSource: Kubeconfig.parseSource,
    parseCluster: Kubeconfig.parseCluster,
    readBearerToken: Kubeconfig.readBearerToken
  }

  it.prop(
    "every reader gives a typed answer for any document shape, and no error carries the token",
    { document },
    ({ document }) => {
      const text = Yaml.dump(document)
      for (const [name, read] of Object.entries(readers)) {
        const result = read(text)
        if (Result.isFailure(result)) {
          assert.strictEqual(result.failure._tag, "KubeconfigError", name)
          assert.notInclude(result.failure.message, secret, name)
          assert.isFalse(result.failure.retryable)
        }
      }
    },
    runs
  )

  it.prop(
    "any text, YAML syntax included, gives a typed answer and quotes none of itself back",
    { parts: fragments(["clusters:", "- name: ", "\n", "  ", "&a ", "*a", "!!binary ", "!<tag:x> ", "{", "}", "[", "]", ": ", "'", "\"", "%YAML 1.2\n", "---\n", "\t", secret, "<<: *a"], 14) },
    ({ parts }) => {
      const text = join(parts)
      for (const read of Object.values(readers)) {
        const result = read(text)
        if (Result.isFailure(result)) {
          assert.strictEqual(result.failure._tag, "KubeconfigError")
          assert.notInclude(result.failure.message, secret)
        }
      }
    },
    runs
  )
})
