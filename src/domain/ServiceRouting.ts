/**
 * Which in-cluster Service a request is for, pure: the four routing headers both proxies read.
 *
 * The hosted service-proxy addresses a Service with four headers (`Cluster-Proxy-Proto`,
 * `-Namespace`, `-Service`, `-Port`) and carries the client's own credential in
 * `Cluster-Proxy-Authorization`, because the managed kube-apiserver deletes `Authorization`
 * once it has authenticated the hop. From those the target is
 * `<proto>://<service>.<namespace>.svc:<port>`.
 *
 * Invariants:
 * - A target host is always `<dns-label>.<dns-label>.svc`: names are validated
 *   ({@link KubeNames}), never escaped, so nothing (`@`, `/`, `:`, `.`, whitespace) can change
 *   the host or the port.
 * - The kube-apiserver (`kubernetes` in `default`, in any letter case, with any proto or port)
 *   is never a Service target: {@link route} refuses it with reason `KubeApiserver`, which the
 *   service proxy reads as "the apiserver" and the relay refuses.
 * - Nothing named `Cluster-Proxy-*` or `Impersonate-*` reaches a backend, nor a look-alike
 *   spelt with `_` or `.` (`Impersonate_User`), which frameworks that normalise separators read
 *   as the real one ({@link stripInternalHeaders}).
 * - A credential, routing or `Host` header sent more than once is refused, read from the raw
 *   header list ({@link repeatedHeader}): Node keeps one and drops the rest, so which one counts
 *   would be a guess.
 * - Error messages quote routing headers only, shortened; never a credential header.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import * as HttpHeaders from "./HttpHeaders.ts"
import * as KubeNames from "./KubeNames.ts"

const portPattern = /^[0-9]{1,5}$/

const quote = (value: string): string => JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value)

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

/**
 * Why a request names no usable target. Always answered with 400; the message is safe to send
 * back (it quotes routing headers only, shortened).
 *
 * @since 0.1.0
 * @category errors
 */
export class RoutingError extends Schema.TaggedError<RoutingError>()("RoutingError", {
  reason: Schema.Literals(["MissingHeader", "RepeatedHeader", "UnsupportedScheme", "KubeApiserver", "InvalidNamespace", "InvalidService", "InvalidPort"]),
  message: Schema.String
}) {
  /** The HTTP status to answer with. */
  get status(): 400 {
    return 400
  }
}

/**
 * Whether a namespace and Service name the kube-apiserver (`kubernetes.default`), in any case.
 *
 * @since 0.1.0
 * @category routing
 */
export const isKubeApiserver = KubeNames.isKubeApiserver

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
export const route = (headers: HttpHeaders.Headers): Result.Result<Target, RoutingError> => {
  const routed = routeOrApiserver(headers)
  return routed._tag === "Success" && routed.success === "KubeApiserver"
    ? Result.fail(new RoutingError({ reason: "KubeApiserver", message: "service relay does not proxy kube-apiserver requests" }))
    : (routed as Result.Result<Target, RoutingError>)
}

/**
 * {@link route}, except that the kube-apiserver is an answer (`"KubeApiserver"`) rather than a
 * refusal: the service proxy's reading of the same headers. The kube-apiserver is its most
 * common target, and an error object (with its stack) per request showed in its profile.
 *
 * @since 0.1.0
 * @category routing
 */
export const routeOrApiserver = (headers: HttpHeaders.Headers): Result.Result<Target | "KubeApiserver", RoutingError> => {
  const fail = (reason: RoutingError["reason"], message: string) => Result.fail(new RoutingError({ reason, message }))
  const raw = {
    proto: HttpHeaders.single(headers, headerNames.proto),
    namespace: HttpHeaders.single(headers, headerNames.namespace),
    service: HttpHeaders.single(headers, headerNames.service),
    port: HttpHeaders.single(headers, headerNames.port)
  }
  const given = (key: keyof typeof raw) => {
    const value = raw[key]?.trim()
    return value === undefined || value === "" ? undefined : value
  }
  for (const key of ["proto", "namespace", "service", "port"] as const) {
    if (given(key) === undefined) {
      const count = HttpHeaders.values(headers, headerNames[key]).length
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
  if (isKubeApiserver(namespace, service)) return Result.succeed("KubeApiserver")
  if (!KubeNames.isNamespaceName(namespace)) {
    return fail("InvalidNamespace", `invalid ${headerNames.namespace} ${quote(namespace)}: must be a lower-case DNS label (RFC 1123)`)
  }
  if (!KubeNames.isServiceName(service)) {
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

/**
 * The headers a request may carry at most once, lower-cased, with their display names: the
 * credentials, the routing headers and `Host`.
 *
 * @since 0.1.0
 * @category headers
 */
export const singleHeaders: ReadonlyMap<string, string> = new Map([
  ["host", "Host"],
  ["authorization", "Authorization"],
  ...Object.values(headerNames).map((name) => [name.toLowerCase(), name] as const)
])

const singleHeaderNames: ReadonlySet<string> = new Set(singleHeaders.keys())

/**
 * A refusal when one of {@link singleHeaders} appears more than once in Node's `rawHeaders`;
 * undefined otherwise. Answered with 400.
 *
 * @since 0.1.0
 * @category routing
 */
export const repeatedHeader = (raw: ReadonlyArray<string>): RoutingError | undefined => {
  const repeated = HttpHeaders.repeatedHeader(raw, singleHeaderNames)
  return repeated === undefined ? undefined : new RoutingError({
    reason: "RepeatedHeader",
    message: `invalid request headers: ${singleHeaders.get(repeated) ?? repeated} is given more than once`
  })
}

/**
 * Whether a header (lower-cased name) is a `Cluster-Proxy-*` or `Impersonate-*` header, or a
 * look-alike of one: the same letters with `_`, `.` or any other separator, before or between
 * the words (`Impersonate_User`, `cluster.proxy.port`, `-impersonate-user`), which a backend
 * that normalises separators would read as the real one.
 *
 * @since 0.1.0
 * @category headers
 */
export const isInternalLookalike = (lowerName: string): boolean => {
  // On every forwarded header: only names with the right words are rewritten.
  if (!lowerName.includes("impersonate") && !(lowerName.includes("cluster") && lowerName.includes("proxy"))) return false
  const letters = lowerName.replace(/[^a-z0-9]/g, "")
  return letters.startsWith("clusterproxy") || letters.startsWith("impersonate")
}

/**
 * Whether a header (lower-cased name) belongs to tether's hops and never reaches a backend:
 * every `Cluster-Proxy-*` and `Impersonate-*`, and their look-alikes
 * ({@link isInternalLookalike}).
 *
 * @since 0.1.0
 * @category headers
 */
export const isInternal = (lowerName: string): boolean =>
  lowerName.startsWith("cluster-proxy-") || lowerName.startsWith("impersonate-") || isInternalLookalike(lowerName)

/**
 * Drop everything a backend must not see: every `Cluster-Proxy-*` and `Impersonate-*` header
 * and look-alike (the managed apiserver would honour impersonation with the relay's rights) and every
 * hop-by-hop header, including those named in `Connection`.
 *
 * @since 0.1.0
 * @category headers
 */
export const stripInternalHeaders = (headers: HttpHeaders.Headers): HttpHeaders.OutgoingHeaders => {
  const named = HttpHeaders.connectionOptions(headers)
  return HttpHeaders.keep(headers, (name) => isInternal(name) || HttpHeaders.hopByHopHeaders.has(name) || named.has(name))
}
