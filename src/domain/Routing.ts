/**
 * How the service relay reads a request, pure: which in-cluster Service it is for, who the
 * caller claims to be, and which headers may travel on to the backend.
 *
 * The hosted service-proxy addresses a Service with four headers (`Cluster-Proxy-Proto`,
 * `-Namespace`, `-Service`, `-Port`) and carries the client's own credential in
 * `Cluster-Proxy-Authorization`, because the managed kube-apiserver deletes `Authorization`
 * once it has authenticated the hop. From those the relay builds
 * `<proto>://<service>.<namespace>.svc:<port>`.
 *
 * Invariants:
 * - A target host is always `<dns-label>.<dns-label>.svc`: names are validated, never
 *   escaped, so nothing (`@`, `/`, `:`, `.`, whitespace) can change the host or the port.
 * - The kube-apiserver (`kubernetes` in `default`, in any letter case, with any proto or port)
 *   is never a target: the relay's callers hold credentials the apiserver must not see.
 * - Nothing named `Cluster-Proxy-*` or `Impersonate-*`, and no hop-by-hop header, reaches a
 *   backend, whatever the letter case of its name.
 * - Bearer tokens leave this module only inside `Redacted`; error messages never quote a
 *   credential header.
 *
 * Header names are matched case-insensitively, so the functions accept Node's lower-cased
 * `IncomingHttpHeaders` as well as hand-written records.
 *
 * @since 0.1.0
 */
import { Redacted, Result, Schema } from "effect"

// ---------------------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------------------

/**
 * Headers as Node hands them over: any letter case, one value or several.
 *
 * @since 0.1.0
 * @category models
 */
export type Headers = Readonly<Record<string, string | ReadonlyArray<string> | undefined>>

/**
 * Headers built by this module: names lower-cased, values as given.
 *
 * @since 0.1.0
 * @category models
 */
export type OutgoingHeaders = Record<string, string | ReadonlyArray<string>>

/**
 * @since 0.1.0
 * @category models
 */
export type Proto = "http" | "https"

/**
 * A Service port the relay may call.
 *
 * @since 0.1.0
 * @category models
 */
export interface Target {
  readonly proto: Proto
  readonly namespace: string
  readonly service: string
  readonly port: number
  /** `<service>.<namespace>.svc`: the name to resolve and, for https, to verify the certificate against. */
  readonly hostname: string
  /** `<hostname>:<port>`: the Host header sent to the backend. */
  readonly authority: string
  /** `<proto>://<hostname>:<port>` */
  readonly origin: string
}

/**
 * The `scheme` label of the relay's request metric: a closed set whatever the client sends.
 *
 * @since 0.1.0
 * @category models
 */
export type MetricScheme = "http" | "https" | "unknown" | "unsupported"

/**
 * The routing headers, as sent by the hosted service-proxy.
 *
 * @since 0.1.0
 * @category constants
 */
export const headerNames = {
  proto: "Cluster-Proxy-Proto",
  namespace: "Cluster-Proxy-Namespace",
  service: "Cluster-Proxy-Service",
  port: "Cluster-Proxy-Port",
  /** The client's original `Authorization`, restored for the backend. */
  authorization: "Cluster-Proxy-Authorization",
  /** The relay caller's own bearer token when `Authorization` was consumed on the way. */
  relayAuthorization: "Cluster-Proxy-Relay-Authorization"
} as const

// ---------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------

/**
 * Why a request names no usable target. Always answered with 400; the message is safe to send
 * back (it quotes routing headers only, shortened).
 *
 * @since 0.1.0
 * @category errors
 */
export class RoutingError extends Schema.TaggedError<RoutingError>()("RoutingError", {
  reason: Schema.Literals(["MissingHeader", "UnsupportedScheme", "KubeApiserver", "InvalidNamespace", "InvalidService", "InvalidPort"]),
  message: Schema.String
}) {
  /** The HTTP status to answer with. */
  get status(): 400 {
    return 400
  }
}

// ---------------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------------

// RFC 1123 label (namespaces) and RFC 1035 label (Service names), as Kubernetes validates them.
const namespacePattern = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/
const servicePattern = /^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$/
const portPattern = /^[0-9]{1,5}$/

const quote = (value: string): string => JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value)

/**
 * Every value of header `name` (case-insensitive), in order; a comma-joined duplicate stays one value.
 *
 * @since 0.1.0
 * @category headers
 */
export const values = (headers: Headers, name: string): ReadonlyArray<string> => {
  const wanted = name.toLowerCase()
  const found: Array<string> = []
  // On every request path: no entry arrays, and only names of the right length are lower-cased.
  for (const key in headers) {
    if (key.length !== wanted.length || !Object.hasOwn(headers, key)) continue
    const value = headers[key]
    if (value === undefined || (key !== wanted && key.toLowerCase() !== wanted)) continue
    if (typeof value === "string") found.push(value)
    else found.push(...value)
  }
  return found
}

/** The one value of a header; undefined when absent, or when sent more than once (ambiguous). */
const single = (headers: Headers, name: string): string | undefined => {
  const all = values(headers, name)
  return all.length === 1 ? all[0] : undefined
}

/**
 * Whether a namespace and Service name the kube-apiserver (`kubernetes.default`), in any case.
 *
 * @since 0.1.0
 * @category routing
 */
export const isKubeApiserver = (namespace: string, service: string): boolean =>
  namespace.toLowerCase() === "default" && service.toLowerCase() === "kubernetes"

/**
 * The metric label for a `Cluster-Proxy-Proto` value: `unknown` when absent, `unsupported`
 * for anything but http or https.
 *
 * @since 0.1.0
 * @category routing
 */
export const metricScheme = (proto: string | undefined): MetricScheme => {
  if (proto === undefined || proto.trim() === "") return "unknown"
  const lower = proto.trim().toLowerCase()
  return lower === "http" || lower === "https" ? lower : "unsupported"
}

/**
 * The target named by the routing headers.
 *
 * Checks, in order: all four headers present (once each), proto http or https (any case), not
 * the kube-apiserver, namespace an RFC 1123 label, Service an RFC 1035 label, port 1-65535.
 *
 * @example
 * ```ts
 * route({
 *   "cluster-proxy-proto": "http",
 *   "cluster-proxy-namespace": "default",
 *   "cluster-proxy-service": "hello",
 *   "cluster-proxy-port": "8080"
 * })
 * // Success: origin "http://hello.default.svc:8080"
 * ```
 *
 * @since 0.1.0
 * @category routing
 */
export const route = (headers: Headers): Result.Result<Target, RoutingError> => {
  const fail = (reason: RoutingError["reason"], message: string) => Result.fail(new RoutingError({ reason, message }))
  const raw = {
    proto: single(headers, headerNames.proto),
    namespace: single(headers, headerNames.namespace),
    service: single(headers, headerNames.service),
    port: single(headers, headerNames.port)
  }
  const given = (key: keyof typeof raw) => {
    const value = raw[key]?.trim()
    return value === undefined || value === "" ? undefined : value
  }
  for (const key of ["proto", "namespace", "service", "port"] as const) {
    if (given(key) === undefined) {
      const count = values(headers, headerNames[key]).length
      return fail("MissingHeader", `invalid request headers: ${headerNames[key]} ${count > 1 ? "is given more than once" : "is missing"}`)
    }
  }
  const rawProto = given("proto") ?? ""
  const proto = rawProto.toLowerCase()
  const namespace = given("namespace") ?? ""
  const service = given("service") ?? ""
  const portText = given("port") ?? ""
  if (proto !== "http" && proto !== "https") {
    return fail("UnsupportedScheme", `unsupported target scheme ${quote(rawProto)}`)
  }
  if (isKubeApiserver(namespace, service)) {
    return fail("KubeApiserver", "service relay does not proxy kube-apiserver requests")
  }
  if (!namespacePattern.test(namespace)) {
    return fail("InvalidNamespace", `invalid ${headerNames.namespace} ${quote(namespace)}: must be a lower-case DNS label (RFC 1123)`)
  }
  if (!servicePattern.test(service)) {
    return fail("InvalidService", `invalid ${headerNames.service} ${quote(service)}: must be a lower-case DNS label starting with a letter (RFC 1035)`)
  }
  const port = portPattern.test(portText) ? Number(portText) : Number.NaN
  if (!(port >= 1 && port <= 65535)) {
    return fail("InvalidPort", `invalid ${headerNames.port} ${quote(portText)}: must be a port number between 1 and 65535`)
  }
  const hostname = `${service}.${namespace}.svc`
  const authority = `${hostname}:${port}`
  return Result.succeed({ proto, namespace, service, port, hostname, authority, origin: `${proto}://${authority}` })
}

// ---------------------------------------------------------------------------------------------
// header hygiene
// ---------------------------------------------------------------------------------------------

/**
 * Headers that describe one connection, never the message (RFC 9110 section 7.6.1, plus the
 * legacy ones proxies still meet).
 *
 * @since 0.1.0
 * @category headers
 */
export const hopByHopHeaders: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

/** Header names listed in `Connection` (lower-cased): these are hop-by-hop too. */
const connectionOptions = (headers: Headers): ReadonlySet<string> => {
  const names = new Set<string>()
  for (const value of values(headers, "connection")) {
    for (const token of value.split(",")) {
      const name = token.trim().toLowerCase()
      if (name !== "") names.add(name)
    }
  }
  return names
}

const isInternal = (lowerName: string): boolean =>
  lowerName.startsWith("cluster-proxy-") || lowerName.startsWith("impersonate-")

const keep = (headers: Headers, drop: (lowerName: string) => boolean): OutgoingHeaders => {
  const out: OutgoingHeaders = {}
  for (const key in headers) {
    if (!Object.hasOwn(headers, key)) continue
    const value = headers[key]
    const name = key.toLowerCase()
    if (value === undefined || drop(name)) continue
    const previous = out[name]
    out[name] = previous === undefined
      ? value
      : [...(typeof previous === "string" ? [previous] : previous), ...(typeof value === "string" ? [value] : value)]
  }
  return out
}

/**
 * Drop hop-by-hop headers, including those named in `Connection`. For responses.
 *
 * @since 0.1.0
 * @category headers
 */
export const stripHopByHop = (headers: Headers): OutgoingHeaders => {
  const named = connectionOptions(headers)
  return keep(headers, (name) => hopByHopHeaders.has(name) || named.has(name))
}

/**
 * {@link stripHopByHop} for a response head whose names are already lower-cased and merged (as
 * undici hands them over): the same result, without re-casing or merging names, since it runs
 * on every response of the service relay.
 *
 * @since 0.1.0
 * @category headers
 */
export const stripHopByHopLowerCased = (headers: Headers): OutgoingHeaders => {
  const connection = headers["connection"]
  const named = connection === undefined ? undefined : connectionOptions({ connection })
  const out: OutgoingHeaders = {}
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined || !Object.hasOwn(headers, name) || hopByHopHeaders.has(name) || named?.has(name) === true) {
      continue
    }
    out[name] = value
  }
  return out
}

/**
 * Drop everything a backend must not see: every `Cluster-Proxy-*` and `Impersonate-*` header
 * (the managed apiserver would honour impersonation with the relay's rights) and every
 * hop-by-hop header, including those named in `Connection`.
 *
 * @since 0.1.0
 * @category headers
 */
export const stripInternalHeaders = (headers: Headers): OutgoingHeaders => {
  const named = connectionOptions(headers)
  return keep(headers, (name) => isInternal(name) || hopByHopHeaders.has(name) || named.has(name))
}

/**
 * Put the client's own credential back: `Authorization` becomes the value of
 * `Cluster-Proxy-Authorization` when that is present (once), and is removed otherwise, so the
 * relay caller's token never reaches a backend. `Cluster-Proxy-Authorization` is removed.
 *
 * @since 0.1.0
 * @category headers
 */
export const restoreAuthorization = (headers: Headers): OutgoingHeaders => {
  const original = single(headers, headerNames.authorization)
  const out = keep(headers, (name) => name === "authorization" || name === "cluster-proxy-authorization")
  if (original !== undefined && original !== "") out["authorization"] = original
  return out
}

const bearerPattern = /^bearer[ \t]+([^ \t]+)[ \t]*$/i

const bearerIn = (headers: Headers, name: string): string | undefined => {
  const value = single(headers, name)
  return value === undefined ? undefined : bearerPattern.exec(value)?.[1]
}

/**
 * {@link bearerToken} as plain text, for a synchronous cache lookup that has no use for a
 * `Redacted` (each one costs the garbage collector, see {@link forgetToken}). Wrap it before it
 * is kept or passed on.
 *
 * @since 0.1.0
 * @category headers
 */
export const bearerTokenText = (headers: Headers): string | undefined =>
  bearerIn(headers, "authorization") ?? bearerIn(headers, headerNames.relayAuthorization)

/**
 * The relay caller's bearer token: from `Authorization`, else from
 * `Cluster-Proxy-Relay-Authorization` (the managed apiserver consumes `Authorization` when the
 * request comes through `services/proxy`). Undefined when neither holds a bearer token.
 *
 * @since 0.1.0
 * @category headers
 */
export const bearerToken = (headers: Headers): Redacted.Redacted<string> | undefined => {
  const text = bearerTokenText(headers)
  return text === undefined ? undefined : Redacted.make(text)
}

/**
 * Forget a request's token once the request is done with it (from {@link bearerToken} or any
 * other per-request `Redacted`). Every live `Redacted` is an entry in one process-wide WeakMap
 * that each young-generation collection visits; left to the collector, a busy relay's tokens
 * made those collections several times longer.
 *
 * @since 0.1.0
 * @category headers
 */
export const forgetToken = (token: Redacted.Redacted<string> | undefined): void => {
  if (token !== undefined) Redacted.wipeUnsafe(token)
}

/**
 * The protocol a request asks to switch to (`websocket`, `SPDY/3.1`): the `Upgrade` value when
 * `Connection` lists `upgrade`, else undefined.
 *
 * @since 0.1.0
 * @category headers
 */
export const upgradeProtocol = (headers: Headers): string | undefined => {
  if (!connectionOptions(headers).has("upgrade")) return undefined
  const protocol = single(headers, "upgrade")?.trim()
  return protocol === undefined || protocol === "" ? undefined : protocol
}

/**
 * The headers to send to the backend: the client's credential restored, internal and
 * hop-by-hop headers stripped, `Host` set to the target, and for an upgrade the
 * `Connection: Upgrade` / `Upgrade` pair put back (they are hop-by-hop, but the upgrade is
 * what the client asked the relay to carry through).
 *
 * @since 0.1.0
 * @category headers
 */
export const forwardHeaders = (headers: Headers, target: Target): OutgoingHeaders => {
  const protocol = upgradeProtocol(headers)
  const out = stripInternalHeaders(restoreAuthorization(headers))
  out["host"] = target.authority
  if (protocol !== undefined) {
    out["connection"] = "Upgrade"
    out["upgrade"] = protocol
  }
  return out
}

/**
 * {@link forwardHeaders} for a plain request (no upgrade), on Node's `rawHeaders` (name, value,
 * name, value, ...) and returning the same flat form, in one pass over the list: the shape the
 * service relay's fast path hands to its HTTP client. `Expect` is dropped as well, since the
 * relay's own server has already answered `100 Continue` and receives the whole body itself.
 *
 * @since 0.1.0
 * @category headers
 */
export const forwardRawHeaders = (raw: ReadonlyArray<string>, target: Target): Array<string> => {
  let named: Set<string> | undefined
  let restored: string | undefined
  let restoredCount = 0
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase()
    if (name === "connection") {
      for (const token of raw[i + 1]!.split(",")) {
        const option = token.trim().toLowerCase()
        if (option !== "") (named ??= new Set()).add(option)
      }
    } else if (name === "cluster-proxy-authorization") {
      restored = raw[i + 1]
      restoredCount++
    }
  }
  const out = ["host", target.authority]
  if (restoredCount === 1 && restored !== undefined && restored !== "") out.push("authorization", restored)
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase()
    if (
      name === "host" || name === "authorization" || name === "expect" || isInternal(name) || hopByHopHeaders.has(name) ||
      named?.has(name) === true
    ) continue
    out.push(raw[i]!, raw[i + 1]!)
  }
  return out
}
