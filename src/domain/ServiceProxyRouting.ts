/**
 * What the service proxy does with a request, pure: which upstream it goes to, which headers
 * travel with it, and how a TokenReview answer is read.
 *
 * The proxy sits behind the konnectivity tunnel and receives requests addressed by the four
 * `Cluster-Proxy-*` routing headers (see {@link Routing}). Two kinds of target exist:
 * - the kube-apiserver (`kubernetes` in `default`, in any letter case, with any proto or port):
 *   the caller is authenticated by a TokenReview chain and the request is sent on with the
 *   proxy's own token, impersonating the caller;
 * - any other Service: reached directly (`<proto>://<svc>.<ns>.svc:<port>`), through the
 *   managed apiserver's `services/proxy` of the service relay, or refused, depending on the
 *   hosted mode.
 *
 * Invariants:
 * - A client never chooses whom the proxy impersonates: every client `Impersonate-*` header is
 *   dropped before the proxy's own are set, and the proxy's token only travels together with
 *   impersonation headers (kube-apiserver) or towards the relay Service (Relay mode).
 * - Paths sent to an apiserver never contain dot segments, so a request cannot climb out of
 *   `services/.../proxy` and run as the proxy's ServiceAccount.
 * - The managed server URL's path prefix (Rancher-style `/k8s/clusters/c-1`) is kept.
 * - A TokenReview `status.error` is read before `authenticated`; only a recognised rejection
 *   lets the chain try the next cluster, anything else fails closed.
 * - Tokens only enter this module inside `Redacted`; no message quotes a URL or a credential.
 *
 * @since 0.1.0
 */
import { Redacted, Result, Schema } from "effect"
import * as Routing from "./Routing.ts"
import * as ServerEndpoint from "./ServerEndpoint.ts"

// ---------------------------------------------------------------------------------------------
// modes
// ---------------------------------------------------------------------------------------------

/**
 * How Service targets are served in hosted mode.
 *
 * @since 0.1.0
 * @category models
 */
export type Mode = "Disabled" | "BestEffort" | "Relay"

/**
 * @since 0.1.0
 * @category constants
 */
export const modes: ReadonlyArray<Mode> = ["Disabled", "BestEffort", "Relay"]

/**
 * @since 0.1.0
 * @category errors
 */
export class InvalidMode extends Schema.TaggedError<InvalidMode>()("InvalidMode", {
  input: Schema.String,
  message: Schema.String
}) {}

/**
 * Parse a `--hosted-service-proxy-mode` value (exact spelling, surrounding blanks ignored).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseMode = (input: string): Result.Result<Mode, InvalidMode> => {
  const trimmed = input.trim()
  const found = modes.find((mode) => mode === trimmed)
  return found === undefined
    ? Result.fail(
      new InvalidMode({
        input,
        message: `hosted-service-proxy-mode must be one of Disabled, BestEffort, or Relay; got ${JSON.stringify(input)}`
      })
    )
    : Result.succeed(found)
}

/**
 * Where the proxy runs: next to the cluster it serves (`Direct`, the classic install), or on a
 * hosting cluster for a managed cluster it reaches through a kubeconfig (`Hosted`).
 *
 * @since 0.1.0
 * @category models
 */
export type Deployment =
  | { readonly _tag: "Direct" }
  | { readonly _tag: "Hosted"; readonly mode: Mode }

/**
 * The `mode` label of the request metric: `Direct` when not hosted, else the hosted mode.
 *
 * @since 0.1.0
 * @category models
 */
export type MetricMode = "Direct" | Mode

/**
 * @since 0.1.0
 * @category metrics
 */
export const metricMode = (deployment: Deployment): MetricMode =>
  deployment._tag === "Direct" ? "Direct" : deployment.mode

/**
 * The `target` label of the request metric.
 *
 * @since 0.1.0
 * @category models
 */
export type MetricTarget = "kube-apiserver" | "service" | "unknown"

// ---------------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------------

/**
 * What the routing headers name.
 *
 * @since 0.1.0
 * @category models
 */
export type RequestTarget =
  | { readonly _tag: "KubeApiserver" }
  | { readonly _tag: "Service"; readonly target: Routing.Target }

/**
 * Read the routing headers. All four must be present once; `kubernetes` in `default` is the
 * kube-apiserver whatever the letter case, proto or port; any other target must be a valid
 * Service address (see {@link Routing.route}). A refusal is answered with 400.
 *
 * @since 0.1.0
 * @category routing
 */
export const classify = (headers: Routing.Headers): Result.Result<RequestTarget, Routing.RoutingError> => {
  const routed = Routing.route(headers)
  if (Result.isSuccess(routed)) return Result.succeed({ _tag: "Service", target: routed.success })
  return routed.failure.reason === "KubeApiserver" ? Result.succeed({ _tag: "KubeApiserver" }) : Result.fail(routed.failure)
}

/**
 * @since 0.1.0
 * @category metrics
 */
export const metricTarget = (target: RequestTarget | undefined): MetricTarget =>
  target === undefined ? "unknown" : target._tag === "KubeApiserver" ? "kube-apiserver" : "service"

/**
 * What to do with a request (hosted-mode-spec 4.3):
 *
 * | target | deployment | decision |
 * |---|---|---|
 * | kube-apiserver | Direct | `Apiserver` (the in-cluster apiserver) |
 * | kube-apiserver | Hosted, any mode | `Apiserver` (the managed kubeconfig's server) |
 * | Service | Direct, or Hosted BestEffort | `Service` (`<proto>://<svc>.<ns>.svc:<port>`, resolved here) |
 * | Service | Hosted Relay | `Relay` (the managed apiserver's `services/proxy` of the relay) |
 * | Service | Hosted Disabled | `Refuse` 503 |
 *
 * @since 0.1.0
 * @category models
 */
export type Decision =
  | { readonly _tag: "Apiserver" }
  | { readonly _tag: "Service"; readonly target: Routing.Target }
  | { readonly _tag: "Relay"; readonly target: Routing.Target }
  | { readonly _tag: "Refuse"; readonly status: 503; readonly message: string }

/**
 * The 503 body of a Service request in Disabled mode.
 *
 * @since 0.1.0
 * @category constants
 */
export const disabledMessage = "service proxy disabled in hosted mode"

/**
 * @since 0.1.0
 * @category routing
 */
export const decide = (deployment: Deployment, target: RequestTarget): Decision => {
  if (target._tag === "KubeApiserver") return { _tag: "Apiserver" }
  if (deployment._tag === "Direct") return { _tag: "Service", target: target.target }
  switch (deployment.mode) {
    case "BestEffort":
      return { _tag: "Service", target: target.target }
    case "Relay":
      return { _tag: "Relay", target: target.target }
    case "Disabled":
      return { _tag: "Refuse", status: 503, message: disabledMessage }
  }
}

// ---------------------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------------------

/**
 * An apiserver base URL: where to connect, and the path every request path is put under.
 *
 * @since 0.1.0
 * @category models
 */
export interface ApiserverUrl {
  readonly scheme: "https" | "http"
  /** Host name or IP address; IPv6 without brackets. */
  readonly hostname: string
  readonly port: number
  /** `host:port` with IPv6 bracketed: the `Host` header. */
  readonly authority: string
  /** The server URL's path without a trailing slash: `""` or e.g. `/k8s/clusters/c-1`. */
  readonly pathPrefix: string
}

/**
 * @since 0.1.0
 * @category errors
 */
export class ApiserverUrlError extends Schema.TaggedError<ApiserverUrlError>()("ApiserverUrlError", {
  message: Schema.String
}) {}

/**
 * Parse a kubeconfig `server` URL. Scheme (http or https) and host are required; a path is kept
 * as the prefix; query and fragment are dropped. The message never quotes the URL (it may carry
 * `user:password@`).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseApiserverUrl = (server: string): Result.Result<ApiserverUrl, ApiserverUrlError> => {
  const endpoint = ServerEndpoint.fromServerUrl(server.trim())
  if (Result.isFailure(endpoint)) {
    return Result.fail(new ApiserverUrlError({ message: `managed apiserver URL must include scheme and host: ${endpoint.failure.message}` }))
  }
  const url = URL.parse(server.trim())
  const path = url === null ? "" : url.pathname
  const { host, port, scheme } = endpoint.success
  return Result.succeed({
    scheme,
    hostname: host,
    port,
    authority: ServerEndpoint.hostPort({ host, port }),
    pathPrefix: path.replace(/\/+$/, "")
  })
}

/**
 * `prefix` followed by `path` with exactly one slash between them; `path` may carry a query.
 *
 * @since 0.1.0
 * @category urls
 */
export const joinPath = (prefix: string, path: string): string => {
  const head = prefix.replace(/\/+$/, "")
  if (path === "") return `${head}/`
  return path.startsWith("/") ? `${head}${path}` : `${head}/${path}`
}

/**
 * The path (and query) of a request as received, in origin form; an absolute-form target is
 * reduced to its path and query. Undefined for anything else (`*`, authority form, garbage).
 *
 * @since 0.1.0
 * @category urls
 */
export const requestPath = (url: string | undefined): string | undefined => {
  if (url === undefined || url === "") return undefined
  if (url.startsWith("/")) return url.startsWith("//") ? undefined : url
  if (!/^https?:\/\//i.test(url)) return undefined
  const parsed = URL.parse(url)
  return parsed === null ? undefined : `${parsed.pathname}${parsed.search}`
}

/**
 * Whether the path part (before `?`) has a `.` or `..` segment, also when the dot or the slash
 * is percent-encoded or the separator is a backslash: such a path could leave the prefix it is
 * put under once the server normalises it.
 *
 * @since 0.1.0
 * @category urls
 */
export const hasDotSegment = (path: string): boolean => {
  const pathOnly = path.split("?", 1)[0] ?? ""
  const decoded = pathOnly.replace(/%2e/gi, ".").replace(/%2f/gi, "/").replace(/%5c/gi, "\\")
  return decoded.split(/[/\\]/).some((segment) => segment === "." || segment === "..")
}

/**
 * The relay Service the proxy reaches through `services/proxy`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RelayService {
  /** The add-on namespace (the same name on the hosting and the managed cluster). */
  readonly namespace: string
  readonly name: string
  readonly port: number
}

/**
 * `<prefix>/api/v1/namespaces/<ns>/services/http:<name>:<port>/proxy`: the relay Service's
 * proxy subresource under the managed server URL's path prefix.
 *
 * @since 0.1.0
 * @category urls
 */
export const relayBasePath = (server: ApiserverUrl, relay: RelayService): string =>
  `${server.pathPrefix}/api/v1/namespaces/${encodeURIComponent(relay.namespace)}/services/http:${
    encodeURIComponent(relay.name)
  }:${relay.port}/proxy`

/**
 * The full path (and query) of a relayed request: {@link relayBasePath} + the request path.
 *
 * @example
 * ```ts
 * relayPath(
 *   { scheme: "https", hostname: "host", port: 443, authority: "host:443", pathPrefix: "/k8s/clusters/c-1" },
 *   { namespace: "addon", name: "cluster-proxy-service-relay", port: 7444 },
 *   "/index.html?x=1"
 * )
 * // "/k8s/clusters/c-1/api/v1/namespaces/addon/services/http:cluster-proxy-service-relay:7444/proxy/index.html?x=1"
 * ```
 *
 * @since 0.1.0
 * @category urls
 */
export const relayPath = (server: ApiserverUrl, relay: RelayService, path: string): string =>
  joinPath(relayBasePath(server, relay), path)

/**
 * The full URL of a relayed request, for logs and tests.
 *
 * @since 0.1.0
 * @category urls
 */
export const relayUrl = (server: ApiserverUrl, relay: RelayService, path: string): string =>
  `${server.scheme}://${server.authority}${relayPath(server, relay, path)}`

// Kubernetes object names: RFC 1123 label (namespaces) and RFC 1035 label (Services).
const namespacePattern = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/
const servicePattern = /^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$/

/**
 * Check the relay settings: a namespace (RFC 1123 label), a Service name (RFC 1035 label) and
 * a port 1-65535. The error message names the setting.
 *
 * @since 0.1.0
 * @category parsing
 */
export const validateRelayService = (relay: RelayService): Result.Result<RelayService, string> => {
  if (!namespacePattern.test(relay.namespace)) {
    return Result.fail(`the relay namespace ${JSON.stringify(relay.namespace)} is not a valid namespace name`)
  }
  if (!servicePattern.test(relay.name)) {
    return Result.fail(`the service relay name ${JSON.stringify(relay.name)} is not a valid Service name (RFC 1035 label)`)
  }
  if (!Number.isInteger(relay.port) || relay.port < 1 || relay.port > 65535) {
    return Result.fail(`the service relay port ${relay.port} is not between 1 and 65535`)
  }
  return Result.succeed(relay)
}

// ---------------------------------------------------------------------------------------------
// TokenReview
// ---------------------------------------------------------------------------------------------

/**
 * Who a token belongs to, as TokenReview reports it.
 *
 * @since 0.1.0
 * @category models
 */
export interface UserInfo {
  readonly username: string
  readonly uid?: string | undefined
  readonly groups: ReadonlyArray<string>
  readonly extra: Readonly<Record<string, ReadonlyArray<string>>>
}

/**
 * The parts of a TokenReview status this module reads (structurally the client-node type).
 *
 * @since 0.1.0
 * @category models
 */
export interface ReviewStatus {
  readonly authenticated?: boolean | undefined
  readonly error?: string | undefined
  readonly user?: {
    readonly username?: string | undefined
    readonly uid?: string | undefined
    readonly groups?: ReadonlyArray<string> | undefined
    readonly extra?: { readonly [key: string]: ReadonlyArray<string> } | undefined
  } | undefined
}

/**
 * What one cluster says about a token.
 *
 * - `Authenticated`: the token is that cluster's and names `user`.
 * - `NotAuthenticated`: a recognised rejection; the next cluster of the chain may know the token.
 * - `Failed`: anything else the cluster reported; the chain stops and refuses (fail closed).
 *
 * @since 0.1.0
 * @category models
 */
export type ReviewOutcome =
  | { readonly _tag: "Authenticated"; readonly user: UserInfo }
  | { readonly _tag: "NotAuthenticated"; readonly detail: string }
  | { readonly _tag: "Failed"; readonly detail: string }

/**
 * The `status.error` text that means "not my token" on every kube-apiserver version seen.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultErrorPatterns: ReadonlyArray<string> = ["invalid bearer token"]

/**
 * Read a TokenReview status. `status.error` comes first: containing one of `patterns`
 * (case-insensitive) it is a rejection, any other text is a failure. Then `authenticated`;
 * an authenticated answer without a username is a failure too (there is no one to impersonate).
 *
 * @since 0.1.0
 * @category tokenreview
 */
export const classifyReview = (status: ReviewStatus | undefined, patterns: ReadonlyArray<string>): ReviewOutcome => {
  // An answer without a status is not a rejection: it is not a TokenReview answer at all.
  if (status === undefined || status === null || typeof status !== "object") {
    return { _tag: "Failed", detail: "the TokenReview answer has no status" }
  }
  const error = status.error?.trim() ?? ""
  if (error !== "") {
    const lower = error.toLowerCase()
    const recognised = patterns.some((pattern) => pattern.trim() !== "" && lower.includes(pattern.trim().toLowerCase()))
    return recognised ? { _tag: "NotAuthenticated", detail: error } : { _tag: "Failed", detail: error }
  }
  if (status?.authenticated !== true) return { _tag: "NotAuthenticated", detail: "the token is not authenticated" }
  const username = status.user?.username ?? ""
  if (username === "") return { _tag: "Failed", detail: "TokenReview authenticated the token but reported no username" }
  const extra: Record<string, ReadonlyArray<string>> = {}
  for (const [key, values] of Object.entries(status.user?.extra ?? {})) extra[key] = [...values]
  return {
    _tag: "Authenticated",
    user: {
      username,
      ...(status.user?.uid ? { uid: status.user.uid } : {}),
      groups: [...(status.user?.groups ?? [])],
      extra
    }
  }
}

// ---------------------------------------------------------------------------------------------
// impersonation
// ---------------------------------------------------------------------------------------------

/**
 * Which cluster authenticated the caller.
 *
 * @since 0.1.0
 * @category models
 */
export type Source = "managed" | "hub"

const serviceAccountPrefix = "system:serviceaccount:"

/**
 * The prefix given to hub ServiceAccounts on the managed cluster, so a hub identity can never be
 * mistaken for one of the managed cluster's own ServiceAccounts.
 *
 * @since 0.1.0
 * @category constants
 */
export const hubServiceAccountPrefix = "cluster:hub:"

/**
 * The user to impersonate: a hub ServiceAccount `system:serviceaccount:<ns>:<name>` becomes
 * `cluster:hub:system:serviceaccount:<ns>:<name>`; every other name is kept.
 *
 * @since 0.1.0
 * @category impersonation
 */
export const impersonatedUsername = (source: Source, username: string): string =>
  source === "hub" && username.startsWith(serviceAccountPrefix) ? `${hubServiceAccountPrefix}${username}` : username

/**
 * The groups to impersonate: as reported, without duplicates, with `system:authenticated`
 * added when missing (an impersonated user does not get it on its own). A hub ServiceAccount's
 * ServiceAccount groups (`system:serviceaccounts`, `system:serviceaccounts:<ns>`) get the hub
 * prefix like its name, so a managed-cluster binding to the ServiceAccounts of a namespace never
 * grants a hub ServiceAccount of a namespace with the same name.
 *
 * @since 0.1.0
 * @category impersonation
 */
export const impersonatedGroups = (source: Source, username: string, groups: ReadonlyArray<string>): ReadonlyArray<string> => {
  const hubServiceAccount = source === "hub" && username.startsWith(serviceAccountPrefix)
  const mapped = groups
    .filter((group) => group !== "")
    .map((group) =>
      hubServiceAccount && (group === serviceAccountsGroup || group.startsWith(`${serviceAccountsGroup}:`))
        ? `${hubServiceAccountPrefix}${group}`
        : group
    )
  const out = [...new Set(mapped)]
  if (!out.includes("system:authenticated")) out.push("system:authenticated")
  return out
}

const serviceAccountsGroup = "system:serviceaccounts"

// RFC 9110 token characters, the only bytes allowed in a header name.
const tokenByte = (byte: number): boolean =>
  (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) ||
  "!#$&'*+-.^_`|~".includes(String.fromCharCode(byte))

/**
 * Escape an extra key for an `Impersonate-Extra-<key>` header name: every byte of its UTF-8
 * form that is not a header token character, and `%` itself, becomes `%XX`. The apiserver
 * percent-decodes the name (and lower-cases it, as extra keys are case-insensitive).
 *
 * @since 0.1.0
 * @category impersonation
 */
export const escapeExtraKey = (key: string): string => {
  let out = ""
  for (const byte of Buffer.from(key, "utf8")) {
    out += tokenByte(byte) && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`
  }
  return out
}

/**
 * @since 0.1.0
 * @category errors
 */
export class ImpersonationError extends Schema.TaggedError<ImpersonationError>()("ImpersonationError", {
  message: Schema.String
}) {}

// A header value Node accepts and an apiserver reads back unchanged: printable Latin-1, no controls.
const headerValuePattern = /^[\t\x20-\x7e\x80-\xff]*$/

/**
 * The impersonation headers for an authenticated caller: `Impersonate-User`,
 * `Impersonate-Group` (one per group, `system:authenticated` included) and
 * `Impersonate-Extra-<escaped key>` (one per value). A name or value that cannot travel in a
 * header is an error (dropping it would change who the request runs as).
 *
 * @since 0.1.0
 * @category impersonation
 */
export const impersonationHeaders = (
  source: Source,
  user: UserInfo
): Result.Result<Routing.OutgoingHeaders, ImpersonationError> => {
  const username = impersonatedUsername(source, user.username)
  const groups = impersonatedGroups(source, user.username, user.groups)
  const fail = (what: string) =>
    Result.fail(new ImpersonationError({ message: `cannot impersonate the caller: ${what} cannot be sent in a header` }))
  if (username.trim() === "" || !headerValuePattern.test(username)) return fail("the username")
  if (groups.some((group) => !headerValuePattern.test(group))) return fail("a group name")
  const out: Routing.OutgoingHeaders = { "impersonate-user": username, "impersonate-group": groups }
  for (const [key, values] of Object.entries(user.extra)) {
    if (key === "") return fail("an empty extra key")
    if (values.some((value) => !headerValuePattern.test(value))) return fail(`a value of extra ${JSON.stringify(key)}`)
    if (values.length === 0) continue
    const name = `impersonate-extra-${escapeExtraKey(key.toLowerCase())}`
    const previous = out[name]
    out[name] = previous === undefined ? [...values] : [...(typeof previous === "string" ? [previous] : previous), ...values]
  }
  return Result.succeed(out)
}

// ---------------------------------------------------------------------------------------------
// headers per upstream
// ---------------------------------------------------------------------------------------------

const bearer = (token: Redacted.Redacted<string>): string => `Bearer ${Redacted.value(token)}`

/** The upgrade pair back after stripping hop-by-hop headers, when the client asked for one. */
const withUpgrade = (headers: Routing.Headers, out: Routing.OutgoingHeaders): Routing.OutgoingHeaders => {
  const protocol = Routing.upgradeProtocol(headers)
  if (protocol !== undefined) {
    out["connection"] = "Upgrade"
    out["upgrade"] = protocol
  }
  return out
}

const withoutAuthorization = (headers: Routing.OutgoingHeaders): Routing.OutgoingHeaders => {
  const { authorization: _dropped, ...rest } = headers
  return rest
}

/**
 * Headers for the kube-apiserver when the caller was authenticated: the client's
 * `Authorization`, `Impersonate-*`, `Cluster-Proxy-*` and hop-by-hop headers dropped, the
 * impersonation headers and the proxy's own bearer token set, `Host` set to the apiserver.
 *
 * @since 0.1.0
 * @category headers
 */
export const impersonatingHeaders = (
  headers: Routing.Headers,
  impersonation: Routing.OutgoingHeaders,
  token: Redacted.Redacted<string>,
  authority: string
): Routing.OutgoingHeaders => {
  const out = withoutAuthorization(Routing.stripInternalHeaders(headers))
  return withUpgrade(headers, { ...out, ...impersonation, authorization: bearer(token), host: authority })
}

/**
 * Headers for the kube-apiserver when impersonation is turned off: the client's own credential
 * (and any `Impersonate-*` it chose, evaluated with that credential) go through; only
 * `Cluster-Proxy-*` and hop-by-hop headers are dropped.
 *
 * @since 0.1.0
 * @category headers
 */
export const passThroughHeaders = (headers: Routing.Headers, authority: string): Routing.OutgoingHeaders => {
  const kept: Routing.OutgoingHeaders = {}
  for (const [name, value] of Object.entries(Routing.stripHopByHop(headers))) {
    if (!name.startsWith("cluster-proxy-")) kept[name] = value
  }
  return withUpgrade(headers, { ...kept, host: authority })
}

/**
 * Headers for a Service reached directly (Direct or BestEffort): the client's `Authorization`
 * is kept; `Cluster-Proxy-*`, `Impersonate-*` and hop-by-hop headers are dropped; `Host` is the
 * Service authority.
 *
 * @since 0.1.0
 * @category headers
 */
export const serviceHeaders = (headers: Routing.Headers, target: Routing.Target): Routing.OutgoingHeaders =>
  withUpgrade(headers, { ...Routing.stripInternalHeaders(headers), host: target.authority })

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
  headers: Routing.Headers,
  target: Routing.Target,
  token: Redacted.Redacted<string>,
  authority: string
): Routing.OutgoingHeaders => {
  const original = Routing.values(headers, "authorization")
  const out = withoutAuthorization(Routing.stripInternalHeaders(headers))
  if (original.length === 1 && original[0] !== "") out[Routing.headerNames.authorization.toLowerCase()] = original[0] ?? ""
  out["authorization"] = bearer(token)
  out[Routing.headerNames.relayAuthorization.toLowerCase()] = bearer(token)
  out[Routing.headerNames.proto.toLowerCase()] = target.proto
  out[Routing.headerNames.namespace.toLowerCase()] = target.namespace
  out[Routing.headerNames.service.toLowerCase()] = target.service
  out[Routing.headerNames.port.toLowerCase()] = String(target.port)
  out["host"] = authority
  return withUpgrade(headers, out)
}

/**
 * The caller's bearer token from `Authorization` only (a proxied client has no other place
 * for it). Undefined when absent or not a bearer token.
 *
 * @since 0.1.0
 * @category headers
 */
export const callerToken = (headers: Routing.Headers): Redacted.Redacted<string> | undefined => {
  const values = Routing.values(headers, "authorization")
  if (values.length !== 1) return undefined
  const match = /^bearer[ \t]+([^ \t]+)[ \t]*$/i.exec(values[0] ?? "")
  return match?.[1] === undefined ? undefined : Redacted.make(match[1])
}
