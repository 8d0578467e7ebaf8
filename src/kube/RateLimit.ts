/**
 * A rate limit that callers wait at: the work queue's limit on reconcile starts, and the
 * process's limit on Kubernetes API requests ({@link RequestLimit}), which every client of the
 * credential controller (hosting, hub, and each managed cluster's) takes from, so the apiservers
 * together never see more than `burst + perSecond × w` requests from one process in any `w`
 * seconds (controller-runtime's `--kube-api-qps`/`--kube-api-burst`, here one bucket for the
 * whole process instead of one per client).
 *
 * Watches are not limited: a watch is one long request, and its re-lists are rare and bounded
 * by the watch's own backoff.
 *
 * @since 0.1.0
 */
import { Clock, Context, Duration, Effect, Layer, Semaphore } from "effect"
import * as TokenBucket from "../domain/TokenBucket.ts"
import type { KubeClient } from "./KubeClient.ts"

/**
 * An effect that returns once the bucket allows one more start, and spends that token. Waiters
 * are served one at a time (a semaphore around wait-then-spend), so a late wake-up only lowers
 * the rate. A timer may also fire a millisecond early by the wall clock; the waiter then sleeps
 * again rather than start without a token.
 *
 * @category constructors
 */
export const gate = (policy: TokenBucket.Policy): Effect.Effect<Effect.Effect<void>> => {
  if (!TokenBucket.isValid(policy)) return Effect.die(new Error("a rate limit needs perSecond > 0 and burst >= 1"))
  return Effect.map(Effect.all([Clock.currentTimeMillis, Semaphore.make(1)]), ([start, one]) => {
    let state = TokenBucket.full(policy, start)
    return Semaphore.withPermits(one, 1)(
      Effect.gen(function*() {
        while (true) {
          const now = yield* Clock.currentTimeMillis
          const spent = TokenBucket.spend(policy, state, now)
          if (spent !== undefined) {
            state = spent
            return
          }
          yield* Effect.sleep(Duration.millis(Math.max(1, TokenBucket.waitMillis(policy, state, now))))
        }
      })
    )
  })
}

/** The process's limit on API requests; absent from a context, requests are not limited. @category services */
export class RequestLimit extends Context.Service<RequestLimit, {
  readonly policy: TokenBucket.Policy
  /** Wait until one more request may be sent. */
  readonly admit: Effect.Effect<void>
}>()("tether/kube/RequestLimit") {
  static readonly layer = (policy: TokenBucket.Policy) =>
    Layer.effect(RequestLimit, Effect.map(gate(policy), (admit) => RequestLimit.of({ policy, admit })))
}

/**
 * `client` with every request but the watches waiting at `admit` first. Written out method by
 * method, so a method added to {@link KubeClient} does not compile until it is limited here.
 *
 * @category constructors
 */
export const limitRequests = (client: KubeClient, admit: Effect.Effect<void>): KubeClient => {
  const limited = <A, E>(request: Effect.Effect<A, E>) => Effect.andThen(admit, request)
  return {
    cluster: client.cluster,
    server: client.server,
    closeConnections: client.closeConnections,
    getSecret: (namespace, name) => limited(client.getSecret(namespace, name)),
    createSecret: (namespace, secret) => limited(client.createSecret(namespace, secret)),
    replaceSecret: (namespace, secret) => limited(client.replaceSecret(namespace, secret)),
    deleteSecret: (namespace, name, expect) => limited(client.deleteSecret(namespace, name, expect)),
    watchSecrets: client.watchSecrets,
    watchAllSecrets: client.watchAllSecrets,
    createEvent: (namespace, event) => limited(client.createEvent(namespace, event)),
    createServiceAccountToken: (namespace, name, request) => limited(client.createServiceAccountToken(namespace, name, request)),
    getServiceAccount: (namespace, name) => limited(client.getServiceAccount(namespace, name)),
    createTokenReview: (review) => limited(client.createTokenReview(review)),
    getCustomObject: (resource, namespace, name) => limited(client.getCustomObject(resource, namespace, name)),
    replaceCustomObjectStatus: (resource, object) => limited(client.replaceCustomObjectStatus(resource, object)),
    watchCustomObjects: client.watchCustomObjects,
    watchAllCustomObjects: client.watchAllCustomObjects,
    getLease: (namespace, name) => limited(client.getLease(namespace, name)),
    createLease: (namespace, lease) => limited(client.createLease(namespace, lease)),
    replaceLease: (namespace, lease) => limited(client.replaceLease(namespace, lease)),
    deleteLease: (namespace, name) => limited(client.deleteLease(namespace, name)),
    listLeases: (namespace, labelSelector) => limited(client.listLeases(namespace, labelSelector))
  }
}

/**
 * What to wrap clients in: the context's {@link RequestLimit}, or nothing when there is none.
 *
 * @category constructors
 */
export const limiter: Effect.Effect<(client: KubeClient) => KubeClient> = Effect.map(
  Effect.serviceOption(RequestLimit),
  (limit) => limit._tag === "Some" ? (client: KubeClient) => limitRequests(client, limit.value.admit) : (client: KubeClient) => client
)
