/**
 * A cache in front of TokenReview, shared by the service relay's caller check and the service
 * proxy's TokenReview chain.
 *
 * - Answers are kept for `ttl`, refusals included, keyed by the SHA-256 of the token: the token
 *   itself is never stored as a key or logged.
 * - Concurrent requests with the same token share one review.
 * - A review that failed outright (`isTransient`) is not kept, so callers recover as soon as the
 *   apiserver is back.
 * - At most `maxEntries` answers are kept; expired ones go first, then the oldest.
 * - Reviews run in the cache's scope, not the caller's: a caller that goes away does not leave the
 *   other waiters on the same token hanging. A review works on its own copy of the token, so a
 *   caller may wipe its `Redacted` once it stops waiting.
 * - {@link Cached.known} answers synchronously from the cache, so a request path can skip the
 *   fiber (and the `Redacted`) when the answer is already there (the common case by far).
 * - A token in use is reviewed again ahead of expiry: a lookup in the last quarter of an
 *   answer's TTL starts one review in the background, and its answer replaces the old one when
 *   it comes. Without this, every request of a busy caller waited on the one review at each
 *   expiry (the service proxy's tail). No answer is used past its TTL, counted from when its
 *   review was asked; a refresh that fails outright keeps the old answer until then and is
 *   tried again a tenth of a TTL later.
 *
 * @since 0.1.0
 */
import { Clock, Deferred, Duration, Effect, Exit, FiberSet, Option, Redacted, type Scope } from "effect"
import { hash } from "node:crypto"

/** @category models */
export interface Options<E> {
  readonly ttl: Duration.Input
  readonly maxEntries?: number
  /** Failures not worth remembering (the review itself failed, rather than refused the token). */
  readonly isTransient: (error: E) => boolean
}

/**
 * The SHA-256 of a token, hex: what the cache keys on. One-shot `hash`, because a `Hash` object
 * per request is a native object the garbage collector has to finalize, which made every
 * young-generation collection of a busy relay several times longer.
 *
 * @category constructors
 */
export const fingerprint = (tokenText: string): string => hash("sha256", tokenText, "hex")

/** Remove every occurrence of the token (and cap the length) before text goes anywhere. @category constructors */
export const scrub = (text: string, token: Redacted.Redacted<string>): string => {
  const secret = Redacted.value(token)
  const clean = secret === "" ? text : text.split(secret).join("[redacted]")
  return clean.length > 300 ? `${clean.slice(0, 300)}...` : clean
}

/** @category models */
export interface Cached<A, E> {
  /** The answer for `token`: cached, or reviewed now (shared with concurrent callers). */
  readonly review: (token: Redacted.Redacted<string>) => Effect.Effect<A, E>
  /**
   * The cached answer for a token if there is a settled, unexpired one; never waits for a
   * review (near expiry it starts one in the background). Takes the token's text: a lookup
   * only hashes it, and request paths call this on every request.
   */
  readonly known: (tokenText: string) => Exit.Exit<A, E> | undefined
}

interface Entry<A, E> {
  readonly expiresAt: number
  readonly outcome: Deferred.Deferred<A, E>
  /** Set once the review has finished. */
  settled?: Exit.Exit<A, E>
  /** From then on a lookup starts a background review ({@link Cached.known}). */
  refreshAt: number
  /** A background review is running. */
  refreshing?: boolean
}

/**
 * Wrap `review` with the cache.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<A, E>(
  options: Options<E>,
  review: (token: Redacted.Redacted<string>) => Effect.Effect<A, E>
): Effect.fn.Return<Cached<A, E>, never, Scope.Scope> {
  const scope = yield* Effect.scope
  const clock = yield* Clock.clockWith(Effect.succeed)
  const ttl = Duration.toMillis(Duration.fromInputUnsafe(options.ttl))
  const maxEntries = Math.max(1, options.maxEntries ?? 4096)
  const entries = new Map<string, Entry<A, E>>()
  const refreshAhead = ttl / 4
  const fibers = yield* FiberSet.make<void, never>()
  const runInBackground = yield* FiberSet.runtime(fibers)<never>()

  const makeRoom = (now: number) => {
    if (entries.size < maxEntries) return
    for (const [key, entry] of entries) if (entry.expiresAt <= now) entries.delete(key)
    // Map iteration is insertion order: drop the oldest until there is room.
    for (const key of entries.keys()) {
      if (entries.size < maxEntries) break
      entries.delete(key)
    }
  }

  const cachedReview = Effect.fnUntraced(function*(token: Redacted.Redacted<string>) {
    const key = fingerprint(Redacted.value(token))
    const now = yield* Clock.currentTimeMillis
    const cached = entries.get(key)
    if (cached !== undefined && cached.expiresAt > now) return yield* Deferred.await(cached.outcome)
    if (cached !== undefined) entries.delete(key)

    const outcome = yield* Deferred.make<A, E>()
    const entry: Entry<A, E> = { expiresAt: now + ttl, refreshAt: now + ttl - refreshAhead, outcome }
    if (ttl > 0) {
      makeRoom(now)
      entries.set(key, entry)
    }
    // The review gets its own copy of the token, wiped when it ends: the caller's may be
    // forgotten (Routing.forgetToken) as soon as the caller stops waiting.
    const own = Redacted.make(Redacted.value(token))
    yield* review(own).pipe(
      Effect.ensuring(Effect.sync(() => Redacted.wipeUnsafe(own))),
      Effect.exit,
      Effect.flatMap((exit) => {
        const error = Exit.findErrorOption(exit)
        if (Option.isSome(error) && options.isTransient(error.value) && entries.get(key) === entry) {
          entries.delete(key)
        }
        entry.settled = exit
        return Deferred.done(outcome, exit)
      }),
      Effect.forkIn(scope)
    )
    return yield* Deferred.await(outcome)
  })

  /** Review a token in use again, in the background; its answer replaces `entry`'s when it comes. */
  const refresh = (key: string, entry: Entry<A, E>, tokenText: string, askedAt: number) => {
    entry.refreshing = true
    const own = Redacted.make(tokenText)
    runInBackground(review(own).pipe(
      Effect.ensuring(Effect.sync(() => Redacted.wipeUnsafe(own))),
      Effect.exit,
      Effect.flatMap((exit) =>
        Effect.sync(() => {
          entry.refreshing = false
          const error = Exit.findErrorOption(exit)
          if (Option.isSome(error) && options.isTransient(error.value)) {
            entry.refreshAt = clock.currentTimeMillisUnsafe() + ttl / 10
            return
          }
          // Evicted or replaced meanwhile: the newer state stands.
          if (entries.get(key) !== entry) return
          const outcome = Deferred.makeUnsafe<A, E>()
          Deferred.doneUnsafe(outcome, exit)
          entries.delete(key)
          entries.set(key, { expiresAt: askedAt + ttl, refreshAt: askedAt + ttl - refreshAhead, outcome, settled: exit })
        })
      )
    ))
  }

  const known = (tokenText: string): Exit.Exit<A, E> | undefined => {
    const key = fingerprint(tokenText)
    const entry = entries.get(key)
    if (entry === undefined) return undefined
    const now = clock.currentTimeMillisUnsafe()
    if (entry.expiresAt <= now) return undefined
    if (entry.settled !== undefined && entry.refreshing !== true && now >= entry.refreshAt) refresh(key, entry, tokenText, now)
    return entry.settled
  }

  return { review: cachedReview, known }
})
