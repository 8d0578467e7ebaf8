/**
 * How a TokenReview answer is read, pure: the one interpretation both the service relay's caller
 * check and the service proxy's TokenReview chain use.
 *
 * Invariants: `status.error` is read before `authenticated`; only a well-formed, recognised
 * rejection is `NotAuthenticated` (the chain may ask the next cluster); anything else, an answer
 * without a status or with a field of the wrong type included, is `Failed` (fail closed).
 *
 * @since 0.1.0
 */


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
  // An answer without a status is not a rejection: it is not a TokenReview answer at all. Nor is
  // one whose fields have the wrong types (the client does not check them).
  if (status === undefined || status === null || typeof status !== "object" || Array.isArray(status)) {
    return { _tag: "Failed", detail: "the TokenReview answer has no status" }
  }
  const malformed = wrongTypes(status as Readonly<Record<string, unknown>>)
  if (malformed !== undefined) return { _tag: "Failed", detail: `the TokenReview answer is malformed: ${malformed}` }
  const error = status.error?.trim() ?? ""
  if (error !== "") {
    const lower = error.toLowerCase()
    const recognised = patterns.some((pattern) => pattern.trim() !== "" && lower.includes(pattern.trim().toLowerCase()))
    return recognised ? { _tag: "NotAuthenticated", detail: error } : { _tag: "Failed", detail: error }
  }
  if (status.authenticated !== true) return { _tag: "NotAuthenticated", detail: "the token is not authenticated" }
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

const absent = (value: unknown): boolean => value === undefined || value === null
const isRecord = (value: unknown): value is Readonly<Record<string, unknown>> =>
  typeof value === "object" && value !== null && !Array.isArray(value)
const isStrings = (value: unknown): boolean => Array.isArray(value) && value.every((item) => typeof item === "string")

/** The first field of a status with a type TokenReview never sends, named; undefined when none. */
const wrongTypes = (status: Readonly<Record<string, unknown>>): string | undefined => {
  if (!absent(status["authenticated"]) && typeof status["authenticated"] !== "boolean") return "authenticated is not a boolean"
  if (!absent(status["error"]) && typeof status["error"] !== "string") return "error is not a string"
  const user = status["user"]
  if (absent(user)) return undefined
  if (!isRecord(user)) return "user is not an object"
  for (const key of ["username", "uid"] as const) {
    if (!absent(user[key]) && typeof user[key] !== "string") return `user.${key} is not a string`
  }
  if (!absent(user["groups"]) && !isStrings(user["groups"])) return "user.groups is not a list of strings"
  const extra = user["extra"]
  if (absent(extra)) return undefined
  if (!isRecord(extra) || !Object.values(extra).every(isStrings)) return "user.extra is not a map of string lists"
  return undefined
}
