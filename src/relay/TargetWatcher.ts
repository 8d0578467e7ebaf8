/**
 * The relay's current target, kept in step with the managed kubeconfig file.
 *
 * The file is a mounted Secret: the kubelet updates it by swapping a symlink in the mount
 * folder, so the folder (not the file) is watched, and every event re-reads the file. A timer
 * re-reads it every `reloadInterval` as well, in case an event is missed (network file systems,
 * a folder that was replaced). A file that cannot be read or parsed keeps the last good target
 * and logs a warning; only a successful read changes the target. Nothing from the file except
 * the target `host:port` is ever logged: the file holds a token.
 *
 * The first read happens while the layer is built and must succeed: without any target there
 * is nothing to relay to, and failing at startup shows the problem where it is made.
 *
 * @since 0.1.0
 */
import { Context, Deferred, Duration, Effect, FileSystem, Layer, Option, Redacted, Result, Stream, SubscriptionRef } from "effect"
import * as FileWatch from "../kube/FileWatch.ts"
import { GeneratedKubeconfig } from "../kube/GeneratedKubeconfig.ts"
import * as ManagedTarget from "./ManagedTarget.ts"

/** @since 0.1.0 @category models */
export interface Options {
  /** The managed kubeconfig file (usually a Secret volume, e.g. `/etc/managed/kubeconfig`). */
  readonly path: string
  /** Fail-safe re-read period; file events trigger a re-read sooner. */
  readonly reloadInterval: Duration.Duration
}

/** @since 0.1.0 @category services */
export class TargetWatcher extends Context.Service<TargetWatcher, {
  /** The target for new connections; waits while there is none yet. */
  readonly current: Effect.Effect<ManagedTarget.Target>
  /** The target if there is one yet (a file watcher always has one). */
  readonly peek: Effect.Effect<Option.Option<ManagedTarget.Target>>
  /** The current target, then every change. */
  readonly changes: Stream.Stream<ManagedTarget.Target>
  /** Re-read the file now; failures are logged and keep the last good target. */
  readonly reload: Effect.Effect<void>
}>()("tether/relay/TargetWatcher") {
  /** Watches `options.path`; needs a `FileSystem`. Fails with {@link ManagedTarget.TargetError} when the first read fails. */
  static readonly layer = (options: Options) => Layer.effect(TargetWatcher, make(options))

  /**
   * The target of the kubeconfig the provisioner in the same process hands over
   * ({@link GeneratedKubeconfig}); `current` waits for the first one. Needs a `Scope`.
   */
  static readonly layerGenerated = Layer.effect(TargetWatcher, Effect.suspend(() => makeGenerated))

  /** A target that never changes (embedding, tests). */
  static readonly layerFixed = (target: ManagedTarget.Target) =>
    Layer.effect(TargetWatcher, Effect.map(SubscriptionRef.make(target), (ref) => fromRef(ref)))
}

/**
 * A watcher over a ref someone else updates (tests drive target changes this way).
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromRef = (ref: SubscriptionRef.SubscriptionRef<ManagedTarget.Target>, reload: Effect.Effect<void> = Effect.void) =>
  TargetWatcher.of({
    current: SubscriptionRef.get(ref),
    peek: Effect.asSome(SubscriptionRef.get(ref)),
    changes: SubscriptionRef.changes(ref),
    reload
  })

/**
 * Read the target from the kubeconfig at `path`.
 *
 * @since 0.1.0
 * @category reading
 */
export const read = Effect.fn("TargetWatcher.read")(function*(path: string) {
  const fs = yield* FileSystem.FileSystem
  const text = yield* fs.readFileString(path).pipe(
    Effect.mapError((error) =>
      new ManagedTarget.TargetError({ message: `cannot read the managed kubeconfig ${path}: ${error.message}` })
    )
  )
  return yield* Effect.fromResult(ManagedTarget.fromKubeconfig(text))
})

const make = Effect.fnUntraced(function*(options: Options) {
  const fs = yield* FileSystem.FileSystem
  const { path, reloadInterval } = options
  const provide = Effect.provideService(FileSystem.FileSystem, fs)

  const initial = yield* read(path).pipe(provide)
  const ref = yield* SubscriptionRef.make(initial)
  yield* Effect.logInfo("managed apiserver target", { target: ManagedTarget.format(initial), kubeconfig: path })

  const reload = read(path).pipe(
    provide,
    Effect.matchEffect({
      onFailure: (error) =>
        Effect.flatMap(SubscriptionRef.get(ref), (kept) =>
          Effect.logWarning("cannot reload the managed kubeconfig; keeping the last good target", {
            kubeconfig: path,
            error: error.message,
            target: ManagedTarget.format(kept)
          })),
      onSuccess: (next) =>
        Effect.flatMap(
          SubscriptionRef.modify(ref, (previous) =>
            ManagedTarget.equals(previous, next) ? [undefined, previous] as const : [previous, next] as const),
          (previous) =>
            previous === undefined
              ? Effect.void
              : Effect.logInfo(`target updated from ${ManagedTarget.format(previous)} to ${ManagedTarget.format(next)}`)
        )
    })
  )

  // Re-read on changes in the file's folder (Secret volumes swap a symlink) and every interval.
  yield* FileWatch.start({ paths: [path], interval: reloadInterval, reload, what: "managed kubeconfig" }).pipe(provide)

  return fromRef(ref, reload)
})

const makeGenerated = Effect.gen(function*() {
  const generated = yield* GeneratedKubeconfig
  const ref = yield* SubscriptionRef.make(Option.none<ManagedTarget.Target>())
  const first = yield* Deferred.make<void>()
  // Parsed once per change, not per connection.
  yield* generated.changes.pipe(
    Stream.runForEach((kubeconfig) => {
      const parsed = ManagedTarget.fromKubeconfig(Redacted.value(kubeconfig))
      if (Result.isFailure(parsed)) {
        return Effect.logWarning("the generated kubeconfig names no target; keeping the last good one", { error: parsed.failure.message })
      }
      const next = parsed.success
      return SubscriptionRef.modify(ref, (previous) =>
        Option.isSome(previous) && ManagedTarget.equals(previous.value, next)
          ? [undefined, previous] as const
          : [previous, Option.some(next)] as const).pipe(
          Effect.tap((previous) =>
            previous === undefined
              ? Effect.void
              : Effect.logInfo("managed apiserver target", {
                target: ManagedTarget.format(next),
                ...(Option.isSome(previous) ? { previous: ManagedTarget.format(previous.value) } : {})
              })
          ),
          Effect.andThen(Deferred.succeed(first, undefined))
        )
    }),
    Effect.forkScoped
  )
  const changes = SubscriptionRef.changes(ref).pipe(Stream.filter(Option.isSome), Stream.map((some) => some.value))
  return TargetWatcher.of({
    current: Effect.flatMap(SubscriptionRef.get(ref), (now) =>
      Option.isSome(now) ? Effect.succeed(now.value) : Effect.andThen(Deferred.await(first), Effect.map(SubscriptionRef.get(ref), Option.getOrThrow))),
    peek: SubscriptionRef.get(ref),
    changes,
    reload: Effect.void
  })
})
