/**
 * Who may use the service relay: a caller whose bearer token the managed kube-apiserver
 * authenticates (TokenReview) as one of a configured set of usernames, in practice the
 * ServiceAccount the hosted service-proxy runs as. The Go prototype had no such check, which
 * made the relay an open proxy into every Service of the managed cluster.
 *
 * Fail closed: no token, a TokenReview that errors or times out, an unauthenticated answer, and
 * an authenticated but untrusted user are all refusals.
 *
 * Answers are cached for `cacheTtl`, refusals as well as successes (a flood of bad tokens costs
 * one TokenReview per distinct token per period). Entries are keyed by the SHA-256 of the
 * token, so the cache never holds a token; concurrent requests with the same token share one
 * TokenReview. Failed TokenReviews (the apiserver did not answer) are not cached, so an outage
 * ends for callers as soon as the apiserver is back. The cache is bounded; the oldest entries
 * go first.
 *
 * Tokens never appear in errors or logs: an apiserver's error text is scrubbed of the token
 * before it is used.
 *
 * @since 0.1.0
 */
import type { V1TokenReview } from "@kubernetes/client-node"
import { Context, Duration, Effect, Exit, Layer, Redacted, Schema } from "effect"
import * as TokenReview from "../domain/TokenReview.ts"
import { ManagedCluster } from "../kube/KubeClient.ts"
import * as TokenReviewCache from "../kube/TokenReviewCache.ts"

/**
 * An authenticated, trusted caller.
 *
 * @category models
 */
export interface Caller {
  readonly username: string
  readonly groups: ReadonlyArray<string>
}

/**
 * The caller may not use the relay. Answered with a bare 401; the message is for logs.
 *
 * @category errors
 */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {
  reason: Schema.Literals(["NoToken", "ReviewFailed", "NotAuthenticated", "Untrusted"]),
  message: Schema.String
}) {}

/** @category models */
export interface Options {
  /** Usernames allowed to use the relay (`system:serviceaccount:<ns>:<name>`). Empty trusts nobody. */
  readonly trustedUsernames: Iterable<string>
  /** How long an answer is reused; zero disables the cache. */
  readonly cacheTtl: Duration.Input
  /** At most this many cached answers (default 4096). */
  readonly maxCacheEntries?: number
  /** A TokenReview that takes longer is a refusal (default 10 seconds). */
  readonly reviewTimeout?: Duration.Input
}

/** @category services */
export class CallerAuthenticator extends Context.Service<CallerAuthenticator, {
  /** The caller behind `token`, or why it may not use the relay. */
  readonly authenticate: (token: Redacted.Redacted<string> | undefined) => Effect.Effect<Caller, Unauthorized>
  /**
   * The same answer when it needs no TokenReview (cached, or no token at all); undefined when
   * only {@link authenticate} can tell. Takes the token's text (`RelayHeaders.bearerTokenText`):
   * it is only hashed, and the relay asks on every request.
   */
  readonly known: (tokenText: string | undefined) => Exit.Exit<Caller, Unauthorized> | undefined
}>()("tether/relay/CallerAuthenticator") {
  /** TokenReview against {@link ManagedCluster}, cached. */
  static readonly layer = (options: Options) => Layer.effect(CallerAuthenticator, make(options))
}

const scrub = TokenReviewCache.scrub

/**
 * Build the authenticator. Needs {@link ManagedCluster} (whose credentials may create
 * `tokenreviews`) and a `Scope` that bounds in-flight TokenReviews.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const managed = yield* ManagedCluster
  const trusted: ReadonlySet<string> = new Set([...options.trustedUsernames].filter((name) => name !== ""))
  const reviewTimeout = options.reviewTimeout ?? Duration.seconds(10)

  const review = Effect.fnUntraced(function*(token: Redacted.Redacted<string>) {
    const body: V1TokenReview = {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token: Redacted.value(token) }
    }
    const answer = yield* managed.createTokenReview(body).pipe(
      Effect.mapError((error) =>
        new Unauthorized({ reason: "ReviewFailed", message: `TokenReview failed: ${scrub(error.message, token)}` })
      ),
      Effect.timeoutOrElse({
        duration: reviewTimeout,
        orElse: () => Effect.fail(new Unauthorized({ reason: "ReviewFailed", message: "TokenReview timed out" }))
      })
    )
    // One reading of a TokenReview answer for every component; the relay has no next cluster
    // to ask, so any answer but an authenticated one refuses the caller.
    const outcome = TokenReview.classifyReview(answer.status, TokenReview.defaultErrorPatterns)
    if (outcome._tag !== "Authenticated") {
      return yield* new Unauthorized({
        reason: "NotAuthenticated",
        message: `the token is not authenticated: ${scrub(outcome.detail, token)}`
      })
    }
    const { groups, username } = outcome.user
    if (!trusted.has(username)) {
      return yield* new Unauthorized({
        reason: "Untrusted",
        message: `${JSON.stringify(username)} is not a trusted relay caller`
      })
    }
    return { username, groups } satisfies Caller
  }, (effect) =>
    Effect.tapError(effect, (error) =>
      error.reason === "NotAuthenticated"
        ? Effect.logDebug("relay caller refused", { reason: error.reason, error: error.message })
        : Effect.logWarning("relay caller refused", { reason: error.reason, error: error.message })))

  const cachedReview = yield* TokenReviewCache.make({
    ttl: options.cacheTtl,
    ...(options.maxCacheEntries === undefined ? {} : { maxEntries: options.maxCacheEntries }),
    isTransient: (error: Unauthorized) => error.reason === "ReviewFailed"
  }, review)

  const noToken = new Unauthorized({ reason: "NoToken", message: "the request carries no bearer token" })

  return CallerAuthenticator.of({
    authenticate: (token) =>
      token !== undefined && Redacted.value(token) !== "" ? cachedReview.review(token) : Effect.fail(noToken),
    known: (tokenText) =>
      tokenText !== undefined && tokenText !== "" ? cachedReview.known(tokenText) : Exit.fail(noToken)
  })
})
