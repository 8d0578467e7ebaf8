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
import { Clock, Context, Deferred, Duration, Effect, Exit, Layer, Option, Redacted, Schema } from "effect"
import { createHash } from "node:crypto"
import { ManagedCluster } from "../kube/KubeClient.ts"

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
}>()("tether/relay/CallerAuthenticator") {
  /** TokenReview against {@link ManagedCluster}, cached. */
  static readonly layer = (options: Options) => Layer.effect(CallerAuthenticator, make(options))
}

interface Entry {
  readonly expiresAt: number
  readonly outcome: Deferred.Deferred<Caller, Unauthorized>
}

const fingerprint = (token: Redacted.Redacted<string>): string =>
  createHash("sha256").update(Redacted.value(token)).digest("hex")

/** Remove every occurrence of the token (and cap the length) before text goes anywhere. */
const scrub = (text: string, token: Redacted.Redacted<string>): string => {
  const secret = Redacted.value(token)
  const clean = secret === "" ? text : text.split(secret).join("[redacted]")
  return clean.length > 300 ? `${clean.slice(0, 300)}...` : clean
}

/**
 * Build the authenticator. Needs {@link ManagedCluster} (whose credentials may create
 * `tokenreviews`) and a `Scope` that bounds in-flight TokenReviews.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const managed = yield* ManagedCluster
  const scope = yield* Effect.scope
  const trusted: ReadonlySet<string> = new Set([...options.trustedUsernames].filter((name) => name !== ""))
  const ttl = Duration.toMillis(Duration.fromInputUnsafe(options.cacheTtl))
  const maxEntries = Math.max(1, options.maxCacheEntries ?? 4096)
  const reviewTimeout = options.reviewTimeout ?? Duration.seconds(10)
  const entries = new Map<string, Entry>()

  const makeRoom = (now: number) => {
    if (entries.size < maxEntries) return
    for (const [key, entry] of entries) if (entry.expiresAt <= now) entries.delete(key)
    // Map iteration is insertion order: drop the oldest until there is room.
    for (const key of entries.keys()) {
      if (entries.size < maxEntries) break
      entries.delete(key)
    }
  }

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
    const status = answer.status
    if (status?.authenticated !== true || (status.error ?? "") !== "") {
      const why = status?.error ? `: ${scrub(status.error, token)}` : ""
      return yield* new Unauthorized({ reason: "NotAuthenticated", message: `the token is not authenticated${why}` })
    }
    const username = status.user?.username ?? ""
    if (!trusted.has(username)) {
      return yield* new Unauthorized({
        reason: "Untrusted",
        message: `${JSON.stringify(username)} is not a trusted relay caller`
      })
    }
    return { username, groups: status.user?.groups ?? [] } satisfies Caller
  }, (effect) =>
    Effect.tapError(effect, (error) =>
      error.reason === "NotAuthenticated"
        ? Effect.logDebug("relay caller refused", { reason: error.reason, error: error.message })
        : Effect.logWarning("relay caller refused", { reason: error.reason, error: error.message })))

  const authenticate = Effect.fnUntraced(function*(token: Redacted.Redacted<string> | undefined) {
    if (token === undefined || Redacted.value(token) === "") {
      return yield* new Unauthorized({ reason: "NoToken", message: "the request carries no bearer token" })
    }
    const key = fingerprint(token)
    const now = yield* Clock.currentTimeMillis
    const cached = entries.get(key)
    if (cached !== undefined && cached.expiresAt > now) return yield* Deferred.await(cached.outcome)
    if (cached !== undefined) entries.delete(key)

    const outcome = yield* Deferred.make<Caller, Unauthorized>()
    if (ttl > 0) {
      makeRoom(now)
      entries.set(key, { expiresAt: now + ttl, outcome })
    }
    // The review runs in the service's scope, not the request's: a caller that goes away must
    // not leave the other waiters on the same token hanging.
    yield* review(token).pipe(
      Effect.exit,
      Effect.flatMap((exit) => {
        const error = Exit.findErrorOption(exit)
        const failedReview = Option.isSome(error) && error.value.reason === "ReviewFailed"
        if (failedReview && entries.get(key)?.outcome === outcome) entries.delete(key)
        return Deferred.done(outcome, exit)
      }),
      Effect.forkIn(scope)
    )
    return yield* Deferred.await(outcome)
  })

  return CallerAuthenticator.of({ authenticate })
})
