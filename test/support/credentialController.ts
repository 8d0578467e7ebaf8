/**
 * The credential controller as its suites run it on real apiservers:
 * - {@link hostPairs}: pairs hosted on a named hosting cluster, which is what discovery looks
 *   for: hostedInstall's objects per cluster and the add-on annotated with that name;
 * - {@link clientsOf}: the controller's clients (with a User-Agent of the suite's, so that the
 *   audit logs tell its requests) and the test's own;
 * - {@link startController} (or {@link controllerPorts} with {@link settings}, to run it with
 *   options of its own): the controller in the test's scope on in-process ports, probes unserved;
 * - {@link spawnController}: the real process, its output kept for failure messages;
 * - {@link readyCondition}: a pair's condition as the hub holds it, and {@link reconciles}: how
 *   many reconciles the controller has finished.
 */
import { NodeServices } from "@effect/platform-node"
import { assert } from "@effect/vitest"
import { Duration, Effect, Layer, Result } from "effect"
import * as ChildProcess from "node:child_process"
import * as CredentialController from "../../src/controller/CredentialController.ts"
import * as Discovery from "../../src/domain/Discovery.ts"
import * as RefreshPolicy from "../../src/domain/RefreshPolicy.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { EventRecorder } from "../../src/kube/EventRecorder.ts"
import { HostingCluster, HubCluster, type KubeClient } from "../../src/kube/KubeClient.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { managedClusterAddOns } from "../../src/provisioner/AddonStatus.ts"
import { TokenState } from "../../src/provisioner/Reconciler.ts"
import { SecretStore } from "../../src/provisioner/SecretStore.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"
import { type Clusters, prepare } from "./hostedInstall.ts"
import { kubectl } from "./local.ts"
import { reconcilesFinished } from "./reconciles.ts"

/** 1-hour tokens refreshed 10 minutes before they expire. */
export const settings = Result.getOrThrow(
  RefreshPolicy.validateSettings({ tokenExpiration: Duration.hours(1), refreshBefore: Duration.minutes(10) })
)

/** Annotate `cluster`'s add-on on the hub as hosted on `hostingClusterName`. */
export const markHosted = (hub: Apiserver.ApiserverInfo, cluster: string, hostingClusterName: string) =>
  Effect.gen(function*() {
    const run = yield* kubectl(hub.kubeconfigPath, [
      "annotate", "managedclusteraddon", "-n", cluster, "cluster-proxy", `${Discovery.hostingClusterAnnotation}=${hostingClusterName}`
    ])
    assert.strictEqual(run.code, 0, run.stderr)
  })

/** For each of `names`: a hosted install ({@link prepare}) with the add-on in `addon-<name>`, marked as hosted on `hostingClusterName`. */
export const hostPairs = (clusters: Clusters, names: ReadonlyArray<string>, hostingClusterName: string) =>
  Effect.gen(function*() {
    for (const cluster of names) {
      yield* prepare(clusters, cluster, `addon-${cluster}`)
      yield* markHosted(clusters.hub, cluster, hostingClusterName)
    }
  })

/** The controller's hub and hosting clients, sending `userAgent`, and the test's own (client-node's default agent). */
export const clientsOf = (clusters: Clusters, userAgent: string) => ({
  hubClient: ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(clusters.hub), userAgent }),
  hostingClient: ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(clusters.hosting), userAgent }),
  hubTest: ClientNodeKube.make({ cluster: "hub", connection: Apiserver.connection(clusters.hub) }),
  hostingTest: ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(clusters.hosting) }),
  managedTest: ClientNodeKube.make({ cluster: "managed", connection: Apiserver.connection(clusters.managed) })
})

/** What the controller needs in process, on these clients: Secret store, Event recorder, token state, probes without a server. */
export const controllerPorts = (hosting: KubeClient, hub: KubeClient) =>
  Layer.mergeAll(SecretStore.layer, EventRecorder.layer("tether-credential-controller"), TokenState.layer).pipe(
    Layer.provideMerge(Layer.mergeAll(Layer.succeed(HostingCluster, hosting), Layer.succeed(HubCluster, hub))),
    Layer.provideMerge(Probes.layerNoServer),
    Layer.provideMerge(NodeServices.layer)
  )

/** Run the controller in the test's scope for the add-ons hosted on `hostingClusterName`; its probes. */
export const startController = (hosting: KubeClient, hub: KubeClient, hostingClusterName: string) =>
  Effect.gen(function*() {
    const probes = yield* Probes
    yield* CredentialController.run({ source: { _tag: "Hub", hub, config: { hostingClusterName } }, settings }).pipe(Effect.forkScoped)
    return probes
  }).pipe(Effect.provide(controllerPorts(hosting, hub)))

/** `tether credential-controller <args>` as it ships, its output kept (`output()`); killed (SIGKILL) with the scope. */
export const spawnController = (args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const child = ChildProcess.spawn(process.execPath, [tetherEntry(), "credential-controller", ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
    return { child, output: () => output }
  })

/** Reconciles the controllers of this process have finished so far (whatever their result). */
export const reconciles = reconcilesFinished("credential-controller")

/** `cluster`'s ManagedKubeconfigReady condition on the hub; undefined while it has none. */
export const readyCondition = (hub: KubeClient, cluster: string) =>
  Effect.map(hub.getCustomObject(managedClusterAddOns, cluster, "cluster-proxy"), (o) =>
    ((o.status?.["conditions"] ?? []) as Array<Record<string, string>>).find((c) => c["type"] === "ManagedKubeconfigReady"))
