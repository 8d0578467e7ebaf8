/**
 * List-then-watch as an Effect Stream that never gives up.
 *
 * The stream lists the collection, emits {@link Synced} with the items, then watches from the
 * list's resourceVersion. When the server ends a watch normally it re-watches from the last seen
 * resourceVersion; when the resourceVersion is too old (410 Gone) it lists again; on any other
 * failure it emits {@link Broken} (a liveness signal for readiness) and retries after a jittered
 * exponential backoff that resets once a watch has stayed up for a while. It only ends when its
 * consumer stops pulling, which is what client-node's callback watch and informer cannot promise
 * (kubernetes-client/javascript#596: watches that silently stop).
 *
 * A watch that silently stops (the connection stays open but nothing arrives, as behind a NAT
 * entry that expired or a proxy that froze) is caught by a deadline: each watch asks the server
 * to end it after a short, jittered `timeoutSeconds`, so a live watch always ends by itself; one
 * still open `stallGrace` past that is presumed dead, reported {@link Broken} and re-listed. An
 * HTTP/1.1 stream has no ping, so the server's own timeout is the heartbeat. Lists get a
 * deadline too, so a frozen connection cannot hold the stream forever, and on either the
 * transport drops its connections, so that the re-list does not go down the same frozen
 * connection.
 *
 * The transport is abstracted as {@link Transport}, so this module holds no client-node code.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Queue, Random, Stream } from "effect"
import * as Backoff from "../domain/Backoff.ts"
import * as KubeError from "./KubeError.ts"

/** The collection as listed (again). @category models */
export interface Synced<A> {
  readonly _tag: "Synced"
  readonly items: ReadonlyArray<A>
}
/** One change seen by the watch. @category models */
export interface Changed<A> {
  readonly _tag: "Added" | "Modified" | "Deleted"
  readonly object: A
}
/** The watch failed and will be retried; consumers use it to report not-ready. @category models */
export interface Broken {
  readonly _tag: "Broken"
  readonly error: KubeError.KubeError
}
/** @category models */
export type WatchEvent<A> = Synced<A> | Changed<A> | Broken

/** How one watch connection ended. @category models */
export type WatchEnd = { readonly _tag: "Closed"; readonly resourceVersion: string } | { readonly _tag: "Expired" }

/** @category models */
export interface Transport<A> {
  /** List the collection: its items and the resourceVersion to watch from. */
  readonly list: Effect.Effect<{ readonly items: ReadonlyArray<A>; readonly resourceVersion: string }, KubeError.KubeError>
  /**
   * Watch from `resourceVersion`, calling `emit` for each change, until the server closes the
   * stream (`Closed` with the last resourceVersion seen) or reports it as too old (`Expired`).
   * The server is asked to close it after `timeoutSeconds`.
   */
  readonly watch: (
    resourceVersion: string,
    emit: (event: Changed<A>) => void,
    timeoutSeconds: number
  ) => Effect.Effect<WatchEnd, KubeError.KubeError>
  /** Names the watch in the error of a stalled one (default: cluster "kubernetes", "watch"). */
  readonly describe?: { readonly cluster: string; readonly operation: string }
  /**
   * Close the client's connections, run when a list or watch is presumed stalled: requests reuse
   * kept-alive connections, and a new request on one that froze would stall as well.
   */
  readonly dropConnections?: Effect.Effect<void>
}

/** @category models */
export interface Options {
  /** First retry delay after a failure. */
  readonly initialBackoff?: Duration.Input
  /** Longest retry delay. */
  readonly maxBackoff?: Duration.Input
  /** A watch that stayed up this long resets the backoff. */
  readonly resetAfter?: Duration.Input
  /**
   * The shortest server-side length of one watch (`timeoutSeconds`); each watch draws its own in
   * `[watchTimeout, watchTimeout × 4/3)` so that many watches do not re-connect together.
   * Default 12 s: with the grace, a stalled watch is re-listed within 25 s.
   */
  readonly watchTimeout?: Duration.Input
  /** How long past its `timeoutSeconds` a watch may stay open before it is presumed dead (default 8 s). */
  readonly stallGrace?: Duration.Input
  /** How long one list may take before it is presumed dead (default 60 s). */
  readonly listTimeout?: Duration.Input
}

/** The `timeoutSeconds` of one watch: `base` stretched by up to a third by `draw` in `[0, 1)`. @category computing */
export const watchSeconds = (base: Duration.Duration, draw: number): number =>
  Math.max(1, Math.round((Duration.toMillis(base) / 1000) * (1 + draw / 3)))

/**
 * The never-ending list+watch stream over `transport`.
 *
 * @category constructors
 */
export const stream = <A>(transport: Transport<A>, options: Options = {}): Stream.Stream<WatchEvent<A>> => {
  const policy = Backoff.policy(options.initialBackoff ?? "800 millis", options.maxBackoff ?? "30 seconds")
  const resetAfter = Duration.toMillis(Duration.fromInputUnsafe(options.resetAfter ?? "2 minutes"))
  const watchTimeout = Duration.fromInputUnsafe(options.watchTimeout ?? "12 seconds")
  const stallGrace = Duration.toMillis(Duration.fromInputUnsafe(options.stallGrace ?? "8 seconds"))
  const listTimeout = Duration.fromInputUnsafe(options.listTimeout ?? "60 seconds")
  const what = transport.describe ?? { cluster: "kubernetes", operation: "watch" }
  const stalled = (detail: string) => () =>
    Effect.andThen(
      transport.dropConnections ?? Effect.void,
      Effect.fail(new KubeError.KubeError({ ...what, reason: "Transport", detail }))
    )

  return Stream.callback<WatchEvent<A>>((queue) =>
    Effect.gen(function*() {
      const emit = (event: WatchEvent<A>) => Queue.offerUnsafe(queue, event)
      let failures = 0
      let resourceVersion: string | undefined = undefined
      while (true) {
        const startedAt = yield* Clock.currentTimeMillis
        const outcome = yield* Effect.gen(function*() {
          if (resourceVersion === undefined) {
            const listed = yield* transport.list.pipe(
              Effect.timeoutOrElse({ duration: listTimeout, orElse: stalled(`no list answer within ${Duration.format(listTimeout)}`) })
            )
            resourceVersion = listed.resourceVersion
            emit({ _tag: "Synced", items: listed.items })
          }
          const seconds = watchSeconds(watchTimeout, yield* Random.next)
          const deadline = Duration.millis(seconds * 1000 + stallGrace)
          return yield* transport.watch(resourceVersion, emit, seconds).pipe(
            Effect.timeoutOrElse({
              duration: deadline,
              orElse: stalled(`the watch was still open ${Duration.format(deadline)} after it started, past its ${seconds} s timeout: presumed stalled`)
            })
          )
        }).pipe(Effect.result)

        if (outcome._tag === "Success") {
          const end = outcome.success
          resourceVersion = end._tag === "Closed" ? end.resourceVersion : undefined
          failures = 0
          continue
        }
        const error = outcome.failure
        if (error.reason === "Gone") {
          resourceVersion = undefined
          continue
        }
        emit({ _tag: "Broken", error })
        const now = yield* Clock.currentTimeMillis
        if (now - startedAt >= resetAfter) failures = 0
        const delay = yield* Backoff.next(policy, failures)
        failures += 1
        yield* Effect.sleep(delay)
        // A relist after a failure: the cache may have missed events while disconnected.
        resourceVersion = undefined
      }
    })
  )
}
