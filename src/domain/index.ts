/**
 * tether's pure domain core: durations, the token refresh policy, kubeconfig reading and
 * building, the generated Secret's contract, condition math and server endpoints.
 *
 * Invariants of this area:
 * - Modules here MUST NOT do I/O: no `node:fs`, no network, no `@kubernetes/client-node`
 *   requests, no clock reads. The time is always a parameter (`now`, epoch milliseconds) and
 *   randomness is passed in (`jitterFraction`).
 * - Failures are values (`Result` with `Schema.TaggedError`s), never thrown; the one
 *   exception is a documented programming-error defect (`Kubeconfig.buildManaged` with a
 *   pending CA file).
 * - Tokens and private keys MUST stay inside `Redacted` and MUST NOT appear in error
 *   messages; messages name fields, flags and objects, never credential material or YAML.
 *
 * @since 0.1.0
 */
export * as ApiserverUrl from "./ApiserverUrl.ts"
export * as Conditions from "./Conditions.ts"
export * as GoDuration from "./GoDuration.ts"
export * as HttpHeaders from "./HttpHeaders.ts"
export * as Impersonation from "./Impersonation.ts"
export * as InvalidOptions from "./InvalidOptions.ts"
export * as Kubeconfig from "./Kubeconfig.ts"
export * as KubeNames from "./KubeNames.ts"
export * as LeaseState from "./LeaseState.ts"
export * as ListenAddress from "./ListenAddress.ts"
export * as ManagedKubeconfigSecret from "./ManagedKubeconfigSecret.ts"
export * as RefreshPolicy from "./RefreshPolicy.ts"
export * as RelayHeaders from "./RelayHeaders.ts"
export * as RequestPath from "./RequestPath.ts"
export * as ServerEndpoint from "./ServerEndpoint.ts"
export * as ServiceProxyHeaders from "./ServiceProxyHeaders.ts"
export * as ServiceProxyMode from "./ServiceProxyMode.ts"
export * as ServiceRouting from "./ServiceRouting.ts"
export * as TokenReview from "./TokenReview.ts"
export * as TokenExpiry from "./TokenExpiry.ts"
