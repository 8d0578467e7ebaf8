/**
 * Does the managed apiserver answer at all? A cheap probe the provisioner runs on a short,
 * jittered schedule while a refresh waits on an unreachable managed apiserver, so recovery
 * follows the apiserver's return within seconds instead of the next backoff step, and the
 * apiserver is not sent TokenRequests while it is away.
 *
 * The probe is an unauthenticated `GET /readyz` over TLS verified as the source kubeconfig
 * says: it carries no credential, and any HTTP answer (200, 401, 403, 500) counts, since all the
 * provisioner needs to know is that a request now reaches the apiserver. A source that goes
 * through a proxy (`proxy-url`) is not probed; its retries keep to the backoff.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Layer } from "effect"
import * as Https from "node:https"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"

/** @category models */
export type Answer = "Answers" | "Silent" | "Unprobed"

/** @category services */
export class Reachability extends Context.Service<Reachability, {
  /** Whether the cluster's server gave any HTTP answer within `timeout` ("Unprobed": it cannot be probed). */
  readonly answers: (cluster: Kubeconfig.ClusterEntry, timeout: Duration.Duration) => Effect.Effect<Answer>
}>()("tether/provisioner/Reachability") {
  /** The real probe; also what the provisioner uses when no Reachability is provided. */
  static readonly live = Reachability.of({ answers: (cluster, timeout) => probe(cluster, timeout) })
  static readonly layer = Layer.succeed(Reachability, Reachability.live)
}

const pem = (data: string) => (data.trimStart().startsWith("-----BEGIN") ? data : Buffer.from(data, "base64").toString("utf8"))

const probe = (cluster: Kubeconfig.ClusterEntry, timeout: Duration.Duration): Effect.Effect<Answer> => {
  if (cluster.proxyUrl !== undefined) return Effect.succeed<Answer>("Unprobed")
  let url: URL
  try {
    url = new URL("/readyz", cluster.server)
  } catch {
    return Effect.succeed<Answer>("Unprobed")
  }
  if (url.protocol !== "https:") return Effect.succeed<Answer>("Unprobed")
  return Effect.callback<Answer>((resume) => {
    let done = false
    const finish = (answer: Answer) => {
      if (done) return
      done = true
      resume(Effect.succeed(answer))
    }
    const request = Https.request(url, {
      method: "GET",
      agent: false,
      timeout: Duration.toMillis(timeout),
      rejectUnauthorized: cluster.insecureSkipTlsVerify !== true,
      ...(cluster.certificateAuthorityData === undefined ? {} : { ca: pem(cluster.certificateAuthorityData) }),
      ...(cluster.tlsServerName === undefined ? {} : { servername: cluster.tlsServerName })
    }, (response) => {
      finish("Answers")
      response.resume()
      request.destroy()
    })
    request.once("timeout", () => request.destroy(new Error("probe timed out")))
    request.on("error", () => finish("Silent"))
    request.end()
    return Effect.sync(() => void request.destroy())
  })
}
