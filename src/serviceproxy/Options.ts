/**
 * The service proxy's options, checked once, whether `tether service-proxy` or `tether
 * hosted-agent` runs it: the serving certificate, the hosted mode and the rule that Relay mode
 * needs a managed kubeconfig (and the add-on namespace the relay Service lives in), the relay
 * Service's address, the TokenReview patterns' default, and the busy-polling maximum (at most
 * 10ms). Pure.
 *
 * @since 0.1.0
 */
import { Duration, Option, Result } from "effect"
import * as ApiserverUrl from "../domain/ApiserverUrl.ts"
import { fail, type InvalidOptions } from "../domain/InvalidOptions.ts"
import type * as ListenAddress from "../domain/ListenAddress.ts"
import * as ServiceProxyMode from "../domain/ServiceProxyMode.ts"
import * as TokenReview from "../domain/TokenReview.ts"
import * as BusyPoll from "../http/BusyPoll.ts"
import type * as ServiceProxy from "./ServiceProxy.ts"

/**
 * Where the managed cluster's kubeconfig comes from:
 * - `NotHosted`: none; the proxy serves the cluster it runs in (in-cluster apiserver);
 * - `File`: a generated kubeconfig mounted from the provisioner's Secret, re-read when it changes;
 * - `InProcess`: handed over by the provisioner running in the same process (`hosted-agent`).
 *
 * @category models
 */
export type ManagedKubeconfig =
  | { readonly _tag: "NotHosted" }
  | { readonly _tag: "File"; readonly path: string }
  | { readonly _tag: "InProcess" }

/**
 * The options as given (command-line style: blanks mean "not given").
 *
 * @category models
 */
export interface Input {
  readonly listen: ListenAddress.ListenAddress
  readonly certFile: string
  readonly keyFile: string
  /** PEM file of extra CAs for https Services; a missing file is skipped. */
  readonly additionalServiceCa: string | undefined
  /** Hub kubeconfig for the second TokenReview; undefined means only the managed cluster reviews. */
  readonly hubKubeconfig: string | undefined
  /** The generated managed kubeconfig file, or {@link ManagedKubeconfig}; undefined or blank means not hosted. */
  readonly managedKubeconfig: string | ManagedKubeconfig | undefined
  /** `--hosted-service-proxy-mode` as given; undefined means Disabled when hosted. */
  readonly mode: string | undefined
  readonly enableImpersonation: boolean
  readonly tokenReviewCacheTtl: Duration.Input
  /** `status.error` substrings that let the chain try the next cluster; empty means the default. */
  readonly tokenReviewErrorPatterns: ReadonlyArray<string>
  readonly serviceRelayName: string
  readonly serviceRelayPort: number
  /** The add-on namespace (`POD_NAMESPACE`); required in Relay mode. */
  readonly relayNamespace: string | undefined
  readonly maxIdleConnections: number
  readonly idleConnectionTimeout: Duration.Input
  readonly tlsHandshakeTimeout: Duration.Input
  readonly expectContinueTimeout: Duration.Input
  /** `--busy-poll`: the longest the event loop keeps polling after each request and response (adapted); 0: never; absent: 200us. */
  readonly busyPoll?: Duration.Input | undefined
  /** Server tuning and file paths tests override; the defaults suit a pod. */
  readonly tuning?: Partial<Omit<ServiceProxy.Options, "listen" | "certFile" | "keyFile" | "deployment" | "enableImpersonation" | "relay">>
  /** Re-read period of the managed kubeconfig file (file events are picked up at once); default 10 seconds. */
  readonly credentialsReloadInterval?: Duration.Input
}

/**
 * The checked options: the proxy's own, where its managed credentials come from, and the
 * TokenReview chain's.
 *
 * @category models
 */
export interface Options {
  readonly proxy: ServiceProxy.Options
  readonly managedKubeconfig: ManagedKubeconfig
  readonly hubKubeconfig: string | undefined
  readonly tokenReviewCacheTtl: Duration.Input
  /** Never empty: the default ("invalid bearer token") when none was given. */
  readonly tokenReviewErrorPatterns: ReadonlyArray<string>
  readonly credentialsReloadInterval: Duration.Input | undefined
}

/**
 * The TokenReview patterns: blanks and duplicates dropped; the default ("invalid bearer
 * token") when none is left.
 *
 * @category constructors
 */
export const errorPatterns = (given: ReadonlyArray<string>): ReadonlyArray<string> => {
  const patterns = [...new Set(given.map((pattern) => pattern.trim()).filter((pattern) => pattern !== ""))]
  return patterns.length === 0 ? TokenReview.defaultErrorPatterns : patterns
}

const blankToUndefined = (s: string | undefined) => (s === undefined || s.trim() === "" ? undefined : s.trim())

/**
 * The managed kubeconfig as a variant: a path (blank: not hosted) or the variant itself.
 *
 * @category constructors
 */
export const managedKubeconfig = (given: Input["managedKubeconfig"]): ManagedKubeconfig => {
  if (given !== undefined && typeof given !== "string") return given
  const path = blankToUndefined(given)
  return path === undefined ? { _tag: "NotHosted" } : { _tag: "File", path }
}

/**
 * Check the options. Not hosted, Services are dialled directly and Relay is an error; hosted,
 * the mode defaults to Disabled, and Relay needs the add-on namespace and a valid relay Service.
 *
 * @category constructors
 */
export const resolve = (given: Input): Result.Result<Options, InvalidOptions> => {
  const certFile = given.certFile.trim()
  const keyFile = given.keyFile.trim()
  if (certFile === "" || keyFile === "") return fail("--cert and --key are required: the serving certificate and its key (PEM files)")
  let mode: ServiceProxyMode.Mode | undefined
  if (given.mode !== undefined) {
    const parsed = ServiceProxyMode.parseMode(given.mode)
    if (Result.isFailure(parsed)) return fail(parsed.failure.message)
    mode = parsed.success
  }
  const managed = managedKubeconfig(given.managedKubeconfig)
  if (managed._tag === "NotHosted" && mode === "Relay") return fail("managed-kubeconfig is required when hosted-service-proxy-mode=Relay")
  if (!Number.isSafeInteger(given.maxIdleConnections) || given.maxIdleConnections < 0) return fail("--max-idle-conns must be 0 or more")
  if (!Number.isInteger(given.serviceRelayPort) || given.serviceRelayPort < 1 || given.serviceRelayPort > 65535) {
    return fail("--service-relay-port must be between 1 and 65535")
  }
  const busyPoll = Duration.fromInput(given.busyPoll ?? Duration.micros(BigInt(BusyPoll.defaultMaxMicros)))
  if (Option.isNone(busyPoll) || Duration.toMillis(busyPoll.value) * 1000 > BusyPoll.maxBudgetMicros) {
    return fail(`--busy-poll must be a duration from 0s to ${BusyPoll.maxBudgetMicros / 1000}ms`)
  }
  const deployment: ServiceProxyMode.Deployment = managed._tag === "NotHosted"
    ? { _tag: "Direct" }
    : { _tag: "Hosted", mode: mode ?? "Disabled" }
  let relay: ApiserverUrl.RelayService | undefined
  if (deployment._tag === "Hosted" && deployment.mode === "Relay") {
    const namespace = blankToUndefined(given.relayNamespace)
    if (namespace === undefined) {
      return fail("POD_NAMESPACE must name the add-on namespace in Relay mode (the relay Service lives there on the managed cluster)")
    }
    const checked = ApiserverUrl.validateRelayService({ namespace, name: given.serviceRelayName.trim(), port: given.serviceRelayPort })
    if (Result.isFailure(checked)) return fail(checked.failure.message)
    relay = checked.success
  }
  return Result.succeed({
    proxy: {
      ...given.tuning,
      listen: given.listen,
      certFile,
      keyFile,
      deployment,
      enableImpersonation: given.enableImpersonation,
      relay,
      additionalServiceCa: blankToUndefined(given.additionalServiceCa),
      maxIdleConnections: given.maxIdleConnections,
      idleConnectionTimeout: given.idleConnectionTimeout,
      tlsHandshakeTimeout: given.tlsHandshakeTimeout,
      expectContinueTimeout: given.expectContinueTimeout,
      busyPoll: busyPoll.value
    },
    managedKubeconfig: managed,
    hubKubeconfig: blankToUndefined(given.hubKubeconfig),
    tokenReviewCacheTtl: given.tokenReviewCacheTtl,
    tokenReviewErrorPatterns: errorPatterns(given.tokenReviewErrorPatterns),
    credentialsReloadInterval: given.credentialsReloadInterval
  })
}
