/**
 * The service relay as `npm run bench` runs it, in a process of its own: the same layers as
 * `tether service-relay` (caller authentication by TokenReview with its cache, routing, header
 * filtering, pooled upstream connections, metrics, probes and JSON logs), except that Service
 * names resolve from a fixed table instead of cluster DNS.
 *
 * ```sh
 * node test/bench/ServiceRelayProcess.ts --kubeconfig=<admin kubeconfig> --listen=127.0.0.1:<port> \
 *   --health-probe-bind-address=127.0.0.1:<port> --trusted-caller-username=<user> \
 *   --resolve=<name>=<ip> [--token-review-cache-ttl=10s]
 * ```
 *
 * Prints `listening <port>` on stdout once it accepts connections.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import * as Observability from "../../layers/Observability.ts"
import * as ServiceRelayLayers from "../../layers/ServiceRelay.ts"
import * as GoDuration from "../../src/domain/GoDuration.ts"
import * as ListenAddress from "../../src/domain/ListenAddress.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { ManagedCluster } from "../../src/kube/KubeClient.ts"
import * as WasmTiering from "../../src/observability/WasmTiering.ts"
import { ServiceRelay } from "../../src/relay/ServiceRelay.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"

const flag = (name: string): string | undefined => {
  const prefix = `--${name}=`
  return process.argv.find((arg) => arg.startsWith(prefix))?.slice(prefix.length)
}

const required = (name: string): string => {
  const value = flag(name)
  if (value === undefined || value === "") {
    process.stderr.write(`--${name} is required\n`)
    process.exit(2)
  }
  return value
}

const kubeconfig = required("kubeconfig")
const listen = ListenAddress.parse(required("listen"))
const probes = ListenAddress.parse(required("health-probe-bind-address"))
const trusted = required("trusted-caller-username")
const [name, address] = required("resolve").split("=")
const cacheTtl = GoDuration.parse(flag("token-review-cache-ttl") ?? "10s")

if (
  listen._tag === "Failure" || probes._tag === "Failure" || cacheTtl._tag === "Failure" || name === undefined ||
  address === undefined
) {
  process.stderr.write("bad --listen, --health-probe-bind-address, --token-review-cache-ttl or --resolve\n")
  process.exit(2)
}

// The composition of `ServiceRelayLayers.layer` (what the CLI runs) with the static resolver.
const relay = ServiceRelayLayers.layerReadiness.pipe(
  Layer.provideMerge(ServiceRelayLayers.layerNoDeps({
    listen: listen.success,
    additionalServiceCa: undefined,
    trustedCallerUsernames: [trusted],
    tokenReviewCacheTtl: cacheTtl.success,
    kubeconfig
  })),
  Layer.provide(ServiceResolver.layerStatic({ [name]: address })),
  Layer.provide(ClientNodeKube.layer(ManagedCluster, { cluster: "managed", path: kubeconfig, userAgent: "tether-bench" })),
  Layer.provideMerge(Observability.layer(probes.success))
)

const announce = Layer.effectDiscard(Effect.flatMap(ServiceRelay, (bound) => Console.log(`listening ${bound.address.port}`)))

// As `tether` does once its modules are loaded.
WasmTiering.keepOnBaseline()
NodeRuntime.runMain(Layer.launch(announce.pipe(Layer.provide(relay))))
