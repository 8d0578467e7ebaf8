/**
 * What a hosted install finds on its three clusters before tether starts, for one managed
 * cluster: on the hosting cluster the cluster's namespace with the source (admin) kubeconfig
 * Secret and the add-on namespace; on the managed cluster the ServiceAccount whose tokens are
 * minted, with the rights the chart grants it (review tokens, impersonate) plus reading
 * namespaces and ConfigMaps, and a `team/reader` ServiceAccount that may list pods in `default`;
 * on the hub the ManagedClusterAddOn. Shared by the hosted-agent suite and the footprint benchmark.
 */
import { CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api } from "@kubernetes/client-node"
import { Effect } from "effect"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"

export interface Clusters {
  readonly hub: Apiserver.ApiserverInfo
  readonly hosting: Apiserver.ApiserverInfo
  readonly managed: Apiserver.ApiserverInfo
}

export interface Install {
  readonly cluster: string
  readonly agentNamespace: string
  /** A token of `team/reader` on the managed cluster, allowed to list pods in `default`. */
  readonly readerToken: string
}

const b64 = (s: string) => Buffer.from(s).toString("base64")

/** Create the objects for managed cluster `cluster` with the add-on in `agentNamespace`. */
export const prepare = (clusters: Clusters, cluster: string, agentNamespace: string): Effect.Effect<Install, Apiserver.ApiserverError> =>
  Effect.gen(function*() {
    const { hosting, hub, managed } = clusters
    yield* Apiserver.createNamespace(hosting, cluster)
    yield* Apiserver.createNamespace(hosting, agentNamespace)
    yield* Apiserver.createNamespace(hub, cluster)
    const readerToken = yield* Apiserver.serviceAccountToken(managed, "team", "reader", 3600)
    // The ServiceAccount the provisioner mints tokens for (the helper creates it and its namespace).
    yield* Apiserver.serviceAccountToken(managed, agentNamespace, "cluster-proxy", 600)
    yield* Effect.promise(async () => {
      const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
      const ignoreExisting = (error: { code?: number }) => {
        if (error.code !== 409) throw error
      }
      await rbac.createClusterRole({
        body: {
          metadata: { name: "hosted-install" },
          rules: [
            { apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"] },
            { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] },
            { apiGroups: [""], resources: ["namespaces", "configmaps"], verbs: ["get", "list", "watch"] }
          ]
        }
      }).catch(ignoreExisting)
      await rbac.createClusterRoleBinding({
        body: {
          metadata: { name: `hosted-install-${agentNamespace}` },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "hosted-install" },
          subjects: [{ kind: "ServiceAccount", name: "cluster-proxy", namespace: agentNamespace }]
        }
      })
      await rbac.createNamespacedRole({
        namespace: "default",
        body: { metadata: { name: "pod-reader" }, rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list"] }] }
      }).catch(ignoreExisting)
      await rbac.createNamespacedRoleBinding({
        namespace: "default",
        body: {
          metadata: { name: "pod-readers" },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "pod-reader" },
          subjects: [{ kind: "ServiceAccount", name: "reader", namespace: "team" }]
        }
      }).catch(ignoreExisting)
      await Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api).createNamespacedSecret({
        namespace: cluster,
        body: { metadata: { name: "external-managed-kubeconfig" }, data: { kubeconfig: b64(managed.kubeconfigYaml) } }
      })
      const { group, plural, version } = Fixtures.managedClusterAddOnResource
      await Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
        group,
        version,
        plural,
        namespace: cluster,
        body: {
          apiVersion: `${group}/${version}`,
          kind: "ManagedClusterAddOn",
          metadata: { name: "cluster-proxy" },
          spec: { installNamespace: agentNamespace }
        }
      })
    })
    return { cluster, agentNamespace, readerToken }
  })
