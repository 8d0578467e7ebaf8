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
import { NodeServices } from "@effect/platform-node"
import { type Duration, Effect, Layer, Result } from "effect"
import type * as ListenAddress from "../src/domain/ListenAddress.ts"
import * as ApiserverUrl from "../src/domain/ApiserverUrl.ts"
import type * as ServiceProxyMode from "../src/domain/ServiceProxyMode.ts"
import * as TokenReview from "../src/domain/TokenReview.ts"
import * as ClientNodeKube from "../src/kube/ClientNodeKube.ts"
import { HubCluster, ManagedCluster } from "../src/kube/KubeClient.ts"
import { Probes } from "../src/observability/Probes.ts"
import { ServiceResolver } from "../src/relay/ServiceResolver.ts"
import { ManagedCredentials } from "../src/serviceproxy/ManagedCredentials.ts"
import * as ServiceProxy from "../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../src/serviceproxy/TokenReviewChain.ts"

/** @category models */
export interface Options {
  readonly listen: ListenAddress.ListenAddress
  readonly certFile: string
  readonly keyFile: string
  /** PEM file of extra CAs for https Services; a missing file is skipped. */
  readonly additionalServiceCa: string | undefined
  /** Hub kubeconfig for the second TokenReview; undefined means only the managed cluster reviews. */
  readonly hubKubeconfig: string | undefined
  /** The generated managed kubeconfig; undefined means not hosted (the in-cluster apiserver). */
  readonly managedKubeconfig: string | undefined
  /** Hosted mode; undefined means Disabled when hosted. */
  readonly mode: ServiceProxyMode.Mode | undefined
  readonly enableImpersonation: boolean
  readonly tokenReviewCacheTtl: Duration.Input
  /** `status.error` substrings that let the chain try the next cluster; empty means the default. */
  readonly tokenReviewErrorPatterns: ReadonlyArray<string>
  readonly serviceRelayName: string
  readonly serviceRelayPort: number
  /** The add-on namespace (`POD_NAMESPACE`); required in Relay mode. */
  readonly relayNamespace: string | undefined
  readonly maxIdleConnections: number
  readonly idleConnectionTimeout: Duration.Input
  readonly tlsHandshakeTimeout: Duration.Input
  readonly expectContinueTimeout: Duration.Input
  /** Server tuning and file paths tests override; the defaults suit a pod. */
  readonly tuning?: Partial<Omit<ServiceProxy.Options, "listen" | "certFile" | "keyFile" | "deployment" | "enableImpersonation" | "relay">>
  /** Re-read period of the managed kubeconfig (file events are picked up at once); default 10 seconds. */
  readonly credentialsReloadInterval?: Duration.Input
}

const component = "tether-service-proxy"

/**
 * Where the proxy runs and what it does with Services: not hosted without a managed
 * kubeconfig (Relay is then an error), else hosted in the given mode, Disabled by default.
 *
 * @category options
 */
export const deployment = (
  options: Pick<Options, "managedKubeconfig" | "mode">
): Result.Result<ServiceProxyMode.Deployment, ServiceProxy.ServiceProxyError> => {
  if (options.managedKubeconfig === undefined || options.managedKubeconfig.trim() === "") {
    return options.mode === "Relay"
      ? Result.fail(
        new ServiceProxy.ServiceProxyError({
          reason: "Config",
          message: "managed-kubeconfig is required when hosted-service-proxy-mode=Relay"
        })
      )
      : Result.succeed({ _tag: "Direct" })
  }
  return Result.succeed({ _tag: "Hosted", mode: options.mode ?? "Disabled" })
}

/**
 * The proxy's options from the command-line style options, checked.
 *
 * @category options
 */
export const proxyOptions = (options: Options): Result.Result<ServiceProxy.Options, ServiceProxy.ServiceProxyError> =>
  Result.gen(function*() {
    const placement = yield* deployment(options)
    const config = (message: string) => Result.fail(new ServiceProxy.ServiceProxyError({ reason: "Config", message }))
    let relay: ApiserverUrl.RelayService | undefined
    if (placement._tag === "Hosted" && placement.mode === "Relay") {
      const namespace = options.relayNamespace?.trim() ?? ""
      if (namespace === "") {
        return yield* config("POD_NAMESPACE must name the add-on namespace in Relay mode (the relay Service lives there on the managed cluster)")
      }
      const checked = ApiserverUrl.validateRelayService({ namespace, name: options.serviceRelayName.trim(), port: options.serviceRelayPort })
      if (Result.isFailure(checked)) return yield* config(checked.failure)
      relay = checked.success
    }
    return {
      ...options.tuning,
      listen: options.listen,
      certFile: options.certFile,
      keyFile: options.keyFile,
      deployment: placement,
      enableImpersonation: options.enableImpersonation,
      relay,
      additionalServiceCa: options.additionalServiceCa,
      maxIdleConnections: options.maxIdleConnections,
      idleConnectionTimeout: options.idleConnectionTimeout,
      tlsHandshakeTimeout: options.tlsHandshakeTimeout,
      expectContinueTimeout: options.expectContinueTimeout
    } satisfies ServiceProxy.Options
  })

/**
 * The TokenReview patterns: blanks dropped; the default ("invalid bearer token") when none is left.
 *
 * @category options
 */
export const errorPatterns = (given: ReadonlyArray<string>): ReadonlyArray<string> => {
  const patterns = [...new Set(given.map((pattern) => pattern.trim()).filter((pattern) => pattern !== ""))]
  return patterns.length === 0 ? TokenReview.defaultErrorPatterns : patterns
}

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
 * The proxy as `tether service-proxy` runs it. Needs {@link Probes}.
 *
 * @category layers
 */
export const layer = (options: Options) =>
  Layer.unwrap(Effect.gen(function*() {
    const proxy = yield* Effect.fromResult(proxyOptions(options))
    const managedKubeconfig = options.managedKubeconfig?.trim() ?? ""
    const credentials = ManagedCredentials.layer({
      source: managedKubeconfig === "" ? { _tag: "InCluster" } : { _tag: "Kubeconfig", path: managedKubeconfig },
      cluster: managedKubeconfig === "" ? "in-cluster" : "managed",
      userAgent: component,
      ...(options.credentialsReloadInterval === undefined ? {} : { reloadInterval: options.credentialsReloadInterval })
    })
    const hubKubeconfig = options.hubKubeconfig?.trim() ?? ""
    const hub = hubKubeconfig === ""
      ? Layer.empty
      : ClientNodeKube.layer(HubCluster, { cluster: "hub", path: hubKubeconfig, userAgent: component })
    const chain = TokenReviewChain.layer({
      cacheTtl: options.tokenReviewCacheTtl,
      errorPatterns: errorPatterns(options.tokenReviewErrorPatterns)
    }).pipe(Layer.provide(layerManagedCluster), Layer.provide(hub))
    return layerNoDeps(proxy).pipe(
      Layer.provide(chain),
      Layer.provideMerge(credentials),
      Layer.provide(ServiceResolver.layerSystem),
      Layer.provide(NodeServices.layer)
    )
  }))
