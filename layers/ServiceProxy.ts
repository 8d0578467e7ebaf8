/**
 * Composition root of the service proxy, used by `tether service-proxy` and by anything that
 * embeds the proxy.
 *
 * - {@link layerNoDeps}: the proxy and its `/readyz` check; the caller provides
 *   {@link ManagedCredentials}, {@link TokenReviewChain}, a {@link ServiceResolver},
 *   {@link Probes} and a `FileSystem`.
 * - {@link layer}: the same from command-line style options: credentials from the managed
 *   kubeconfig (hosted) or the pod (not hosted), TokenReview against the managed cluster (with
 *   the current managed token) and the hub, the system resolver, Node's file system; needs
 *   {@link Probes}.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { Effect, type FileSystem, Layer } from "effect"
import { InvalidOptions } from "../src/domain/InvalidOptions.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { HubCluster, ManagedCluster } from "../src/kube/KubeClient.ts"
import { Probes } from "../src/observability/Probes.ts"
import { ServiceResolver } from "../src/relay/ServiceResolver.ts"
import { type CredentialsError, ManagedCredentials } from "../src/serviceproxy/ManagedCredentials.ts"
import * as ServiceProxyOptions from "../src/serviceproxy/Options.ts"
import * as ServiceProxy from "../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../src/serviceproxy/TokenReviewChain.ts"

/** The options as given, checked by {@link ServiceProxyOptions.resolve}. @category models */
export type Options = ServiceProxyOptions.Input

const component = "tether-service-proxy"

/** Report the proxy on `/readyz`. Needs {@link Probes} and {@link ServiceProxy.ServiceProxy}. @category layers */
export const layerReadiness = Layer.effectDiscard(
  Effect.gen(function*() {
    const probes = yield* Probes
    const proxy = yield* ServiceProxy.ServiceProxy
    yield* probes.addReadinessCheck("service-proxy", proxy.readiness)
  })
)

/**
 * The proxy and its readiness check. Needs {@link ManagedCredentials}, {@link TokenReviewChain},
 * {@link ServiceResolver}, {@link Probes} and a `FileSystem`.
 *
 * @category layers
 */
export const layerNoDeps = (options: ServiceProxy.Options) =>
  layerReadiness.pipe(Layer.provideMerge(ServiceProxy.ServiceProxy.layer(options)))

/**
 * {@link ManagedCluster} as the client of {@link ManagedCredentials}: the current token on
 * every request, rebuilt when the server or its TLS settings change.
 *
 * @category layers
 */
export const layerManagedCluster = Layer.effect(ManagedCluster, Effect.map(ManagedCredentials, (credentials) => credentials.client))

/**
 * The proxy from checked options, as `tether service-proxy` runs it: credentials from the
 * managed kubeconfig file (hosted) or the pod (not hosted), TokenReview against the managed
 * cluster (with the current managed token) and the hub, the system resolver, Node's file
 * system. Needs {@link Probes}.
 *
 * @category layers
 */
export const layerChecked = (options: ServiceProxyOptions.Options) => {
  const managed = options.managedKubeconfig
  const credentials: Layer.Layer<ManagedCredentials, CredentialsError | InvalidOptions, FileSystem.FileSystem> = managed._tag === "InProcess"
    // Only hosted-agent has a provisioner in process; it composes the proxy itself.
    ? Layer.effect(ManagedCredentials, Effect.fail(new InvalidOptions({ message: "an in-process managed kubeconfig needs the provisioner in the same process (tether hosted-agent)" })))
    : ManagedCredentials.layer({
      source: managed._tag === "File" ? { _tag: "Kubeconfig", path: managed.path } : { _tag: "InCluster" },
      cluster: managed._tag === "File" ? "managed" : "in-cluster",
      userAgent: component,
      ...(options.credentialsReloadInterval === undefined ? {} : { reloadInterval: options.credentialsReloadInterval })
    })
  const hub = options.hubKubeconfig === undefined
    ? Layer.empty
    : ClientNodeKube.layer(HubCluster, { cluster: "hub", path: options.hubKubeconfig, userAgent: component })
  const chain = TokenReviewChain.layer({
    cacheTtl: options.tokenReviewCacheTtl,
    errorPatterns: options.tokenReviewErrorPatterns
  }).pipe(Layer.provide(layerManagedCluster), Layer.provide(hub))
  return layerNoDeps(options.proxy).pipe(
    Layer.provide(chain),
    Layer.provideMerge(credentials),
    Layer.provide(ServiceResolver.layerSystem),
    Layer.provide(NodePlatform.layer)
  )
}

/**
 * {@link layerChecked} from options as given; fails to build when they do not hold
 * ({@link ServiceProxyOptions.resolve}). Needs {@link Probes}.
 *
 * @category layers
 */
export const layer = (options: Options) =>
  Layer.unwrap(Effect.map(Effect.fromResult(ServiceProxyOptions.resolve(options)), layerChecked))
