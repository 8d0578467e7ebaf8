/**
 * Composition root of `tether hosted-agent`: everything that runs on the hosting cluster for
 * one managed cluster, in one supervised process.
 *
 * - `provisioner`: keeps the generated managed kubeconfig Secret alive and hands each new
 *   kubeconfig to the other components in process ({@link GeneratedKubeconfig});
 * - `apiserver-proxy`: the raw TCP relay to the managed kube-apiserver;
 * - `service-proxy`: the TLS proxy behind the konnectivity tunnel (all three hosted modes);
 * - `addon-lease`: the add-on health Lease on the hosting cluster.
 *
 * They share one hosting-cluster client (built only when the provisioner or the Lease runs), one
 * hub client, one probe server and one logger; each runs under the {@link Supervisor}, so a
 * failing component is restarted alone. Without the provisioner, the others read the generated
 * kubeconfig from a mounted file instead.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { Context, Effect, FileSystem, Layer, Option, type Scope } from "effect"
import { FetchHttpClient, type HttpClient } from "effect/http"
import { AddonLease } from "../src/addonagent/AddonLease.ts"
import * as HealthChecks from "../src/addonagent/HealthChecks.ts"
import * as HostedAgentOptions from "../src/agent/Options.ts"
import * as Supervisor from "../src/agent/Supervisor.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../src/kube/EventRecorder.ts"
import { GeneratedKubeconfig } from "../src/kube/GeneratedKubeconfig.ts"
import { HostingCluster, HubCluster } from "../src/kube/KubeClient.ts"
import * as LeaseStore from "../src/kube/LeaseStore.ts"
import { Probes } from "../src/observability/Probes.ts"
import { AddonStatus } from "../src/provisioner/AddonStatus.ts"
import * as Provisioner from "../src/provisioner/Provisioner.ts"
import { TokenState } from "../src/provisioner/Reconciler.ts"
import { SecretStore } from "../src/provisioner/SecretStore.ts"
import { TokenIssuer } from "../src/provisioner/TokenIssuer.ts"
import type * as ManagedTarget from "../src/relay/ManagedTarget.ts"
import * as TcpRelay from "../src/relay/TcpRelay.ts"
import { TargetWatcher } from "../src/relay/TargetWatcher.ts"
import { ServiceResolver } from "../src/relay/ServiceResolver.ts"
import { type CredentialsError, ManagedCredentials } from "../src/serviceproxy/ManagedCredentials.ts"
import { ServiceProxy } from "../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../src/serviceproxy/TokenReviewChain.ts"
import * as ServiceProxyLayers from "./ServiceProxy.ts"

/** @category models */
export const componentNames = HostedAgentOptions.componentNames

/** @category models */
export type ComponentName = HostedAgentOptions.ComponentName

/** Checked by {@link HostedAgentOptions.resolve}. @category models */
export type Options = HostedAgentOptions.Options

const userAgent = "tether-hosted-agent"

/** A component's view of the shared probes: its checks show as `<component>/<check>`. */
const ownProbes = (name: string) => Layer.effect(Probes, Effect.map(Probes, (probes) => Probes.prefixed(probes, name)))

/** Build `layer` in the component's scope and watch it with `failure`. */
const fromLayer = <A, E, R>(
  name: ComponentName,
  layer: Layer.Layer<A, E, R>,
  failure: (context: Context.Context<A>) => Effect.Effect<unknown, unknown>
): Supervisor.Component<Exclude<R, Probes> | Probes> => ({
  name,
  start: Effect.map(Layer.build(layer.pipe(Layer.provide(ownProbes(name)))), failure)
})

/**
 * What the components need from outside. {@link HostingCluster} is needed only by the
 * provisioner and the add-on Lease ({@link HostedAgentOptions.needsHostingCluster}), and
 * {@link HubCluster} is optional.
 *
 * @category models
 */
export type Requirements = Probes | FileSystem.FileSystem | HttpClient.HttpClient

type Shared = Requirements | GeneratedKubeconfig | TokenState

/**
 * Run the components chosen by `options` until interrupted; fails only when one cannot start
 * the first time. Needs {@link Requirements}, optionally {@link HubCluster}, and a `Scope`.
 *
 * @category running
 */
export const run = (options: Options): Effect.Effect<never, Supervisor.ComponentStartError, Requirements | Scope.Scope> =>
  Effect.gen(function*() {
    const hub = Option.getOrUndefined(yield* Effect.serviceOption(HubCluster))
    const managed = options.managedKubeconfig
    const hosting = Option.getOrUndefined(yield* Effect.serviceOption(HostingCluster))
    const hostingFor = (component: ComponentName) =>
      hosting === undefined
        ? Effect.fail(new Supervisor.ComponentStartError({ component, message: "needs a hosting-cluster client, and none was given" }))
        : Effect.succeed(hosting)
    const components: Array<Supervisor.Component<Shared>> = []

    if (managed._tag === "InProcess") {
      const provisioner = managed.provisioner
      const hostingLayer = Layer.succeed(HostingCluster, yield* hostingFor("provisioner"))
      const addon = hub === undefined || provisioner.addon === undefined
        ? AddonStatus.layerUntracked
        : AddonStatus.layer(provisioner.addon).pipe(Layer.provide(Layer.succeed(HubCluster, hub)))
      // The provisioner watches the add-on when it finds a hub client.
      const loop = (hub === undefined ? Provisioner.run(provisioner) : Effect.provideService(Provisioner.run(provisioner), HubCluster, hub)).pipe(
        Effect.provide(hostingLayer)
      )
      const ports = Layer.mergeAll(
        SecretStore.layer,
        TokenIssuer.layer,
        EventRecorder.layer("cluster-proxy-managed-kubeconfig-provisioner"),
        addon
      ).pipe(Layer.provide(hostingLayer))
      components.push({
        name: "provisioner",
        // Built in the component's scope, so each restart gets fresh ports.
        start: Effect.flatMap(
          Layer.build(Layer.merge(ports, ownProbes("provisioner"))),
          (context) => Supervisor.fromLoop("provisioner", loop).start.pipe(Effect.provide(context))
        )
      })
    }

    if (options.addonLease !== undefined) {
      const lease = options.addonLease
      const leaseStore = LeaseStore.LeaseStore.layerClient(yield* hostingFor("addon-lease"))
      const checks: Array<Effect.Effect<HealthChecks.HealthCheck, never, Shared>> = []
      if (lease.proxyAgentReadinessUrl !== undefined) checks.push(HealthChecks.httpReadiness("proxy-agent", lease.proxyAgentReadinessUrl))
      checks.push(
        managed._tag === "InProcess"
          ? HealthChecks.generatedTokenFreshness("managed-token", lease.tokenFreshnessMargin)
          : HealthChecks.managedTokenFreshness("managed-token", managed.path, lease.tokenFreshnessMargin)
      )
      const healthChecks = Layer.effect(
        HealthChecks.HealthChecks,
        Effect.map(Effect.all(checks), (built) => HealthChecks.fromChecks(built))
      )
      const leaseOptions = {
        namespace: lease.leaseNamespace,
        name: lease.addonName,
        leaseDuration: lease.leaseDuration,
        renewInterval: lease.renewInterval
      }
      // With the provisioner in process, the first heartbeat waits for its first kubeconfig
      // (started just before, usually a moment away) instead of failing the token check and
      // writing the Lease one renew interval late.
      const heartbeat = managed._tag === "InProcess"
        ? Layer.unwrap(Effect.map(GeneratedKubeconfig, (handOff) => AddonLease.layer({ ...leaseOptions, firstPeriodAfter: handOff.latest })))
        : AddonLease.layer(leaseOptions)
      components.push(fromLayer(
        "addon-lease",
        heartbeat.pipe(Layer.provide(healthChecks), Layer.provide(leaseStore)),
        (context) => Context.get(context, AddonLease).failure
      ))
    }

    if (options.apiserverProxy !== undefined) {
      const relay = options.apiserverProxy
      const target: Layer.Layer<TargetWatcher, ManagedTarget.TargetError, GeneratedKubeconfig | FileSystem.FileSystem> =
        managed._tag === "InProcess"
          ? TargetWatcher.layerGenerated
          : TargetWatcher.layer({ path: managed.path, reloadInterval: relay.reloadInterval })
      components.push(fromLayer(
        "apiserver-proxy",
        Layer.merge(TcpRelay.TcpRelay.layer({ ...relay, shutdownDrain: relay.drainTimeout }), TcpRelay.layerReadiness()).pipe(
          Layer.provideMerge(target)
        ),
        (context) => Context.get(context, TcpRelay.TcpRelay).failure
      ))
    }

    if (options.serviceProxy !== undefined) {
      const { proxy, tokenReviewCacheTtl, tokenReviewErrorPatterns } = options.serviceProxy
      const credentials: Layer.Layer<ManagedCredentials, CredentialsError, GeneratedKubeconfig | FileSystem.FileSystem> =
        managed._tag === "InProcess"
          ? ManagedCredentials.layerGenerated({ cluster: "managed", userAgent })
          : ManagedCredentials.layer({ source: { _tag: "Kubeconfig", path: managed.path }, cluster: "managed", userAgent })
      const chain = TokenReviewChain.layer({ cacheTtl: tokenReviewCacheTtl, errorPatterns: tokenReviewErrorPatterns }).pipe(Layer.provide(ServiceProxyLayers.layerManagedCluster), Layer.provide(hub === undefined ? Layer.empty : Layer.succeed(HubCluster, hub)))
      components.push(fromLayer(
        "service-proxy",
        ServiceProxyLayers.layerNoDeps(proxy).pipe(
          Layer.provide(chain),
          Layer.provide(credentials),
          Layer.provide(ServiceResolver.layerSystem)
        ),
        (context) => Context.get(context, ServiceProxy).failure
      ))
    }

    yield* Effect.logInfo("hosted agent starting", {
      components: components.map((c) => c.name).join(","),
      managedKubeconfig: managed._tag === "InProcess" ? "from the provisioner, in process" : managed.path
    })
    return yield* Supervisor.run(components, options.supervisor)
  }).pipe(
    Effect.provide(Layer.merge(GeneratedKubeconfig.layer, TokenState.layer)),
    Effect.annotateLogs({ process: "hosted-agent" })
  )

/**
 * The shared cluster clients from kubeconfig paths: the hosting one (in-cluster when its path is
 * absent) only when a component needs it, the hub one when a path is given.
 *
 * @category layers
 */
export const layerClients = (options: Pick<Options, "hostingKubeconfig" | "hubKubeconfig" | "managedKubeconfig" | "addonLease">) =>
  Layer.merge(
    HostedAgentOptions.needsHostingCluster(options)
      ? ClientNodeKube.layer(HostingCluster, { cluster: "hosting", path: options.hostingKubeconfig, userAgent })
      : Layer.empty,
    options.hubKubeconfig === undefined
      ? Layer.empty
      : ClientNodeKube.layer(HubCluster, { cluster: "hub", path: options.hubKubeconfig, userAgent })
  )

/**
 * The agent with its clients, fetch and Node's file system; needs {@link Probes}. Building it
 * starts the components; it fails when one cannot start the first time.
 *
 * @category layers
 */
export const launch = (options: Options) =>
  run(options).pipe(
    Effect.provide(Layer.mergeAll(layerClients(options), FetchHttpClient.layer, NodePlatform.layer))
  )
