/**
 * The managed API server as a TCP destination, derived from a kubeconfig `server` URL, for
 * the raw TCP relay (managed-apiserver-proxy). Only `https` and `http` make sense there;
 * the default ports follow the scheme.
 *
 * Error messages never echo the URL: a `server` may carry `user:password@`.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"

/**
 * @since 0.1.0
 * @category models
 */
export interface ServerEndpoint {
  /** Host name or IP address; IPv6 without brackets (`::1`). */
  readonly host: string
  readonly port: number
  readonly scheme: "https" | "http"
}

/**
 * A `server` value the relay cannot dial. Terminal until the source kubeconfig changes.
 *
 * @since 0.1.0
 * @category errors
 */
export class ServerEndpointError extends Schema.TaggedError<ServerEndpointError>()("ServerEndpointError", {
  message: Schema.String
}) {}

/**
 * Parses a kubeconfig `server` URL into host, port and scheme.
 *
 * **Gotchas**
 *
 * - A scheme is required (`https://host:6443`); `host:6443` is refused, not guessed.
 * - Any path prefix in the URL is ignored here; the TCP relay does not need it.
 *
 * @since 0.1.0
 * @category parsing
 */
export const fromServerUrl = (server: string): Result.Result<ServerEndpoint, ServerEndpointError> => {
  const fail = (message: string) => Result.fail(new ServerEndpointError({ message }))
  const separator = server.indexOf("://")
  const scheme = separator > 0 ? server.slice(0, separator).toLowerCase() : ""
  if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) return fail("server URL has no scheme (expected https:// or http://)")
  if (scheme !== "https" && scheme !== "http") return fail(`unsupported server scheme ${JSON.stringify(scheme)}`)
  // The authority without any `user:password@`; checked before URL parsing so "https://" and
  // "https://:6443" say what is wrong instead of "not a valid URL".
  const authority = server.slice(separator + 3).split(/[/?#]/, 1)[0] ?? ""
  const hostAndPort = authority.slice(authority.lastIndexOf("@") + 1)
  if (hostAndPort === "" || hostAndPort.startsWith(":")) return fail("server URL has no host")
  const url = URL.parse(server)
  if (url === null) return fail("server URL is not a valid URL")
  const host = url.hostname.startsWith("[") && url.hostname.endsWith("]") ? url.hostname.slice(1, -1) : url.hostname
  if (host === "") return fail("server URL has no host")
  const port = url.port === "" ? (scheme === "https" ? 443 : 80) : Number(url.port)
  // URL accepts port 0, which nothing can dial.
  if (port < 1) return fail("server URL has an invalid port")
  return Result.succeed({ host, port, scheme })
}

/**
 * `host:port` for dialing and `Host` headers, with brackets around IPv6 addresses (`[::1]:443`).
 *
 * @since 0.1.0
 * @category formatting
 */
export const hostPort = (endpoint: Pick<ServerEndpoint, "host" | "port">): string =>
  `${endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`

/**
 * The endpoint as a URL with an explicit port: `https://[::1]:443`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (endpoint: ServerEndpoint): string => `${endpoint.scheme}://${hostPort(endpoint)}`
