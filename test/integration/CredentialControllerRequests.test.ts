/**
 * What the credential controller's work costs the apiservers, counted from their audit logs
 * (three real, audited kube-apiservers; the controller in this process):
 * - a routine rotation (the token in place due, nothing else changed) is one TokenRequest and
 *   one Secret write per pair, and nothing on the hub and no Event: the condition already says
 *   the Secret is good, in words a rotation does not make false.
 */
import { assert, describe, it } from "@effect/vitest"
import { NodeServices } from "@effect/platform-node"
import { Duration, Effect, Layer, Metric, Result } from "effect"
import * as CredentialController from "../../src/controller/CredentialController.ts"
import * as Discovery from "../../src/domain/Discovery.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import * as RefreshPolicy from "../../src/domain/RefreshPolicy.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../../src/kube/EventRecorder.ts"
import { HostingCluster, HubCluster } from "../../src/kube/KubeClient.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { managedClusterAddOns } from "../../src/provisioner/AddonStatus.ts"
import { TokenState } from "../../src/provisioner/Reconciler.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { dueSoon } from "../support/dueToken.ts"
import { until } from "../support/eventually.ts"
import { prepare } from "../support/hostedInstall.ts"
import { kubectl } from "../support/local.ts"

const target = "cluster-proxy-managed-kubeconfig"
const agent = "tether-requests-test"

/** Reconciles the controller has finished so far (whatever their result), from its metric. */
const reconciles = Effect.map(
  Effect.forEach(["success", "requeue_after", "error"] as const, (result) =>
    Metric.value(Metric.withAttributes(Metrics.reconcileTotal, { controller: "credential-controller", result }))),
  (states) => states.reduce((sum, state) => sum + state.count, 0)
)

describe.skipIf(noApiserver)("CredentialController requests (real audited apiservers)", () => {
  it.live("a routine rotation costs one TokenRequest and one Secret write per pair: no hub request, no Event", () =>
    Effect.gen(function*() {
      const [hub, hosting, managed] = yield* Effect.all([
        Apiserver.make({ name: "hub-rq", crds: [Fixtures.managedClusterAddOnCrd], auditLog: true }),
        Apiserver.make({ name: "hosting-rq", auditLog: true }),
        Apiserver.make({ name: "managed-rq", auditLog: true })
      ], { concurrency: "unbounded" })
      const names = ["q1", "q2", "q3"]
      for (const cluster of names) {
        yield* prepare({ hub, hosting, managed }, cluster, `addon-${cluster}`)
        const run = yield* kubectl(hub.kubeconfigPath, [
          "annotate", "managedclusteraddon", "-n", cluster, "cluster-proxy", `${Discovery.hostingClusterAnnotation}=hosting-rq`
        ])
        assert.strictEqual(run.code, 0, run.stderr)
      }
      const hubClient = ClientNodeKube.make({ cluster: "hub", kubeConfig: Apiserver.kubeConfig(hub), userAgent: agent })
      const hostingClient = ClientNodeKube.make({ cluster: "hosting", kubeConfig: Apiserver.kubeConfig(hosting), userAgent: agent })
      const hubTest = ClientNodeKube.make({ cluster: "hub", kubeConfig: Apiserver.kubeConfig(hub) })
      const hostingTest = ClientNodeKube.make({ cluster: "hosting", kubeConfig: Apiserver.kubeConfig(hosting) })

      const settings = Result.getOrThrow(
        RefreshPolicy.validateSettings({ tokenExpiration: Duration.hours(1), refreshBefore: Duration.minutes(10) })
      )
      const ports = Layer.mergeAll(SecretStore.layer, EventRecorder.layer("tether-credential-controller"), TokenState.layer).pipe(
        Layer.provideMerge(Layer.mergeAll(Layer.succeed(HostingCluster, hostingClient), Layer.succeed(HubCluster, hubClient))),
        Layer.provideMerge(Probes.layerNoServer),
        Layer.provideMerge(NodeServices.layer)
      )
      const probes = yield* Effect.gen(function*() {
        const probes = yield* Probes
        yield* CredentialController.run({ source: { _tag: "Hub", hub: hubClient, config: { hostingClusterName: "hosting-rq" } }, settings }).pipe(
          Effect.forkScoped
        )
        return probes
      }).pipe(Effect.provide(ports))
      const condition = (cluster: string) =>
        Effect.map(hubTest.getCustomObject(managedClusterAddOns, cluster, "cluster-proxy"), (o) =>
          ((o.status?.["conditions"] ?? []) as Array<Record<string, string>>).find((c) => c["type"] === "ManagedKubeconfigReady"))
      for (const cluster of names) yield* until(condition(cluster), (c) => c?.["status"] === "True", `${cluster} Ready`, { timeout: "60 seconds" })
      // Ready (its check registered long before a condition was written): every pair's first
      // reconcile (mint, write, condition, Event) has returned.
      yield* until(probes.readiness, (failing) => failing.length === 0, "ready", { timeout: "60 seconds" })
      const firstConditions = yield* Effect.forEach(names, condition)
      for (const c of firstConditions) {
        assert.strictEqual(c?.["status"], "True")
        assert.strictEqual(c?.["reason"], "ManagedKubeconfigCreated")
        assert.notInclude(c?.["message"] ?? "", "expires", "the message names no time a rotation changes")
      }

      const logged = Effect.all([Apiserver.auditEvents(hub), Apiserver.auditEvents(hosting), Apiserver.auditEvents(managed)])
      const [hubBefore, hostingBefore, managedBefore] = (yield* logged).map((events) => events.length) as [number, number, number]
      const reconcilesBefore = yield* reconciles

      // Every pair's token falls due; each is rotated by the reconcile its Secret's change starts.
      const expiryOf = (cluster: string) =>
        Effect.map(hostingTest.getSecret(`addon-${cluster}`, target), (s) => Date.parse(s.metadata?.annotations?.[ManagedKubeconfigSecret.expirationAnnotation] ?? ""))
      for (const cluster of names) {
        const secret = yield* hostingTest.getSecret(`addon-${cluster}`, target)
        yield* hostingTest.replaceSecret(`addon-${cluster}`, dueSoon(secret))
      }
      for (const cluster of names) {
        yield* until(expiryOf(cluster), (at) => at > Date.now() + 30 * 60_000, `${cluster} rotated`, { timeout: "30 seconds" })
      }
      // Those three reconciles have returned (report included): whatever they sent is in the logs.
      yield* until(reconciles, (n) => n >= reconcilesBefore + names.length, "the rotations' reconciles returned", { timeout: "30 seconds" })

      const describeRequest = (e: Apiserver.AuditEvent) =>
        `${e.verb} ${e.objectRef?.resource ?? e.requestURI}${e.objectRef?.subresource === undefined ? "" : `/${e.objectRef.subresource}`}`
      const sent = (events: ReadonlyArray<Apiserver.AuditEvent>, from: number, userAgent: string) =>
        events.slice(from)
          .filter((e) => e.stage === "ResponseComplete" && e.verb !== "watch" && (e.userAgent ?? "").startsWith(userAgent))
          .map(describeRequest)
      const [hubAfter, hostingAfter, managedAfter] = yield* logged
      assert.deepStrictEqual(sent(hubAfter, hubBefore, agent), [], "hub requests for routine rotations")
      assert.deepStrictEqual(sent(hostingAfter, hostingBefore, agent), names.map(() => "update secrets"), "hosting requests: one Secret write each, no Event")
      assert.deepStrictEqual(sent(managedAfter, managedBefore, "tether"), names.map(() => "create serviceaccounts/token"), "managed requests: one TokenRequest each")
      // The condition still tells the truth, untouched.
      assert.deepStrictEqual(yield* Effect.forEach(names, condition), firstConditions)
    }), 180_000)
})
