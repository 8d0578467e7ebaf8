/**
 * The service relay's options, checked once: by `tether service-relay` before anything starts
 * and again by the relay's layer for embedders, so a relay that trusts nobody (and would refuse
 * everyone) or everybody (an open proxy) never runs. Pure.
 *
 * @since 0.1.0
 */
import { type Duration, Result } from "effect"
import { fail, type InvalidOptions } from "../domain/InvalidOptions.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"
import type * as ServiceRelay from "./ServiceRelay.ts"

/** @category models */
export interface Options {
  readonly listen: ListenAddress.ListenAddress
  /** PEM file of extra CAs for https Services; a missing file is skipped. */
  readonly additionalServiceCa: string | undefined
  /**
   * Usernames whose tokens may use the relay, as given (repeated or comma-separated); at least
   * one is left once blanks and duplicates are dropped.
   */
  readonly trustedCallerUsernames: ReadonlyArray<string>
  readonly tokenReviewCacheTtl: Duration.Input
  /** Kubeconfig of the managed cluster; undefined means the in-cluster configuration. */
  readonly kubeconfig: string | undefined
  /** Server tuning (timeouts, header size, pools); the defaults suit a pod. */
  readonly tuning?: Omit<ServiceRelay.Options, "listen" | "additionalServiceCa">
}

/**
 * Split repeated and comma-separated `--trusted-caller-username` values, dropping blanks and
 * duplicates.
 *
 * @category constructors
 */
export const trustedUsernames = (given: ReadonlyArray<string>): ReadonlyArray<string> => [
  ...new Set(given.flatMap((value) => value.split(",")).map((name) => name.trim()).filter((name) => name !== ""))
]

/**
 * Check the options: the trusted usernames normalised, at least one of them.
 *
 * @category constructors
 */
export const resolve = (given: Options): Result.Result<Options, InvalidOptions> => {
  const trusted = trustedUsernames(given.trustedCallerUsernames)
  if (trusted.length === 0) {
    return fail(
      "--trusted-caller-username is required: the relay only serves callers whose token TokenReview authenticates as one of " +
        "these users (e.g. system:serviceaccount:open-cluster-management-agent-addon:cluster-proxy); it does not run open"
    )
  }
  return Result.succeed({ ...given, trustedCallerUsernames: trusted })
}
