/**
 * The contract of the generated Secret on the hosting cluster: which data keys and
 * annotations tether writes, and how a Secret read back is judged. The annotations carry
 * the token's lifetime, so a restarted provisioner knows when to refresh without a
 * TokenRequest, and the source hash, so a changed source kubeconfig forces a new token.
 *
 * Times are written as RFC3339 UTC with second precision (milliseconds truncated), as the Go
 * provisioner writes the expiration.
 *
 * @since 0.1.0
 */
import { Redacted, Result } from "effect"
import { createHash } from "node:crypto"
import * as Conditions from "./Conditions.ts"
import * as Kubeconfig from "./Kubeconfig.ts"
import type * as RefreshPolicy from "./RefreshPolicy.ts"

/**
 * Annotation: when the token expires (RFC3339 UTC). Same key as the Go provisioner.
 *
 * @since 0.1.0
 * @category constants
 */
export const expirationAnnotation = "proxy.open-cluster-management.io/managed-kubeconfig-token-expiration"

/**
 * Annotation: when the token was issued (RFC3339 UTC). New in tether.
 *
 * @since 0.1.0
 * @category constants
 */
export const issuedAtAnnotation = "proxy.open-cluster-management.io/managed-kubeconfig-token-issued-at"

/**
 * Annotation: hex SHA-256 of the source kubeconfig bytes. Same key as the Go provisioner.
 *
 * @since 0.1.0
 * @category constants
 */
export const sourceHashAnnotation = "proxy.open-cluster-management.io/source-kubeconfig-hash"

/**
 * Annotation: the UID of the managed ServiceAccount the token in place was minted for (from the
 * token's own claims). The periodic identity check compares it with the ServiceAccount's UID now.
 *
 * @since 0.1.0
 * @category constants
 */
export const serviceAccountUidAnnotation = "proxy.open-cluster-management.io/managed-serviceaccount-uid"

/**
 * Annotation: hex SHA-256 of the connection the token was minted through (server, CA, TLS server
 * name). Unlike the source hash it ignores the source's own credentials: a rotated source
 * credential is a plain refresh, a changed connection blanks the token first.
 *
 * @since 0.1.0
 * @category constants
 */
export const connectionHashAnnotation = "proxy.open-cluster-management.io/managed-connection-hash"

/**
 * Data key holding the generated kubeconfig.
 *
 * @since 0.1.0
 * @category constants
 */
export const kubeconfigKey = "kubeconfig"

/**
 * Data key holding the bare token, so consumers can use `tokenFile` on the mounted key and
 * pick up rotations without a restart.
 *
 * @since 0.1.0
 * @category constants
 */
export const tokenKey = "token"

/**
 * @since 0.1.0
 * @category constants
 */
export const secretType = "Opaque"

const encode = (text: string): string => Buffer.from(text, "utf8").toString("base64")
const decode = (base64: string): string => Buffer.from(base64, "base64").toString("utf8")

/**
 * Data (base64, as in a Secret's `data`) and annotations of the Secret for a freshly issued token.
 *
 * @since 0.1.0
 * @category constructors
 */
export const desired = (input: {
  readonly kubeconfig: string
  readonly token: Redacted.Redacted<string>
  readonly lifetime: RefreshPolicy.TokenLifetime
  readonly sourceHash: string
  /** What the token was minted for; recorded when known. */
  readonly serviceAccountUid?: string | undefined
  readonly connectionHash?: string | undefined
}): { readonly data: Record<string, string>; readonly annotations: Record<string, string> } => ({
  data: {
    [kubeconfigKey]: encode(input.kubeconfig),
    [tokenKey]: encode(Redacted.value(input.token))
  },
  annotations: {
    [expirationAnnotation]: Conditions.formatTime(input.lifetime.expiresAt),
    [issuedAtAnnotation]: Conditions.formatTime(input.lifetime.issuedAt),
    [sourceHashAnnotation]: input.sourceHash,
    ...(input.serviceAccountUid === undefined ? {} : { [serviceAccountUidAnnotation]: input.serviceAccountUid }),
    ...(input.connectionHash === undefined ? {} : { [connectionHashAnnotation]: input.connectionHash })
  }
})

/**
 * The contents that withdraw the token in place (fail closed, before a new one is minted for
 * another identity): both data keys empty, so neither the kubeconfig nor a `tokenFile` reader
 * can still present it. The annotations are left as they were; an empty kubeconfig reads back
 * as {@link ObservedTarget} `Unreadable`, which means "mint".
 *
 * @since 0.1.0
 * @category constructors
 */
export const blanked: { readonly data: Record<string, string>; readonly annotations: Record<string, string> } = {
  data: { [kubeconfigKey]: "", [tokenKey]: "" },
  annotations: {}
}

/**
 * Whether a Secret carries the annotations tether writes: a Secret without them was made by
 * someone else and is never deleted by the controller.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isWrittenByUs = (annotations: Readonly<Record<string, string>> | undefined): boolean =>
  nonEmpty(annotations?.[sourceHashAnnotation]) !== undefined

/**
 * The hash of the connection a source kubeconfig names: server, CA, TLS server name, proxy and
 * the skip-verify flag. Credentials are not part of it.
 *
 * @since 0.1.0
 * @category hashing
 */
export const connectionHash = (cluster: Kubeconfig.ClusterEntry): string =>
  createHash("sha256").update(JSON.stringify([
    cluster.server,
    cluster.certificateAuthorityData ?? "",
    cluster.tlsServerName ?? "",
    cluster.proxyUrl ?? "",
    cluster.insecureSkipTlsVerify === true
  ])).digest("hex")

/**
 * The ServiceAccount UID a bound ServiceAccount token was minted for, read from its claims
 * (`kubernetes.io.serviceaccount.uid`) without verifying the signature: the token is one we
 * were just handed by the apiserver. Undefined when the token is not such a JWT.
 *
 * @since 0.1.0
 * @category parsing
 */
export const serviceAccountUidOf = (token: Redacted.Redacted<string>): string | undefined => {
  const parts = Redacted.value(token).split(".")
  if (parts.length !== 3) return undefined
  try {
    const claims: unknown = JSON.parse(Buffer.from(parts[1]!, "base64url").toString("utf8"))
    const kube = typeof claims === "object" && claims !== null ? (claims as Record<string, unknown>)["kubernetes.io"] : undefined
    const sa = typeof kube === "object" && kube !== null ? (kube as Record<string, unknown>)["serviceaccount"] : undefined
    const uid = typeof sa === "object" && sa !== null ? (sa as Record<string, unknown>)["uid"] : undefined
    return typeof uid === "string" && uid !== "" ? uid : undefined
  } catch {
    return undefined
  }
}

/**
 * Our annotations over whatever others put on the Secret; theirs survive our updates.
 *
 * @since 0.1.0
 * @category combinators
 */
export const mergeMetadata = (
  existingAnnotations: Readonly<Record<string, string>> | undefined,
  ours: Readonly<Record<string, string>>
): Record<string, string> => ({ ...existingAnnotations, ...ours })

/**
 * Why an existing Secret cannot be trusted. All of them mean "issue a new token and rewrite".
 *
 * @since 0.1.0
 * @category models
 */
export type UnreadableReason =
  | "MissingKubeconfig"
  | "MissingToken"
  | "MissingAnnotation"
  | "InvalidAnnotation"
  | "InvalidLifetime"

/**
 * What the generated Secret currently holds.
 *
 * @since 0.1.0
 * @category models
 */
export type ObservedTarget =
  | { readonly _tag: "Missing" }
  | { readonly _tag: "Unreadable"; readonly reason: UnreadableReason; readonly message: string }
  | {
    readonly _tag: "Present"
    readonly lifetime: RefreshPolicy.TokenLifetime
    readonly sourceHash: string
    readonly token: Redacted.Redacted<string>
    /** The kubeconfig the Secret holds, as consumers read it. */
    readonly kubeconfig: Redacted.Redacted<string>
    /** The ServiceAccount UID the token was minted for (annotation, else the token's claims). */
    readonly serviceAccountUid: string | undefined
    /** The connection the token was minted through; undefined on Secrets written before it was recorded. */
    readonly connectionHash: string | undefined
  }

const unreadable = (reason: UnreadableReason, message: string): ObservedTarget => ({ _tag: "Unreadable", reason, message })

const nonEmpty = (value: string | undefined): string | undefined => (value === undefined || value === "" ? undefined : value)

/**
 * Judges a Secret read back from the API (`data` base64, as the API returns it).
 *
 * **Gotchas**
 *
 * - Without a `token` data key (a Secret written by the Go provisioner) the token is read from
 *   the kubeconfig's inline `token`.
 * - Without the issued-at annotation (also the Go provisioner's Secrets) the result is
 *   `Unreadable`: the lifetime, and so the refresh point, is unknown. That costs one early rotation.
 * - Times come back truncated to seconds.
 *
 * @since 0.1.0
 * @category parsing
 */
export const observe = (
  secret:
    | {
      readonly data?: Readonly<Record<string, string>> | undefined
      readonly annotations?: Readonly<Record<string, string>> | undefined
    }
    | undefined
): ObservedTarget => {
  if (secret === undefined) return { _tag: "Missing" }
  const data = secret.data ?? {}
  const annotations = secret.annotations ?? {}

  const kubeconfig = nonEmpty(data[kubeconfigKey])
  if (kubeconfig === undefined) return unreadable("MissingKubeconfig", `data key "${kubeconfigKey}" is missing or empty`)

  let token: Redacted.Redacted<string> | undefined
  const tokenData = nonEmpty(data[tokenKey])
  if (tokenData !== undefined) {
    token = Redacted.make(decode(tokenData))
  } else {
    const fromKubeconfig = Kubeconfig.readBearerToken(decode(kubeconfig))
    if (Result.isSuccess(fromKubeconfig) && fromKubeconfig.success._tag === "Inline") token = fromKubeconfig.success.token
  }
  if (token === undefined || Redacted.value(token) === "") {
    return unreadable("MissingToken", `data key "${tokenKey}" is missing and the kubeconfig has no inline token`)
  }

  const time = (key: string): number | ObservedTarget => {
    const text = nonEmpty(annotations[key])
    if (text === undefined) return unreadable("MissingAnnotation", `annotation "${key}" is missing`)
    const ms = Conditions.parseTime(text)
    return ms === undefined ? unreadable("InvalidAnnotation", `annotation "${key}" is not an RFC3339 time`) : ms
  }
  const expiresAt = time(expirationAnnotation)
  if (typeof expiresAt !== "number") return expiresAt
  const issuedAt = time(issuedAtAnnotation)
  if (typeof issuedAt !== "number") return issuedAt
  if (issuedAt >= expiresAt) {
    return unreadable("InvalidLifetime", `annotation "${issuedAtAnnotation}" is not before "${expirationAnnotation}"`)
  }

  const sourceHash = nonEmpty(annotations[sourceHashAnnotation])
  if (sourceHash === undefined) return unreadable("MissingAnnotation", `annotation "${sourceHashAnnotation}" is missing`)

  return {
    _tag: "Present",
    lifetime: { issuedAt, expiresAt },
    sourceHash,
    token,
    kubeconfig: Redacted.make(decode(kubeconfig)),
    serviceAccountUid: nonEmpty(annotations[serviceAccountUidAnnotation]) ?? serviceAccountUidOf(token),
    connectionHash: nonEmpty(annotations[connectionHashAnnotation])
  }
}
