/**
 * Composition root of the managed-apiserver relay, used by `tether managed-apiserver-proxy`
 * and by anything that embeds the relay.
 *
 * - {@link layerNoDeps}: the relay, its target watcher and its readiness check; the caller
 *   provides {@link Probes} and a `FileSystem`.
 * - {@link layer}: the same with Node's file system.
 *
 * @since 0.1.0
 */
import * as NodePlatform from "./NodePlatform.ts"
import { Layer } from "effect"
import * as TcpRelay from "../src/relay/TcpRelay.ts"
import type * as TcpRelayOptions from "../src/relay/TcpRelayOptions.ts"
import { TargetWatcher } from "../src/relay/TargetWatcher.ts"

/** Checked by {@link TcpRelayOptions.resolve}. @category models */
export type Options = TcpRelayOptions.Options

/**
 * The running relay (exposes {@link TcpRelay.TcpRelay} and {@link TargetWatcher}); needs
 * {@link Probes} and a `FileSystem`. Fails while building when the kubeconfig gives no target or
 * the port cannot be bound.
 *
 * @category layers
 */
export const layerNoDeps = (options: Options) =>
  Layer.merge(
    TcpRelay.TcpRelay.layer({
      listen: options.listen,
      dialTimeout: options.dialTimeout,
      drainTimeout: options.drainTimeout,
      idleTimeout: options.idleTimeout,
      maxConnections: options.maxConnections
    }),
    TcpRelay.layerReadiness()
  ).pipe(
    Layer.provideMerge(TargetWatcher.layer({ path: options.managedKubeconfig, reloadInterval: options.reloadInterval }))
  )

/** The relay with Node's file system; needs {@link Probes}. @category layers */
export const layer = (options: Options) => layerNoDeps(options).pipe(Layer.provide(NodePlatform.layer))
