/**
 * Reading and writing Secrets on the hosting cluster: the source kubeconfig Secret the
 * provisioner reads and the generated Secret it owns.
 *
 * A narrow port over {@link KubeClient.HostingCluster} so the reconciler can be driven by
 * TestClock in property tests with the in-memory {@link SecretStore.layerMemory}; integration
 * tests use the real apiserver through {@link SecretStore.layer}.
 *
 * RBAC on the hosting cluster: `get` on the source Secret; `get, create, update, delete` on the
 * generated Secret; `list, watch` on Secrets in both namespaces (field-selected by name).
 *
 * @since 0.1.0
 */
import type { V1Secret } from "@kubernetes/client-node"
import { Context, Effect, Layer, Option } from "effect"
import { HostingCluster } from "../kube/KubeClient.ts"
import * as KubeError from "../kube/KubeError.ts"

/** @category services */
export class SecretStore extends Context.Service<SecretStore, {
  /** The Secret, or None when it does not exist. */
  readonly get: (namespace: string, name: string) => Effect.Effect<Option.Option<V1Secret>, KubeError.KubeError>
  readonly create: (namespace: string, secret: V1Secret) => Effect.Effect<V1Secret, KubeError.KubeError>
  /** Replace, guarded by `metadata.resourceVersion`. */
  readonly replace: (namespace: string, secret: V1Secret) => Effect.Effect<V1Secret, KubeError.KubeError>
  /**
   * Delete; true when it existed. With `expect`, only the Secret with that UID (a DeleteOptions
   * precondition, checked by the apiserver): a same-named Secret someone else re-created is
   * refused with a `Conflict` KubeError and survives.
   */
  readonly delete: (namespace: string, name: string, expect?: { readonly uid: string }) => Effect.Effect<boolean, KubeError.KubeError>
}>()("tether/provisioner/SecretStore") {
  /** Backed by the hosting cluster. */
  static readonly layer = Layer.effect(
    SecretStore,
    Effect.gen(function*() {
      const hosting = yield* HostingCluster
      return SecretStore.of({
        get: (namespace, name) =>
          hosting.getSecret(namespace, name).pipe(
            Effect.asSome,
            Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeedNone)
          ),
        create: hosting.createSecret,
        replace: hosting.replaceSecret,
        delete: (namespace, name, expect) =>
          hosting.deleteSecret(namespace, name, expect).pipe(
            Effect.as(true),
            Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeed(false))
          )
      })
    })
  )

  /**
   * In memory, with resourceVersion semantics (409 on a stale replace), for tests that run
   * on virtual time. `seed` pre-populates Secrets keyed `namespace/name`.
   */
  static readonly layerMemory = (seed: ReadonlyMap<string, V1Secret> = new Map()) =>
    Layer.sync(SecretStore, () => {
      const secrets = new Map(seed)
      let version = 1
      const fail = (reason: KubeError.Reason, operation: string) =>
        Effect.fail(new KubeError.KubeError({ cluster: "memory", operation, reason, detail: reason }))
      const stamp = (secret: V1Secret): V1Secret => ({
        ...secret,
        metadata: { ...secret.metadata, resourceVersion: String(++version), uid: secret.metadata?.uid ?? `uid-${version}` }
      })
      return SecretStore.of({
        get: (namespace, name) => Effect.sync(() => Option.fromNullishOr(secrets.get(`${namespace}/${name}`))),
        create: (namespace, secret) => {
          const key = `${namespace}/${secret.metadata?.name}`
          if (secrets.has(key)) return fail("Conflict", `create secret ${key}`)
          const stored = stamp({ ...secret, metadata: { ...secret.metadata, namespace } })
          secrets.set(key, stored)
          return Effect.succeed(stored)
        },
        replace: (namespace, secret) => {
          const key = `${namespace}/${secret.metadata?.name}`
          const current = secrets.get(key)
          if (current === undefined) return fail("NotFound", `update secret ${key}`)
          if (current.metadata?.resourceVersion !== secret.metadata?.resourceVersion) {
            return fail("Conflict", `update secret ${key}`)
          }
          const stored = stamp(secret)
          secrets.set(key, stored)
          return Effect.succeed(stored)
        },
        delete: (namespace, name, expect) => {
          const key = `${namespace}/${name}`
          const current = secrets.get(key)
          if (current !== undefined && expect !== undefined && current.metadata?.uid !== expect.uid) {
            return fail("Conflict", `delete secret ${key}`)
          }
          return Effect.sync(() => secrets.delete(key))
        }
      })
    })
}
