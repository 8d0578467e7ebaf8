/**
 * Listen addresses in the Go `host:port` form the prototype's flags use (`:8000`,
 * `127.0.0.1:8443`, `[::1]:7444`). An empty host means every interface.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"

/** @category models */
export interface ListenAddress {
  /** Undefined means all interfaces. */
  readonly host: string | undefined
  readonly port: number
}

/** @category errors */
export class InvalidListenAddress extends Schema.TaggedError<InvalidListenAddress>()("InvalidListenAddress", {
  input: Schema.String,
  message: Schema.String
}) {}

/**
 * Parse `host:port`, `:port` or `[v6]:port`. Port 0 asks the OS for a free port.
 *
 * @category parsing
 */
export const parse = (input: string): Result.Result<ListenAddress, InvalidListenAddress> => {
  const fail = (why: string) =>
    Result.fail(new InvalidListenAddress({ input, message: `invalid listen address "${input}": ${why}` }))
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(input.trim())
  if (match === null) return fail("expected host:port, :port or [ipv6]:port")
  const port = Number(match[3])
  if (!Number.isInteger(port) || port > 65535) return fail("port must be between 0 and 65535")
  const host = match[1] ?? match[2]
  return Result.succeed({ host: host === undefined || host === "" ? undefined : host, port })
}

/** `host:port` again, brackets around IPv6 hosts. @category formatting */
export const format = (address: ListenAddress): string => {
  const host = address.host ?? ""
  return `${host.includes(":") ? `[${host}]` : host}:${address.port}`
}

/**
 * Why a listen fails the same way however often it is tried: the port is taken, the address is
 * not this host's, or binding it is not allowed. A supervisor stops restarting on these.
 *
 * @since 0.1.0
 * @category errors
 */
export const terminalListenCodes: ReadonlySet<string> = new Set(["EADDRINUSE", "EADDRNOTAVAIL", "EACCES", "EPERM"])

/** The errno code of a Node error, if it has one. @since 0.1.0 @category errors */
export const errorCode = (error: unknown): string | undefined => {
  const code = typeof error === "object" && error !== null ? (error as { readonly code?: unknown }).code : undefined
  return typeof code === "string" ? code : undefined
}

/**
 * A listening socket could not be opened (`code` is the system's: EADDRINUSE, ...), or was lost
 * while serving (no code). Terminal codes are not retryable; a supervisor restarts the rest.
 *
 * @since 0.1.0
 * @category errors
 */
export class ListenError extends Schema.TaggedError<ListenError>()("ListenError", {
  message: Schema.String,
  code: Schema.optional(Schema.String)
}) {
  get retryable(): boolean {
    return this.code === undefined || !terminalListenCodes.has(this.code)
  }
}
