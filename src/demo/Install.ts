/**
 * What OCM and the chart put on the three clusters before tether's processes start, for one
 * managed cluster in hosted mode with the service proxy in Relay mode:
 *
 * - hub: the cluster's namespace and its `cluster-proxy` ManagedClusterAddOn;
 * - hosting: the source (admin) kubeconfig Secret in the cluster's namespace, and the add-on
 *   namespace where the generated Secret and the Lease go;
 * - managed: the add-on's ServiceAccount with the chart's impersonator rights; the service
 *   relay's ServiceAccount (TokenReview only) and the Role that lets the add-on use the relay
 *   Service's `services/proxy`; the relay Service with its endpoint in the demo's network
 *   namespace (a Pod carrying the address, as a kubelet would report it); the backend Service
 *   `hello`; and, for the demo only, a `team/reader` ServiceAccount that may list pods in
 *   `default` and the right for the add-on's account to read namespaces (so kubectl through the
 *   TCP relay has something to show).
 *
 * @since 0.1.0
 */
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  type V1Secret
} from "@kubernetes/client-node"
import { Data, Effect } from "effect"
import { Apiserver, Fixtures } from "../testing/index.ts"

export const cluster = "cluster1"
export const agentNamespace = "open-cluster-management-cluster-proxy"
export const addonName = "cluster-proxy"
export const sourceSecret = "external-managed-kubeconfig"
export const generatedSecret = "cluster-proxy-managed-kubeconfig"
export const relayName = "cluster-proxy-service-relay"
export const relayPort = 7444
export const relayProbePort = 8000
export const backend = { namespace: "default", name: "hello", port: 8080 } as const
/** The user the service relay serves: the add-on's ServiceAccount, whose tokens the provisioner mints. */
export const trustedCaller = `system:serviceaccount:${agentNamespace}:${addonName}`

export class InstallFailed extends Data.TaggedError("InstallFailed")<{ readonly message: string }> {}

export interface Clusters {
  readonly hub: Apiserver.ApiserverInfo
  readonly hosting: Apiserver.ApiserverInfo
  readonly managed: Apiserver.ApiserverInfo
}

export interface Installed {
  /** A token of `team/reader` on the managed cluster (may list pods in `default`). */
  readonly readerToken: string
  /** A token of the relay's ServiceAccount, for its TokenReviews. */
  readonly relayToken: string
}

const b64 = (s: string) => Buffer.from(s).toString("base64")

// Only the status code and the server's message: request bodies may carry tokens.
const call = <A>(what: string, f: () => Promise<A>) =>
  Effect.tryPromise({
    try: f,
    catch: (error) =>
      new InstallFailed({
        message: `${what} failed: ${error instanceof ApiException ? `HTTP ${error.code}` : error instanceof Error ? error.message : String(error)}`
      })
  })

/** The source Secret's body: the managed cluster's admin kubeconfig, plus `suffix` (a comment changes its hash). */
export const source = (clusters: Clusters, suffix = ""): V1Secret => ({
  metadata: { name: sourceSecret, namespace: cluster },
  data: { kubeconfig: b64(`${clusters.managed.kubeconfigYaml}${suffix}`) }
})

/**
 * Create everything; `relayAddress` is where the service relay listens inside the network
 * namespace (absent when the demo runs without one: then no relay objects are created).
 */
export const install = (clusters: Clusters, relayAddress: string | undefined) =>
  Effect.gen(function*() {
    const { hosting, hub, managed } = clusters
    const wrap = Effect.mapError((error: Apiserver.ApiserverError) => new InstallFailed({ message: error.message }))
    for (const [info, namespace] of [[hosting, cluster], [hosting, agentNamespace], [hub, cluster], [managed, agentNamespace]] as const) {
      yield* Apiserver.createNamespace(info, namespace).pipe(wrap)
    }
    // Tokens for the demo's own callers; the helper creates the ServiceAccounts. A day outlasts any demo.
    const readerToken = yield* Apiserver.serviceAccountToken(managed, "team", "reader", 86_400).pipe(wrap)
    const relayToken = yield* Apiserver.serviceAccountToken(managed, agentNamespace, relayName, 86_400).pipe(wrap)
    yield* Apiserver.serviceAccountToken(managed, agentNamespace, addonName, 600).pipe(wrap)

    const core = Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api)
    const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
    const sa = (namespace: string, name: string) => ({ kind: "ServiceAccount", name, namespace })
    const clusterRole = (name: string, rules: Array<{ apiGroups: Array<string>; resources: Array<string>; verbs: Array<string> }>, subject: ReturnType<typeof sa>) =>
      Effect.gen(function*() {
        yield* call(`creating ClusterRole ${name}`, () => rbac.createClusterRole({ body: { metadata: { name }, rules } }))
        yield* call(`creating ClusterRoleBinding ${name}`, () =>
          rbac.createClusterRoleBinding({
            body: { metadata: { name }, roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name }, subjects: [subject] }
          }))
      })

    // The chart's impersonator rights for the add-on's account (the service proxy's kube-apiserver path).
    yield* clusterRole(`${addonName}-impersonator:${agentNamespace}`, [
      { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] },
      { apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"] },
      { apiGroups: ["authentication.k8s.io"], resources: ["*"], verbs: ["impersonate"] }
    ], sa(agentNamespace, addonName))
    // The demo's: something for kubectl through the TCP relay to list.
    yield* clusterRole("tether-demo-namespace-viewer", [{ apiGroups: [""], resources: ["namespaces"], verbs: ["get", "list", "watch"] }], sa(agentNamespace, addonName))
    yield* call("creating Role pod-reader", () =>
      rbac.createNamespacedRole({
        namespace: "default",
        body: { metadata: { name: "pod-reader" }, rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list"] }] }
      }))
    yield* call("creating RoleBinding pod-reader", () =>
      rbac.createNamespacedRoleBinding({
        namespace: "default",
        body: {
          metadata: { name: "pod-reader" },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "pod-reader" },
          subjects: [sa("team", "reader")]
        }
      }))

    if (relayAddress !== undefined) {
      // The chart's Relay-mode objects: the relay reviews its callers; the add-on may proxy to the relay Service.
      yield* clusterRole(`${relayName}:${agentNamespace}`, [{ apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }], sa(agentNamespace, relayName))
      yield* call("creating the relay proxy Role", () =>
        rbac.createNamespacedRole({
          namespace: agentNamespace,
          body: {
            metadata: { name: `${relayName}-proxy` },
            rules: [{
              apiGroups: [""],
              resources: ["services/proxy"],
              resourceNames: [relayName, `http:${relayName}`, `http:${relayName}:${relayPort}`],
              verbs: ["get", "create", "update", "patch", "delete"]
            }]
          }
        }))
      yield* call("creating the relay proxy RoleBinding", () =>
        rbac.createNamespacedRoleBinding({
          namespace: agentNamespace,
          body: {
            metadata: { name: `${relayName}-proxy` },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: `${relayName}-proxy` },
            subjects: [sa(agentNamespace, addonName)]
          }
        }))
      // No kubelet here: a Pod whose status carries the relay's address, and the Service's Endpoints
      // pointing at it, are what the apiserver's services/proxy follows.
      yield* endpointService(agentNamespace, relayName, relayPort, relayAddress, relayName)
      yield* endpointService(backend.namespace, backend.name, backend.port, relayAddress, undefined)
    }

    const hostingCore = Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api)
    yield* call("creating the source kubeconfig Secret", () => hostingCore.createNamespacedSecret({ namespace: cluster, body: source(clusters) }))
    const { group, plural, version } = Fixtures.managedClusterAddOnResource
    yield* call("creating the ManagedClusterAddOn", () =>
      Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
        group,
        version,
        plural,
        namespace: cluster,
        body: { apiVersion: `${group}/${version}`, kind: "ManagedClusterAddOn", metadata: { name: addonName }, spec: { installNamespace: agentNamespace } }
      }))
    return { readerToken, relayToken } satisfies Installed

    function endpointService(namespace: string, name: string, port: number, address: string, pod: string | undefined) {
      return Effect.gen(function*() {
        yield* call(`creating Service ${namespace}/${name}`, () =>
          core.createNamespacedService({ namespace, body: { metadata: { name }, spec: { ports: [{ name: "http", port, targetPort: port }] } } }))
        if (pod !== undefined) {
          yield* call(`creating Pod ${namespace}/${pod}`, () =>
            core.createNamespacedPod({ namespace, body: { metadata: { name: pod }, spec: { containers: [{ name: "main", image: "tether" }] } } }))
          yield* call(`setting the address of Pod ${namespace}/${pod}`, () =>
            core.patchNamespacedPodStatus(
              { namespace, name: pod, body: { status: { podIP: address, podIPs: [{ ip: address }] } } },
              setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
            ))
        }
        yield* call(`creating Endpoints ${namespace}/${name}`, () =>
          core.createNamespacedEndpoints({
            namespace,
            body: {
              metadata: { name },
              subsets: [{
                addresses: [{ ip: address, ...(pod === undefined ? {} : { targetRef: { kind: "Pod", name: pod, namespace } }) }],
                ports: [{ name: "http", port }]
              }]
            }
          }))
      })
    }
  })
