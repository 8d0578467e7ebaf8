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
import { NodeServices } from "@effect/platform-node"
import { Layer } from "effect"
import type { Duration } from "effect"
import type * as ListenAddress from "../src/domain/ListenAddress.ts"
import * as TcpRelay from "../src/relay/TcpRelay.ts"
import { TargetWatcher } from "../src/relay/TargetWatcher.ts"

/** @category models */
export interface Options {
  /** The managed kubeconfig; the relay dials its current context's cluster `server`. */
  readonly managedKubeconfig: string
  readonly listen: ListenAddress.ListenAddress
  readonly dialTimeout: Duration.Duration
  readonly reloadInterval: Duration.Duration
  readonly drainTimeout: Duration.Duration
  /** 0 = unlimited. */
  readonly maxConnections: number
  /** Zero = off. */
  readonly idleTimeout: Duration.Duration
}

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
export const layer = (options: Options) => layerNoDeps(options).pipe(Layer.provide(NodeServices.layer))
