/**
 * The flags of `tether managed-kubeconfig-provisioner` as a command line without them gives
 * them: cluster `cluster1`, the namespaces left to `--cluster-name` and POD_NAMESPACE, 24-hour
 * tokens refreshed an hour before, a 5-minute resync. The provisioner's options tests and
 * hosted-agent's (whose provisioner section adds its `kubeconfig`) start from these and change
 * one thing at a time.
 */
import { Duration } from "effect"
import type * as Options from "../../src/provisioner/Options.ts"

export const provisionerFlags = (overrides: Partial<Options.Flags> = {}): Options.Flags => ({
  clusterName: "cluster1",
  sourceNamespace: "",
  sourceName: "external-managed-kubeconfig",
  targetNamespace: "",
  targetName: "cluster-proxy-managed-kubeconfig",
  serviceAccountNamespace: "",
  serviceAccountName: "cluster-proxy",
  tokenExpiration: Duration.hours(24),
  refreshBefore: Duration.hours(1),
  syncInterval: Duration.minutes(5),
  hubKubeconfig: "",
  addonName: "cluster-proxy",
  addonNamespace: "",
  ...overrides
})
