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
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as ManagedKubeconfigSecret from "../domain/ManagedKubeconfigSecret.ts"
import * as RefreshPolicy from "../domain/RefreshPolicy.ts"
import * as Controller from "../kube/Controller.ts"
import { EventRecorder, type ObjectReference } from "../kube/EventRecorder.ts"
import { GeneratedKubeconfig } from "../kube/GeneratedKubeconfig.ts"
import type * as KubeError from "../kube/KubeError.ts"
import * as Metrics from "../observability/Metrics.ts"
import { type AddonState, AddonStatus, type DesiredCondition } from "./AddonStatus.ts"
import { SecretStore } from "./SecretStore.ts"
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
}

/** The last token the provisioner knows to be in place, per cluster (gauges and readiness). @category services */
export class TokenState extends Context.Service<TokenState, Ref.Ref<ReadonlyMap<string, RefreshPolicy.TokenLifetime>>>()(
  "tether/provisioner/TokenState"
) {
  static readonly layer = Layer.effect(TokenState, Ref.make<ReadonlyMap<string, RefreshPolicy.TokenLifetime>>(new Map()))
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
}

/** @category constructors */
export const makeMemory = (mintLimit: RefreshPolicy.MintLimit = RefreshPolicy.defaultMintLimit): Memory => ({
  held: undefined,
  mints: [],
  mintLimit,
  unreachable: undefined,
  refused: undefined
})

/** What one reconcile found and did. @category models */
export type Outcome =
  | { readonly _tag: "Removed"; readonly deleted: boolean; readonly why: "Absent" | "Deleting" }
  | { readonly _tag: "Fresh"; readonly lifetime: RefreshPolicy.TokenLifetime; readonly until: number; readonly kubeconfig: Redacted.Redacted<string> }
  | {
    readonly _tag: "Written"
    readonly created: boolean
    /** Written from the token in hand; no TokenRequest. */
    readonly reused?: boolean
    readonly lifetime: RefreshPolicy.TokenLifetime
    readonly until: number
    readonly kubeconfig: Redacted.Redacted<string>
  }
  | { readonly _tag: "Stale"; readonly lifetime: RefreshPolicy.TokenLifetime; readonly problem: Problem; readonly kubeconfig: Redacted.Redacted<string> }
  | { readonly _tag: "Failed"; readonly problem: Problem }
  /** A refresh is due but held back after a refused TokenRequest; nothing to report until `until`. */
  | { readonly _tag: "Held"; readonly lifetime: RefreshPolicy.TokenLifetime | undefined; readonly until: number }

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

  const remove = (why: "Absent" | "Deleting") =>
    store.delete(spec.target.namespace, spec.target.name).pipe(
      Effect.map((deleted): Outcome => ({ _tag: "Removed", deleted, why })),
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
  const observed = ManagedKubeconfigSecret.observe(
    Option.match(existing.success, {
      onNone: () => undefined,
      onSome: (s) => ({ data: s.data ?? {}, annotations: s.metadata?.annotations ?? {} })
    })
  )
  const now = yield* Clock.currentTimeMillis
  const current = observed._tag === "Present" ? observed : undefined
  const decideFor = (lifetime: RefreshPolicy.TokenLifetime) =>
    RefreshPolicy.decide({ now, lifetime, settings: spec.settings, jitterFraction: jitterFraction(hash, lifetime) })
  // The kubeconfig this token should be in: it differs from the Secret's when --token-file-path changed.
  const wanted = current === undefined
    ? undefined
    : Kubeconfig.buildManaged({ cluster: source.cluster, token: current.token, tokenFile: spec.tokenFile })
  const relayout = current !== undefined && current.sourceHash === hash && wanted !== Redacted.value(current.kubeconfig)
  if (current !== undefined && current.sourceHash === hash) {
    memory.held = { sourceHash: hash, lifetime: current.lifetime, token: current.token, kubeconfig: Redacted.make(wanted!) }
    const decision = decideFor(current.lifetime)
    if (decision._tag === "Wait" && !relayout) {
      return { _tag: "Fresh", lifetime: current.lifetime, until: decision.until, kubeconfig: current.kubeconfig } satisfies Outcome
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
        sourceHash: hash
      })
      const restored = yield* Effect.result(
        Option.isSome(existing.success)
          ? store.replace(spec.target.namespace, targetSecret(spec, existing.success, contents))
          : store.create(spec.target.namespace, targetSecret(spec, Option.none(), contents))
      )
      if (Result.isSuccess(restored)) {
        return {
          _tag: "Written",
          created: Option.isNone(existing.success),
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
        : { _tag: "Failed", problem })

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
    const until = stillValid ? Math.min(refused.notBefore, current.lifetime.expiresAt) : refused.notBefore
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

  // Refresh: exactly one TokenRequest, then one write.
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

  // The add-on may have been deleted while we asked for the token: look again before writing.
  const goneNow = goneReason(yield* observeAddon(addon))
  if (goneNow !== undefined) return yield* remove(goneNow)

  const kubeconfig = Kubeconfig.buildManaged({ cluster: source.cluster, token: issued.success.token, tokenFile: spec.tokenFile })
  const contents = ManagedKubeconfigSecret.desired({ kubeconfig, token: issued.success.token, lifetime, sourceHash: hash })
  const secret = targetSecret(spec, existing.success, contents)
  const write = Option.isSome(existing.success)
    ? store.replace(spec.target.namespace, secret)
    : store.create(spec.target.namespace, secret)
  // Held before the write: a write that fails (a conflict with another writer) is retried with
  // this token on the next run, not with a new one.
  memory.held = { sourceHash: hash, lifetime, token: issued.success.token, kubeconfig: Redacted.make(kubeconfig) }
  const written = yield* Effect.result(write)
  if (Result.isFailure(written)) {
    return yield* pending({ reason: "TargetWriteFailed", retryable: true, message: written.failure.message })
  }
  return {
    _tag: "Written",
    created: Option.isNone(existing.success),
    lifetime,
    until: scheduledAt(spec, hash, lifetime),
    kubeconfig: Redacted.make(kubeconfig)
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

/** The condition an outcome should leave on the hub (undefined: leave it as it is). */
export const conditionFor = (spec: ClusterSpec, outcome: Outcome, current: { status: string; reason: string } | undefined): DesiredCondition | undefined => {
  const target = describe(spec.target)
  switch (outcome._tag) {
    case "Removed":
      return undefined
    case "Written":
      return {
        status: "True",
        reason: outcome.created ? "ManagedKubeconfigCreated" : "ManagedKubeconfigUpdated",
        message: `Synced generated managed kubeconfig secret ${target}; token expires at ${expiresText(outcome.lifetime)}`
      }
    case "Fresh":
      // Created/Updated already say the Secret is good; rewriting them as "Fresh" would only add a write.
      if (current?.status === "True" && ["ManagedKubeconfigCreated", "ManagedKubeconfigUpdated", "ManagedKubeconfigFresh"].includes(current.reason)) {
        return undefined
      }
      return {
        status: "True",
        reason: "ManagedKubeconfigFresh",
        message: `Generated managed kubeconfig secret ${target} is fresh; token expires at ${expiresText(outcome.lifetime)}`
      }
    case "Stale":
      return {
        status: "True",
        reason: "ManagedKubeconfigRefreshPending",
        message: `Refreshing the token failed (${outcome.problem.reason}: ${outcome.problem.message}); the current token stays valid until ${expiresText(outcome.lifetime)}`
      }
    case "Failed":
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
  if (desired !== undefined && state?._tag === "Present") {
    yield* addon.setCondition(desired).pipe(
      Effect.catch((error) =>
        events.record({ type: "Warning", reason: "ManagedKubeconfigConditionPatchFailed", message: error.message, regarding })
      )
    )
  }

  const setToken = (lifetime: RefreshPolicy.TokenLifetime | undefined) =>
    Ref.update(tokens, (all) => {
      const next = new Map(all)
      if (lifetime === undefined) next.delete(spec.clusterName)
      else next.set(spec.clusterName, lifetime)
      return next
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

