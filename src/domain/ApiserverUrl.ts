/**
 * Where the service proxy sends a request on the managed apiserver, pure: the kubeconfig's
 * server URL (its path prefix kept, Rancher-style `/k8s/clusters/c-1`) and the relay Service's
 * `services/proxy` path under it.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import * as KubeNames from "./KubeNames.ts"
import * as RequestPath from "./RequestPath.ts"
import * as ServerEndpoint from "./ServerEndpoint.ts"


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
  RequestPath.joinPath(relayBasePath(server, relay), path)

/**
 * The full URL of a relayed request, for logs and tests.
 *
 * @since 0.1.0
 * @category urls
 */
export const relayUrl = (server: ApiserverUrl, relay: RelayService, path: string): string =>
  `${server.scheme}://${server.authority}${relayPath(server, relay, path)}`

/**
 * The relay Service's settings cannot address a Service; `setting` names which one.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidRelayService extends Schema.TaggedError<InvalidRelayService>()("InvalidRelayService", {
  setting: Schema.Literals(["namespace", "name", "port"]),
  message: Schema.String
}) {}

/**
 * Check the relay settings: a namespace (RFC 1123 label), a Service name (RFC 1035 label) and
 * a port 1-65535. The error message names the setting.
 *
 * @since 0.1.0
 * @category parsing
 */
export const validateRelayService = (relay: RelayService): Result.Result<RelayService, InvalidRelayService> => {
  if (!KubeNames.isNamespaceName(relay.namespace)) {
    return Result.fail(
      new InvalidRelayService({ setting: "namespace", message: `the relay namespace ${JSON.stringify(relay.namespace)} is not a valid namespace name` })
    )
  }
  if (!KubeNames.isServiceName(relay.name)) {
    return Result.fail(new InvalidRelayService({
      setting: "name",
      message: `the service relay name ${JSON.stringify(relay.name)} is not a valid Service name (RFC 1035 label)`
    }))
  }
  if (!Number.isInteger(relay.port) || relay.port < 1 || relay.port > 65535) {
    return Result.fail(new InvalidRelayService({ setting: "port", message: `the service relay port ${relay.port} is not between 1 and 65535` }))
  }
  return Result.succeed(relay)
}
