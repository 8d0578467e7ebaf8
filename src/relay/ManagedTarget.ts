/**
 * Where the managed-apiserver relay dials: the `server` of the current context's cluster in the
 * managed kubeconfig, as a TCP endpoint, read by {@link Kubeconfig}. Pure (the watcher does the
 * reading).
 *
 * Only the cluster's `server` is read; users and credentials are not looked at, so a kubeconfig
 * whose user the relay could not use itself (a token file, exec) still gives a target. Error
 * messages name kubeconfig fields and entries, never values: the same file holds a token.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as ServerEndpoint from "../domain/ServerEndpoint.ts"

/**
 * The kubeconfig names no usable TCP target. Kept until the file changes.
 *
 * @since 0.1.0
 * @category errors
 */
export class TargetError extends Schema.TaggedError<TargetError>()("TargetError", {
  message: Schema.String
}) {}

/** @since 0.1.0 @category models */
export type Target = ServerEndpoint.ServerEndpoint

/**
 * The selected cluster's `server` URL ({@link Kubeconfig.parseCluster}: the current context's
 * cluster, or without a current context the only cluster, as client-go chooses).
 *
 * @since 0.1.0
 * @category parsing
 */
export const serverOf = (kubeconfig: string): Result.Result<string, TargetError> =>
  Result.mapBoth(Kubeconfig.parseCluster(kubeconfig), {
    onFailure: (error) => new TargetError({ message: `managed kubeconfig: ${error.message}` }),
    onSuccess: (cluster) => cluster.server.trim()
  })

/**
 * The TCP endpoint the relay dials, from the kubeconfig text. Schemes other than `https` and
 * `http` are refused: the relay forwards bytes, so anything else has no meaning for it.
 *
 * @since 0.1.0
 * @category parsing
 */
export const fromKubeconfig = (kubeconfig: string): Result.Result<Target, TargetError> =>
  Result.flatMap(serverOf(kubeconfig), (server) =>
    Result.mapError(ServerEndpoint.fromServerUrl(server), (error) =>
      new TargetError({ message: `managed kubeconfig: ${error.message}` })))

/**
 * Same destination (scheme aside: the relay only dials host and port).
 *
 * @since 0.1.0
 * @category predicates
 */
export const equals = (a: Target, b: Target): boolean => a.host === b.host && a.port === b.port

/**
 * `host:port`, IPv6 bracketed, for logs.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (target: Target): string => ServerEndpoint.hostPort(target)
