/**
 * The generated managed kubeconfig, handed from the provisioner to the consumers that run in
 * the same process (`tether hosted-agent`): the TCP relay's target, the service proxy's managed
 * credentials and the add-on Lease's token check.
 *
 * The provisioner publishes the text the generated Secret holds each time it writes or confirms
 * the Secret, so a rotation reaches every consumer at once, without the kubelet's file round
 * trip. In the split layout (one process per component) nothing publishes here: each consumer
 * reads the mounted Secret file instead.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Option, Redacted, Stream, SubscriptionRef } from "effect"

/** @category services */
export class GeneratedKubeconfig extends Context.Service<GeneratedKubeconfig, {
  /** The latest kubeconfig, if the provisioner has one yet. */
  readonly current: Effect.Effect<Option.Option<Redacted.Redacted<string>>>
  /** The latest kubeconfig; waits until there is one. */
  readonly latest: Effect.Effect<Redacted.Redacted<string>>
  /** The latest kubeconfig (once there is one), then every change. */
  readonly changes: Stream.Stream<Redacted.Redacted<string>>
  /** Hand a new kubeconfig to the consumers; the same text again is not a change. */
  readonly publish: (kubeconfig: Redacted.Redacted<string>) => Effect.Effect<void>
}>()("tether/kube/GeneratedKubeconfig") {
  /** An empty hand-off point, filled by the provisioner. */
  static readonly layer = Layer.effect(GeneratedKubeconfig, Effect.suspend(() => make))
}

const make = Effect.gen(function*() {
  const ref = yield* SubscriptionRef.make(Option.none<Redacted.Redacted<string>>())
  const changes = SubscriptionRef.changes(ref).pipe(
    Stream.filter(Option.isSome),
    Stream.map((some) => some.value)
  )
  return GeneratedKubeconfig.of({
    current: SubscriptionRef.get(ref),
    latest: Effect.flatMap(SubscriptionRef.get(ref), (now) =>
      Option.isSome(now)
        ? Effect.succeed(now.value)
        : Effect.map(Stream.runHead(changes), Option.getOrThrow)),
    changes,
    publish: (kubeconfig) =>
      SubscriptionRef.updateSome(ref, (previous) =>
        Option.isSome(previous) && Redacted.value(previous.value) === Redacted.value(kubeconfig)
          ? Option.none()
          : Option.some(Option.some(kubeconfig)))
  })
})
