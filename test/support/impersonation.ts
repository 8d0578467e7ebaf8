/**
 * The managed cluster's side of an HTTP proxy suite: the add-on's ServiceAccount
 * (`open-cluster-management-agent-addon/cluster-proxy`, the identity the service proxy runs as and
 * the caller the service relay trusts) bound to the chart's impersonator rights (review tokens;
 * impersonate users, groups, ServiceAccounts, user extras and UIDs), and a `team/reader`
 * ServiceAccount to call with. Both tokens last an hour, longer than any suite.
 */
import { RbacAuthorizationV1Api } from "@kubernetes/client-node"
import { Effect } from "effect"
import { Apiserver } from "../../src/testing/index.ts"

export const addonNamespace = "open-cluster-management-agent-addon"

/** The add-on ServiceAccount's username. */
export const proxyUser = `system:serviceaccount:${addonNamespace}:cluster-proxy`

export interface Tokens {
  /** The add-on ServiceAccount's token, allowed to review tokens and impersonate. */
  readonly proxy: string
  /** `team/reader`'s token; its rights are the suite's to grant. */
  readonly reader: string
}

/** Mint both tokens, then grant the add-on ServiceAccount the impersonator ClusterRole `role`. */
export const grantImpersonator = (managed: Apiserver.ApiserverInfo, role: string): Effect.Effect<Tokens, Apiserver.ApiserverError> =>
  Effect.gen(function*() {
    const [proxy, reader] = yield* Effect.all([
      Apiserver.serviceAccountToken(managed, addonNamespace, "cluster-proxy", 3600),
      Apiserver.serviceAccountToken(managed, "team", "reader", 3600)
    ])
    yield* Effect.promise(async () => {
      const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
      await rbac.createClusterRole({
        body: {
          metadata: { name: role },
          rules: [
            { apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"] },
            { apiGroups: ["authentication.k8s.io"], resources: ["userextras/*", "uids"], verbs: ["impersonate"] },
            { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }
          ]
        }
      })
      await rbac.createClusterRoleBinding({
        body: {
          metadata: { name: role },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: role },
          subjects: [{ kind: "ServiceAccount", name: "cluster-proxy", namespace: addonNamespace }]
        }
      })
    })
    return { proxy, reader }
  })
