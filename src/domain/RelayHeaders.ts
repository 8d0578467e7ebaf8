/**
 * What the service relay sends a backend, pure: the client's own credential restored, every
 * internal and hop-by-hop header dropped, `Host` set to the target. And whose token the relay
 * reviews: its caller's (the hosted service-proxy's), from `Authorization` or, when the managed
 * apiserver consumed that on the way, `Cluster-Proxy-Relay-Authorization`.
 *
 * Bearer tokens leave this module only inside `Redacted`, or as plain text for a synchronous
 * cache lookup.
 *
 * @since 0.1.0
 */
import { Redacted } from "effect"
import * as HttpHeaders from "./HttpHeaders.ts"
import * as ServiceRouting from "./ServiceRouting.ts"

/**
 * Put the client's own credential back: `Authorization` becomes the value of
 * `Cluster-Proxy-Authorization` when that is present (once), and is removed otherwise, so the
 * relay caller's token never reaches a backend. `Cluster-Proxy-Authorization` is removed.
 *
 * @since 0.1.0
 * @category headers
 */
export const restoreAuthorization = (headers: HttpHeaders.Headers): HttpHeaders.OutgoingHeaders => {
  const original = HttpHeaders.single(headers, ServiceRouting.headerNames.authorization)
  const out = HttpHeaders.keep(headers, (name) => name === "authorization" || name === "cluster-proxy-authorization")
  if (original !== undefined && original !== "") out["authorization"] = original
  return out
}

/**
 * {@link bearerToken} as plain text, for a synchronous cache lookup that has no use for a
 * `Redacted` (each one costs the garbage collector, see {@link HttpHeaders.forgetToken}). Wrap it before it
 * is kept or passed on.
 *
 * @since 0.1.0
 * @category headers
 */
export const bearerTokenText = (headers: HttpHeaders.Headers): string | undefined =>
  HttpHeaders.bearerIn(headers, "authorization") ?? HttpHeaders.bearerIn(headers, ServiceRouting.headerNames.relayAuthorization)

/**
 * The relay caller's bearer token: from `Authorization`, else from
 * `Cluster-Proxy-Relay-Authorization` (the managed apiserver consumes `Authorization` when the
 * request comes through `services/proxy`). Undefined when neither holds a bearer token. Forget
 * it when done ({@link HttpHeaders.forgetToken}).
 *
 * @since 0.1.0
 * @category headers
 */
export const bearerToken = (headers: HttpHeaders.Headers): Redacted.Redacted<string> | undefined => {
  const text = bearerTokenText(headers)
  return text === undefined ? undefined : Redacted.make(text)
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
export const forwardHeaders = (headers: HttpHeaders.Headers, target: ServiceRouting.Target): HttpHeaders.OutgoingHeaders => {
  const out = ServiceRouting.stripInternalHeaders(restoreAuthorization(headers))
  out["host"] = target.authority
  return HttpHeaders.withUpgrade(headers, out)
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
export const forwardRawHeaders = (raw: ReadonlyArray<string>, target: ServiceRouting.Target): Array<string> => {
  let named: Set<string> | undefined
  let restored: string | undefined
  let restoredCount = 0
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase()
    if (name === "connection") {
      HttpHeaders.addConnectionOptions(named ??= new Set(), raw[i + 1]!)
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
      name === "host" || name === "authorization" || name === "expect" || ServiceRouting.isInternal(name) || HttpHeaders.hopByHopHeaders.has(name) ||
      named?.has(name) === true
    ) continue
    out.push(raw[i]!, raw[i + 1]!)
  }
  return out
}
