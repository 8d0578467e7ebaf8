/**
 * One managed cluster's provisioner on the three real apiservers of a {@link Trio}, set up as the
 * provisioner suites need it. {@link provisioning} gives, for that trio:
 * - `setUp`: for cluster `<c>` the namespaces (`<c>` and `agent-<c>` on the hosting apiserver,
 *   `agent-<c>` on the managed one, `<c>` on the hub), the managed `cluster-proxy` ServiceAccount
 *   whose tokens are minted, the source Secret `<c>/external-managed-kubeconfig` and the hub's
 *   ManagedClusterAddOn; and the provisioner's options for them;
 * - `start`: the provisioner in the test's scope on client-node clients, optionally with its own
 *   User-Agent (so that the audit logs tell its requests), through a fault proxy, with its probes
 *   served, or with a stand-in for its reachability probe;
 * - the reads the suites check it by: the generated Secret and the add-on's condition.
 * Each test names its own cluster, so one trio serves a whole file.
 */
import { NodeServices } from "@effect/platform-node"
import { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node"
import { Context, Data, Duration, Effect, Layer, Logger } from "effect"
import * as ProvisionerLayers from "../../layers/Provisioner.ts"
import * as Conditions from "../../src/domain/Conditions.ts"
import type * as ListenAddress from "../../src/domain/ListenAddress.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { HostingCluster, HubCluster } from "../../src/kube/KubeClient.ts"
import * as Probes from "../../src/observability/Probes.ts"
import { AddonStatus } from "../../src/provisioner/AddonStatus.ts"
import type * as Provisioner from "../../src/provisioner/Provisioner.ts"
import { Reachability } from "../../src/provisioner/Reachability.ts"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { NotYet } from "./eventually.ts"
import { reconcilesFinished } from "./reconciles.ts"
import type { Trio } from "./trio.ts"

/** A client-node call; failures keep the HTTP status for assertions. */
export class CallFailed extends Data.TaggedError("CallFailed")<{ readonly code: number | undefined }> {}
export const call = <A>(f: () => Promise<A>): Effect.Effect<A, CallFailed> =>
  Effect.tryPromise({ try: f, catch: (e) => new CallFailed({ code: (e as { code?: number }).code }) })

export const b64 = (s: string) => Buffer.from(s).toString("base64")

/** The provisioner's log lines dropped, for suites that do not read them. */
export const quietLogs = Logger.layer([Logger.map(Logger.formatJson, () => undefined)])

/** Reconciles the provisioners of this process have finished so far (whatever their result). */
export const reconciles = reconcilesFinished("managed-kubeconfig-provisioner")

const { group, plural, version } = Fixtures.managedClusterAddOnResource

export interface SetUp {
  /** The source Secret's kubeconfig. */
  readonly source: string
  /** Default: 1-hour tokens refreshed 5 minutes before. */
  readonly settings?: Provisioner.Options["settings"]
  readonly syncInterval: Duration.Duration
  readonly probeInterval?: Duration.Input
}

export interface Start {
  /** Where its log lines go. */
  readonly logs: Layer.Layer<never>
  /** The User-Agent of its hosting and hub clients; client-node's own when absent. */
  readonly userAgent?: string | undefined
  /** Reach the hosting (or hub) apiserver at this address, a fault proxy's, instead of its own. */
  readonly hostingServer?: string | undefined
  readonly hubServer?: string | undefined
  /** Serve its probes here (`/readyz` over HTTP); not served when absent. */
  readonly probesOn?: ListenAddress.ListenAddress | undefined
  /** A stand-in for its probe of the managed apiserver; the real probe when absent. */
  readonly reachability?: Reachability["Service"] | undefined
}

/** The add-on's status conditions, as the hub holds them. */
type AddonObject = { status?: { conditions?: Array<Conditions.Condition> } }

export const provisioning = (clusters: Trio) => {
  const core = (info: Apiserver.ApiserverInfo) => Apiserver.kubeConfig(info).makeApiClient(CoreV1Api)
  const hubCustom = () => Apiserver.kubeConfig(clusters.hub).makeApiClient(CustomObjectsApi)

  /** The objects for cluster `cluster` on the three apiservers; the provisioner's options for them. */
  const setUp = Effect.fn(function*(cluster: string, how: SetUp) {
    const { hosting, hub, managed } = clusters
    const agentNamespace = `agent-${cluster}`
    yield* Apiserver.createNamespace(hosting, cluster)
    yield* Apiserver.createNamespace(hosting, agentNamespace)
    yield* Apiserver.createNamespace(managed, agentNamespace)
    yield* Apiserver.createNamespace(hub, cluster)
    yield* call(() => core(managed).createNamespacedServiceAccount({ namespace: agentNamespace, body: { metadata: { name: "cluster-proxy" } } }))
    yield* call(() =>
      core(hosting).createNamespacedSecret({ namespace: cluster, body: { metadata: { name: "external-managed-kubeconfig" }, data: { kubeconfig: b64(how.source) } } })
    )
    yield* call(() =>
      hubCustom().createNamespacedCustomObject({
        group,
        version,
        plural,
        namespace: cluster,
        body: { apiVersion: `${group}/${version}`, kind: "ManagedClusterAddOn", metadata: { name: "cluster-proxy" }, spec: { installNamespace: agentNamespace } }
      })
    )
    const options: Provisioner.Options = {
      clusterName: cluster,
      source: { namespace: cluster, name: "external-managed-kubeconfig" },
      target: { namespace: agentNamespace, name: "cluster-proxy-managed-kubeconfig" },
      serviceAccount: { namespace: agentNamespace, name: "cluster-proxy" },
      settings: how.settings ?? { tokenExpiration: Duration.hours(1), refreshBefore: Duration.minutes(5) },
      syncInterval: how.syncInterval,
      ...(how.probeInterval === undefined ? {} : { probeInterval: how.probeInterval }),
      addon: { namespace: cluster, name: "cluster-proxy" }
    }
    return options
  })

  /** Start a provisioner in the test's scope; returns its probes. */
  const start = Effect.fn(function*(options: Provisioner.Options, how: Start) {
    const userAgent = how.userAgent === undefined ? {} : { userAgent: how.userAgent }
    const clients = Layer.mergeAll(
      Layer.succeed(HostingCluster, ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(clusters.hosting, how.hostingServer), ...userAgent })),
      Layer.succeed(HubCluster, ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(clusters.hub, how.hubServer), ...userAgent }))
    )
    const provisioner = ProvisionerLayers.layerNoDeps(options).pipe(Layer.provide(AddonStatus.layer(options.addon!)))
    const probed = how.reachability === undefined ? provisioner : provisioner.pipe(Layer.provide(Layer.succeed(Reachability, how.reachability)))
    const withProbes = how.probesOn === undefined
      ? probed.pipe(Layer.provideMerge(Probes.Probes.layerNoServer))
      : probed.pipe(Layer.provideMerge(Probes.layer(how.probesOn)))
    const stack = withProbes.pipe(
      Layer.provide(clients),
      Layer.provide(NodeServices.layer),
      Layer.provide(how.logs)
    )
    return Context.get(yield* Layer.build(stack), Probes.Probes)
  })

  const readTarget = (options: Provisioner.Options) => call(() => core(clusters.hosting).readNamespacedSecret(options.target))

  /** The add-on's ManagedKubeconfigReady condition; undefined while it has none. */
  const conditionOf = (options: Provisioner.Options) =>
    call(() => hubCustom().getNamespacedCustomObject({ group, version, plural, ...options.addon! })).pipe(
      Effect.map((object) => Conditions.findCondition((object as AddonObject).status?.conditions ?? [], "ManagedKubeconfigReady"))
    )

  /** The ManagedKubeconfigReady condition; fails (NotYet) while it is not set. */
  const condition = (options: Provisioner.Options) =>
    conditionOf(options).pipe(
      Effect.filterOrFail((c): c is Conditions.Condition => c !== undefined, () => new NotYet({ what: "condition set" }))
    )

  /** Replace the source Secret's kubeconfig. */
  const changeSource = (options: Provisioner.Options, kubeconfig: string) =>
    call(() =>
      core(clusters.hosting).replaceNamespacedSecret({
        ...options.source,
        body: { metadata: { ...options.source }, data: { kubeconfig: b64(kubeconfig) } }
      })
    )

  return { setUp, start, readTarget, conditionOf, condition, changeSource }
}
