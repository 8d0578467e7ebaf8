/**
 * Test support for tether and its embedders (`tether/testing`): a real kube-apiserver harness, the
 * locator/builder of its binaries, and tether's own fixture CRDs.
 *
 * @since 0.1.0
 */
export * as Apiserver from "./Apiserver.ts"
export * as EnvtestAssets from "./EnvtestAssets.ts"
export * as Fixtures from "./fixtures/ManagedClusterAddOnCrd.ts"
