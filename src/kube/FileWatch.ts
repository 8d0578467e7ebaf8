/**
 * Re-reading mounted files when they change: the managed kubeconfig (and its token file), the
 * serving certificate and key.
 *
 * Secret and ConfigMap volumes are updated by swapping a symlink inside the mount folder, so
 * the folders (not the files) are watched, and every burst of events about a watched file or
 * the volume's own entries ({@link concerns}) triggers one `reload`; other files in the folder
 * (a log, a pid file) wake nothing. A timer calls `reload` every `interval` as well, for the
 * events a watch misses (network file systems, a folder that was replaced, a watch that could
 * not start). `reload` decides itself whether anything changed; it must not fail.
 *
 * @since 0.1.0
 */
import { Deferred, Duration, Effect, Exit, FileSystem, Queue, type Scope, Stream } from "effect"
import * as Path from "node:path"

/** @since 0.1.0 @category models */
export interface Options {
  /** Files whose folders are watched. */
  readonly paths: ReadonlyArray<string>
  /** Fail-safe re-read period. */
  readonly interval: Duration.Input
  /** Re-read and apply; called after each settled burst of events and on every tick. */
  readonly reload: Effect.Effect<void>
  /** Names the files in log messages (never their content). */
  readonly what: string
}

/** Events come in bursts (a symlink swap is several renames); act once they settle. */
const settle = Duration.millis(100)

/** How long startup waits for the watches to be in place before going on without them. */
const watchStartTimeout = Duration.seconds(2)

/**
 * Whether an event about `entry` (a name in a watched folder) may change one of `watched` (the
 * names of the files watched there): the file itself, or the entries a kubelet swaps to update
 * a Secret or ConfigMap volume (`..data`, `..data_tmp`, `..<timestamp>`; each key is a symlink
 * through `..data`). Anything else in the folder is left alone: in a benchmark, a file written
 * ten times a second beside the serving certificate had the service proxy re-read and re-check
 * its key pair after every write.
 *
 * @since 0.1.0
 * @category watching
 */
export const concerns = (watched: ReadonlySet<string>, entry: string): boolean => {
  const name = Path.basename(entry)
  return watched.has(name) || name.startsWith("..")
}

/**
 * Watch in the background of the current scope. Returns once the watches are in place (or
 * after a short wait if one cannot start; the timer still runs).
 *
 * @since 0.1.0
 * @category constructors
 */
export const start = Effect.fnUntraced(function*(
  options: Options
): Effect.fn.Return<void, never, FileSystem.FileSystem | Scope.Scope> {
  const fs = yield* FileSystem.FileSystem
  const interval = Duration.fromInputUnsafe(options.interval)
  const folders = new Map<string, Set<string>>()
  for (const path of options.paths) {
    if (path === "") continue
    const resolved = Path.resolve(path)
    const folder = Path.dirname(resolved)
    const names = folders.get(folder) ?? new Set()
    folders.set(folder, names.add(Path.basename(resolved)))
  }
  const wake = yield* Queue.dropping<void>(1)

  for (const [folder, watched] of folders) {
    const ready = yield* Deferred.make<void>()
    const started = () => Deferred.doneUnsafe(ready, Exit.void)
    const watchFolder = fs.watch(folder, { onReady: started }).pipe(
      Stream.filter((event) => concerns(watched, event.path)),
      Stream.runForEach(() => Queue.offer(wake, undefined)),
      Effect.catch((error) =>
        Effect.logWarning(`cannot watch the folder of the ${options.what}; relying on the periodic check`, {
          folder,
          error: error.message
        })
      ),
      Effect.ensuring(Effect.sync(started)),
      // The watch ends when the folder goes away; try again later.
      Effect.andThen(Effect.sleep(interval)),
      Effect.forever
    )
    yield* Effect.forkScoped(watchFolder)
    yield* Deferred.await(ready).pipe(Effect.timeoutOrElse({ duration: watchStartTimeout, orElse: () => Effect.void }))
  }

  const loop = Queue.take(wake).pipe(
    Effect.timeoutOrElse({ duration: interval, orElse: () => Effect.void }),
    Effect.andThen(Effect.sleep(settle)),
    Effect.andThen(Queue.clear(wake)),
    Effect.andThen(options.reload),
    Effect.forever
  )
  yield* Effect.forkScoped(loop)
})
