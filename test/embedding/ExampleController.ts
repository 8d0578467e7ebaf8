/**
 * Embedding tether in a controller of your own, runnable (test/integration/Embedding.test.ts
 * runs it against real apiservers). The controller reads a Secret on a managed cluster every few
 * seconds with a client whose token tether keeps fresh, and serves tether's service relay on a
 * port of its choosing, both in its own runtime. It imports tether by its package name, as an
 * application that depends on tether would.
 */
import { Effect, Layer, Schedule } from "effect"
import type { Provisioner as ProvisionerCore } from "tether"
import { KubeClient, ServiceResolver } from "tether"
import { Provisioner, ServiceRelay } from "tether/layers"

/** The controller's own work: log the managed cluster's `default/greeting` Secret every 2 s. */
const greeter = Layer.effectDiscard(Effect.gen(function*() {
  const managed = yield* KubeClient.ManagedCluster
  const greet = Effect.flatMap(managed.getSecret("default", "greeting"), (secret) =>
    Effect.logInfo("greeting", { text: Buffer.from(secret.data?.["text"] ?? "", "base64").toString("utf8") }))
  yield* greet.pipe(Effect.ignore, Effect.repeat(Schedule.spaced("2 seconds")), Effect.forkScoped)
}))

/** The example: your controller and a service relay, over a managed client tether keeps fresh. */
export const example = (config: {
  readonly provisioner: ProvisionerCore.Options
  readonly clusters: Provisioner.Clusters
  readonly relay: ServiceRelay.Options
}) =>
  Layer.mergeAll(greeter, ServiceRelay.layerNoDeps(config.relay)).pipe(
    Layer.provide(ServiceResolver.ServiceResolver.layerSystem),
    Layer.provideMerge(Provisioner.layerManagedClient(config.provisioner, config.clusters))
  )
