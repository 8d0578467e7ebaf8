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
 * The transport is abstracted as {@link Transport}, so this module holds no client-node code.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Queue, Stream } from "effect"
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
   */
  readonly watch: (
    resourceVersion: string,
    emit: (event: Changed<A>) => void
  ) => Effect.Effect<WatchEnd, KubeError.KubeError>
}

/** @category models */
export interface Options {
  /** First retry delay after a failure. */
  readonly initialBackoff?: Duration.Input
  /** Longest retry delay. */
  readonly maxBackoff?: Duration.Input
  /** A watch that stayed up this long resets the backoff. */
  readonly resetAfter?: Duration.Input
}

/**
 * The never-ending list+watch stream over `transport`.
 *
 * @category constructors
 */
export const stream = <A>(transport: Transport<A>, options: Options = {}): Stream.Stream<WatchEvent<A>> => {
  const policy = Backoff.policy(options.initialBackoff ?? "800 millis", options.maxBackoff ?? "30 seconds")
  const resetAfter = Duration.toMillis(Duration.fromInputUnsafe(options.resetAfter ?? "2 minutes"))

  return Stream.callback<WatchEvent<A>>((queue) =>
    Effect.gen(function*() {
      const emit = (event: WatchEvent<A>) => Queue.offerUnsafe(queue, event)
      let failures = 0
      let resourceVersion: string | undefined = undefined
      while (true) {
        const startedAt = yield* Clock.currentTimeMillis
        const outcome = yield* Effect.gen(function*() {
          if (resourceVersion === undefined) {
            const listed = yield* transport.list
            resourceVersion = listed.resourceVersion
            emit({ _tag: "Synced", items: listed.items })
          }
          return yield* transport.watch(resourceVersion, emit)
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
