/**
 * Replicas of the credential controller find each other through Leases on the hosting cluster
 * and share the keys by {@link Sharding}: one Lease per replica (`<group>-<identity>`, labelled
 * with the group), renewed every `renewInterval`, carrying in an annotation the view of
 * membership the replica has applied.
 *
 * One round, every `renewInterval` (with jitter):
 * 1. From the last listing, the live members (Leases held and unexpired, measured from when this
 *    replica first saw each record) and with them the desired view.
 * 2. When the view changes: first narrow what may run to keys owned under both views, then
 *    `quiesce` the keys the new view takes away (the controller stops them and waits for their
 *    runs to end), then publish.
 * 3. Publish: renew our Lease with the view (a resourceVersion-guarded write).
 * 4. List the group's Leases again (a quorum read), and from it what may run
 *    ({@link Sharding.mayRun}).
 *
 * Fencing: when renewals fail for a whole lease duration (counted from the start of the last
 * write that succeeded), nothing may run any more, before the others can count this replica's
 * Lease as expired. On close the replica quiesces everything and releases its Lease so the others
 * take over at their next round instead of a lease duration later.
 *
 * RBAC: `list, create, update` on `leases` in the Lease namespace.
 *
 * @since 0.1.0
 */
import type { V1Lease } from "@kubernetes/client-node"
import { Clock, Context, Duration, Effect, FiberHandle, Layer, Random, Result, Schema, Stream, SubscriptionRef } from "effect"
import * as LeaseState from "../domain/LeaseState.ts"
import * as Sharding from "../domain/Sharding.ts"
import { HostingCluster, type KubeClient } from "../kube/KubeClient.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as LeaseStore from "../kube/LeaseStore.ts"

/** The label that marks a member Lease, with the group as value. @category models */
export const groupLabel = "tether.open-cluster-management.io/shard-group"

/** @category models */
export interface Options {
  readonly namespace: string
  /** Replicas with the same group share keys; also the Lease name prefix. */
  readonly group: string
  /** This replica (the pod name); a DNS subdomain name. */
  readonly identity: string
  readonly leaseDuration: Duration.Input
  readonly renewInterval: Duration.Input
  /** Each wait is `renewInterval × (1 + jitter × random)`; default 0.2. */
  readonly jitter?: number | undefined
  /** Trust another member's own renewTime within this skew (see {@link LeaseState.validUntil}). */
  readonly maxClockSkew?: Duration.Input | undefined
  /**
   * Stop running every key for which `keep` is false, and return once their runs have ended.
   * Called before a view that takes keys away is published, when fenced, and on close.
   */
  readonly quiesce: (keep: (key: string) => boolean) => Effect.Effect<void>
}

/** Options that cannot work. @category errors */
export class MembershipError extends Schema.TaggedError<MembershipError>()("MembershipError", {
  message: Schema.String
}) {}

/**
 * What may run, as of the last round.
 *
 * @category models
 */
export interface Snapshot {
  /** The view in our Lease; undefined before the first publication and when fenced. */
  readonly published: ReadonlyArray<string> | undefined
  /** Keys must also be owned under this view (set while a new view is being applied). */
  readonly narrowedTo: ReadonlyArray<string> | undefined
  /** The live other members and their published views, listed after our publication. */
  readonly others: ReadonlyArray<Pick<Sharding.Member, "identity" | "view">>
}

/** Whether `self` may run `key` in `snapshot`. @category models */
export const allows = (snapshot: Snapshot, self: string, key: string): boolean =>
  snapshot.published !== undefined &&
  (snapshot.narrowedTo === undefined || Sharding.owner(key, snapshot.narrowedTo) === self) &&
  Sharding.mayRun(key, self, snapshot.published, snapshot.others)

const nothing: Snapshot = { published: undefined, narrowedTo: undefined, others: [] }

/**
 * The member Leases of one group: list, create, guarded replace.
 *
 * @category models
 */
export interface MemberStore {
  readonly list: (namespace: string, group: string) => Effect.Effect<ReadonlyArray<V1Lease>, KubeError.KubeError>
  readonly create: (namespace: string, lease: V1Lease) => Effect.Effect<V1Lease, KubeError.KubeError>
  /** Guarded by `lease.metadata.resourceVersion`. */
  readonly replace: (namespace: string, lease: V1Lease) => Effect.Effect<V1Lease, KubeError.KubeError>
}

/** @category services */
export class Membership extends Context.Service<Membership, {
  readonly identity: string
  /** Whether this replica may reconcile `key` now. */
  readonly allows: (key: string) => Effect.Effect<boolean>
  readonly snapshot: Effect.Effect<Snapshot>
  /** The current snapshot, then each change. */
  readonly changes: Stream.Stream<Snapshot>
}>()("tether/controller/Membership") {
  /** Membership through a given store. */
  static readonly layerStore = (options: Options, store: MemberStore) => Layer.effect(Membership, make(options, store))

  /** Membership on the {@link HostingCluster}. */
  static readonly layer = (options: Options) =>
    Layer.effect(Membership, Effect.flatMap(HostingCluster, (client) => make(options, fromClient(client))))
}

/** Validated options. @category models */
export interface Settings {
  readonly namespace: string
  readonly group: string
  readonly identity: string
  readonly leaseName: string
  readonly leaseDurationSeconds: number
  readonly leaseDuration: number
  readonly renewInterval: number
  readonly jitter: number
  readonly maxClockSkew: number | undefined
}

/**
 * Check the options: names that can be a Lease name and a label value, and a renew interval
 * that comes round (with jitter) well inside the lease duration.
 *
 * @category constructors
 */
export const validate = (options: Options): Result.Result<Settings, MembershipError> => {
  const fail = (message: string) => Result.fail(new MembershipError({ message: `membership: ${message}` }))
  if (options.namespace === "") return fail("the Lease namespace is required")
  if (!/^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$/.test(options.group)) {
    return fail(`group ${JSON.stringify(options.group)} must be a short DNS label (at most 42 characters)`)
  }
  if (!Sharding.isIdentity(options.identity) || options.identity.length > 200) {
    return fail(`identity ${JSON.stringify(options.identity)} must be a DNS subdomain name of at most 200 characters`)
  }
  const leaseDuration = Duration.toMillis(Duration.fromInputUnsafe(options.leaseDuration))
  const renewInterval = Duration.toMillis(Duration.fromInputUnsafe(options.renewInterval))
  const jitter = options.jitter ?? 0.2
  if (!(leaseDuration > 0) || !(renewInterval > 0)) return fail("the lease duration and renew interval must be positive")
  if (!(jitter >= 0 && jitter <= 1)) return fail("jitter must be between 0 and 1")
  if (renewInterval * (1 + jitter) * 2 > leaseDuration) {
    return fail("the renew interval (with jitter) must fit at least twice into the lease duration")
  }
  const skew = options.maxClockSkew === undefined ? undefined : Duration.toMillis(Duration.fromInputUnsafe(options.maxClockSkew))
  return Result.succeed({
    namespace: options.namespace,
    group: options.group,
    identity: options.identity,
    leaseName: `${options.group}-${options.identity}`,
    leaseDurationSeconds: LeaseState.toLeaseDurationSeconds(Duration.millis(leaseDuration)),
    leaseDuration,
    renewInterval,
    jitter,
    maxClockSkew: skew
  })
}

const identityOf = (lease: V1Lease, group: string): string | undefined => {
  const name = lease.metadata?.name ?? ""
  return name.startsWith(`${group}-`) ? name.slice(group.length + 1) : undefined
}

/**
 * Join the group and keep the membership up to date until the scope closes.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options, store: MemberStore) {
  const settings = yield* Result.match(validate(options), { onFailure: Effect.fail, onSuccess: Effect.succeed })
  const { group, identity, leaseName, namespace } = settings
  const annotate = Effect.annotateLogs({ group, identity })
  const state = yield* SubscriptionRef.make<Snapshot>(nothing)
  const watchdog = yield* FiberHandle.make<void, never>()
  /** When each other member's current record was first seen: `identity -> [recordKey, at]`. */
  const seen = new Map<string, readonly [string, number]>()
  let own: V1Lease | undefined
  let listed: ReadonlyArray<V1Lease> = []

  const members = (now: number): Array<Sharding.Member> =>
    listed.flatMap((lease) => {
      const id = identityOf(lease, group)
      if (id === undefined || id === identity) return []
      const spec = LeaseStore.toSpec(lease)
      const record = LeaseState.recordKey(spec)
      const before = seen.get(id)
      const observedAt = before !== undefined && before[0] === record ? before[1] : now
      seen.set(id, [record, observedAt])
      return [{ identity: id, spec, view: Sharding.parseView(lease.metadata?.annotations?.[Sharding.viewAnnotation]), observedAt }]
    })

  const list = Effect.gen(function*() {
    listed = yield* store.list(namespace, group)
    own = listed.find((lease) => lease.metadata?.name === leaseName) ?? own
    const names = new Set(listed.map((lease) => identityOf(lease, group)))
    for (const id of seen.keys()) if (!names.has(id)) seen.delete(id)
  })

  const liveOthers = (now: number) => Sharding.live(members(now), now, settings.maxClockSkew)

  const leaseFor = (now: number, view: ReadonlyArray<string>, release: boolean): V1Lease => {
    const claim: LeaseState.Claim = { identity, now, leaseDurationSeconds: settings.leaseDurationSeconds }
    const current = own === undefined ? undefined : LeaseStore.toSpec(own)
    const spec = release && current !== undefined
      ? LeaseState.release(current)
      : current === undefined || LeaseState.holder(current) !== identity
      ? LeaseState.acquire(current, claim)
      : LeaseState.renew(current, claim)
    const base = LeaseStore.toLease({ namespace, name: leaseName }, spec, own)
    return {
      ...base,
      metadata: {
        ...base.metadata,
        labels: { ...base.metadata?.labels, [groupLabel]: group },
        annotations: { ...base.metadata?.annotations, [Sharding.viewAnnotation]: Sharding.formatView(view) }
      }
    }
  }

  const write = (lease: V1Lease) => (own === undefined ? store.create(namespace, lease) : store.replace(namespace, lease))

  const fence = Effect.gen(function*() {
    yield* SubscriptionRef.set(state, nothing)
    yield* Effect.logWarning("stopped reconciling: the member Lease could not be renewed within the lease duration").pipe(annotate)
    yield* options.quiesce(() => false)
  })

  const round = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const desired = Sharding.view([identity, ...liveOthers(now).map((m) => m.identity)])
    const current = yield* SubscriptionRef.get(state)
    const changed = current.published === undefined || Sharding.formatView(current.published) !== Sharding.formatView(desired)
    if (changed) {
      yield* SubscriptionRef.set(state, { ...current, narrowedTo: desired })
      yield* options.quiesce((key) => Sharding.owner(key, desired) === identity)
    }
    const startedAt = yield* Clock.currentTimeMillis
    own = yield* write(leaseFor(startedAt, desired, false))
    // We hold our Lease until startedAt + duration; the others count from later than that.
    yield* FiberHandle.run(watchdog)(
      Effect.sleep(Duration.millis(Math.max(0, startedAt + settings.leaseDuration - (yield* Clock.currentTimeMillis)))).pipe(
        Effect.andThen(fence)
      )
    )
    yield* list
    const after = yield* Clock.currentTimeMillis
    const others = liveOthers(after).map(({ identity, view }) => ({ identity, view }))
    yield* SubscriptionRef.set(state, { published: desired, narrowedTo: undefined, others })
    if (changed) yield* Effect.logInfo("applied a new membership view", { members: desired.join(",") }).pipe(annotate)
  })

  const tick = round.pipe(
    Effect.timeout(Duration.millis(settings.leaseDuration)),
    Effect.catch((error) =>
      Effect.logWarning("membership round failed; will retry", { error: error.message }).pipe(
        annotate,
        // A stale resourceVersion: read our Lease again before the next write.
        Effect.andThen(KubeError.isReason("Conflict")(error) ? Effect.ignore(list) : Effect.void)
      )
    )
  )

  const pause = Effect.flatMap(
    Random.nextBetween(1, 1 + settings.jitter),
    (factor) => Effect.sleep(Duration.millis(settings.renewInterval * factor))
  )

  const leave = Effect.gen(function*() {
    yield* FiberHandle.clear(watchdog)
    yield* SubscriptionRef.set(state, nothing)
    yield* options.quiesce(() => false)
    // The loop may have been stopped mid-write: read our Lease's current version first.
    yield* Effect.ignore(list)
    if (own === undefined) return
    yield* write(leaseFor(yield* Clock.currentTimeMillis, [], true))
    yield* Effect.logInfo("left the group: released the member Lease").pipe(annotate)
  }).pipe(
    Effect.timeout(Duration.millis(settings.renewInterval)),
    Effect.catch((error) =>
      Effect.logWarning("could not release the member Lease; others take over once it expires", { error: error.message })
        .pipe(annotate)
    )
  )

  // Registered before the loop is forked, so it runs after the loop has stopped.
  yield* Effect.addFinalizer(() => leave)
  yield* Effect.ignore(list)
  yield* tick.pipe(Effect.andThen(pause), Effect.forever, Effect.forkScoped)

  return Membership.of({
    identity,
    allows: (key) => Effect.map(SubscriptionRef.get(state), (snapshot) => allows(snapshot, identity, key)),
    snapshot: SubscriptionRef.get(state),
    changes: SubscriptionRef.changes(state)
  })
})

/**
 * The store over a {@link KubeClient}.
 *
 * @category constructors
 */
export const fromClient = (client: KubeClient): MemberStore => ({
  list: (namespace, group) => client.listLeases(namespace, `${groupLabel}=${group}`),
  create: (namespace, lease) => client.createLease(namespace, lease),
  replace: (namespace, lease) => client.replaceLease(namespace, lease)
})

/**
 * An in-memory store with the apiserver's resourceVersion rules (create conflicts with an
 * existing Lease, a stale replace conflicts), shared by several members in tests. `fail` makes
 * every call of one member fail while it returns true (a partition).
 *
 * @category constructors
 */
export const memory = () => {
  const leases = new Map<string, V1Lease>()
  let version = 0
  const error = (reason: KubeError.Reason, operation: string) =>
    new KubeError.KubeError({ cluster: "memory", operation, reason, detail: reason })
  const id = (namespace: string, lease: V1Lease) => `${namespace}/${lease.metadata?.name ?? ""}`
  const put = (namespace: string, lease: V1Lease) => {
    const next: V1Lease = { ...lease, metadata: { ...lease.metadata, namespace, resourceVersion: String(++version) } }
    leases.set(id(namespace, lease), next)
    return next
  }
  const store = (partitioned: () => boolean = () => false): MemberStore => {
    const guard = <A>(operation: string, effect: Effect.Effect<A, KubeError.KubeError>) =>
      Effect.suspend(() => (partitioned() ? Effect.fail(error("Transport", operation)) : effect))
    return {
      list: (namespace, group) =>
        guard(
          "list",
          Effect.sync(() =>
            [...leases.values()].filter((l) =>
              l.metadata?.namespace === namespace && l.metadata?.labels?.[groupLabel] === group
            )
          )
        ),
      create: (namespace, lease) =>
        guard(
          "create",
          Effect.suspend(() =>
            leases.has(id(namespace, lease)) ? Effect.fail(error("Conflict", "create")) : Effect.succeed(put(namespace, lease))
          )
        ),
      replace: (namespace, lease) =>
        guard(
          "replace",
          Effect.suspend(() => {
            const current = leases.get(id(namespace, lease))
            if (current === undefined) return Effect.fail(error("NotFound", "replace"))
            if (current.metadata?.resourceVersion !== lease.metadata?.resourceVersion) {
              return Effect.fail(error("Conflict", "replace"))
            }
            return Effect.succeed(put(namespace, lease))
          })
        )
    }
  }
  return { leases, store }
}
