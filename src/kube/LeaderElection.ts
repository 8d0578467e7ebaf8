/**
 * Lease-based leader election, for tether's own components and for embedders that run one
 * active replica among several.
 *
 * Each candidate reads the Lease every `renewInterval` (plus jitter) and decides with
 * {@link LeaseState.decide}: it creates a missing Lease, takes over a free or expired one, renews
 * its own, and otherwise waits. Every write is a create or a resourceVersion-guarded replace, so
 * when two candidates race for the same Lease exactly one write succeeds; the loser's `Conflict`
 * is a lost race, not an error.
 *
 * Losing leadership:
 * - another holder shows up in the Lease: not leader at once;
 * - renewals keep failing (apiserver down, network partition, a hung request): not leader once
 *   `leaseDuration` has passed since the last successful renewal started. Other candidates count
 *   the same duration from when they *saw* that renewal, which is later, so the old leader always
 *   steps down before anyone else can take over (given clocks that tick at the same rate).
 *
 * When the layer's scope closes the loop stops, `isLeader` turns false, and the Lease is
 * released (holder cleared) if it still names us, so a successor need not wait out the duration.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Context,
  Duration,
  Effect,
  FiberHandle,
  Layer,
  Metric,
  Option,
  Random,
  Ref,
  Result,
  Schema,
  Stream,
  SubscriptionRef
} from "effect"
import * as LeaseState from "../domain/LeaseState.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { KubeClient } from "./KubeClient.ts"
import * as KubeError from "./KubeError.ts"
import { type LeaseKey, LeaseStore } from "./LeaseStore.ts"

/** @category models */
export interface Options {
  readonly namespace: string
  readonly name: string
  /** This candidate's identity in `holderIdentity`; unique per replica (e.g. the pod name). */
  readonly identity: string
  /** How long a holder's claim lasts without renewal (written as whole seconds, rounded up). */
  readonly leaseDuration: Duration.Input
  /** How often to renew (as holder) or retry (as candidate); with jitter, below `leaseDuration`. */
  readonly renewInterval: Duration.Input
  /** Each wait is `renewInterval × (1 + jitter × random)`, as Kubernetes' `wait.Jitter`; default 0.2. */
  readonly jitter?: number
  /**
   * Trust another holder's own `renewTime` within this clock skew, so a Lease abandoned long ago
   * is taken at once. Without it a candidate measures only from what it observed itself, and
   * after starting waits one full `leaseDuration` before taking over (client-go's rule).
   */
  readonly maxClockSkew?: Duration.Input
  /** Clear the holder when the scope closes, if still ours; default true. */
  readonly releaseOnClose?: boolean
}

/** Options that cannot work. @category errors */
export class LeaderElectionError extends Schema.TaggedError<LeaderElectionError>()("LeaderElectionError", {
  message: Schema.String
}) {}

/** @category services */
export class LeaderElection extends Context.Service<LeaderElection, {
  readonly identity: string
  readonly lease: LeaseKey
  /** Whether this candidate leads now. */
  readonly isLeader: Effect.Effect<boolean>
  /** The current state, then every change (no repeats). */
  readonly changes: Stream.Stream<boolean>
  /** Wait until this candidate leads. */
  readonly awaitLeadership: Effect.Effect<void>
  /**
   * Run `effect` each time leadership is gained, interrupting it when leadership is lost. Never
   * returns on its own; fails when `effect` fails.
   */
  readonly whileLeader: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<never, E, R>
}>()("tether/kube/LeaderElection") {
  /** The election; needs a {@link LeaseStore}. Fails with {@link LeaderElectionError} on bad options. */
  static readonly layerNoDeps = (options: Options) => Layer.effect(LeaderElection, make(options))

  /** The election on the {@link HostingCluster}. */
  static readonly layer = (options: Options) => LeaderElection.layerNoDeps(options).pipe(Layer.provide(LeaseStore.layer))

  /** The election through a given client (any cluster). */
  static readonly layerClient = (options: Options, client: KubeClient) =>
    LeaderElection.layerNoDeps(options).pipe(Layer.provide(LeaseStore.layerClient(client)))
}

/** Validated options. @category models */
export interface Settings {
  readonly key: LeaseKey
  readonly identity: string
  readonly leaseDuration: Duration.Duration
  readonly leaseDurationSeconds: number
  readonly renewInterval: Duration.Duration
  readonly jitter: number
  readonly maxClockSkew: Duration.Duration | undefined
  readonly releaseOnClose: boolean
}

/**
 * Check the options: names present, positive durations, and a renew interval that (with its
 * jitter) comes round before the Lease runs out.
 *
 * @category constructors
 */
export const validate = (options: Options): Result.Result<Settings, LeaderElectionError> => {
  const fail = (message: string) => Result.fail(new LeaderElectionError({ message: `leader election: ${message}` }))
  const jitter = options.jitter ?? 0.2
  if (options.namespace === "" || options.name === "") return fail("the Lease namespace and name are required")
  if (options.identity === "") return fail("the identity is required")
  const leaseDuration = Duration.fromInputUnsafe(options.leaseDuration)
  const renewInterval = Duration.fromInputUnsafe(options.renewInterval)
  const maxClockSkew = options.maxClockSkew === undefined ? undefined : Duration.fromInputUnsafe(options.maxClockSkew)
  if (!Duration.isGreaterThan(leaseDuration, Duration.zero)) return fail("the lease duration must be greater than 0")
  if (!Duration.isGreaterThan(renewInterval, Duration.zero)) return fail("the renew interval must be greater than 0")
  if (!Number.isFinite(jitter) || jitter < 0 || jitter > 1) return fail("the jitter must be between 0 and 1")
  const longestWait = Duration.toMillis(renewInterval) * (1 + jitter)
  if (longestWait >= Duration.toMillis(leaseDuration)) {
    return fail(
      `the renew interval (${Duration.format(renewInterval)}, up to ${Duration.format(Duration.millis(longestWait))} ` +
        `with jitter) must be shorter than the lease duration (${Duration.format(leaseDuration)})`
    )
  }
  return Result.succeed({
    key: { namespace: options.namespace, name: options.name },
    identity: options.identity,
    leaseDuration,
    leaseDurationSeconds: LeaseState.toLeaseDurationSeconds(leaseDuration),
    renewInterval,
    jitter,
    maxClockSkew,
    releaseOnClose: options.releaseOnClose ?? true
  })
}

/** Bound on the release write while shutting down. */
const releaseTimeout = Duration.seconds(5)

/**
 * Start the election in the current scope; the service reads its state.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const settings = yield* Effect.fromResult(validate(options))
  const store = yield* LeaseStore
  const { identity, key } = settings
  const lease = `${key.namespace}/${key.name}`
  const duration = Duration.toMillis(settings.leaseDuration)
  const maxClockSkew = settings.maxClockSkew === undefined ? undefined : Duration.toMillis(settings.maxClockSkew)
  const annotate = Effect.annotateLogs({ lease, identity, cluster: store.cluster })

  const leader = yield* SubscriptionRef.make(false)
  const observed = yield* Ref.make<{ readonly record: string; readonly at: number } | undefined>(undefined)
  const watchdog = yield* FiberHandle.make<void, never>()

  const setLeader = Effect.fnUntraced(function*(next: boolean, change: Metrics.LeadershipChange, why: string) {
    const changed = yield* SubscriptionRef.modify(leader, (previous) => [previous !== next, next] as const)
    if (!changed) return
    yield* Metric.update(Metric.withAttributes(Metrics.leaderElectionIsLeader, { lease }), next ? 1 : 0)
    yield* Metric.update(Metric.withAttributes(Metrics.leaderElectionTransitionsTotal, { lease, change }), 1)
    yield* (change === "lost" ? Effect.logWarning : Effect.logInfo)(why).pipe(annotate)
  })

  /** A write that started at `startedAt` succeeded: we lead until `startedAt + duration`. */
  const led = Effect.fnUntraced(function*(startedAt: number, why: string) {
    const now = yield* Clock.currentTimeMillis
    const left = Math.max(0, startedAt + duration - now)
    yield* FiberHandle.run(watchdog)(
      Effect.sleep(Duration.millis(left)).pipe(
        Effect.andThen(setLeader(false, "lost", "lost leadership: the Lease could not be renewed within the lease duration"))
      )
    )
    yield* setLeader(true, "acquired", why)
  })

  const attempt = Effect.gen(function*() {
    const current = yield* store.get(key)
    // Read the clock after the answer: the record was written before we saw it, never after.
    const now = yield* Clock.currentTimeMillis
    const claim: LeaseState.Claim = { identity, now, leaseDurationSeconds: settings.leaseDurationSeconds }
    if (Option.isNone(current)) {
      yield* store.create(key, LeaseState.acquire(undefined, claim))
      return yield* led(now, "became leader: created the Lease")
    }
    const { spec } = current.value
    const record = LeaseState.recordKey(spec)
    const observedAt = yield* Ref.modify(observed, (seen) => {
      const at = seen !== undefined && seen.record === record ? seen.at : now
      return [at, { record, at }] as const
    })
    const decision = LeaseState.decide({ spec, now, identity, observedAt, maxClockSkew })
    switch (decision._tag) {
      case "Wait": {
        yield* FiberHandle.clear(watchdog)
        return yield* setLeader(false, "lost", `lost leadership: the Lease is held by ${decision.holder}`)
      }
      case "Renew": {
        yield* store.replace(current.value, LeaseState.renew(spec, claim))
        return yield* led(now, "became leader: renewed our Lease")
      }
      case "Acquire": {
        yield* store.replace(current.value, LeaseState.acquire(spec, claim))
        const previous = LeaseState.holder(spec)
        return yield* led(
          now,
          previous === undefined ? "became leader: the Lease was free" : `became leader: took over the expired Lease of ${previous}`
        )
      }
    }
  })

  const tick = attempt.pipe(
    // A hung request must not stall the loop; the watchdog already bounds leadership.
    Effect.timeout(settings.leaseDuration),
    Effect.catch((error) =>
      KubeError.isReason("Conflict")(error)
        ? Effect.logDebug("lost a race for the Lease; will read it again").pipe(annotate)
        : Effect.logWarning("leader election attempt failed; will retry", { error: error.message }).pipe(annotate)
    )
  )

  const pause = Effect.flatMap(
    Random.nextBetween(1, 1 + settings.jitter),
    (factor) => Effect.sleep(Duration.millis(Duration.toMillis(settings.renewInterval) * factor))
  )

  const release = Effect.gen(function*() {
    yield* FiberHandle.clear(watchdog)
    yield* setLeader(false, "released", "stopped leading: shutting down")
    if (!settings.releaseOnClose) return
    const current = yield* store.get(key)
    if (Option.isNone(current) || LeaseState.holder(current.value.spec) !== identity) return
    yield* store.replace(current.value, LeaseState.release(current.value.spec))
    yield* Effect.logInfo("released the Lease").pipe(annotate)
  }).pipe(
    Effect.timeout(releaseTimeout),
    Effect.catch((error) =>
      Effect.logWarning("could not release the Lease; others take over once it expires", { error: error.message }).pipe(annotate)
    )
  )

  // Registered before the loop is forked, so it runs after the loop has stopped.
  yield* Effect.addFinalizer(() => release)
  yield* Effect.logInfo("leader election started", { leaseDuration: Duration.format(settings.leaseDuration) }).pipe(annotate)
  yield* tick.pipe(Effect.andThen(pause), Effect.forever, Effect.forkScoped)

  const changes = Stream.changes(SubscriptionRef.changes(leader))
  return LeaderElection.of({
    identity,
    lease: key,
    isLeader: SubscriptionRef.get(leader),
    changes,
    awaitLeadership: changes.pipe(Stream.filter((leads) => leads), Stream.take(1), Stream.runDrain),
    whileLeader: (effect) =>
      changes.pipe(
        Stream.switchMap((leads) => (leads ? Stream.fromEffect(Effect.andThen(effect, Effect.never)) : Stream.empty)),
        Stream.runDrain,
        Effect.andThen(Effect.never)
      )
  })
})
