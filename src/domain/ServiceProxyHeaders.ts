/**
 * What the service proxy sends each upstream, pure: the header policy per decision
 * ({@link ServiceProxyMode.decide}), over the shared hygiene of {@link HttpHeaders}.
 *
 * Invariants:
 * - A client never chooses whom the proxy impersonates: every client `Impersonate-*` header is
 *   dropped before the proxy's own are set, and the proxy's token only travels together with
 *   impersonation headers (kube-apiserver) or towards the relay Service (Relay mode).
 * - Tokens only enter this module inside `Redacted`.
 *
 * @since 0.1.0
 */
import { Redacted } from "effect"
import * as HttpHeaders from "./HttpHeaders.ts"
import * as ServiceRouting from "./ServiceRouting.ts"


/**
 * Headers for the kube-apiserver when the caller was authenticated: the client's
 * `Authorization`, `Impersonate-*`, `Cluster-Proxy-*` and hop-by-hop headers dropped, the
 * impersonation headers and the proxy's own bearer token set, `Host` set to the apiserver.
 *
 * @since 0.1.0
 * @category headers
 */
export const impersonatingHeaders = (
  headers: HttpHeaders.Headers,
  impersonation: HttpHeaders.OutgoingHeaders,
  token: Redacted.Redacted<string>,
  authority: string
): HttpHeaders.OutgoingHeaders => {
  const out = HttpHeaders.withoutAuthorization(ServiceRouting.stripInternalHeaders(headers))
  return HttpHeaders.withUpgrade(headers, { ...out, ...impersonation, authorization: HttpHeaders.bearer(token), host: authority })
}

/**
 * Headers for the kube-apiserver when impersonation is turned off: the client's own credential
 * (and any `Impersonate-*` it chose, evaluated with that credential) go through; only
 * `Cluster-Proxy-*` and hop-by-hop headers are dropped.
 *
 * @since 0.1.0
 * @category headers
 */
export const passThroughHeaders = (headers: HttpHeaders.Headers, authority: string): HttpHeaders.OutgoingHeaders => {
  const kept: HttpHeaders.OutgoingHeaders = {}
  for (const [name, value] of Object.entries(HttpHeaders.stripHopByHop(headers))) {
    // Cluster-Proxy-* look-alikes (`Cluster_Proxy_Port`) go too; Impersonate-* is the client's own.
    if (!name.replace(/[^a-z0-9]/g, "").startsWith("clusterproxy")) kept[name] = value
  }
  return HttpHeaders.withUpgrade(headers, { ...kept, host: authority })
}

/**
 * Headers for a Service reached directly (Direct or BestEffort): the client's `Authorization`
 * is kept; `Cluster-Proxy-*`, `Impersonate-*` and hop-by-hop headers are dropped; `Host` is the
 * Service authority.
 *
 * @since 0.1.0
 * @category headers
 */
export const serviceHeaders = (headers: HttpHeaders.Headers, target: ServiceRouting.Target): HttpHeaders.OutgoingHeaders =>
  HttpHeaders.withUpgrade(headers, { ...ServiceRouting.stripInternalHeaders(headers), host: target.authority })

/**
 * Headers for the relay hop through the managed apiserver's `services/proxy` (hosted-mode-spec
 * 4.5, with the later fixes):
 * - the client's `Authorization` moves to `Cluster-Proxy-Authorization` (the apiserver deletes
 *   `Authorization` once it has authenticated the hop); client-sent values of
 *   `Cluster-Proxy-Authorization` and `Cluster-Proxy-Relay-Authorization` are dropped;
 * - the proxy's token goes in `Authorization` (for the apiserver) and in
 *   `Cluster-Proxy-Relay-Authorization` (for the relay's own TokenReview);
 * - the four routing headers are set from the validated target;
 * - every client `Impersonate-*` header is dropped (the apiserver would honour them with the
 *   proxy's rights), as are other `Cluster-Proxy-*` and hop-by-hop headers.
 *
 * @since 0.1.0
 * @category headers
 */
export const relayHeaders = (
  headers: HttpHeaders.Headers,
  target: ServiceRouting.Target,
  token: Redacted.Redacted<string>,
  authority: string
): HttpHeaders.OutgoingHeaders => {
  const original = HttpHeaders.values(headers, "authorization")
  const out = HttpHeaders.withoutAuthorization(ServiceRouting.stripInternalHeaders(headers))
  if (original.length === 1 && original[0] !== "") out[ServiceRouting.headerNames.authorization.toLowerCase()] = original[0] ?? ""
  out["authorization"] = HttpHeaders.bearer(token)
  out[ServiceRouting.headerNames.relayAuthorization.toLowerCase()] = HttpHeaders.bearer(token)
  out[ServiceRouting.headerNames.proto.toLowerCase()] = target.proto
  out[ServiceRouting.headerNames.namespace.toLowerCase()] = target.namespace
  out[ServiceRouting.headerNames.service.toLowerCase()] = target.service
  out[ServiceRouting.headerNames.port.toLowerCase()] = String(target.port)
  out["host"] = authority
  return HttpHeaders.withUpgrade(headers, out)
}

const clientAuthorization = ServiceRouting.headerNames.authorization.toLowerCase()
const relayAuthorization = ServiceRouting.headerNames.relayAuthorization.toLowerCase()
const proto = ServiceRouting.headerNames.proto.toLowerCase()
const namespace = ServiceRouting.headerNames.namespace.toLowerCase()
const service = ServiceRouting.headerNames.service.toLowerCase()
const port = ServiceRouting.headerNames.port.toLowerCase()

/**
 * The client headers every upstream of the service proxy may see, from Node's `rawHeaders`
 * (name, value, name, value, ...) appended to `out` in one pass: every internal
 * (`Cluster-Proxy-*`, `Impersonate-*`), hop-by-hop (and `Connection`-named), `Authorization`,
 * `Host` and `Expect` header dropped. Answers whether `Connection` listed `upgrade`.
 *
 * The proxy's own server has answered `100 Continue` and receives the whole body itself, so
 * `Expect` never goes on.
 */
const appendKeptRaw = (raw: ReadonlyArray<string>, out: Array<string>): boolean => {
  let named: Set<string> | undefined
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length === 10 && name.toLowerCase() === "connection") HttpHeaders.addConnectionOptions(named ??= new Set(), raw[i + 1]!)
  }
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase()
    if (
      name === "authorization" || name === "host" || name === "expect" || ServiceRouting.isInternal(name) ||
      HttpHeaders.hopByHopHeaders.has(name) || named?.has(name) === true
    ) continue
    out.push(raw[i]!, raw[i + 1]!)
  }
  return named?.has("upgrade") === true
}

/** The `Connection: Upgrade` / `Upgrade` pair, as {@link HttpHeaders.withUpgrade} puts it back. */
const appendUpgrade = (headers: HttpHeaders.Headers, out: Array<string>): void => {
  const protocol = HttpHeaders.upgradeProtocol(headers)
  if (protocol !== undefined) out.push("connection", "Upgrade", "upgrade", protocol)
}

/**
 * {@link impersonatingHeaders} in the flat form the forwarder's fast path takes, built in one
 * pass over Node's `rawHeaders` (`headers` is the same request's header record). The same
 * headers go upstream, in a different order.
 *
 * @since 0.1.0
 * @category headers
 */
export const impersonatingRawHeaders = (
  headers: HttpHeaders.Headers,
  raw: ReadonlyArray<string>,
  impersonation: HttpHeaders.OutgoingHeaders,
  token: Redacted.Redacted<string>,
  authority: string
): Array<string> => {
  const out = ["host", authority, "authorization", HttpHeaders.bearer(token)]
  for (const name in impersonation) {
    if (!Object.hasOwn(impersonation, name)) continue
    const value = impersonation[name]!
    if (typeof value === "string") out.push(name, value)
    else for (const one of value) out.push(name, one)
  }
  if (appendKeptRaw(raw, out)) appendUpgrade(headers, out)
  return out
}

/**
 * {@link relayHeaders} in the flat form the forwarder's fast path takes, built in one pass over
 * Node's `rawHeaders` (`headers` is the same request's header record, whose one
 * `Authorization` is the one carried, as Node keeps the first of several). The same headers go
 * upstream, in a different order.
 *
 * @since 0.1.0
 * @category headers
 */
export const relayRawHeaders = (
  headers: HttpHeaders.Headers,
  raw: ReadonlyArray<string>,
  target: ServiceRouting.Target,
  token: Redacted.Redacted<string>,
  authority: string
): Array<string> => {
  const bearer = HttpHeaders.bearer(token)
  const out = [
    "host",
    authority,
    "authorization",
    bearer,
    relayAuthorization,
    bearer,
    proto,
    target.proto,
    namespace,
    target.namespace,
    service,
    target.service,
    port,
    String(target.port)
  ]
  const original = HttpHeaders.values(headers, "authorization")
  if (original.length === 1 && original[0] !== "") out.push(clientAuthorization, original[0]!)
  if (appendKeptRaw(raw, out)) appendUpgrade(headers, out)
  return out
}

/**
 * The caller's bearer token from `Authorization` only (a proxied client has no other place
 * for it). Undefined when absent or not a bearer token.
 *
 * @since 0.1.0
 * @category headers
 */
export const callerToken = (headers: HttpHeaders.Headers): Redacted.Redacted<string> | undefined => {
  const text = callerTokenText(headers)
  return text === undefined ? undefined : Redacted.make(text)
}

/**
 * {@link callerToken} as plain text, for a synchronous cache lookup. Wrap it before it is kept
 * or passed on.
 *
 * @since 0.1.0
 * @category headers
 */
export const callerTokenText = (headers: HttpHeaders.Headers): string | undefined => HttpHeaders.bearerIn(headers, "authorization")
