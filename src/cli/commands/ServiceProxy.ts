/**
 * `tether service-proxy`: the TLS server behind the konnectivity tunnel that carries
 * user-server's requests to the kube-apiserver (authenticated, impersonated) and to Services
 * (directly, through the service relay, or not at all, by hosted mode).
 *
 * @since 0.1.0
 */
import { Effect, Layer, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as Observability from "../../../layers/Observability.ts"
import * as ServiceProxyLayers from "../../../layers/ServiceProxy.ts"
import * as BusyPoll from "../../http/BusyPoll.ts"
import * as ServiceProxyOptions from "../../serviceproxy/Options.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"

/**
 * The proxy's own flags; `hosted-agent` names the listen address `--service-proxy-listen`.
 *
 * @category flags
 */
export const proxyFlags = (listenFlag = "listen") => ({
  cert: Flags.string("cert", "PEM serving certificate (required); re-read when the file changes"),
  key: Flags.string("key", "PEM private key of --cert (required); re-read when the file changes"),
  additionalServiceCa: Flags.string(
    "additional-service-ca",
    "PEM file of extra CAs trusted for https Services, besides the cluster CA (a missing file is skipped)"
  ),
  hostedServiceProxyMode: Flag.String("hosted-service-proxy-mode").pipe(
    Flag.withDescription(
      "How Service targets are served in hosted mode: Disabled (503), BestEffort (dial <svc>.<ns>.svc from the hosting cluster) " +
        "or Relay (through the managed apiserver's services/proxy of the service relay); default Disabled when " +
        "--managed-kubeconfig is given; without it Services are always dialled directly and Relay is an error"
    ),
    Flag.optional
  ),
  enableImpersonation: Flag.Boolean("enable-impersonation").pipe(
    Flag.withDescription(
      "Authenticate kube-apiserver callers by TokenReview (managed cluster, then hub) and impersonate them; " +
        "--enable-impersonation=false forwards their own credentials unchecked (default true)"
    ),
    Flag.withDefault(true)
  ),
  tokenReviewCacheTtl: Flags.duration("token-review-cache-ttl", "How long a TokenReview answer about a caller token is reused (0 disables the cache)", "10s"),
  tokenReviewErrorPattern: Flag.String("token-review-error-pattern").pipe(
    Flag.withDescription(
      "A TokenReview status.error containing this text (case-insensitive) means the token is not that cluster's, so the next " +
        "cluster is asked; any other error refuses the caller; repeatable (default \"invalid bearer token\")"
    ),
    Flag.atLeast(0)
  ),
  serviceRelayName: Flags.string("service-relay-name", "Name of the service relay Service on the managed cluster", "cluster-proxy-service-relay"),
  serviceRelayPort: Flag.Int("service-relay-port").pipe(
    Flag.withDescription("Port of the service relay Service (default 7444)"),
    Flag.withDefault(7444)
  ),
  maxIdleConns: Flag.Int("max-idle-conns").pipe(
    Flag.withDescription("Accepted for the prototype's flag set and ignored: the upstream pools keep idle connections until --idle-conn-timeout (default 100)"),
    Flag.withDefault(100)
  ),
  idleConnTimeout: Flags.duration("idle-conn-timeout", "An idle upstream connection is closed after this long", "90s"),
  tlsHandshakeTimeout: Flags.duration("tls-handshake-timeout", "Bound on the TLS handshake with an upstream", "10s"),
  expectContinueTimeout: Flags.duration(
    "expect-continue-timeout",
    "Accepted for the prototype's flag set and ignored: the proxy answers Expect: 100-continue itself and sends the upstream no Expect",
    "1s"
  ),
  busyPoll: Flags.duration(
    "busy-poll",
    "After each request and response, keep polling the sockets up to this long instead of sleeping (at most 10ms), adapted to how " +
      "close together they come: at few connections on virtual machines it spares wake-ups from idle; 0s never polls",
    `${BusyPoll.defaultMaxMicros}us`
  ),
  listen: Flags.listen(listenFlag, "Address the proxy serves TLS on", ":7443")
})

const flags = {
  ...proxyFlags(),
  hubKubeconfig: Flags.string(
    "hub-kubeconfig",
    "Hub kubeconfig; callers the managed cluster does not know are reviewed there (TokenReview) and impersonated as cluster:hub:<user>"
  ),
  managedKubeconfig: Flags.string(
    "managed-kubeconfig",
    "Generated managed kubeconfig (hosted mode); its token is re-read whenever the file changes. Empty: not hosted, use the in-cluster apiserver"
  ),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8000")
}

type Given = Command.Command.Config.Infer<typeof flags>

/**
 * The flags (and `POD_NAMESPACE`, the add-on namespace the relay Service lives in) as the
 * proxy's options as given.
 *
 * @category constructors
 */
export const input = (
  given: Omit<Given, "healthProbeBindAddress">,
  env: Readonly<Record<string, string | undefined>> = process.env
): ServiceProxyOptions.Input => ({
  listen: given.listen,
  certFile: given.cert,
  keyFile: given.key,
  additionalServiceCa: given.additionalServiceCa,
  hubKubeconfig: given.hubKubeconfig,
  managedKubeconfig: given.managedKubeconfig,
  mode: Option.getOrUndefined(given.hostedServiceProxyMode),
  enableImpersonation: given.enableImpersonation,
  tokenReviewCacheTtl: given.tokenReviewCacheTtl,
  tokenReviewErrorPatterns: given.tokenReviewErrorPattern,
  serviceRelayName: given.serviceRelayName,
  serviceRelayPort: given.serviceRelayPort,
  relayNamespace: env["POD_NAMESPACE"],
  maxIdleConnections: given.maxIdleConns,
  idleConnectionTimeout: given.idleConnTimeout,
  tlsHandshakeTimeout: given.tlsHandshakeTimeout,
  expectContinueTimeout: given.expectContinueTimeout,
  busyPoll: given.busyPoll
})

/**
 * The flags as the proxy's checked options ({@link ServiceProxyOptions.resolve}).
 *
 * @category constructors
 */
export const resolve = (given: Omit<Given, "healthProbeBindAddress">, env: Readonly<Record<string, string | undefined>> = process.env) =>
  ServiceProxyOptions.resolve(input(given, env))

export const command = Command.make("service-proxy", flags, (given) =>
  Effect.gen(function*() {
    const { healthProbeBindAddress, ...rest } = given
    const options = yield* checked(resolve(rest))
    if (options.proxy.deployment._tag === "Direct" && Option.isSome(rest.hostedServiceProxyMode)) {
      yield* Effect.logWarning("--hosted-service-proxy-mode only applies with --managed-kubeconfig; Services are dialled directly")
    }
    return yield* Layer.launch(
      ServiceProxyLayers.layerChecked(options).pipe(Layer.provideMerge(Observability.layer(healthProbeBindAddress)))
    )
  })).pipe(
    Command.withDescription(
      "Serve user-server's requests for one cluster over TLS: the kube-apiserver with TokenReview (managed cluster, then hub) " +
        "and impersonation, and Services directly, through the service relay, or not at all (hosted modes)."
    )
  )
