/**
 * One reconcile of one cluster's managed kubeconfig: read the world, act once, report, and say
 * when to look again.
 *
 * The algorithm, in order:
 * - If the hub add-on is gone or being deleted, delete the generated Secret and never write it
 *   again (the prototype's cleanup Job raced with a provisioner that re-created it).
 * - Read and validate the source kubeconfig. A missing or unusable source is reported
 *   (condition False, a Warning event) and waited on; it never touches the generated Secret.
 * - Read the generated Secret. It is refreshed when it is missing or unreadable, when the source
 *   changed (hash), or when {@link RefreshPolicy.decide} says so; otherwise we wait until the
 *   scheduled refresh time.
 * - Refresh = one TokenRequest and one write. Just before writing, the add-on is checked again.
 * - When TokenRequest fails and the current token is still valid, the token keeps serving
 *   (stale-while-revalidate) and the failure is retried with backoff, but looked at again no
 *   later than the token's expiry; only an expired or missing token turns the condition False,
 *   and an expired one does so before the next TokenRequest is even tried (it may hang).
 * - A deleted generated Secret is re-created from the token the provisioner still holds (its
 *   {@link Memory}) while that token is not due and the source is unchanged: no new credential.
 * - Minting is rate-limited ({@link RefreshPolicy.defaultMintLimit}), and after a TokenRequest the
 *   apiserver refused (429, 5xx, 403) the next waits for its Retry-After or the backoff, whatever
 *   triggers a reconcile meanwhile.
 *
 * Only the generated Secret's own annotations and data keys are written: labels, annotations
 * and keys that others added survive every write.
 *
 * @since 0.1.0
 */
import type { V1Secret } from "@kubernetes/client-node"
import { Clock, Context, Duration, Effect, Fiber, FileSystem, Layer, Metric, Option, Redacted, Ref, Result, Schema } from "effect"
import { createHash } from "node:crypto"
import * as Backoff from "../domain/Backoff.ts"
import * as IdentityCheck from "../domain/IdentityCheck.ts"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as ManagedKubeconfigSecret from "../domain/ManagedKubeconfigSecret.ts"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import { EventRecorder, type ObjectReference } from "../kube/EventRecorder.ts"
import { GeneratedKubeconfig } from "../kube/GeneratedKubeconfig.ts"
import * as KubeError from "../kube/KubeError.ts"
import * as Metrics from "../observability/Metrics.ts"
import { type AddonState, AddonStatus, type DesiredCondition } from "./AddonStatus.ts"
import { SecretStore } from "./SecretStore.ts"
import { ServiceAccounts } from "./ServiceAccounts.ts"
import { TokenIssuer } from "./TokenIssuer.ts"

/** A namespaced object name. @category models */
export interface ObjectName {
  readonly namespace: string
  readonly name: string
}

/** Everything one cluster's reconcile needs; the cluster name is the key. @category models */
export interface ClusterSpec {
  readonly clusterName: string
  readonly source: ObjectName
  readonly target: ObjectName
  readonly serviceAccount: ObjectName
  readonly settings: RefreshPolicy.ValidatedSettings
  /** `tokenFile` written beside the token in the generated kubeconfig (`--token-file-path`). */
  readonly tokenFile?: Kubeconfig.TokenFilePath | undefined
  /**
   * Bound on the periodic identity check (the managed ServiceAccount's UID, one read); none
   * without it, or without a {@link ServiceAccounts} port in the context.
   */
  readonly identityCheckInterval?: Duration.Duration | undefined
}

/**
 * The last token the provisioner knows to be in place, per cluster (gauges and readiness). One
 * map, updated in place: a copy per reconcile cost a thousand-entry map per run at 1,000 pairs.
 *
 * @category services
 */
export class TokenState extends Context.Service<TokenState, Ref.Ref<Map<string, RefreshPolicy.TokenLifetime>>>()(
  "tether/provisioner/TokenState"
) {
  static readonly layer = Layer.effect(TokenState, Ref.make(new Map<string, RefreshPolicy.TokenLifetime>()))
}

/** A reconcile that failed and should be retried with backoff. @category errors */
export class ReconcileFailed extends Schema.TaggedError<ReconcileFailed>()("ReconcileFailed", {
  cluster: Schema.String,
  message: Schema.String,
  /** The server asked us to wait this long (429/503 Retry-After); the controller honours it. */
  retryAfterSeconds: Schema.optional(Schema.Finite),
  /** Look again no later than this (epoch ms): the held token's expiry, when the condition must change. */
  retryBy: Schema.optional(Schema.Finite)
}) {}

/** The token the provisioner last wrote or read back, kept to re-create a deleted Secret. @category models */
export interface Held {
  readonly sourceHash: string
  readonly lifetime: RefreshPolicy.TokenLifetime
  readonly token: Redacted.Redacted<string>
  readonly kubeconfig: Redacted.Redacted<string>
  readonly serviceAccountUid: string | undefined
  readonly connectionHash: string | undefined
}

/**
 * What one cluster's reconciles remember between runs (in memory only; a restart starts empty):
 * the token in hand and when tokens were minted. Reconciles of one key never overlap, so plain
 * mutable fields suffice.
 *
 * @category models
 */
export interface Memory {
  held: Held | undefined
  /** When TokenRequests were sent (epoch ms), for the mint rate limit. */
  mints: Array<number>
  readonly mintLimit: RefreshPolicy.MintLimit
  /** Set while a refresh waits on a managed apiserver that gave no answer at all; probed for its return. */
  unreachable: Kubeconfig.ClusterEntry | undefined
  /** After TokenRequests the apiserver refused: no other one for the same source before `notBefore`. */
  refused: { readonly sourceHash: string; readonly failures: number; readonly notBefore: number; readonly problem: Problem } | undefined
  /** When the next identity check is due (epoch ms); undefined until the first run that may check. */
  identityCheckAt: number | undefined
  /** The UID of the generated Secret this memory last wrote or adopted: the only one it deletes. */
  ownedUid: string | undefined
}

/** @category constructors */
export const makeMemory = (mintLimit: RefreshPolicy.MintLimit = RefreshPolicy.defaultMintLimit): Memory => ({
  held: undefined,
  mints: [],
  mintLimit,
  unreachable: undefined,
  refused: undefined,
  identityCheckAt: undefined,
  ownedUid: undefined
})

/** What one reconcile found and did. @category models */
export type Outcome =
  | {
    readonly _tag: "Removed"
    readonly deleted: boolean
    readonly why: "Absent" | "Deleting"
    /** A Secret is there but not the one we wrote (another UID, or none of our annotations): left alone. */
    readonly kept?: { readonly uid: string | undefined }
  }
  | { readonly _tag: "Fresh"; readonly lifetime: RefreshPolicy.TokenLifetime; readonly until: number; readonly kubeconfig: Redacted.Redacted<string> }
  | {
    readonly _tag: "Written"
    readonly created: boolean
    /** Written from the token in hand; no TokenRequest. */
    readonly reused?: boolean
    readonly lifetime: RefreshPolicy.TokenLifetime
    readonly until: number
    readonly kubeconfig: Redacted.Redacted<string>
    /** The token before was blanked because its identity changed; why. */
    readonly reissued?: Reissue
    /**
     * A rotation the token's age alone asked for (same source, same identity, the Secret in
     * place): nothing an operator needs to hear about unless the condition changes.
     */
    readonly routine?: boolean
  }
  | { readonly _tag: "Stale"; readonly lifetime: RefreshPolicy.TokenLifetime; readonly problem: Problem; readonly kubeconfig: Redacted.Redacted<string> }
  /** `expired`: the token in place has expired (the condition then says so, with the problem as the cause). */
  | { readonly _tag: "Failed"; readonly problem: Problem; readonly expired?: RefreshPolicy.TokenLifetime }
  /** A refresh is due but held back after a refused TokenRequest; nothing to report until `until`. */
  | { readonly _tag: "Held"; readonly lifetime: RefreshPolicy.TokenLifetime | undefined; readonly until: number }

/** Why the token in place was blanked before a new one was minted; `reason` is the condition reason. @category models */
export interface Reissue {
  readonly reason: "ServiceAccountRecreated" | "ManagedClusterConnectionChanged"
  readonly message: string
}

/** Why there is no usable kubeconfig; `reason` is the condition reason. @category models */
export interface Problem {
  readonly reason:
    | "SourceSecretNotFound"
    | "SourceKubeconfigInvalid"
    | "ServiceAccountNotFound"
    | "TokenRequestForbidden"
    | "TokenRequestFailed"
    | "TokenRequestRateLimited"
    | "TargetWriteFailed"
    | "HostingClusterUnavailable"
  readonly message: string
  /** Whether retrying without any change can help (otherwise we wait for the source to change). */
  readonly retryable: boolean
  readonly retryAfterSeconds?: number
}

/** Condition reason when the token in place expired and no new one is in place yet. @category constants */
export const expiredReason = "ManagedKubeconfigExpired"

/** The controller's retry backoff (its defaults); the gate after a refused TokenRequest waits its lower bound. */
const refusedBackoff = Backoff.policy("2 seconds", "5 minutes")

const secretRef = (target: ObjectName): ObjectReference => ({ apiVersion: "v1", kind: "Secret", ...target })

const describe = (name: ObjectName) => `${name.namespace}/${name.name}`

/** A stable jitter fraction per token, so restarts do not move the refresh time. */
const jitterFraction = (sourceHash: string, lifetime: RefreshPolicy.TokenLifetime): number =>
  Number.parseInt(createHash("sha256").update(`${sourceHash}:${lifetime.issuedAt}`).digest("hex").slice(0, 8), 16) /
  2 ** 32

const scheduledAt = (spec: ClusterSpec, sourceHash: string, lifetime: RefreshPolicy.TokenLifetime) =>
  RefreshPolicy.scheduledRefreshAt(lifetime, spec.settings, jitterFraction(sourceHash, lifetime))

const kubeProblem = (spec: ClusterSpec, error: KubeError.KubeError): Problem => {
  const sa = describe(spec.serviceAccount)
  switch (error.reason) {
    case "NotFound":
      return { reason: "ServiceAccountNotFound", retryable: true, message: `serviceaccount ${sa} does not exist on the managed cluster yet: ${error.detail}` }
    case "Forbidden":
    case "Unauthorized":
      return {
        reason: "TokenRequestForbidden",
        retryable: true,
        message: `the source kubeconfig's credentials may not create a token for serviceaccount ${sa} (grant create on serviceaccounts/token): ${error.reason}: ${error.detail}`
      }
    default:
      return {
        reason: "TokenRequestFailed",
        retryable: true,
        message: error.message,
        ...(error.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: error.retryAfterSeconds })
      }
  }
}

const identityIntervalMs = (spec: ClusterSpec): number | undefined =>
  spec.identityCheckInterval === undefined ? undefined : Duration.toMillis(spec.identityCheckInterval)

/** What the identity check found; `Same` also when no check was due, possible or conclusive. */
type Identity =
  | { readonly _tag: "Same"; readonly nextAt: number | undefined }
  | { readonly _tag: "Gone" }
  | { readonly _tag: "Changed"; readonly was: string; readonly uid: string }

/**
 * The bounded identity check: when due, one read of the managed ServiceAccount's UID, compared
 * with the UID the token in place was minted for. A read that fails proves nothing (the token
 * stays; the next check is an interval away, so a broken managed apiserver costs one request
 * per interval, not a loop).
 */
const identityCheck = Effect.fnUntraced(function*(
  spec: ClusterSpec,
  memory: Memory,
  now: number,
  source: { readonly source: Kubeconfig.SourceKubeconfig; readonly sourceHash: string },
  mintedFor: string | undefined
) {
  const interval = identityIntervalMs(spec)
  const port = yield* Effect.serviceOption(ServiceAccounts)
  if (interval === undefined || Option.isNone(port)) return { _tag: "Same", nextAt: undefined } satisfies Identity
  if (memory.identityCheckAt === undefined) {
    memory.identityCheckAt = IdentityCheck.firstCheckAt(now, interval, IdentityCheck.fraction(spec.clusterName, now))
  }
  if (now < memory.identityCheckAt) return { _tag: "Same", nextAt: memory.identityCheckAt } satisfies Identity
  memory.identityCheckAt = IdentityCheck.nextCheckAt(now, interval, IdentityCheck.fraction(spec.clusterName, now))
  const nextAt = memory.identityCheckAt
  const found = yield* Effect.result(port.value.uid({ ...source, ...spec.serviceAccount }))
  if (Result.isFailure(found)) {
    yield* Effect.logWarning("the identity check cannot read the managed serviceaccount", {
      cluster: spec.clusterName,
      error: found.failure.message
    })
    return { _tag: "Same", nextAt } satisfies Identity
  }
  if (Option.isNone(found.success)) return { _tag: "Gone" } satisfies Identity
  // A token whose UID is unknown (not a bound token) cannot be compared: left as it is.
  if (mintedFor === undefined || mintedFor === found.success.value) return { _tag: "Same", nextAt } satisfies Identity
  return { _tag: "Changed", was: mintedFor, uid: found.success.value } satisfies Identity
})

/** Read, parse and inline the source kubeconfig; a Problem when it cannot be used. */
const loadSource = Effect.fnUntraced(function*(spec: ClusterSpec) {
  const store = yield* SecretStore
  const fs = yield* FileSystem.FileSystem
  const where = `source secret ${describe(spec.source)}`
  const found = yield* store.get(spec.source.namespace, spec.source.name).pipe(
    Effect.mapError((error): Problem => ({ reason: "HostingClusterUnavailable", retryable: true, message: error.message }))
  )
  if (Option.isNone(found)) {
    return yield* Effect.fail<Problem>({ reason: "SourceSecretNotFound", retryable: false, message: `${where} does not exist` })
  }
  const encoded = found.value.data?.["kubeconfig"]
  if (encoded === undefined || encoded === "") {
    return yield* Effect.fail<Problem>({ reason: "SourceKubeconfigInvalid", retryable: false, message: `${where} has no "kubeconfig" key` })
  }
  const text = Buffer.from(encoded, "base64").toString("utf8")
  const parsed = Kubeconfig.parseSource(text)
  if (Result.isFailure(parsed)) {
    return yield* Effect.fail<Problem>({ reason: "SourceKubeconfigInvalid", retryable: false, message: `${where}: ${parsed.failure.message}` })
  }
  let source = parsed.success
  const caFile = source.cluster.caFile
  if (caFile !== undefined) {
    const pem = yield* fs.readFileString(caFile).pipe(
      Effect.mapError((): Problem => ({
        reason: "SourceKubeconfigInvalid",
        retryable: false,
        message: `${where}: certificate-authority file ${caFile} cannot be read here; use certificate-authority-data`
      }))
    )
    source = { ...source, cluster: Kubeconfig.inlineCertificateAuthority(source.cluster, pem) }
  }
  return { source, hash: Kubeconfig.sourceHash(text) }
})

/** The Secret we write: ours merged into what is there, so others' metadata and keys survive. */
const targetSecret = (
  spec: ClusterSpec,
  existing: Option.Option<V1Secret>,
  contents: { readonly data: Record<string, string>; readonly annotations: Record<string, string> }
): V1Secret => {
  const current = Option.getOrUndefined(existing)
  return {
    apiVersion: "v1",
    kind: "Secret",
    type: current?.type ?? "Opaque",
    metadata: {
      ...current?.metadata,
      name: spec.target.name,
      namespace: spec.target.namespace,
      annotations: ManagedKubeconfigSecret.mergeMetadata(current?.metadata?.annotations ?? {}, contents.annotations)
    },
    data: { ...current?.data, ...contents.data }
  }
}

const identity = <A>(a: A): A => a

/** Run `effect` with `background` forked beside it; the background stops when `effect` ends. */
const alongside = (background: Effect.Effect<void>) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.forkChild(background), (fiber) => Effect.ensuring(effect, Fiber.interrupt(fiber)))

const goneReason = (state: AddonState | undefined) =>
  state?._tag === "Absent" || state?._tag === "Deleting" ? state._tag : undefined

/** The add-on's state, or undefined when the hub cannot be read: that must not stop the kubeconfig from being kept alive. */
const observeAddon = (addon: AddonStatus["Service"]) =>
  addon.observe.pipe(
    Effect.catch((error) => Effect.as(Effect.logWarning("cannot read the hub add-on", { error: error.message }), undefined))
  )

/**
 * Look at the world and act once, given the add-on state read at the start. Never fails: every
 * failure is an {@link Outcome}.
 *
 * @category reconciliation
 */
export const observeAndAct = Effect.fn("Provisioner.observeAndAct")(function*(
  spec: ClusterSpec,
  addonState: AddonState | undefined,
  memory: Memory = makeMemory()
) {
  const store = yield* SecretStore
  const addon = yield* AddonStatus
  const issuer = yield* TokenIssuer

  // Only the Secret we wrote, named by its UID (a delete precondition): a same-named Secret that
  // someone else made, or re-created since we read it, survives.
  const remove = (why: "Absent" | "Deleting") =>
    Effect.gen(function*() {
      const found = yield* store.get(spec.target.namespace, spec.target.name)
      if (Option.isNone(found)) return { _tag: "Removed", deleted: false, why } satisfies Outcome
      const uid = found.value.metadata?.uid
      const ours = ManagedKubeconfigSecret.isWrittenByUs(found.value.metadata?.annotations) &&
        (memory.ownedUid === undefined || memory.ownedUid === uid)
      if (!ours) return { _tag: "Removed", deleted: false, why, kept: { uid } } satisfies Outcome
      const deleted = yield* store.delete(spec.target.namespace, spec.target.name, uid === undefined ? undefined : { uid }).pipe(
        Effect.catchIf(KubeError.isReason("Conflict"), () => Effect.succeed("refused" as const))
      )
      if (deleted === "refused") return { _tag: "Removed", deleted: false, why, kept: { uid: undefined } } satisfies Outcome
      return { _tag: "Removed", deleted, why } satisfies Outcome
    }).pipe(
      Effect.catch((error) =>
        Effect.succeed<Outcome>({ _tag: "Failed", problem: { reason: "HostingClusterUnavailable", retryable: true, message: error.message } })
      )
    )

  const gone = goneReason(addonState)
  if (gone !== undefined) return yield* remove(gone)

  const loaded = yield* Effect.result(loadSource(spec))
  if (Result.isFailure(loaded)) return { _tag: "Failed", problem: loaded.failure } satisfies Outcome
  const { hash, source } = loaded.success

  const existing = yield* Effect.result(store.get(spec.target.namespace, spec.target.name))
  if (Result.isFailure(existing)) {
    return { _tag: "Failed", problem: { reason: "HostingClusterUnavailable", retryable: true, message: existing.failure.message } } satisfies Outcome
  }
  let target = existing.success
  let observed = ManagedKubeconfigSecret.observe(
    Option.match(target, {
      onNone: () => undefined,
      onSome: (s) => ({ data: s.data ?? {}, annotations: s.metadata?.annotations ?? {} })
    })
  )
  const now = yield* Clock.currentTimeMillis
  let current = observed._tag === "Present" ? observed : undefined
  if (current !== undefined && memory.ownedUid === undefined && Option.isSome(target)) memory.ownedUid = target.value.metadata?.uid
  const connection = ManagedKubeconfigSecret.connectionHash(source.cluster)
  const decideFor = (lifetime: RefreshPolicy.TokenLifetime) =>
    RefreshPolicy.decide({ now, lifetime, settings: spec.settings, jitterFraction: jitterFraction(hash, lifetime) })

  // Fail closed: a token minted for another identity is withdrawn before anything else is tried,
  // so a failed mint leaves no credential rather than the wrong one.
  const blank = Effect.fnUntraced(function*() {
    memory.held = undefined
    memory.identityCheckAt = undefined
    current = undefined
    if (Option.isNone(target)) return undefined
    const written = yield* Effect.result(store.replace(spec.target.namespace, targetSecret(spec, target, ManagedKubeconfigSecret.blanked)))
    if (Result.isFailure(written)) {
      return {
        reason: "TargetWriteFailed",
        retryable: true,
        message: `cannot blank the token in ${describe(spec.target)}: ${written.failure.message}`
      } satisfies Problem
    }
    target = Option.some(written.success)
    memory.ownedUid = written.success.metadata?.uid
    observed = ManagedKubeconfigSecret.observe({ data: written.success.data ?? {}, annotations: written.success.metadata?.annotations ?? {} })
    yield* Effect.logWarning("blanked the token in place: its identity changed", { cluster: spec.clusterName })
    return undefined
  })

  let reissued: Reissue | undefined
  if (current !== undefined && current.connectionHash !== undefined && current.connectionHash !== connection) {
    const problem = yield* blank()
    if (problem !== undefined) return { _tag: "Failed", problem } satisfies Outcome
    reissued = {
      reason: "ManagedClusterConnectionChanged",
      message: `The source ${describe(spec.source)} now names another server or certificate authority: the token in ${
        describe(spec.target)
      } was blanked and a new one minted through the new connection`
    }
  }
  // The kubeconfig this token should be in: it differs from the Secret's when --token-file-path changed.
  const wanted = current === undefined
    ? undefined
    : Kubeconfig.buildManaged({ cluster: source.cluster, token: current.token, tokenFile: spec.tokenFile })
  const relayout = current !== undefined && current.sourceHash === hash && wanted !== Redacted.value(current.kubeconfig)
  if (current !== undefined && current.sourceHash === hash) {
    memory.held = {
      sourceHash: hash,
      lifetime: current.lifetime,
      token: current.token,
      kubeconfig: Redacted.make(wanted!),
      serviceAccountUid: current.serviceAccountUid,
      connectionHash: current.connectionHash ?? connection
    }
    const decision = decideFor(current.lifetime)
    if (decision._tag === "Wait" && !relayout) {
      const checked = yield* identityCheck(spec, memory, now, { source, sourceHash: hash }, current.serviceAccountUid)
      if (checked._tag === "Same") {
        const until = checked.nextAt === undefined ? decision.until : Math.min(decision.until, checked.nextAt)
        return { _tag: "Fresh", lifetime: current.lifetime, until, kubeconfig: current.kubeconfig } satisfies Outcome
      }
      const problem = yield* blank()
      if (problem !== undefined) return { _tag: "Failed", problem } satisfies Outcome
      const sa = describe(spec.serviceAccount)
      if (checked._tag === "Gone") {
        return {
          _tag: "Failed",
          problem: {
            reason: "ServiceAccountNotFound",
            retryable: true,
            message: `serviceaccount ${sa} was deleted on the managed cluster: the token in ${
              describe(spec.target)
            } was blanked; a new one is minted once the serviceaccount exists again`
          }
        } satisfies Outcome
      }
      reissued = {
        reason: "ServiceAccountRecreated",
        message: `serviceaccount ${sa} was deleted and re-created on the managed cluster (uid ${checked.was} is now ${checked.uid}): the old token in ${
          describe(spec.target)
        } was blanked and a new one minted for the new serviceaccount`
      }
    }
  }

  // Deleted, or not holding the token in hand for this source (a write of it that lost a race
  // with another writer), while that token is good: write it, mint nothing.
  const held = memory.held
  if ((observed._tag !== "Present" || observed.sourceHash !== hash || relayout) && held !== undefined && held.sourceHash === hash) {
    const decision = decideFor(held.lifetime)
    if (decision._tag === "Wait") {
      const contents = ManagedKubeconfigSecret.desired({
        kubeconfig: Redacted.value(held.kubeconfig),
        token: held.token,
        lifetime: held.lifetime,
        sourceHash: hash,
        serviceAccountUid: held.serviceAccountUid,
        connectionHash: held.connectionHash
      })
      const restored = yield* Effect.result(
        Option.isSome(target)
          ? store.replace(spec.target.namespace, targetSecret(spec, target, contents))
          : store.create(spec.target.namespace, targetSecret(spec, Option.none(), contents))
      )
      if (Result.isSuccess(restored)) {
        memory.ownedUid = restored.success.metadata?.uid
        return {
          _tag: "Written",
          created: Option.isNone(target),
          reused: true,
          lifetime: held.lifetime,
          until: decision.until,
          kubeconfig: held.kubeconfig
        } satisfies Outcome
      }
      // A write that lost a race (409) or failed: the next run tries again, with the same token.
      return { _tag: "Failed", problem: { reason: "TargetWriteFailed", retryable: true, message: restored.failure.message } } satisfies Outcome
    }
  }

  const stillValid = current !== undefined && !RefreshPolicy.isExpired(now, current.lifetime)
  // Judged when the attempt ends: a TokenRequest that hung may have outlived the token.
  const pending = (problem: Problem) =>
    Effect.map(Clock.currentTimeMillis, (at): Outcome =>
      current !== undefined && !RefreshPolicy.isExpired(at, current.lifetime)
        ? { _tag: "Stale", lifetime: current.lifetime, problem, kubeconfig: current.kubeconfig }
        : { _tag: "Failed", problem, ...(current === undefined ? {} : { expired: current.lifetime }) })

  // An expired token is reported at its expiry, not when a TokenRequest that may hang for long
  // gives up: now if it has expired already, else by a timer running alongside the request.
  const reported = addonState?._tag === "Present" ? addonState.condition : undefined
  const reportExpired = current !== undefined && reported?.status === "True"
    ? Effect.sleep(Duration.millis(Math.max(0, current.lifetime.expiresAt - now))).pipe(
      Effect.andThen(addon.setCondition({
        status: "False",
        reason: expiredReason,
        message: `The token in ${describe(spec.target)} expired at ${expiresText(current.lifetime)}; requesting a new one`
      })),
      Effect.catch((error) => Effect.logWarning("cannot report the expired token", { error: error.message }))
    )
    : Effect.void
  if (!stillValid) yield* reportExpired

  // After a TokenRequest the apiserver refused (429, 5xx, 403 ...), the next one waits for the
  // backoff's lower bound or its Retry-After, whatever triggers a reconcile meanwhile: a watch
  // event (our own condition write coming back among them) would otherwise send it at once. A
  // changed source is tried at once; a silent apiserver is the probe's business.
  const refused = memory.refused
  if (refused !== undefined && refused.sourceHash === hash && now < refused.notBefore) {
    // Not another failure: the condition and the Event of the refusal stand, and the backoff does not grow.
    // Back by the token's expiry too, which the condition must follow.
    const until = stillValid && current !== undefined ? Math.min(refused.notBefore, current.lifetime.expiresAt) : refused.notBefore
    return { _tag: "Held", lifetime: current?.lifetime, until } satisfies Outcome
  }

  const allowedAt = RefreshPolicy.nextMintAllowedAt(memory.mints, now, memory.mintLimit)
  if (allowedAt > now) {
    return yield* pending({
      reason: "TokenRequestRateLimited",
      retryable: true,
      retryAfterSeconds: Math.ceil((allowedAt - now) / 1000),
      message: `${memory.mintLimit.burst} tokens were minted within ${Duration.format(memory.mintLimit.window)}; the next one waits until ${expiresText({ issuedAt: now, expiresAt: allowedAt })}`
    })
  }

  // Refresh: exactly one TokenRequest, then one write. Routine when only the token's age asks for it.
  const routine = current !== undefined && current.sourceHash === hash && reissued === undefined
  const issued = yield* issuer.request({
    source,
    sourceHash: hash,
    namespace: spec.serviceAccount.namespace,
    name: spec.serviceAccount.name,
    expirationSeconds: RefreshPolicy.expirationSeconds(spec.settings.tokenExpiration)
  }).pipe(
    Effect.tap(() => Effect.logInfo("issued a managed serviceaccount token", { cluster: spec.clusterName })),
    Effect.result,
    stillValid ? alongside(reportExpired) : identity
  )
  memory.unreachable = Result.isFailure(issued) && issued.failure.reason === "Transport" ? source.cluster : undefined
  // Only an issued token is a new credential; failed attempts are the backoff's business.
  if (Result.isSuccess(issued)) {
    memory.mints = [...memory.mints.filter((at) => at > now - Duration.toMillis(memory.mintLimit.window)), now]
  }
  if (Result.isFailure(issued)) {
    const problem = kubeProblem(spec, issued.failure)
    const failures = (memory.refused?.sourceHash === hash ? memory.refused.failures : 0) + 1
    const at = yield* Clock.currentTimeMillis
    const wait = Math.max((problem.retryAfterSeconds ?? 0) * 1000, Backoff.bounds(refusedBackoff, failures - 1).min)
    memory.refused = issued.failure.reason === "Transport" ? undefined : { sourceHash: hash, failures, notBefore: at + wait, problem }
    return yield* pending(problem)
  }
  memory.refused = undefined
  const lifetime = { issuedAt: issued.success.issuedAt, expiresAt: issued.success.expiresAt }
  // The mint established whom the token is for: the next identity check is an interval away.
  const serviceAccountUid = ManagedKubeconfigSecret.serviceAccountUidOf(issued.success.token)
  const interval = identityIntervalMs(spec)
  if (interval !== undefined) {
    memory.identityCheckAt = IdentityCheck.nextCheckAt(lifetime.issuedAt, interval, IdentityCheck.fraction(spec.clusterName, lifetime.issuedAt))
  }

  // The add-on may have been deleted while we asked for the token: look again before writing.
  const goneNow = goneReason(yield* observeAddon(addon))
  if (goneNow !== undefined) return yield* remove(goneNow)

  const kubeconfig = Kubeconfig.buildManaged({ cluster: source.cluster, token: issued.success.token, tokenFile: spec.tokenFile })
  const contents = ManagedKubeconfigSecret.desired({
    kubeconfig,
    token: issued.success.token,
    lifetime,
    sourceHash: hash,
    serviceAccountUid,
    connectionHash: connection
  })
  const secret = targetSecret(spec, target, contents)
  const write = Option.isSome(target)
    ? store.replace(spec.target.namespace, secret)
    : store.create(spec.target.namespace, secret)
  // Held before the write: a write that fails (a conflict with another writer) is retried with
  // this token on the next run, not with a new one.
  memory.held = {
    sourceHash: hash,
    lifetime,
    token: issued.success.token,
    kubeconfig: Redacted.make(kubeconfig),
    serviceAccountUid,
    connectionHash: connection
  }
  const written = yield* Effect.result(write)
  if (Result.isFailure(written)) {
    return yield* pending({ reason: "TargetWriteFailed", retryable: true, message: written.failure.message })
  }
  memory.ownedUid = written.success.metadata?.uid
  const refreshAt = scheduledAt(spec, hash, lifetime)
  return {
    _tag: "Written",
    created: Option.isNone(target),
    routine: routine && Option.isSome(target),
    lifetime,
    until: interval === undefined || memory.identityCheckAt === undefined ? refreshAt : Math.min(refreshAt, memory.identityCheckAt),
    kubeconfig: Redacted.make(kubeconfig),
    ...(reissued === undefined ? {} : { reissued })
  } satisfies Outcome
})

const failed = (spec: ClusterSpec, problem: Problem, retryBy?: number) =>
  new ReconcileFailed({
    cluster: spec.clusterName,
    message: problem.message,
    ...(problem.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: problem.retryAfterSeconds }),
    ...(retryBy === undefined ? {} : { retryBy })
  })

const expiresText = (lifetime: RefreshPolicy.TokenLifetime) => new Date(lifetime.expiresAt).toISOString().replace(/\.\d{3}Z$/, "Z")

/** True reasons that already say the Secret is good; "Fresh" would only add a write. */
const freshReasons: ReadonlySet<string> = new Set([
  "ManagedKubeconfigCreated",
  "ManagedKubeconfigUpdated",
  "ManagedKubeconfigFresh",
  "ServiceAccountRecreated",
  "ManagedClusterConnectionChanged"
])

/**
 * Whether the condition on the hub already says the Secret is good, in words that stay true
 * across rotations. Messages written before 0.1 carried the token's expiry, which a rotation
 * makes false: those are rewritten once.
 */
const saysGood = (current: { readonly status: string; readonly reason: string; readonly message?: string } | undefined) =>
  current?.status === "True" && freshReasons.has(current.reason) && !(current.message ?? "").includes("; token expires at ")

/**
 * The condition an outcome should leave on the hub (undefined: leave it as it is). Messages name
 * no time that changes with every rotation (the expiry is on the generated Secret's
 * annotations), so a routine rotation leaves a good condition as it is and costs no hub request.
 */
export const conditionFor = (
  spec: ClusterSpec,
  outcome: Outcome,
  current: { readonly status: string; readonly reason: string; readonly message?: string } | undefined
): DesiredCondition | undefined => {
  const target = describe(spec.target)
  switch (outcome._tag) {
    case "Removed":
      return undefined
    case "Written":
      if (outcome.reissued !== undefined) {
        return { status: "True", reason: outcome.reissued.reason, message: outcome.reissued.message }
      }
      if (outcome.routine === true && saysGood(current)) return undefined
      return {
        status: "True",
        reason: outcome.created ? "ManagedKubeconfigCreated" : "ManagedKubeconfigUpdated",
        message: `Synced generated managed kubeconfig secret ${target}`
      }
    case "Fresh":
      // Created/Updated already say the Secret is good; rewriting them as "Fresh" would only add a write.
      if (saysGood(current)) return undefined
      return {
        status: "True",
        reason: "ManagedKubeconfigFresh",
        message: `Generated managed kubeconfig secret ${target} is fresh`
      }
    case "Stale":
      return {
        status: "True",
        reason: "ManagedKubeconfigRefreshPending",
        message: `Refreshing the token failed (${outcome.problem.reason}: ${outcome.problem.message}); the current token stays valid until ${expiresText(outcome.lifetime)}`
      }
    case "Failed":
      // An expired token stays the headline (it is what stopped working); the failure is its cause.
      if (outcome.expired !== undefined) {
        return {
          status: "False",
          reason: expiredReason,
          message: `The token in ${target} expired at ${expiresText(outcome.expired)}; requesting a new one failed (${outcome.problem.reason}: ${outcome.problem.message})`
        }
      }
      return { status: "False", reason: outcome.problem.reason, message: outcome.problem.message }
    case "Held":
      return undefined
  }
}

/**
 * Report an outcome (condition, events, metrics, token state) and turn it into the next action.
 *
 * @category reconciliation
 */
export const report = Effect.fn("Provisioner.report")(function*(
  spec: ClusterSpec,
  outcome: Outcome,
  state: AddonState | undefined
) {
  const addon = yield* AddonStatus
  const events = yield* EventRecorder
  const tokens = yield* TokenState
  const regarding = secretRef(spec.target)
  const count = (result: Metrics.RefreshResult) => Metric.update(Metric.withAttributes(Metrics.refreshTotal, { result }), 1)

  const current = state?._tag === "Present" ? state.condition : undefined
  const desired = conditionFor(spec, outcome, current)
  // The same condition again writes only a missing relatedObjects entry.
  const toWrite = desired ?? (state?._tag === "Present" && state.listsRelated === false && (current?.status === "True" || current?.status === "False")
    ? { status: current.status === "True" ? "True" as const : "False" as const, reason: current.reason, message: current.message }
    : undefined)
  if (toWrite !== undefined && state?._tag === "Present") {
    yield* addon.setCondition(toWrite).pipe(
      Effect.catch((error) =>
        events.record({ type: "Warning", reason: "ManagedKubeconfigConditionPatchFailed", message: error.message, regarding })
      )
    )
  }

  const setToken = (lifetime: RefreshPolicy.TokenLifetime | undefined) =>
    Effect.map(Ref.get(tokens), (all) => {
      if (lifetime === undefined) all.delete(spec.clusterName)
      else all.set(spec.clusterName, lifetime)
    })
  // In a process that also runs the consumers (hosted-agent), hand them the kubeconfig directly.
  const generated = yield* Effect.serviceOption(GeneratedKubeconfig)
  if (Option.isSome(generated) && "kubeconfig" in outcome) yield* generated.value.publish(outcome.kubeconfig)

  const now = yield* Clock.currentTimeMillis
  const waitUntil = (until: number) => Controller.requeueAfter(Duration.millis(Math.max(0, Math.ceil(until - now))))

  switch (outcome._tag) {
    case "Removed": {
      yield* setToken(undefined)
      yield* count("skipped")
      if (outcome.kept !== undefined) {
        yield* events.record({
          type: "Normal",
          reason: "ManagedKubeconfigNotDeleted",
          message: `Left secret ${describe(spec.target)} in place${
            outcome.kept.uid === undefined ? "" : ` (uid ${outcome.kept.uid})`
          }: it is not the one tether wrote, although the add-on is ${outcome.why === "Absent" ? "gone" : "being deleted"}`,
          regarding
        })
      }
      if (outcome.deleted) {
        yield* events.record({
          type: "Normal",
          reason: "ManagedKubeconfigCleaned",
          message: `Deleted generated managed kubeconfig secret ${describe(spec.target)}: the add-on is ${outcome.why === "Absent" ? "gone" : "being deleted"}`,
          regarding
        })
      }
      return Controller.awaitChange
    }
    case "Fresh": {
      yield* setToken(outcome.lifetime)
      yield* count("skipped")
      return waitUntil(outcome.until)
    }
    case "Written": {
      yield* setToken(outcome.lifetime)
      yield* count("success")
      // Events on transitions only: a routine rotation that leaves the condition as it is records none.
      if (outcome.routine === true && desired === undefined) return waitUntil(outcome.until)
      yield* events.record({
        type: "Normal",
        reason: outcome.created ? "ManagedKubeconfigCreated" : "ManagedKubeconfigUpdated",
        message: `${outcome.reused === true && outcome.created ? "Re-created" : outcome.created ? "Created" : "Updated"} generated managed kubeconfig secret ${
          describe(spec.target)
        }${outcome.reused === true ? " from the token in hand" : ""}; token expires at ${expiresText(outcome.lifetime)}`,
        regarding
      })
      return waitUntil(outcome.until)
    }
    case "Stale": {
      yield* setToken(outcome.lifetime)
      yield* count("error")
      yield* events.record({ type: "Warning", reason: "ManagedKubeconfigRefreshFailed", message: outcome.problem.message, regarding })
      // Whatever the backoff says, be back when the token expires: the condition must turn then.
      return yield* failed(spec, outcome.problem, outcome.lifetime.expiresAt)
    }
    case "Held": {
      yield* setToken(outcome.lifetime)
      return waitUntil(outcome.until)
    }
    case "Failed": {
      yield* count("error")
      yield* events.record({ type: "Warning", reason: "ManagedKubeconfigSyncFailed", message: outcome.problem.message, regarding })
      if (!outcome.problem.retryable) return Controller.awaitChange
      return yield* failed(spec, outcome.problem)
    }
  }
})

/**
 * Read the add-on once, then `observeAndAct` and `report`: the function the controller runs per key.
 *
 * @category reconciliation
 */
export const reconcile = Effect.fnUntraced(function*(spec: ClusterSpec, memory: Memory = makeMemory()) {
  const state = yield* observeAddon(yield* AddonStatus)
  const outcome = yield* observeAndAct(spec, state, memory)
  return yield* report(spec, outcome, state)
})

