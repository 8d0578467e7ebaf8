/**
 * tether's engine, one namespace per concept. Composition roots are in `tether/layers`, the
 * real-apiserver test harness in `tether/testing`.
 *
 * @since 0.1.0
 */
export * as AddonLease from "./addonagent/AddonLease.ts"
export * as HealthChecks from "./addonagent/HealthChecks.ts"
export * as Domain from "./domain/index.ts"
export * as Supervisor from "./agent/Supervisor.ts"
export * as ClientNodeKube from "./kube/ClientNodeKube.ts"
export * as Controller from "./kube/Controller.ts"
export * as EventRecorder from "./kube/EventRecorder.ts"
export * as GeneratedKubeconfig from "./kube/GeneratedKubeconfig.ts"
export * as KubeClient from "./kube/KubeClient.ts"
export * as KubeError from "./kube/KubeError.ts"
export * as LeaderElection from "./kube/LeaderElection.ts"
export * as LeaseStore from "./kube/LeaseStore.ts"
export * as TokenReviewCache from "./kube/TokenReviewCache.ts"
export * as Watch from "./kube/Watch.ts"
export * as Metrics from "./observability/Metrics.ts"
export * as Probes from "./observability/Probes.ts"
export * as AddonStatus from "./provisioner/AddonStatus.ts"
export * as Provisioner from "./provisioner/Provisioner.ts"
export * as Reconciler from "./provisioner/Reconciler.ts"
export * as SecretStore from "./provisioner/SecretStore.ts"
export * as ServiceProxy from "./serviceproxy/ServiceProxy.ts"
export * as TokenReviewChain from "./serviceproxy/TokenReviewChain.ts"
export * as TokenIssuer from "./provisioner/TokenIssuer.ts"
export * as CallerAuthenticator from "./relay/CallerAuthenticator.ts"
export * as ServiceRelay from "./relay/ServiceRelay.ts"
export * as ServiceResolver from "./relay/ServiceResolver.ts"
export * as TcpRelay from "./relay/TcpRelay.ts"
