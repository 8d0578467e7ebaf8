/**
 * The one error type of the Kubernetes API edge.
 *
 * Every failure of a call to an apiserver becomes a {@link KubeError} whose `reason` says what
 * happened in Kubernetes terms and whether retrying can help. Nothing from client-node (no
 * `ApiException`, no raw response body) crosses this boundary, and the message carries only the
 * apiserver's `Status.message`, which never contains credentials.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * What went wrong, in the apiserver's vocabulary.
 *
 * @category models
 */
export const Reason = Schema.Literals([
  "NotFound", // 404
  "Conflict", // 409: stale resourceVersion or AlreadyExists
  "Forbidden", // 403: authenticated but RBAC says no
  "Unauthorized", // 401: the credential is not accepted
  "Invalid", // 400 / 422: the request itself is wrong
  "Gone", // 410: a watch or list resourceVersion is too old
  "TooManyRequests", // 429: back off for Retry-After
  "Unavailable", // 5xx: the server is having trouble
  "Transport" // no HTTP answer at all (DNS, TCP, TLS, timeout)
])

/** @category models */
export type Reason = typeof Reason.Type

const retryableReasons: ReadonlySet<Reason> = new Set(["Conflict", "Gone", "TooManyRequests", "Unavailable", "Transport"])

/** @category errors */
export class KubeError extends Schema.TaggedError<KubeError>()("KubeError", {
  /** Which call failed, e.g. `create token for serviceaccount ns/name`. */
  operation: Schema.String,
  /** Which cluster the call went to (hosting, managed, hub). */
  cluster: Schema.String,
  reason: Reason,
  /** HTTP status, when there was an answer. */
  status: Schema.optional(Schema.Finite),
  /** Seconds the server asked us to wait (429 / 503 Retry-After). */
  retryAfterSeconds: Schema.optional(Schema.Finite),
  /** The apiserver's own explanation (Status.message) or the transport error. */
  detail: Schema.String
}) {
  /** Whether the same call may succeed later without anything else changing. */
  get retryable(): boolean {
    return retryableReasons.has(this.reason)
  }

  override get message(): string {
    return `failed to ${this.operation} on the ${this.cluster} cluster: ${this.reason}: ${this.detail}`
  }
}

/** @category refinements */
export const isReason = (reason: Reason) => (error: unknown): error is KubeError =>
  error instanceof KubeError && error.reason === reason

/**
 * Map an HTTP status code to a reason.
 *
 * @category constructors
 */
export const reasonFromStatus = (status: number): Reason => {
  switch (status) {
    case 401:
      return "Unauthorized"
    case 403:
      return "Forbidden"
    case 404:
      return "NotFound"
    case 409:
      return "Conflict"
    case 410:
      return "Gone"
    case 429:
      return "TooManyRequests"
    case 400:
    case 422:
      return "Invalid"
    default:
      return status >= 500 ? "Unavailable" : "Invalid"
  }
}
