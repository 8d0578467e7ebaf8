/**
 * Composition root of the add-on agent (the add-on health Lease), used by `tether addon-agent`
 * and by anything that embeds the heartbeat.
 *
 * - {@link layerNoDeps}: the heartbeat and its health checks; the caller provides the
 *   {@link LeaseStore} (which cluster the Lease is on), an `HttpClient` and a `FileSystem`, and
 *   optionally {@link Probes}.
 * - {@link layer}: the same with the Lease client built from a kubeconfig path (in-cluster when
 *   absent), fetch and Node's file system.
 *
 * Modes: with a spoke (managed) kubeconfig the agent runs on the hosting cluster (hosted mode),
 * its own cluster client is the hosting one, and the managed token's freshness is checked;
 * without, it runs on the managed cluster and its own client is the managed one. Either way the
 * Lease goes through the agent's own client: only the cluster name in logs and the user agent
 * differ.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { Effect, Layer } from "effect"
import { FetchHttpClient } from "effect/http"
import { AddonLease } from "../src/addonagent/AddonLease.ts"
import { HealthChecks } from "../src/addonagent/HealthChecks.ts"
import type * as AddonAgentOptions from "../src/addonagent/Options.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import * as Connection from "../src/kube/Connection.ts"
import * as LeaseStore from "../src/kube/LeaseStore.ts"

/** Checked by {@link AddonAgentOptions.resolve}. @category models */
export type Options = AddonAgentOptions.Options

/** @category models */
export type Mode = "Hosted" | "Default"

/** @category getters */
export const mode = (options: Pick<Options, "spokeKubeconfig">): Mode =>
  options.spokeKubeconfig === undefined ? "Default" : "Hosted"

/**
 * The heartbeat with the built-in health checks. Needs a {@link LeaseStore.LeaseStore}, an
 * `HttpClient` and a `FileSystem`; uses {@link Probes} when present.
 *
 * @category layers
 */
export const layerNoDeps = (options: Options) =>
  Layer.merge(
    AddonLease.layer({
      namespace: options.leaseNamespace,
      name: options.addonName,
      leaseDuration: options.leaseDuration,
      renewInterval: options.renewInterval
    }),
    Layer.effectDiscard(
      Effect.logInfo("addon-agent started", {
        mode: mode(options),
        cluster: options.clusterName ?? "",
        addon: options.addonName
      })
    )
  ).pipe(
    Layer.provideMerge(HealthChecks.layer({
      proxyAgentReadinessUrl: options.proxyAgentReadinessUrl,
      managedKubeconfig: options.spokeKubeconfig,
      tokenFreshnessMargin: options.tokenFreshnessMargin
    }))
  )

/** Where the agent's own cluster is. @category models */
export interface Clusters {
  /** Kubeconfig of the cluster the agent runs on; undefined means in-cluster. */
  readonly kubeconfig: string | undefined
}

/**
 * The Lease store on the agent's own cluster: hosting in hosted mode, managed otherwise.
 *
 * @category layers
 */
export const layerLeaseStore = (options: Pick<Options, "spokeKubeconfig">, clusters: Clusters) => {
  const hosted = mode(options) === "Hosted"
  const cluster = hosted ? "hosting" : "managed"
  const userAgent = hosted ? "proxy-agent-addon-agent-management" : "proxy-agent-addon-agent"
  return Layer.effect(
    LeaseStore.LeaseStore,
    Effect.map(
      Connection.load(cluster, clusters.kubeconfig),
      (connection) => LeaseStore.fromClient(ClientNodeKube.make({ cluster, connection, userAgent }))
    )
  )
}

/** The agent with its cluster client, fetch and Node's file system; uses {@link Probes} when present. @category layers */
export const layer = (options: Options, clusters: Clusters) =>
  layerNoDeps(options).pipe(
    Layer.provide(layerLeaseStore(options, clusters)),
    Layer.provide(FetchHttpClient.layer),
    Layer.provide(NodePlatform.layer)
  )
