/**
 * Composition root of `tether credential-controller`: the hosting cluster client (and the hub's
 * in hub mode), the provisioner's ports, a file system, and the controller running in the
 * background of the layer's scope, sharing its pairs through member Leases on the hosting
 * cluster when sharding is configured. Needs {@link Probes}.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { type Context, Effect, Layer } from "effect"
import * as CredentialController from "../src/controller/CredentialController.ts"
import * as Membership from "../src/controller/Membership.ts"
import type * as Options from "../src/controller/Options.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../src/kube/EventRecorder.ts"
import { HostingCluster, HubCluster, type KubeClient } from "../src/kube/KubeClient.ts"
import type * as KubeError from "../src/kube/KubeError.ts"
import * as RateLimit from "../src/kube/RateLimit.ts"
import { TokenState } from "../src/provisioner/Reconciler.ts"
import { SecretStore } from "../src/provisioner/SecretStore.ts"

const component = "tether-credential-controller"

/** The client of `layer`, its requests limited by the process's {@link RateLimit.RequestLimit}. */
const limited = <I>(tag: Context.Key<I, KubeClient>, layer: Layer.Layer<I, KubeError.KubeError>) =>
  Layer.effect(tag, Effect.map(Effect.all([Effect.service(tag), RateLimit.limiter]), ([client, limit]) => limit(client))).pipe(
    Layer.provide(layer)
  )

/**
 * The controller for `options`; `hostingKubeconfig` undefined means in-cluster.
 *
 * @category layers
 */
export const layer = (options: Options.Resolved, clusters: { readonly hostingKubeconfig: string | undefined }) => {
  const hosting = limited(HostingCluster, ClientNodeKube.layer(HostingCluster, { cluster: "hosting", path: clusters.hostingKubeconfig, userAgent: component }))
  const { concurrency, identityCheckInterval, mode, requestLimit, settings, sharding, tokenFile } = options
  const membership = (client: KubeClient) =>
    sharding === undefined ? undefined : { options: sharding, store: Membership.fromClient(client) }
  const run = mode._tag === "Hub"
    ? Effect.flatMap(Effect.all([HubCluster, HostingCluster]), ([hub, hosting]) =>
      CredentialController.run({
        source: { _tag: "Hub", hub, config: mode.config },
        settings,
        tokenFile,
        identityCheckInterval,
        concurrency,
        membership: membership(hosting)
      })).pipe(
        Effect.provide(limited(HubCluster, ClientNodeKube.layer(HubCluster, { cluster: "hub", path: mode.hubKubeconfig, userAgent: component })))
      )
    : Effect.flatMap(HostingCluster, (hosting) =>
      CredentialController.run({
        source: { _tag: "Hubless", hosting, selector: mode.selector, config: mode.config },
        settings,
        tokenFile,
        identityCheckInterval,
        concurrency,
        membership: membership(hosting)
      }))
  const ports = Layer.mergeAll(SecretStore.layer, EventRecorder.layer(component), TokenState.layer)
  return Layer.effectDiscard(Effect.forkScoped(run)).pipe(
    Layer.provide(ports),
    Layer.provide(hosting),
    // One bucket for every client of the process; the managed clients take it from the context.
    Layer.provideMerge(RateLimit.RequestLimit.layer(requestLimit)),
    Layer.provide(NodePlatform.layer)
  )
}
