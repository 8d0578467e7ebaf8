/**
 * `tether managed-apiserver-proxy`: relay raw TCP from `--listen` to the managed cluster's
 * kube-apiserver named by `--managed-kubeconfig`, following changes of that file.
 *
 * @since 0.1.0
 */
import { Effect, Layer } from "effect"
import { Command, Flag } from "effect/cli"
import * as ApiServerRelay from "../../../layers/ApiServerRelay.ts"
import * as Observability from "../../../layers/Observability.ts"
import * as TcpRelayOptions from "../../relay/TcpRelayOptions.ts"
import * as Flags from "../Flags.ts"
import { checked } from "../UsageError.ts"

/** The default of `--max-connections`: two file descriptors each, far below usual limits. */
export const defaultMaxConnections = 1024

/**
 * The relay's own flags; `hosted-agent` gives them the prefix `apiserver-proxy-`.
 *
 * @category flags
 */
export const relayFlags = (prefix = "") => ({
  listen: Flags.listen(`${prefix}listen`, "Address the relay listens on", ":8443"),
  dialTimeout: Flags.duration(`${prefix}dial-timeout`, "Bound on connecting to the managed apiserver", "30s"),
  reloadInterval: Flags.duration(
    `${prefix}reload-interval`,
    "Re-read the managed kubeconfig file this often (file changes are picked up at once)",
    "30s"
  ),
  drainTimeout: Flags.duration(
    `${prefix}drain-timeout`,
    "After the target changes, close connections to the previous target this much later",
    "30s"
  ),
  maxConnections: Flag.Int(`${prefix}max-connections`).pipe(
    Flag.withDescription(
      `Connections relayed at once; more are accepted and closed at once; 0 means unlimited (default ${defaultMaxConnections})`
    ),
    Flag.withDefault(defaultMaxConnections)
  ),
  idleTimeout: Flags.duration(
    `${prefix}idle-timeout`,
    "Close connections without traffic in either direction for this long; 0 turns it off",
    "0"
  )
})

const flags = {
  managedKubeconfig: Flags.string(
    "managed-kubeconfig",
    "Kubeconfig of the managed cluster (required); the relay dials its current context's cluster server and re-reads the file when it changes"
  ),
  ...relayFlags(),
  healthProbeBindAddress: Flags.listen("health-probe-bind-address", "Address of /healthz, /readyz and /metrics", ":8001")
}

/**
 * The flags as the relay's options, checked ({@link TcpRelayOptions.resolve}).
 *
 * @category constructors
 */
export const resolve = (given: TcpRelayOptions.Relay & { readonly managedKubeconfig: string }) => TcpRelayOptions.resolve(given)

export const command = Command.make("managed-apiserver-proxy", flags, (given) =>
  Effect.gen(function*() {
    const { healthProbeBindAddress, ...relay } = given
    const options = yield* checked(resolve(relay))
    return yield* Layer.launch(
      ApiServerRelay.layer(options).pipe(Layer.provideMerge(Observability.layer(healthProbeBindAddress)))
    )
  })).pipe(
    Command.withDescription(
      "Relay TCP connections to the managed cluster's kube-apiserver (no TLS termination), following the managed kubeconfig as it changes."
    )
  )
