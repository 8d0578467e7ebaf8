/**
 * The managed-apiserver TCP relay's options, checked once: by `tether managed-apiserver-proxy`
 * and by `tether hosted-agent` (which names the relay's flags with the prefix
 * `apiserver-proxy-`). Pure, so every rule is unit-tested.
 *
 * @since 0.1.0
 */
import { Duration, Result } from "effect"
import { fail, type InvalidOptions } from "../domain/InvalidOptions.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"

/**
 * The relay's own settings, wherever the managed kubeconfig comes from.
 *
 * @category models
 */
export interface Relay {
  readonly listen: ListenAddress.ListenAddress
  /** Bound on connecting to the managed apiserver; greater than 0. */
  readonly dialTimeout: Duration.Duration
  /** Re-read period of a mounted managed kubeconfig; greater than 0. */
  readonly reloadInterval: Duration.Duration
  readonly drainTimeout: Duration.Duration
  /** 0 = unlimited. */
  readonly maxConnections: number
  /** Zero = off. */
  readonly idleTimeout: Duration.Duration
}

/**
 * `tether managed-apiserver-proxy`'s options.
 *
 * @category models
 */
export interface Options extends Relay {
  /** The managed kubeconfig; the relay dials its current context's cluster `server`. */
  readonly managedKubeconfig: string
}

/**
 * Check the relay's own settings; messages name the flags with `prefix`.
 *
 * @category constructors
 */
export const resolveRelay = (given: Relay, prefix = ""): Result.Result<Relay, InvalidOptions> => {
  if (!Duration.isGreaterThan(given.dialTimeout, Duration.zero)) return fail(`--${prefix}dial-timeout must be greater than 0`)
  if (!Duration.isGreaterThan(given.reloadInterval, Duration.zero)) return fail(`--${prefix}reload-interval must be greater than 0`)
  if (!Number.isSafeInteger(given.maxConnections) || given.maxConnections < 0) {
    return fail(`--${prefix}max-connections must be 0 (unlimited) or a positive number`)
  }
  return Result.succeed({
    listen: given.listen,
    dialTimeout: given.dialTimeout,
    reloadInterval: given.reloadInterval,
    drainTimeout: given.drainTimeout,
    maxConnections: given.maxConnections,
    idleTimeout: given.idleTimeout
  })
}

/**
 * Check the options of the stand-alone relay: its settings and a managed kubeconfig path.
 *
 * @category constructors
 */
export const resolve = (given: Relay & { readonly managedKubeconfig: string }): Result.Result<Options, InvalidOptions> => {
  const managedKubeconfig = given.managedKubeconfig.trim()
  if (managedKubeconfig === "") {
    return fail("--managed-kubeconfig is required: the path of the managed cluster's kubeconfig (e.g. /etc/managed/kubeconfig)")
  }
  return Result.map(resolveRelay(given), (relay) => ({ ...relay, managedKubeconfig }))
}
