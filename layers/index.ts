/**
 * The composition roots: what the `tether` CLI runs and what an embedding controller builds
 * from. No logic lives here, only wiring of the services in `src/`.
 *
 * @since 0.1.0
 */
export * as AddonAgent from "./AddonAgent.ts"
export * as ApiServerRelay from "./ApiServerRelay.ts"
export * as HostedAgent from "./HostedAgent.ts"
export * as NodePlatform from "./NodePlatform.ts"
export * as Observability from "./Observability.ts"
export * as Provisioner from "./Provisioner.ts"
export * as ServiceProxy from "./ServiceProxy.ts"
export * as ServiceRelay from "./ServiceRelay.ts"
