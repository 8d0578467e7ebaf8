/**
 * Reading and writing one `coordination.k8s.io/v1` Lease: the narrow port under leader
 * election and the add-on health Lease.
 *
 * Writes are optimistic: `replace` carries the resourceVersion that was read, so a concurrent
 * writer makes it fail with a `Conflict` {@link KubeError.KubeError} instead of being
 * overwritten (for leader election that is a lost race). Only the spec fields of
 * {@link LeaseState.LeaseSpec} are interpreted; labels, annotations and other spec fields of
 * the object are written back as they were read.
 *
 * {@link LeaseStore.layerMemory} has the same resourceVersion semantics, for tests on virtual
 * time. RBAC: `get, create, update` on `leases` in the Lease's namespace.
 *
 * @since 0.1.0
 */
import type { V1Lease, V1LeaseSpec } from "@kubernetes/client-node"
import { Context, Effect, Layer, Option } from "effect"
import * as LeaseState from "../domain/LeaseState.ts"
import { HostingCluster, type KubeClient } from "./KubeClient.ts"
import * as KubeError from "./KubeError.ts"

/** Where a Lease lives. @category models */
export interface LeaseKey {
  readonly namespace: string
  readonly name: string
}

/** A Lease as read: what a guarded replace needs. @category models */
export interface StoredLease {
  readonly resourceVersion: string
  readonly spec: LeaseState.LeaseSpec
  /** The object as read, so a replace keeps what this port does not interpret. */
  readonly object: V1Lease
}

/** @category services */
export class LeaseStore extends Context.Service<LeaseStore, {
  /** Which cluster the Lease is on, for logs. */
  readonly cluster: string
  /** The Lease, or None when it does not exist. */
  readonly get: (key: LeaseKey) => Effect.Effect<Option.Option<StoredLease>, KubeError.KubeError>
  /** Create; `Conflict` when it already exists. */
  readonly create: (key: LeaseKey, spec: LeaseState.LeaseSpec) => Effect.Effect<StoredLease, KubeError.KubeError>
  /** Replace what was read with `spec`; `Conflict` when it changed since, `NotFound` when it is gone. */
  readonly replace: (previous: StoredLease, spec: LeaseState.LeaseSpec) => Effect.Effect<StoredLease, KubeError.KubeError>
}>()("tether/kube/LeaseStore") {
  /** Backed by the {@link HostingCluster} client. */
  static readonly layer = Layer.effect(
    LeaseStore,
    Effect.gen(function*() {
      return fromClient(yield* HostingCluster)
    })
  )

  /** Backed by a given client (any cluster). */
  static readonly layerClient = (client: KubeClient) => Layer.succeed(LeaseStore, fromClient(client))

  /** In memory, with resourceVersion semantics; see {@link memory}. */
  static readonly layerMemory = () => Layer.sync(LeaseStore, () => memory())
}

// client-node types MicroTime fields as Date subclasses; on the wire (and from KubeClient) they
// are strings, and a string keeps the microseconds the apiserver expects. A Date (an object
// built by hand) is still read.
type MicroTime = NonNullable<V1LeaseSpec["renewTime"]>
const microTime = (value: string | undefined): MicroTime | undefined => value as unknown as MicroTime | undefined
const fromMicroTime = (value: unknown): string | undefined =>
  typeof value === "string"
    ? value
    : value instanceof Date && Number.isFinite(value.getTime())
    ? LeaseState.formatMicroTime(value.getTime())
    : undefined

/** The interpreted fields of a Lease object. @category conversions */
export const toSpec = (lease: V1Lease): LeaseState.LeaseSpec => {
  const spec = lease.spec ?? {}
  return {
    holderIdentity: spec.holderIdentity,
    leaseDurationSeconds: spec.leaseDurationSeconds,
    acquireTime: fromMicroTime(spec.acquireTime),
    renewTime: fromMicroTime(spec.renewTime),
    leaseTransitions: spec.leaseTransitions
  }
}

/** `base` (the object read, if any) with the interpreted fields of `spec`. @category conversions */
export const toLease = (key: LeaseKey, spec: LeaseState.LeaseSpec, base?: V1Lease): V1Lease => {
  const { acquireTime: _a, holderIdentity: _h, leaseDurationSeconds: _d, leaseTransitions: _t, renewTime: _r, ...kept } =
    base?.spec ?? {}
  const next: V1LeaseSpec = { ...kept }
  if (spec.holderIdentity !== undefined) next.holderIdentity = spec.holderIdentity
  if (spec.leaseDurationSeconds !== undefined) next.leaseDurationSeconds = spec.leaseDurationSeconds
  const acquireTime = microTime(spec.acquireTime)
  if (acquireTime !== undefined) next.acquireTime = acquireTime
  const renewTime = microTime(spec.renewTime)
  if (renewTime !== undefined) next.renewTime = renewTime
  if (spec.leaseTransitions !== undefined) next.leaseTransitions = spec.leaseTransitions
  return {
    ...base,
    apiVersion: "coordination.k8s.io/v1",
    kind: "Lease",
    metadata: { ...base?.metadata, name: key.name, namespace: key.namespace },
    spec: next
  }
}

const stored = (lease: V1Lease): StoredLease => ({
  resourceVersion: lease.metadata?.resourceVersion ?? "",
  spec: toSpec(lease),
  object: lease
})

const keyOf = (previous: StoredLease): LeaseKey => ({
  namespace: previous.object.metadata?.namespace ?? "",
  name: previous.object.metadata?.name ?? ""
})

/**
 * The port over a {@link KubeClient}.
 *
 * @category constructors
 */
export const fromClient = (client: KubeClient): LeaseStore["Service"] =>
  LeaseStore.of({
    cluster: client.cluster,
    get: (key) =>
      client.getLease(key.namespace, key.name).pipe(
        Effect.map((lease) => Option.some(stored(lease))),
        Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeedNone)
      ),
    create: (key, spec) => Effect.map(client.createLease(key.namespace, toLease(key, spec)), stored),
    replace: (previous, spec) => {
      const key = keyOf(previous)
      const base = toLease(key, spec, previous.object)
      const guarded: V1Lease = { ...base, metadata: { ...base.metadata, resourceVersion: previous.resourceVersion } }
      return Effect.map(client.replaceLease(key.namespace, guarded), stored)
    }
  })

/**
 * An in-memory store: creates conflict with an existing Lease, replaces with a stale
 * resourceVersion conflict, and every write gets a new resourceVersion. Several services can
 * share one (two candidates on one Lease).
 *
 * @category constructors
 */
export const memory = (): LeaseStore["Service"] => {
  const leases = new Map<string, V1Lease>()
  let version = 0
  const id = (key: LeaseKey) => `${key.namespace}/${key.name}`
  const fail = (reason: KubeError.Reason, operation: string) =>
    Effect.fail(new KubeError.KubeError({ cluster: "memory", operation, reason, detail: reason }))
  const put = (key: LeaseKey, lease: V1Lease) => {
    const next = { ...lease, metadata: { ...lease.metadata, resourceVersion: String(++version) } }
    leases.set(id(key), next)
    return stored(next)
  }
  return LeaseStore.of({
    cluster: "memory",
    get: (key) =>
      Effect.sync(() => {
        const lease = leases.get(id(key))
        return lease === undefined ? Option.none() : Option.some(stored(lease))
      }),
    create: (key, spec) =>
      Effect.suspend(() =>
        leases.has(id(key)) ? fail("Conflict", `create lease ${id(key)}`) : Effect.succeed(put(key, toLease(key, spec)))
      ),
    replace: (previous, spec) =>
      Effect.suspend(() => {
        const key = keyOf(previous)
        const current = leases.get(id(key))
        if (current === undefined) return fail("NotFound", `update lease ${id(key)}`)
        if (current.metadata?.resourceVersion !== previous.resourceVersion) return fail("Conflict", `update lease ${id(key)}`)
        return Effect.succeed(put(key, toLease(key, spec, previous.object)))
      })
  })
}
