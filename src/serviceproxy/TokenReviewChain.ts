/**
 * Who is calling the kube-apiserver through the service proxy: the caller's bearer token is
 * reviewed by the managed cluster first, then by the hub (hosted-mode-spec 4.6, 11.2).
 *
 * Only a recognised rejection (a `status.error` matching one of the configured patterns,
 * "invalid bearer token" by default, or an unauthenticated answer without error) lets the
 * chain ask the next cluster. Anything else a cluster reports, and any failure to ask it (the
 * apiserver is down, refuses the proxy's own credentials, times out), stops the chain with a
 * refusal: fail closed, never "try the next one and hope".
 *
 * Answers are cached for `cacheTtl`, refusals as well as successes, keyed by the SHA-256 of
 * the token (the cache never holds a token); concurrent requests with the same token share one
 * review. Failures to ask are not cached, so an outage ends for callers as soon as the
 * apiserver is back. The cache is bounded; the oldest entries go first.
 *
 * Tokens never appear in errors or logs: cluster error texts are scrubbed of the token.
 *
 * @since 0.1.0
 */
import type { V1TokenReview } from "@kubernetes/client-node"
import { Context, Duration, Effect, Exit, Layer, Option, Redacted, Schema } from "effect"
import type * as Impersonation from "../domain/Impersonation.ts"
import * as TokenReview from "../domain/TokenReview.ts"
import { HubCluster, ManagedCluster } from "../kube/KubeClient.ts"
import type { KubeError } from "../kube/KubeError.ts"
import * as TokenReviewCache from "../kube/TokenReviewCache.ts"

/**
 * One cluster that can review tokens.
 *
 * @category models
 */
export interface Provider {
  readonly source: Impersonation.Source
  readonly createTokenReview: (review: V1TokenReview) => Effect.Effect<V1TokenReview, KubeError>
}

/**
 * An authenticated caller and the cluster that vouched for it.
 *
 * @category models
 */
export interface Authenticated {
  readonly source: Impersonation.Source
  readonly user: TokenReview.UserInfo
}

/**
 * The caller is refused (answered with 401 and `message`, which is safe to send back).
 *
 * - `NoToken`: the request carries no bearer token;
 * - `NotAuthenticated`: no cluster of the chain knows the token;
 * - `ReviewFailed`: a cluster could not say (fail closed).
 *
 * @category errors
 */
export class AuthenticationFailed extends Schema.TaggedError<AuthenticationFailed>()("AuthenticationFailed", {
  reason: Schema.Literals(["NoToken", "NotAuthenticated", "ReviewFailed"]),
  message: Schema.String
}) {}

/** @category models */
export interface Options {
  /** How long an answer is reused; zero disables the cache. */
  readonly cacheTtl: Duration.Input
  /** `status.error` substrings (case-insensitive) that mean "not this cluster's token". */
  readonly errorPatterns?: ReadonlyArray<string>
  /** A review that takes longer fails (default 10 seconds). */
  readonly reviewTimeout?: Duration.Input
  /** At most this many cached answers (default 4096). */
  readonly maxCacheEntries?: number
}

/** @category services */
export class TokenReviewChain extends Context.Service<TokenReviewChain, {
  readonly authenticate: (token: Redacted.Redacted<string> | undefined) => Effect.Effect<Authenticated, AuthenticationFailed>
  /**
   * The same answer when it needs no review (cached, or no token at all); undefined when only
   * {@link authenticate} can tell. Takes the token's text: it is only hashed, and the proxy
   * asks on every request.
   */
  readonly known: (tokenText: string | undefined) => Exit.Exit<Authenticated, AuthenticationFailed> | undefined
}>()("tether/serviceproxy/TokenReviewChain") {
  /** Managed cluster ({@link ManagedCluster}) first, then the hub ({@link HubCluster}) when provided. */
  static readonly layer = (options: Options) =>
    Layer.effect(
      TokenReviewChain,
      Effect.gen(function*() {
        const managed = yield* ManagedCluster
        const hub = yield* Effect.serviceOption(HubCluster)
        const providers: Array<Provider> = [{ source: "managed", createTokenReview: managed.createTokenReview }]
        if (Option.isSome(hub)) providers.push({ source: "hub", createTokenReview: hub.value.createTokenReview })
        return yield* make(providers, options)
      })
    )

  /** An explicit list of providers, asked in order. */
  static readonly layerProviders = (providers: ReadonlyArray<Provider>, options: Options) =>
    Layer.effect(TokenReviewChain, make(providers, options))
}

const clusterName = (source: Impersonation.Source) => (source === "managed" ? "managed cluster" : "hub cluster")

const scrub = TokenReviewCache.scrub

/**
 * Build the chain; needs a `Scope` that bounds in-flight reviews.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(providers: ReadonlyArray<Provider>, options: Options) {
  const patterns = options.errorPatterns ?? TokenReview.defaultErrorPatterns
  const reviewTimeout = options.reviewTimeout ?? Duration.seconds(10)
  const names = providers.map((provider) => `the ${clusterName(provider.source)}`)
  const notAuthenticated = names.length === 0
    ? "authentication failed: no cluster can review tokens"
    : names.length === 1
    ? `authentication failed: token is not valid for ${names[0]}`
    : `authentication failed: token is neither valid for ${names.slice(0, -1).join(", ")} nor ${names.at(-1)}`

  const reviewFailed = (provider: Provider, detail: string, token: Redacted.Redacted<string>) =>
    Effect.andThen(
      Effect.logWarning("TokenReview failed; refusing the caller", {
        cluster: provider.source,
        error: scrub(detail, token)
      }),
      Effect.fail(
        new AuthenticationFailed({
          reason: "ReviewFailed",
          message: `${clusterName(provider.source)} authentication failed: the TokenReview did not succeed`
        })
      )
    )

  /** Ask one cluster. */
  const ask = (provider: Provider, token: Redacted.Redacted<string>) =>
    provider.createTokenReview({
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token: Redacted.value(token) }
    }).pipe(
      Effect.map((answer) => TokenReview.classifyReview(answer.status, patterns)),
      Effect.catch((error) => Effect.succeed<TokenReview.ReviewOutcome>({ _tag: "Failed", detail: error.message })),
      Effect.timeoutOrElse({
        duration: reviewTimeout,
        orElse: () => Effect.succeed<TokenReview.ReviewOutcome>({ _tag: "Failed", detail: "TokenReview timed out" })
      })
    )

  const review = Effect.fnUntraced(function*(token: Redacted.Redacted<string>) {
    for (const provider of providers) {
      const outcome = yield* ask(provider, token)
      switch (outcome._tag) {
        case "Authenticated":
          return { source: provider.source, user: outcome.user } satisfies Authenticated
        case "Failed":
          return yield* reviewFailed(provider, outcome.detail, token)
        case "NotAuthenticated":
          yield* Effect.logDebug("token not authenticated; trying the next cluster", {
            cluster: provider.source,
            detail: scrub(outcome.detail, token)
          })
      }
    }
    return yield* new AuthenticationFailed({ reason: "NotAuthenticated", message: notAuthenticated })
  })

  const cachedReview = yield* TokenReviewCache.make({
    ttl: options.cacheTtl,
    ...(options.maxCacheEntries === undefined ? {} : { maxEntries: options.maxCacheEntries }),
    isTransient: (error: AuthenticationFailed) => error.reason === "ReviewFailed"
  }, review)

  const noToken = new AuthenticationFailed({ reason: "NoToken", message: "authentication failed: the request carries no bearer token" })
  const authenticate = (token: Redacted.Redacted<string> | undefined) =>
    token === undefined || Redacted.value(token) === "" ? Effect.fail(noToken) : cachedReview.review(token)
  const known = (tokenText: string | undefined) =>
    tokenText === undefined || tokenText === "" ? Exit.fail(noToken) : cachedReview.known(tokenText)

  return TokenReviewChain.of({ authenticate, known })
})
