/**
 * The managed-cluster clients of {@link TokenIssuer} and {@link ServiceAccounts}, made in one
 * place: one client per connection a source kubeconfig names (server, CA, TLS settings and
 * credentials), shared by both ports and kept across reconciles.
 *
 * Why: a client made per reconcile opened a new TLS connection, with a TLS context of its own,
 * for every TokenRequest and every identity check. At 1,000 pairs the start-up burst left about
 * 120 MiB of native heap that the allocator did not give back (heap snapshot and /proc smaps of
 * the controller at 1,000 pairs: JS heap 48 MiB, malloc heap 122 MiB). Sources that name the
 * same connection (the add-ons of one managed cluster) now share a client, and the token issuer
 * and the identity check share it too. A client unused for `idleAfter` is dropped, so between
 * rotations (hours apart) none is held, and its connections are closed; the next use makes a
 * new one. Each distinct connection still costs its own TLS context while its client lives
 * (built inside the client).
 *
 * Clients take their requests' turn at the process's {@link RateLimit.RequestLimit} when one is
 * in the context.
 *
 * @since 0.1.0
 */
import { Clock, Context, Duration, Effect, Layer, Redacted, Schedule } from "effect"
import { createHash } from "node:crypto"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as ClientNodeKube from "../kube/ClientNodeKube.ts"
import * as Connection from "../kube/Connection.ts"
import type { KubeClient } from "../kube/KubeClient.ts"
import * as RateLimit from "../kube/RateLimit.ts"

/** @category services */
export class ManagedClients extends Context.Service<ManagedClients, {
  /** The client for the connection `source` names, made on first use. */
  readonly clientFor: (source: Kubeconfig.SourceKubeconfig) => Effect.Effect<KubeClient>
  /** Clients held now (tests and metrics). */
  readonly size: Effect.Effect<number>
}>()("tether/provisioner/ManagedClients") {
  /**
   * Clients kept while used, dropped after `idleAfter` without use (checked every half of it);
   * limited by the context's {@link RateLimit.RequestLimit}, if any.
   */
  static readonly layer = (options: { readonly userAgent: string; readonly idleAfter: Duration.Input }) =>
    Layer.effect(
      ManagedClients,
      Effect.gen(function*() {
        const idleAfter = Duration.toMillis(Duration.fromInputUnsafe(options.idleAfter))
        const clients = yield* make(options.userAgent)
        yield* Effect.addFinalizer(() => clients.clear)
        yield* Effect.flatMap(Clock.currentTimeMillis, (now) => clients.sweep(now - idleAfter)).pipe(
          Effect.repeat(Schedule.spaced(Duration.millis(Math.max(1, idleAfter / 2)))),
          Effect.forkScoped
        )
        return ManagedClients.of({ clientFor: clients.clientFor, size: clients.size })
      })
    )
}

/**
 * The context's {@link ManagedClients}, or else a private cache that keeps the latest
 * connection's client for as long as the caller keeps it (a port made once per process).
 *
 * @category constructors
 */
export const fromContextOr = (userAgent: string): Effect.Effect<ManagedClients["Service"]> =>
  Effect.flatMap(Effect.serviceOption(ManagedClients), (found) =>
    found._tag === "Some"
      ? Effect.succeed(found.value)
      : Effect.map(make(userAgent, true), (own) => ManagedClients.of({ clientFor: own.clientFor, size: own.size })))

/**
 * Which clients are interchangeable: the same connection and the same credentials (their values:
 * a Redacted serialises as a placeholder, which would make every token look alike). Hashed, so
 * no credential is a map key.
 */
export const connectionKey = (source: Kubeconfig.SourceKubeconfig): string => {
  const { credentials } = source
  const secret = credentials._tag === "Token"
    ? ["token", Redacted.value(credentials.token)]
    : ["certificate", credentials.certData, Redacted.value(credentials.keyData)]
  return createHash("sha256").update(JSON.stringify([source.cluster, secret])).digest("hex")
}

/**
 * A cache of clients without a sweeper. With `latestOnly` (a single-cluster provisioner serves
 * one source at a time), a new connection replaces the clients before it.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(userAgent: string, latestOnly = false) {
  const limited = yield* RateLimit.limiter
  const entries = new Map<string, { readonly client: KubeClient; usedAt: number }>()
  const drop = (which: (usedAt: number) => boolean) => {
    const dropped = [...entries].filter(([, entry]) => which(entry.usedAt))
    for (const [key] of dropped) entries.delete(key)
    // A dropped client may still be finishing a request (a reconcile took it just before): its
    // connections close once that is answered.
    return Effect.forEach(dropped, ([, entry]) => entry.client.closeConnections, { discard: true })
  }
  /** Drop the clients last used before `before` (epoch ms), closing their connections. */
  const sweep = (before: number) => Effect.suspend(() => drop((usedAt) => usedAt < before))
  /** Drop every client, closing their connections. */
  const clear = Effect.suspend(() => drop(() => true))
  const clientFor = (source: Kubeconfig.SourceKubeconfig) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const key = connectionKey(source)
      const found = entries.get(key)
      if (found !== undefined) {
        found.usedAt = now
        return found.client
      }
      const client = limited(ClientNodeKube.make({
        cluster: "managed",
        connection: Connection.fromEntry(source.cluster, source.credentials),
        userAgent
      }))
      if (latestOnly) yield* clear
      entries.set(key, { client, usedAt: now })
      return client
    })
  return { clientFor, sweep, clear, size: Effect.sync(() => entries.size) }
})
