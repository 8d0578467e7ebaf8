/**
 * How long a bearer token has left, read from its JWT `exp` claim without verifying the
 * signature, pure. The add-on agent uses it to stop heartbeating before the managed
 * kubeconfig's token runs out: verification is the apiserver's job; here only the expiry
 * matters, and a forged `exp` would only hurt the one who forged it.
 *
 * Error messages never contain the token or any part of it.
 *
 * @since 0.1.0
 */
import { Option, Redacted, Result, Schema } from "effect"

/**
 * The token's expiry cannot be read.
 *
 * @since 0.1.0
 * @category errors
 */
export class TokenExpiryError extends Schema.TaggedError<TokenExpiryError>()("TokenExpiryError", {
  reason: Schema.Literals(["NotAJwt", "MalformedClaims", "MalformedExp"])
}) {
  override get message(): string {
    switch (this.reason) {
      case "NotAJwt":
        return "the token is not a JWT (three base64url segments), so its expiry cannot be read"
      case "MalformedClaims":
        return "the token's JWT claims are not a JSON object"
      case "MalformedExp":
        return "the token's JWT exp claim is not a number of seconds"
    }
  }
}

const segment = /^[A-Za-z0-9_-]+$/

/**
 * Epoch ms of the token's `exp` claim; None when the JWT has no `exp` (it does not expire,
 * e.g. a legacy ServiceAccount Secret token).
 *
 * @since 0.1.0
 * @category reading
 */
export const readExpiry = (token: Redacted.Redacted<string>): Result.Result<Option.Option<number>, TokenExpiryError> => {
  const parts = Redacted.value(token).trim().split(".")
  const claims = parts[1]
  if (parts.length !== 3 || claims === undefined || !segment.test(claims) || !segment.test(parts[0] ?? "")) {
    return Result.fail(new TokenExpiryError({ reason: "NotAJwt" }))
  }
  let payload: unknown
  try {
    payload = JSON.parse(Buffer.from(claims, "base64url").toString("utf8"))
  } catch {
    return Result.fail(new TokenExpiryError({ reason: "MalformedClaims" }))
  }
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
    return Result.fail(new TokenExpiryError({ reason: "MalformedClaims" }))
  }
  const exp = (payload as { readonly exp?: unknown }).exp
  if (exp === undefined) return Result.succeed(Option.none())
  if (typeof exp !== "number" || !Number.isFinite(exp)) return Result.fail(new TokenExpiryError({ reason: "MalformedExp" }))
  return Result.succeed(Option.some(exp * 1000))
}

/**
 * A token's standing against a freshness margin.
 *
 * @since 0.1.0
 * @category models
 */
export type Freshness =
  | { readonly _tag: "NoExpiry" }
  | { readonly _tag: "Fresh"; readonly expiresAt: number; readonly remaining: number }
  /** Still valid, but less than the margin is left. */
  | { readonly _tag: "Expiring"; readonly expiresAt: number; readonly remaining: number }
  | { readonly _tag: "Expired"; readonly expiresAt: number; readonly ago: number }

/**
 * Classify an expiry (epoch ms) at `now` with a margin (ms). A token expiring exactly at
 * `now` is expired; one with exactly `margin` left is fresh.
 *
 * @since 0.1.0
 * @category deciding
 */
export const freshness = (expiresAt: Option.Option<number>, now: number, margin: number): Freshness => {
  if (Option.isNone(expiresAt)) return { _tag: "NoExpiry" }
  const at = expiresAt.value
  const remaining = at - now
  if (remaining <= 0) return { _tag: "Expired", expiresAt: at, ago: -remaining }
  return remaining < margin ? { _tag: "Expiring", expiresAt: at, remaining } : { _tag: "Fresh", expiresAt: at, remaining }
}
