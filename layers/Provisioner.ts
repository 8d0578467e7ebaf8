/**
 * Composition root of the managed-kubeconfig provisioner, used by `tether
 * managed-kubeconfig-provisioner` and by controllers that embed the provisioner.
 *
 * - {@link layerNoDeps}: the running provisioner; the caller provides the cluster clients
 *   ({@link HostingCluster}, and {@link HubCluster} when an add-on is tracked), {@link Probes}
 *   and a `FileSystem`.
 * - {@link layer}: the same with clients built from kubeconfig paths (in-cluster when absent).
 * - {@link layerManagedClient}: the provisioner plus a {@link ManagedCluster} client that always
 *   carries the token it issued last, handed over in process.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { Effect, Layer } from "effect"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../src/kube/EventRecorder.ts"
import { GeneratedKubeconfig } from "../src/kube/GeneratedKubeconfig.ts"
import { HostingCluster, HubCluster, ManagedCluster } from "../src/kube/KubeClient.ts"
import { AddonStatus } from "../src/provisioner/AddonStatus.ts"
import * as Provisioner from "../src/provisioner/Provisioner.ts"
import { TokenState } from "../src/provisioner/Reconciler.ts"
import { SecretStore } from "../src/provisioner/SecretStore.ts"
import { TokenIssuer } from "../src/provisioner/TokenIssuer.ts"
import { ManagedCredentials } from "../src/serviceproxy/ManagedCredentials.ts"

export type Options = Provisioner.Options

const component = "cluster-proxy-managed-kubeconfig-provisioner"

/** The ports of the reconciler except the hub, backed by the hosting cluster client. @category layers */
export const layerPorts = Layer.mergeAll(SecretStore.layer, TokenIssuer.layer, EventRecorder.layer(component), TokenState.layer)

/**
 * The provisioner running in the background of the layer's scope. Needs {@link HostingCluster},
 * {@link AddonStatus} (use `AddonStatus.layerUntracked` without a hub), {@link Probes}, a
 * `FileSystem`, and optionally {@link HubCluster} (to watch the add-on).
 *
 * @category layers
 */
export const layerNoDeps = (options: Provisioner.Options) =>
  Layer.effectDiscard(Effect.forkScoped(Provisioner.run(options))).pipe(Layer.provide(layerPorts))

/** Where the clusters are. @category models */
export interface Clusters {
  /** Hosting cluster kubeconfig; undefined means in-cluster. */
  readonly hostingKubeconfig: string | undefined
  /** Hub kubeconfig; undefined means no hub (no condition, no add-on deletion tracking). */
  readonly hubKubeconfig: string | undefined
}

const hostingLayer = (path: string | undefined) =>
  ClientNodeKube.layer(HostingCluster, { cluster: "hosting", path, userAgent: component })

/** The provisioner with its cluster clients and a file system; needs {@link Probes}. @category layers */
export const layer = (options: Provisioner.Options, clusters: Clusters) => {
  const { addon } = options
  const hub = clusters.hubKubeconfig === undefined || addon === undefined
    ? AddonStatus.layerUntracked
    : AddonStatus.layer(addon).pipe(
      Layer.provideMerge(ClientNodeKube.layer(HubCluster, { cluster: "hub", path: clusters.hubKubeconfig, userAgent: component }))
    )
  return layerNoDeps(options).pipe(
    Layer.provide(hub),
    Layer.provide(hostingLayer(clusters.hostingKubeconfig)),
    Layer.provide(NodePlatform.layer)
  )
}

/**
 * The running provisioner and a {@link ManagedCluster} client that always uses the kubeconfig it
 * generated last: rotations reach the client in process, with no file and no restart. Building
 * it waits for the first kubeconfig. Needs {@link Probes}.
 *
 * @category layers
 */
export const layerManagedClient = (options: Provisioner.Options, clusters: Clusters) =>
  Layer.effect(ManagedCluster, Effect.map(ManagedCredentials, (credentials) => credentials.client)).pipe(
    Layer.provide(ManagedCredentials.layerGenerated({ cluster: "managed", userAgent: component })),
    Layer.provideMerge(layer(options, clusters)),
    Layer.provideMerge(GeneratedKubeconfig.layer)
  )

/** `--cleanup`: delete the generated Secret once, reporting an event. @category layers */
export const cleanup = (target: Provisioner.Options["target"], clusters: Pick<Clusters, "hostingKubeconfig">) =>
  Provisioner.cleanup(target).pipe(
    Effect.provide(
      Layer.mergeAll(SecretStore.layer, EventRecorder.layer(component)).pipe(Layer.provide(hostingLayer(clusters.hostingKubeconfig)))
    )
  )
