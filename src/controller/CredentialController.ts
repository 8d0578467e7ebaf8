/**
 * The credential controller: managed kubeconfigs for every (managed cluster, add-on) pair a
 * hosting cluster serves, in one process. The first increment of issue #12.
 *
 * Pieces, each its own module: {@link PairSource} (one shared watch for discovery), a
 * {@link WorkQueue} (deduplicated keys, one reconcile per key at a time, bounded concurrency,
 * backoff, a global rate limit on starts), optionally {@link Membership} (keys shared between
 * replicas), and per key the single-cluster provisioner's reconcile
 * ({@link Reconciler.reconcile}), reused as it is, with the pair's own add-on status port and token
 * issuer, and memory (the token in hand, kept between runs). Managed-cluster clients come from
 * {@link ManagedClients}: one per connection, kept across runs and dropped after 5 s unused, so
 * none is held between deadlines hours apart.
 *
 * Keys are `<cluster>/<addon>`. A key whose pair disappears from discovery gets one last reconcile
 * with its last add-on port: in hub mode that finds the add-on gone (or being deleted) and deletes
 * the generated Secret; then the key and its memory are dropped. In hubless mode nothing tracks
 * the add-on, so the Secret stays (a deleted source means no new tokens, not a deleted credential).
 *
 * With membership, a run registers itself before asking whether its key is ours, and membership
 * stops the runs of the keys a new view takes away (interrupting them) before it publishes that
 * view; only keys handed over by a view change are queued again, so a renewal round costs no
 * reconcile.
 *
 * Secrets are read through {@link SecretCache} (one watch of Secrets for all pairs; a change of a
 * source or generated Secret queues the pairs that name it).
 *
 * The add-on is read from the discovery watch's copy (hub mode), so between deadlines a reconcile
 * sends no request at all.
 *
 * Each pair gets the periodic identity check ({@link Options.identityCheckInterval}): between
 * deadlines, at most one read of its managed ServiceAccount per interval, jittered.
 *
 * @since 0.1.0
 */
import { Cause, Context, Deferred, type Duration, Effect, Exit, Fiber, Layer, Metric, Option, Queue, Ref, Stream } from "effect"
import type * as Discovery from "../domain/Discovery.ts"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"
import type * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import { HostingCluster, HubCluster } from "../kube/KubeClient.ts"
import * as WorkQueue from "../kube/WorkQueue.ts"
import * as Metrics from "../observability/Metrics.ts"
import { notReady, Probes } from "../observability/Probes.ts"
import { AddonStatus, type RelatedObject, relatedSecret, stateOf } from "../provisioner/AddonStatus.ts"
import * as ManagedClients from "../provisioner/ManagedClients.ts"
import * as Reconciler from "../provisioner/Reconciler.ts"
import { SecretStore } from "../provisioner/SecretStore.ts"
import { ServiceAccounts } from "../provisioner/ServiceAccounts.ts"
import { TokenIssuer } from "../provisioner/TokenIssuer.ts"
import * as Membership from "./Membership.ts"
import * as PairSource from "./PairSource.ts"
import * as SecretCache from "./SecretCache.ts"

/** @category models */
export interface Options {
  readonly source: PairSource.Mode
  readonly settings: RefreshPolicy.ValidatedSettings
  /** `tokenFile` beside the token in every generated kubeconfig; absent: the token alone. */
  readonly tokenFile?: Kubeconfig.TokenFilePath | undefined
  /**
   * Bound on each pair's periodic identity check (one read of the managed ServiceAccount's UID,
   * jittered); absent: no check.
   */
  readonly identityCheckInterval?: Duration.Duration | undefined
  /** Reconciles at once; default 8. */
  readonly concurrency?: number | undefined
  /** Global limit on reconcile starts; default 20 per second, bursts of 40. */
  readonly rateLimit?: WorkQueue.Options<never, never>["rateLimit"]
  /**
   * Share keys with the other replicas of the group through member Leases (the controller
   * supplies `quiesce`); every key is ours when absent.
   */
  readonly membership?: {
    readonly options: Omit<Membership.Options, "quiesce">
    readonly store: Membership.MemberStore
  } | undefined
}

const controller = "credential-controller"
/** The User-Agent of the managed-cluster clients. */
const agent = "tether-credential-controller"

/** The pair's reconcile spec: the first source candidate that exists, else the first. */
const specFor = Effect.fnUntraced(function*(pair: Discovery.Pair, options: Pick<Options, "settings" | "tokenFile" | "identityCheckInterval">) {
  const store = yield* SecretStore
  let source = pair.sources[0]!
  if (pair.sources.length > 1) {
    for (const candidate of pair.sources) {
      const found = yield* store.get(candidate.namespace, candidate.name).pipe(Effect.orElseSucceed(() => Option.none()))
      if (Option.isSome(found)) {
        source = candidate
        break
      }
    }
  }
  const { identityCheckInterval, settings, tokenFile } = options
  return {
    clusterName: pair.key,
    source,
    target: pair.target,
    serviceAccount: pair.serviceAccount,
    settings,
    tokenFile,
    identityCheckInterval
  } satisfies Reconciler.ClusterSpec
})

/** A reconcile in flight, so that membership can stop it before giving its key away. */
interface Run {
  fiber: Fiber.Fiber<Controller.Action, unknown> | undefined
  stop: boolean
  readonly done: Deferred.Deferred<void>
}

/** What a pair keeps between runs: the token in hand. */
interface Entry {
  pair: Discovery.Pair
  readonly memory: Reconciler.Memory
}

/**
 * Run until interrupted.
 *
 * @category running
 */
export const run = Effect.fnUntraced(function*(options: Options) {
  const hub = yield* Effect.serviceOption(HubCluster)
  const hosting = yield* HostingCluster
  const source = yield* PairSource.make(options.source)
  const entries = new Map<string, Entry>()
  const running = new Map<string, Run>()
  // Source and generated Secrets: one watch, read by every reconcile; a change queues its pairs.
  const touched = yield* Queue.unbounded<string>()
  const secrets = yield* SecretCache.make(hosting, (keys) => Effect.sync(() => void Queue.offerAllUnsafe(touched, keys)))
  const withSecrets = Effect.provideService(SecretStore, secrets.store)
  // Managed-cluster clients: one per connection, kept across runs, dropped after 5 s unused (a
  // TLS context each: fewer alive at once in a start-up burst, see ManagedClients).
  const managedClients = Layer.succeed(
    ManagedClients.ManagedClients,
    Option.getOrUndefined(yield* Effect.serviceOption(ManagedClients.ManagedClients)) ??
      Context.get(yield* Layer.build(ManagedClients.ManagedClients.layer({ userAgent: agent, idleAfter: "5 seconds" })), ManagedClients.ManagedClients)
  )

  const entryFor = (pair: Discovery.Pair): Entry => {
    const existing = entries.get(pair.key)
    if (existing !== undefined) {
      existing.pair = pair
      return existing
    }
    const entry: Entry = { pair, memory: Reconciler.makeMemory() }
    entries.set(pair.key, entry)
    return entry
  }

  /**
   * The add-on as the discovery watch last showed it: reading its state costs no request, and a
   * condition write starts from that copy (a conflict falls back to a fresh read). Unknown to the
   * watch (just deleted, or not listed yet): read from the hub.
   */
  const cachedAddon = (ref: Discovery.ObjectRef, related: RelatedObject) =>
    Layer.effect(
      AddonStatus,
      Effect.gen(function*() {
        const live = yield* AddonStatus
        const cached = () => source.addon(ref.namespace, ref.name)
        return AddonStatus.of({
          observe: Effect.suspend(() => {
            const object = cached()
            return object === undefined ? live.observe : Effect.succeed(stateOf(object, related))
          }),
          setCondition: (desired, basis) =>
            live.setCondition(desired, basis ?? cached()).pipe(
              Effect.tap((written) => Effect.sync(() => written === undefined ? undefined : source.wrote(written)))
            )
        })
      })
    )

  /**
   * Run `effect` with the pair's add-on status port and token issuer, made for this run; their
   * managed-cluster clients are the shared ones.
   */
  const withPairServices = (pair: Discovery.Pair) => <A, E, R>(effect: Effect.Effect<A, E, R>) => {
    const addon = pair.addonObject === undefined || Option.isNone(hub)
      ? AddonStatus.layerUntracked
      : cachedAddon(pair.addonObject, relatedSecret(pair.target)).pipe(
        Layer.provide(AddonStatus.layer(pair.addonObject, relatedSecret(pair.target))),
        Layer.provide(Layer.succeed(HubCluster, hub.value))
      )
    return Effect.provide(
      effect,
      Layer.mergeAll(addon, Layer.provide(Layer.mergeAll(TokenIssuer.layer, ServiceAccounts.layer), managedClients))
    )
  }

  const drop = (key: string) => Effect.sync(() => void entries.delete(key))

  /**
   * Stop the runs of every key `keep` rejects and wait until they have ended; forget those keys'
   * clients and memory (their new owner reads the world afresh). A run registers itself before it
   * asks membership, and membership narrows what may run before it calls this, so a run that is
   * not seen here will be refused.
   */
  const quiesce = (keep: (key: string) => boolean) =>
    Effect.gen(function*() {
      const stopping = [...running].filter(([key]) => !keep(key))
      for (const [, run] of stopping) {
        run.stop = true
        if (run.fiber !== undefined) yield* Fiber.interrupt(run.fiber)
      }
      yield* Effect.forEach(stopping, ([, run]) => Deferred.await(run.done), { discard: true })
      yield* Effect.forEach([...entries.keys()].filter((key) => !keep(key)), drop, { discard: true })
    })

  // Readiness: the first list has been seen, membership has published a view, and each key of
  // the first list that this replica owns has been reconciled once. Registered before anything
  // that waits on the network, so /readyz never answers 200 with no check yet.
  let initial: Set<string> | undefined
  const settle = (key: string) => Effect.sync(() => void initial?.delete(key))
  let membership: Membership.Membership["Service"] | undefined
  const published = () =>
    membership === undefined
      ? Effect.succeed(options.membership === undefined)
      : Effect.map(membership.snapshot, (snapshot) => snapshot.published !== undefined)
  const probes = yield* Effect.serviceOption(Probes)
  if (Option.isSome(probes)) {
    yield* probes.value.addReadinessCheck("discovery", Effect.gen(function*() {
      const state = yield* source.current
      if (!state.synced) return yield* notReady("discovery has not listed yet")
      if (state.broken) return yield* notReady("the discovery watch is failing")
      if (!(yield* published())) return yield* notReady("membership has not published a view yet")
      if (initial === undefined) return yield* notReady("the first list is not processed yet")
      let pending = 0
      for (const key of initial) if (membership === undefined || (yield* membership.allows(key))) pending++
      if (pending > 0) return yield* notReady(`${pending} discovered pairs not reconciled yet`)
    }))
  }
  membership = options.membership === undefined
    ? undefined
    : yield* Membership.make({ ...options.membership.options, quiesce }, options.membership.store)

  // Per pair, the expiry of the token in place (0: none), labelled `cluster` and `addon`: one
  // series per pair this replica has served (a pair that leaves keeps its series, at 0).
  const tokens = yield* Reconciler.TokenState
  const publishExpiry = (pair: Discovery.Pair) =>
    Effect.flatMap(Ref.get(tokens), (all) => {
      const lifetime = all.get(pair.key)
      return Metric.update(
        Metric.withAttributes(Metrics.tokenExpirationTimestampSeconds, { cluster: pair.cluster, addon: pair.addon }),
        lifetime === undefined ? 0 : lifetime.expiresAt / 1000
      )
    })

  const reconcileKey = Effect.fnUntraced(function*(key: string) {
    if (membership !== undefined && !(yield* membership.allows(key))) return Controller.awaitChange
    // Reads before the Secret watch's first list would each be a request; wait for it, a while.
    yield* secrets.synced.pipe(Effect.timeoutOption("30 seconds"))
    const state = yield* source.current
    const pair = state.discovered.pairs.find((p) => p.key === key)
    if (pair === undefined) {
      const last = entries.get(key)
      if (last === undefined) return Controller.awaitChange
      // Gone from discovery: one last look, which removes the Secret of a deleted add-on.
      if (last.pair.addonObject !== undefined) {
        const spec = yield* specFor(last.pair, options)
        yield* Reconciler.reconcile(spec, last.memory).pipe(withPairServices(last.pair), Effect.ignore)
      }
      yield* drop(key)
      yield* settle(key)
      yield* publishExpiry(last.pair)
      return Controller.awaitChange
    }
    const entry = entryFor(pair)
    const spec = yield* specFor(pair, options)
    return yield* Reconciler.reconcile(spec, entry.memory).pipe(
      withPairServices(pair),
      Effect.ensuring(Effect.andThen(settle(key), publishExpiry(pair)))
    )
  })

  // Each run in its own fiber, registered before it asks membership (see quiesce).
  const reconcile = (key: string) =>
    Effect.gen(function*() {
      const run: Run = { fiber: undefined, stop: false, done: yield* Deferred.make<void>() }
      running.set(key, run)
      return yield* Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(withSecrets(reconcileKey(key)))
        run.fiber = fiber
        if (run.stop) yield* Fiber.interrupt(fiber)
        const exit = yield* Fiber.await(fiber)
        // Stopped because the key moved to another replica: nothing to retry here.
        if (run.stop && Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)) return Controller.awaitChange
        return yield* exit
      }).pipe(
        Effect.ensuring(Effect.suspend(() => {
          if (running.get(key) === run) running.delete(key)
          return Deferred.succeed(run.done, undefined)
        }))
      )
    })

  const queue = yield* WorkQueue.make({
    name: controller,
    reconcile,
    concurrency: options.concurrency ?? 8,
    rateLimit: options.rateLimit ?? { perSecond: 20, burst: 40 }
  })

  yield* Queue.take(touched).pipe(Effect.flatMap(queue.add), Effect.forever, Effect.forkScoped)

  let seen: Discovery.Discovered = { pairs: [], problems: [] }
  // The keys this replica may run now, kept to notice the ones membership hands over.
  let owned = new Set<string>()
  const ownedGauge = Metric.withAttributes(Metrics.controllerOwnedKeys, { controller })
  const refreshOwned = Effect.gen(function*() {
    const next = new Set<string>()
    for (const pair of seen.pairs) if (membership === undefined || (yield* membership.allows(pair.key))) next.add(pair.key)
    const before = owned
    owned = next
    yield* Metric.update(ownedGauge, next.size)
    return { gained: [...next].filter((key) => !before.has(key)), lost: [...before].filter((key) => !next.has(key)) }
  })

  // Discovery changes: reconcile the keys whose pair changed (and every key on the first list).
  yield* source.changes.pipe(
    Stream.filter((state) => state.synced),
    Stream.runForEach((state) =>
      Effect.gen(function*() {
        if (initial === undefined) initial = new Set(state.discovered.pairs.map((p) => p.key))
        const changed = PairSource.diff(seen, state.discovered)
        seen = state.discovered
        secrets.track(seen.pairs)
        yield* refreshOwned
        for (const key of changed) yield* queue.add(key)
        for (const problem of state.discovered.problems) {
          yield* Effect.logWarning("a pair cannot be served", { subject: problem.subject, reason: problem.reason, error: problem.message })
        }
      })
    ),
    Effect.forkScoped
  )

  // Membership changes (each round publishes a snapshot): only keys handed to us need a run;
  // keys taken away were stopped by quiesce, and their pending deadlines are dropped.
  if (membership !== undefined) {
    yield* membership.changes.pipe(
      Stream.runForEach(() =>
        Effect.gen(function*() {
          const { gained, lost } = yield* refreshOwned
          for (const key of lost) yield* queue.forget(key)
          for (const key of gained) yield* queue.add(key)
          if (gained.length > 0 || lost.length > 0) {
            yield* Effect.logInfo("owned keys changed", { gained: gained.length, lost: lost.length, owned: owned.size })
          }
        })
      ),
      Effect.forkScoped
    )
  }

  yield* Effect.logInfo("credential controller started", {
    mode: options.source._tag,
    ...(membership === undefined ? {} : { identity: membership.identity })
  })
  return yield* Effect.never
}, Effect.scoped)
