/**
 * HTTP header hygiene both proxies share, pure: reading a header in any letter case, dropping
 * hop-by-hop headers, putting an upgrade back, and reading a bearer token. The policies built on
 * it (what each proxy sends upstream) are {@link ServiceRouting} `forwardHeaders` for the
 * service relay and {@link ServiceProxyHeaders} for the service proxy.
 *
 * Header names are matched case-insensitively, so the functions accept Node's lower-cased
 * `IncomingHttpHeaders` as well as hand-written records.
 *
 * @since 0.1.0
 */
import { Redacted } from "effect"

/**
 * Headers as Node hands them over: any letter case, one value or several.
 *
 * @since 0.1.0
 * @category models
 */
export type Headers = Readonly<Record<string, string | ReadonlyArray<string> | undefined>>

/**
 * Headers built for an upstream: names lower-cased, values as given.
 *
 * @since 0.1.0
 * @category models
 */
export type OutgoingHeaders = Record<string, string | ReadonlyArray<string>>

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

/**
 * The one value of a header; undefined when absent, or when sent more than once (ambiguous).
 *
 * @since 0.1.0
 * @category headers
 */
export const single = (headers: Headers, name: string): string | undefined => {
  const all = values(headers, name)
  return all.length === 1 ? all[0] : undefined
}

/**
 * The first of `names` (lower-cased) that appears more than once in Node's `rawHeaders` (name,
 * value, name, value, ...), lower-cased; undefined when none does. Node's parsed `headers` cannot
 * tell: it keeps the first `Authorization` or `Host` and drops the rest, and joins other
 * repeated headers with `, `.
 *
 * @since 0.1.0
 * @category headers
 */
export const repeatedHeader = (raw: ReadonlyArray<string>, names: ReadonlySet<string>): string | undefined => {
  let seen: Set<string> | undefined
  const lengths = lengthsOf(names)
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    // On every request path: only names that could match are lower-cased.
    if (!lengths.has(name.length)) continue
    const lower = name.toLowerCase()
    if (!names.has(lower)) continue
    if (seen?.has(lower) === true) return lower
    ;(seen ??= new Set()).add(lower)
  }
  return undefined
}

const nameLengths = new WeakMap<ReadonlySet<string>, ReadonlySet<number>>()
const lengthsOf = (names: ReadonlySet<string>): ReadonlySet<number> => {
  let lengths = nameLengths.get(names)
  if (lengths === undefined) {
    lengths = new Set([...names].map((name) => name.length))
    nameLengths.set(names, lengths)
  }
  return lengths
}

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

/**
 * Header names listed in `Connection` (lower-cased): these are hop-by-hop too.
 *
 * @since 0.1.0
 * @category headers
 */
export const connectionOptions = (headers: Headers): ReadonlySet<string> => {
  const names = new Set<string>()
  for (const value of values(headers, "connection")) addConnectionOptions(names, value)
  return names
}

/**
 * Add the names a `Connection` value lists (lower-cased) to `names`.
 *
 * @since 0.1.0
 * @category headers
 */
export const addConnectionOptions = (names: Set<string>, connection: string): void => {
  for (const token of connection.split(",")) {
    const name = token.trim().toLowerCase()
    if (name !== "") names.add(name)
  }
}

/**
 * The headers whose lower-cased name `drop` does not refuse, names lower-cased and merged.
 *
 * @since 0.1.0
 * @category headers
 */
export const keep = (headers: Headers, drop: (lowerName: string) => boolean): OutgoingHeaders => {
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
 * Drop hop-by-hop headers, including those named in `Connection`.
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
 * on every forwarded response.
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
 * Put the `Connection: Upgrade` / `Upgrade` pair back on headers built for an upstream, when the
 * client asked for an upgrade: they are hop-by-hop, but the upgrade is what the client asked the
 * proxy to carry through.
 *
 * @since 0.1.0
 * @category headers
 */
export const withUpgrade = (headers: Headers, out: OutgoingHeaders): OutgoingHeaders => {
  const protocol = upgradeProtocol(headers)
  if (protocol !== undefined) {
    out["connection"] = "Upgrade"
    out["upgrade"] = protocol
  }
  return out
}

/**
 * `headers` without `Authorization`.
 *
 * @since 0.1.0
 * @category headers
 */
export const withoutAuthorization = (headers: OutgoingHeaders): OutgoingHeaders => {
  const { authorization: _dropped, ...rest } = headers
  return rest
}

// ---------------------------------------------------------------------------------------------
// bearer tokens
// ---------------------------------------------------------------------------------------------

/**
 * The one bearer rule: `Bearer <token>`, the scheme in any case, blanks around, one token.
 *
 * @since 0.1.0
 * @category bearer
 */
export const bearerPattern = /^bearer[ \t]+([^ \t]+)[ \t]*$/i

/**
 * The token of a `Bearer` credential, or undefined.
 *
 * @since 0.1.0
 * @category bearer
 */
export const parseBearer = (value: string | undefined): string | undefined =>
  value === undefined ? undefined : bearerPattern.exec(value)?.[1]

/**
 * The bearer token in header `name`, as plain text: undefined when the header is absent, sent
 * more than once, or not a bearer credential. Wrap it in `Redacted` before it is kept or passed
 * on; plain text is for synchronous cache lookups (each `Redacted` costs the garbage collector,
 * see {@link forgetToken}).
 *
 * @since 0.1.0
 * @category bearer
 */
export const bearerIn = (headers: Headers, name: string): string | undefined => parseBearer(single(headers, name))

/**
 * `Bearer <token>`, for an upstream `Authorization`.
 *
 * @since 0.1.0
 * @category bearer
 */
export const bearer = (token: Redacted.Redacted<string>): string => `Bearer ${Redacted.value(token)}`

/**
 * Forget a request's token once the request is done with it. Every live `Redacted` is an entry
 * in one process-wide WeakMap that each young-generation collection visits; left to the
 * collector, a busy relay's tokens made those collections several times longer.
 *
 * @since 0.1.0
 * @category bearer
 */
export const forgetToken = (token: Redacted.Redacted<string> | undefined): void => {
  if (token !== undefined) Redacted.wipeUnsafe(token)
}
