/**
 * The hosting cluster's Secrets as the credential controller's reconciles see them: one
 * list+watch of Secrets in every namespace, whatever the number of pairs, behind the
 * {@link SecretStore} port the provisioner's reconcile uses.
 *
 * - Reads come from the watch: between deadlines a reconcile reads no Secret from the apiserver.
 *   Only the Secrets some pair names (its source candidates and its target) keep their data in
 *   memory; of the others only the name is kept, so that "does not exist" needs no request. A
 *   Secret named by a pair only after it was listed is read once from the apiserver and kept from
 *   then on; so is everything before the first list (the controller waits a bounded time for it).
 * - Writes go to the apiserver, and what it returns is kept at once (a reconcile that follows
 *   sees its own write even before the watch event).
 * - Every change of a Secret some pair names, except the controller's own writes coming back
 *   (by uid and resourceVersion), is passed to `onChange` with the keys of the pairs naming it.
 *
 * RBAC on the hosting cluster: `list, watch` on Secrets cluster-wide; `get, create, update,
 * delete` on the generated Secrets.
 *
 * @since 0.1.0
 */
import type { V1Secret } from "@kubernetes/client-node"
import { Deferred, Effect, Stream } from "effect"
import type * as Discovery from "../domain/Discovery.ts"
import type { KubeClient } from "../kube/KubeClient.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as OwnWrites from "../kube/OwnWrites.ts"
import type { SecretStore } from "../provisioner/SecretStore.ts"

/** @category models */
export interface SecretCache {
  readonly store: SecretStore["Service"]
  /** Index the Secrets `pairs` name (call after each discovery change). */
  readonly track: (pairs: ReadonlyArray<Discovery.Pair>) => void
  /** Whether the first list has been seen and the watch is not failing. */
  readonly healthy: () => boolean
  /** Returns once the first list has been seen. */
  readonly synced: Effect.Effect<void>
}

const id = (namespace: string | undefined, name: string | undefined) => `${namespace ?? ""}/${name ?? ""}`
const idOf = (secret: V1Secret) => id(secret.metadata?.namespace, secret.metadata?.name)

/**
 * The Secret without its managedFields, which no reconcile reads and which are often larger than
 * the rest of the metadata (an update that omits them keeps the server's).
 */
const lean = (secret: V1Secret): V1Secret => {
  if (secret.metadata?.managedFields === undefined) return secret
  const metadata = { ...secret.metadata }
  delete metadata.managedFields
  return { ...secret, metadata }
}

/**
 * Start the watch in the current scope.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(
  hosting: KubeClient,
  onChange: (keys: ReadonlyArray<string>) => Effect.Effect<void>
) {
  /** The Secrets pairs name: id -> keys. */
  let named = new Map<string, Array<string>>()
  /** Data of named Secrets: id -> the Secret (absent: not cached, read through). */
  const kept = new Map<string, V1Secret>()
  /** Every Secret that exists, as of the watch. */
  const existing = new Set<string>()
  let synced = false
  let broken = false
  const firstList = yield* Deferred.make<void>()
  // Many pairs write at once; remember enough versions for a burst of rotations.
  const own = OwnWrites.make(4096)

  /** Until discovery first says which Secrets pairs name, keep them all (a list that arrives first would otherwise be read again one by one). */
  let tracking = false

  /**
   * A count of what the watch has told: a read or write answered after the watch said something
   * newer about its Secret must not replace it (a GET sent before a change can return after the
   * change's event, and the next reconcile would then read the old source).
   */
  let told = 0
  const toldAt = new Map<string, number>()
  let listedAt = 0
  const heard = (key: string) => toldAt.set(key, ++told)
  const newerSince = (key: string, since: number) => listedAt > since || (toldAt.get(key) ?? 0) > since

  const remember = (secret: V1Secret) => {
    const key = idOf(secret)
    existing.add(key)
    if (!tracking || named.has(key)) kept.set(key, lean(secret))
  }
  /** Keep what a request answered, unless the watch has said something newer since it was sent. */
  const rememberAnswer = (secret: V1Secret, sentAt: number) => {
    if (!newerSince(idOf(secret), sentAt)) remember(secret)
  }

  yield* hosting.watchAllSecrets().pipe(
    Stream.runForEach((event) =>
      Effect.suspend(() => {
        switch (event._tag) {
          case "Broken":
            broken = true
            return Effect.logWarning("the Secret watch is failing; retrying", { error: event.error.message })
          case "Synced": {
            const before = new Map(kept)
            listedAt = ++told
            toldAt.clear()
            existing.clear()
            kept.clear()
            for (const secret of event.items) remember(secret)
            synced = true
            broken = false
            Deferred.doneUnsafe(firstList, Effect.void)
            // After a re-list, whatever changed while the watch was down.
            const changed = !tracking ? [] : [...named.keys()].filter((key) => {
              const now = kept.get(key)
              const then = before.get(key)
              return now?.metadata?.resourceVersion !== then?.metadata?.resourceVersion
            })
            return changed.length === 0 ? Effect.void : onChange(changed.flatMap((key) => named.get(key) ?? []))
          }
          case "Deleted": {
            broken = false
            const key = idOf(event.object)
            heard(key)
            existing.delete(key)
            kept.delete(key)
            const keys = named.get(key)
            return keys === undefined ? Effect.void : onChange(keys)
          }
          default: {
            broken = false
            const key = idOf(event.object)
            heard(key)
            remember(event.object)
            const keys = named.get(key)
            return keys === undefined || own.has(event.object) ? Effect.void : onChange(keys)
          }
        }
      })
    ),
    Effect.forkScoped
  )

  /** A write, its answer kept (see rememberAnswer) and its own watch event recognised. */
  const write = (send: Effect.Effect<V1Secret, KubeError.KubeError>) =>
    Effect.suspend(() => {
      const sentAt = told
      return Effect.tap(send, (secret) =>
        Effect.sync(() => {
          own.add(secret)
          rememberAnswer(secret, sentAt)
        }))
    })

  const store: SecretStore["Service"] = {
    get: (namespace, name) =>
      Effect.suspend(() => {
        const key = id(namespace, name)
        const cached = kept.get(key)
        if (cached !== undefined) return Effect.succeedSome(cached)
        if (synced && !broken && !existing.has(key)) return Effect.succeedNone
        const sentAt = told
        return hosting.getSecret(namespace, name).pipe(
          Effect.tap((secret) => Effect.sync(() => rememberAnswer(secret, sentAt))),
          Effect.asSome,
          Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeedNone)
        )
      }),
    create: (namespace, secret) => write(hosting.createSecret(namespace, secret)),
    replace: (namespace, secret) => write(hosting.replaceSecret(namespace, secret)),
    delete: (namespace, name, expect) =>
      hosting.deleteSecret(namespace, name, expect).pipe(
        Effect.as(true),
        Effect.catchIf(KubeError.isReason("NotFound"), () => Effect.succeed(false)),
        Effect.tap(() =>
          Effect.sync(() => {
            existing.delete(id(namespace, name))
            kept.delete(id(namespace, name))
          })
        )
      )
  }

  return {
    store,
    track: (pairs) => {
      const next = new Map<string, Array<string>>()
      for (const pair of pairs) {
        for (const ref of [...pair.sources, pair.target]) {
          const key = id(ref.namespace, ref.name)
          const keys = next.get(key)
          if (keys === undefined) next.set(key, [pair.key])
          else if (!keys.includes(pair.key)) keys.push(pair.key)
        }
      }
      named = next
      tracking = true
      // Drop data no pair names any more (credentials are not kept longer than needed).
      for (const key of kept.keys()) if (!named.has(key)) kept.delete(key)
    },
    healthy: () => synced && !broken,
    synced: Deferred.await(firstList)
  } satisfies SecretCache as SecretCache
})
