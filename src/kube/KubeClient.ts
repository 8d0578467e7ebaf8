/**
 * A typed, Effect-shaped client for one Kubernetes cluster.
 *
 * tether talks to up to three clusters at once (hosting, managed, hub), so the client is a
 * value built per cluster, and the clusters a component needs are services holding one each
 * ({@link HostingCluster}, {@link HubCluster}). Only the calls tether makes are exposed; each
 * returns plain Kubernetes objects and fails with a {@link KubeError.KubeError}.
 *
 * Credentials: the bearer token can come from a {@link TokenSource} consulted on every request,
 * so a rotated token is used by the next call without rebuilding the client (the prototype's
 * TokenReview client kept its startup token until it expired).
 *
 * Objects are typed with client-node's models (type-only) but are the apiserver's JSON: a field
 * those types declare as a `Date` (metadata timestamps, a Lease's MicroTimes, a TokenRequest's
 * expiry) holds the RFC 3339 string. Readers parse it (`new Date(value)`, `LeaseState.parseMicroTime`).
 *
 * @since 0.1.0
 */
import type {
  AuthenticationV1TokenRequest,
  CoreV1Event,
  KubernetesObject,
  V1Lease,
  V1Secret,
  V1ServiceAccount,
  V1TokenReview
} from "@kubernetes/client-node"
import { Context, type Effect, type Redacted, type Stream } from "effect"
import type { KubeError } from "./KubeError.ts"
import type { WatchEvent } from "./Watch.ts"

/**
 * A source of bearer tokens, read on every request. It must be cheap (cache inside).
 *
 * @category models
 */
export type TokenSource = () => Promise<Redacted.Redacted<string>>

/** A namespaced custom resource, addressed by group/version/plural. @category models */
export interface CustomResource {
  readonly group: string
  readonly version: string
  readonly plural: string
}

/** A custom object as returned by the apiserver. @category models */
export interface CustomObject extends KubernetesObject {
  readonly spec?: Record<string, unknown>
  readonly status?: Record<string, unknown>
}

/** Options for watching a collection. @category models */
export interface WatchOptions {
  readonly fieldSelector?: string
  readonly labelSelector?: string
}

/** @category models */
export interface KubeClient {
  /** A name for logs and errors (hosting, managed, hub); never a URL with credentials. */
  readonly cluster: string
  /** The server URL of the current context. */
  readonly server: string
  /**
   * Let go of the client's connections: each closes once the requests on it are answered (a
   * watch's at its end), and a later request opens a new one. For clients that are idle for long
   * stretches (a managed cluster's, between rotations hours apart).
   */
  readonly closeConnections: Effect.Effect<void>

  readonly getSecret: (namespace: string, name: string) => Effect.Effect<V1Secret, KubeError>
  readonly createSecret: (namespace: string, secret: V1Secret) => Effect.Effect<V1Secret, KubeError>
  /** Full replace guarded by `secret.metadata.resourceVersion` (409 Conflict when stale). */
  readonly replaceSecret: (namespace: string, secret: V1Secret) => Effect.Effect<V1Secret, KubeError>
  /**
   * Delete; with `expect`, only the object with that UID (a DeleteOptions precondition): a
   * same-named object re-created by someone else is refused with 409 Conflict, never deleted.
   */
  readonly deleteSecret: (namespace: string, name: string, expect?: { readonly uid: string }) => Effect.Effect<void, KubeError>
  readonly watchSecrets: (namespace: string, options?: WatchOptions) => Stream.Stream<WatchEvent<V1Secret>>
  /** One list+watch of Secrets in every namespace (shared by many keys; never one per object). */
  readonly watchAllSecrets: (options?: WatchOptions) => Stream.Stream<WatchEvent<V1Secret>>

  readonly createEvent: (namespace: string, event: CoreV1Event) => Effect.Effect<CoreV1Event, KubeError>

  readonly createServiceAccountToken: (
    namespace: string,
    name: string,
    request: AuthenticationV1TokenRequest
  ) => Effect.Effect<AuthenticationV1TokenRequest, KubeError>
  readonly getServiceAccount: (namespace: string, name: string) => Effect.Effect<V1ServiceAccount, KubeError>
  readonly createTokenReview: (review: V1TokenReview) => Effect.Effect<V1TokenReview, KubeError>

  readonly getCustomObject: (
    resource: CustomResource,
    namespace: string,
    name: string
  ) => Effect.Effect<CustomObject, KubeError>
  /** Replace the status subresource, guarded by `object.metadata.resourceVersion`. */
  readonly replaceCustomObjectStatus: (
    resource: CustomResource,
    object: CustomObject
  ) => Effect.Effect<CustomObject, KubeError>
  readonly watchCustomObjects: (
    resource: CustomResource,
    namespace: string,
    options?: WatchOptions
  ) => Stream.Stream<WatchEvent<CustomObject>>
  /** One list+watch of a custom resource in every namespace. */
  readonly watchAllCustomObjects: (resource: CustomResource, options?: WatchOptions) => Stream.Stream<WatchEvent<CustomObject>>

  readonly getLease: (namespace: string, name: string) => Effect.Effect<V1Lease, KubeError>
  readonly createLease: (namespace: string, lease: V1Lease) => Effect.Effect<V1Lease, KubeError>
  readonly replaceLease: (namespace: string, lease: V1Lease) => Effect.Effect<V1Lease, KubeError>
  readonly deleteLease: (namespace: string, name: string) => Effect.Effect<void, KubeError>
  /** Leases in `namespace` matching `labelSelector`; a quorum read (no resourceVersion). */
  readonly listLeases: (namespace: string, labelSelector: string) => Effect.Effect<ReadonlyArray<V1Lease>, KubeError>
}

/** The cluster the agent runs on (hosted mode's "hosting" cluster). @category services */
export class HostingCluster extends Context.Service<HostingCluster, KubeClient>()("tether/kube/HostingCluster") {}

/** The OCM hub, where ManagedClusterAddOn status lives. @category services */
export class HubCluster extends Context.Service<HubCluster, KubeClient>()("tether/kube/HubCluster") {}

/** The managed cluster the add-on serves. @category services */
export class ManagedCluster extends Context.Service<ManagedCluster, KubeClient>()("tether/kube/ManagedCluster") {}
