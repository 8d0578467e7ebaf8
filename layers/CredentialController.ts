/**
 * Composition root of `tether credential-controller`: the hosting cluster client (and the hub's
 * in hub mode), the provisioner's ports, a file system, and the controller running in the
 * background of the layer's scope. Needs {@link Probes}.
 *
 * @since 0.1.0
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as CredentialController from "../src/controller/CredentialController.ts"
import type * as Options from "../src/controller/Options.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../src/kube/EventRecorder.ts"
import { HostingCluster, HubCluster } from "../src/kube/KubeClient.ts"
import { TokenState } from "../src/provisioner/Reconciler.ts"
import { SecretStore } from "../src/provisioner/SecretStore.ts"

const component = "tether-credential-controller"

/**
 * The controller for `options`; `hostingKubeconfig` undefined means in-cluster.
 *
 * @category layers
 */
export const layer = (options: Options.Resolved, clusters: { readonly hostingKubeconfig: string | undefined }) => {
  const hosting = ClientNodeKube.layer(HostingCluster, { cluster: "hosting", path: clusters.hostingKubeconfig, userAgent: component })
  const { concurrency, mode, settings } = options
  const run = mode._tag === "Hub"
    ? Effect.flatMap(HubCluster, (hub) =>
      CredentialController.run({ source: { _tag: "Hub", hub, config: mode.config }, settings, concurrency })).pipe(
        Effect.provide(ClientNodeKube.layer(HubCluster, { cluster: "hub", path: mode.hubKubeconfig, userAgent: component }))
      )
    : Effect.flatMap(HostingCluster, (hosting) =>
      CredentialController.run({
        source: { _tag: "Hubless", hosting, selector: mode.selector, config: mode.config },
        settings,
        concurrency
      }))
  const ports = Layer.mergeAll(SecretStore.layer, EventRecorder.layer(component), TokenState.layer)
  return Layer.effectDiscard(Effect.forkScoped(run)).pipe(
    Layer.provide(ports),
    Layer.provide(hosting),
    Layer.provide(NodeServices.layer)
  )
}
