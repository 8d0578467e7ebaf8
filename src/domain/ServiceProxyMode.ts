/**
 * What the service proxy does with a request, by what the routing headers name and where the
 * proxy runs (hosted-mode-spec 4.3), pure: the hosted modes, the deployment, the decision table
 * ({@link decide}) and the metric labels.
 *
 * Two kinds of target exist:
 * - the kube-apiserver (`kubernetes` in `default`, in any letter case, with any proto or port):
 *   the caller is authenticated by a TokenReview chain and the request is sent on with the
 *   proxy's own token, impersonating the caller;
 * - any other Service: reached directly (`<proto>://<svc>.<ns>.svc:<port>`), through the
 *   managed apiserver's `services/proxy` of the service relay, or refused, depending on the
 *   hosted mode.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import type * as HttpHeaders from "./HttpHeaders.ts"
import * as ServiceRouting from "./ServiceRouting.ts"


/**
 * How Service targets are served in hosted mode.
 *
 * @since 0.1.0
 * @category models
 */
export type Mode = "Disabled" | "BestEffort" | "Relay"

/**
 * @since 0.1.0
 * @category constants
 */
export const modes: ReadonlyArray<Mode> = ["Disabled", "BestEffort", "Relay"]

/**
 * @since 0.1.0
 * @category errors
 */
export class InvalidMode extends Schema.TaggedError<InvalidMode>()("InvalidMode", {
  input: Schema.String,
  message: Schema.String
}) {}

/**
 * Parse a `--hosted-service-proxy-mode` value (exact spelling, surrounding blanks ignored).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseMode = (input: string): Result.Result<Mode, InvalidMode> => {
  const trimmed = input.trim()
  const found = modes.find((mode) => mode === trimmed)
  return found === undefined
    ? Result.fail(
      new InvalidMode({
        input,
        message: `hosted-service-proxy-mode must be one of Disabled, BestEffort, or Relay; got ${JSON.stringify(input)}`
      })
    )
    : Result.succeed(found)
}

/**
 * Where the proxy runs: next to the cluster it serves (`Direct`, the classic install), or on a
 * hosting cluster for a managed cluster it reaches through a kubeconfig (`Hosted`).
 *
 * @since 0.1.0
 * @category models
 */
export type Deployment =
  | { readonly _tag: "Direct" }
  | { readonly _tag: "Hosted"; readonly mode: Mode }

/**
 * The `mode` label of the request metric: `Direct` when not hosted, else the hosted mode.
 *
 * @since 0.1.0
 * @category models
 */
export type MetricMode = "Direct" | Mode

/**
 * @since 0.1.0
 * @category metrics
 */
export const metricMode = (deployment: Deployment): MetricMode =>
  deployment._tag === "Direct" ? "Direct" : deployment.mode

/**
 * The `target` label of the request metric.
 *
 * @since 0.1.0
 * @category models
 */
export type MetricTarget = "kube-apiserver" | "service" | "unknown"


/**
 * What the routing headers name.
 *
 * @since 0.1.0
 * @category models
 */
export type RequestTarget =
  | { readonly _tag: "KubeApiserver" }
  | { readonly _tag: "Service"; readonly target: ServiceRouting.Target }

const kubeApiserver: RequestTarget = { _tag: "KubeApiserver" }

/**
 * Read the routing headers. All four must be present once; `kubernetes` in `default` is the
 * kube-apiserver whatever the letter case, proto or port; any other target must be a valid
 * Service address (see {@link ServiceRouting.route}). A refusal is answered with 400.
 *
 * @since 0.1.0
 * @category routing
 */
export const classify = (headers: HttpHeaders.Headers): Result.Result<RequestTarget, ServiceRouting.RoutingError> => {
  const routed = ServiceRouting.routeOrApiserver(headers)
  if (Result.isFailure(routed)) return Result.fail(routed.failure)
  return Result.succeed(routed.success === "KubeApiserver" ? kubeApiserver : { _tag: "Service", target: routed.success })
}

/**
 * @since 0.1.0
 * @category metrics
 */
export const metricTarget = (target: RequestTarget | undefined): MetricTarget =>
  target === undefined ? "unknown" : target._tag === "KubeApiserver" ? "kube-apiserver" : "service"

/**
 * What to do with a request (hosted-mode-spec 4.3):
 *
 * | target | deployment | decision |
 * |---|---|---|
 * | kube-apiserver | Direct | `Apiserver` (the in-cluster apiserver) |
 * | kube-apiserver | Hosted, any mode | `Apiserver` (the managed kubeconfig's server) |
 * | Service | Direct, or Hosted BestEffort | `Service` (`<proto>://<svc>.<ns>.svc:<port>`, resolved here) |
 * | Service | Hosted Relay | `Relay` (the managed apiserver's `services/proxy` of the relay) |
 * | Service | Hosted Disabled | `Refuse` 503 |
 *
 * @since 0.1.0
 * @category models
 */
export type Decision =
  | { readonly _tag: "Apiserver" }
  | { readonly _tag: "Service"; readonly target: ServiceRouting.Target }
  | { readonly _tag: "Relay"; readonly target: ServiceRouting.Target }
  | { readonly _tag: "Refuse"; readonly status: 503; readonly message: string }

/**
 * The 503 body of a Service request in Disabled mode.
 *
 * @since 0.1.0
 * @category constants
 */
export const disabledMessage = "service proxy disabled in hosted mode"

/**
 * @since 0.1.0
 * @category routing
 */
export const decide = (deployment: Deployment, target: RequestTarget): Decision => {
  if (target._tag === "KubeApiserver") return { _tag: "Apiserver" }
  if (deployment._tag === "Direct") return { _tag: "Service", target: target.target }
  switch (deployment.mode) {
    case "BestEffort":
      return { _tag: "Service", target: target.target }
    case "Relay":
      return { _tag: "Relay", target: target.target }
    case "Disabled":
      return { _tag: "Refuse", status: 503, message: disabledMessage }
  }
}
