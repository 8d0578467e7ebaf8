/**
 * The source Secret of the reconciler's in-memory worlds (`<cluster>/external-managed-kubeconfig`
 * holding an admin kubeconfig for a managed cluster that is never dialled): the tests drive the
 * reconciler on virtual time with ports that stand in for the apiservers.
 */
import type { V1Secret } from "@kubernetes/client-node"

/** An admin kubeconfig for `https://managed.example:6443`, with a (dummy) CA. */
export const sourceKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: m
  cluster:
    server: https://managed.example:6443
    certificate-authority-data: ${Buffer.from("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").toString("base64")}
users:
- name: admin
  user:
    token: source-admin-token
contexts:
- name: m
  context: { cluster: m, user: admin }
current-context: m
`

/** `c1/external-managed-kubeconfig` holding `kubeconfig` (default {@link sourceKubeconfig}). */
export const sourceSecret = (kubeconfig = sourceKubeconfig, resourceVersion = "1"): V1Secret => ({
  metadata: { name: "external-managed-kubeconfig", namespace: "c1", resourceVersion },
  data: { kubeconfig: Buffer.from(kubeconfig).toString("base64") }
})
