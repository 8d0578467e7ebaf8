/**
 * Whom the service proxy impersonates for an authenticated caller, pure: the user, groups and
 * extras as `Impersonate-*` headers, with hub ServiceAccounts (name and ServiceAccount groups)
 * under the `cluster:hub:` prefix so that a hub identity never collides with one of the managed
 * cluster's own.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import type * as HttpHeaders from "./HttpHeaders.ts"
import type * as TokenReview from "./TokenReview.ts"


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
  user: TokenReview.UserInfo
): Result.Result<HttpHeaders.OutgoingHeaders, ImpersonationError> => {
  const username = impersonatedUsername(source, user.username)
  const groups = impersonatedGroups(source, user.username, user.groups)
  const fail = (what: string) =>
    Result.fail(new ImpersonationError({ message: `cannot impersonate the caller: ${what} cannot be sent in a header` }))
  if (username.trim() === "" || !headerValuePattern.test(username)) return fail("the username")
  if (groups.some((group) => !headerValuePattern.test(group))) return fail("a group name")
  const out: HttpHeaders.OutgoingHeaders = { "impersonate-user": username, "impersonate-group": groups }
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
