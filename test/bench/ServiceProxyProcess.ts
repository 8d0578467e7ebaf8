/**
 * The service proxy as `npm run bench` runs it, in a process of its own: the layers of
 * `tether service-proxy` in hosted Relay mode (TLS serving, TokenReview chain with its cache,
 * impersonation, the relay hop through `services/proxy`, metrics, probes and JSON logs), with
 * two differences that keep the figures about the proxy: the "managed apiserver" the requests
 * go to is the benchmark's TLS backend (named by `--managed-kubeconfig`), and TokenReviews go to
 * a real kube-apiserver (`--kubeconfig`) instead of that backend.
 *
 * ```sh
 * node test/bench/ServiceProxyProcess.ts --kubeconfig=<admin kubeconfig> --managed-kubeconfig=<backend kubeconfig> \
 *   --listen=127.0.0.1:<port> --health-probe-bind-address=127.0.0.1:<port> --cert=<pem> --key=<pem> \
 *   [--token-review-cache-ttl=10s] [--busy-poll=<Go duration; the service proxy's default when absent>]
 * ```
 *
 * Prints `listening <port>` on stdout once it accepts connections.
 *
 * @since 0.1.0
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Console, Effect, Layer, Result } from "effect"
import * as Observability from "../../layers/Observability.ts"
import * as ServiceProxyLayers from "../../layers/ServiceProxy.ts"
import * as GoDuration from "../../src/domain/GoDuration.ts"
import * as ListenAddress from "../../src/domain/ListenAddress.ts"
import * as TokenReview from "../../src/domain/TokenReview.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import { ManagedCluster } from "../../src/kube/KubeClient.ts"
import * as WasmTiering from "../../src/observability/WasmTiering.ts"
import { ServiceResolver } from "../../src/relay/ServiceResolver.ts"
import { ManagedCredentials } from "../../src/serviceproxy/ManagedCredentials.ts"
import { ServiceProxy } from "../../src/serviceproxy/ServiceProxy.ts"
import { TokenReviewChain } from "../../src/serviceproxy/TokenReviewChain.ts"
import * as Pauses from "./Pauses.ts"

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

if (process.env["BENCH_PAUSES"]) Pauses.record(process.env["BENCH_PAUSES"])
const kubeconfig = required("kubeconfig")
const managedKubeconfig = required("managed-kubeconfig")
const listen = ListenAddress.parse(required("listen"))
const probes = ListenAddress.parse(required("health-probe-bind-address"))
const cacheTtl = GoDuration.parse(flag("token-review-cache-ttl") ?? "10s")
const busyPollFlag = flag("busy-poll")
const busyPoll = busyPollFlag === undefined ? Result.succeed(undefined) : GoDuration.parse(busyPollFlag)
const certFile = required("cert")
const keyFile = required("key")

if (listen._tag === "Failure" || probes._tag === "Failure" || cacheTtl._tag === "Failure" || busyPoll._tag === "Failure") {
  process.stderr.write("bad --listen, --health-probe-bind-address, --token-review-cache-ttl or --busy-poll\n")
  process.exit(2)
}

const chain = TokenReviewChain.layer({ cacheTtl: cacheTtl.success, errorPatterns: TokenReview.defaultErrorPatterns }).pipe(
  Layer.provide(ClientNodeKube.layer(ManagedCluster, { cluster: "managed", path: kubeconfig, userAgent: "tether-bench" }))
)

const proxy = ServiceProxyLayers.layerNoDeps({
  listen: listen.success,
  certFile,
  keyFile,
  deployment: { _tag: "Hosted", mode: "Relay" },
  enableImpersonation: true,
  relay: { namespace: "open-cluster-management-agent-addon", name: "cluster-proxy-service-relay", port: 7444 },
  additionalServiceCa: undefined,
  serviceAccountCa: "",
  busyPoll: busyPoll.success
}).pipe(
  Layer.provide(chain),
  Layer.provideMerge(ManagedCredentials.layer({ source: { _tag: "Kubeconfig", path: managedKubeconfig }, userAgent: "tether-bench" })),
  Layer.provide(ServiceResolver.layerStatic({})),
  Layer.provide(NodeServices.layer),
  Layer.provideMerge(Observability.layer(probes.success))
)

const announce = Layer.effectDiscard(Effect.flatMap(ServiceProxy, (bound) => Console.log(`listening ${bound.address.port}`)))

// As `tether` does once its modules are loaded.
WasmTiering.keepOnBaseline()
NodeRuntime.runMain(Layer.launch(announce.pipe(Layer.provide(proxy))))
