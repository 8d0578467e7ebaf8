/**
 * The add-on health Lease: OCM's availability signal for an add-on in Lease health mode.
 *
 * This is a heartbeat, not leader election. Every `renewInterval` (plus up to 25% jitter, as
 * OCM's lease updater) the agent runs its {@link HealthChecks}; only when all pass does it
 * write `renewTime = now` and `leaseDurationSeconds` to the Lease (creating it when missing).
 * When a check fails it writes nothing, so the registration agent, which reads the Lease, sees
 * it go stale and marks the add-on unavailable after its grace period (five lease durations).
 * When the checks pass again the next period renews, and the add-on becomes available again.
 *
 * Where the Lease lives is the caller's choice of {@link LeaseStore}: in hosted mode the
 * hosting cluster (the registration agent reads it there for add-ons running outside the
 * managed cluster), otherwise the managed cluster. The code is the same.
 *
 * Logs are written on transitions only (healthy to failing, a different set of failing checks,
 * failing to healthy, write errors that change), not once per period.
 *
 * @since 0.1.0
 */
import { Clock, Context, Duration, Effect, Fiber, Layer, Metric, Option, Random, Ref } from "effect"
import * as LeaseState from "../domain/LeaseState.ts"
import * as KubeError from "../kube/KubeError.ts"
import { type LeaseKey, LeaseStore } from "../kube/LeaseStore.ts"
import * as Metrics from "../observability/Metrics.ts"
import { notReady, Probes } from "../observability/Probes.ts"
import { type Failure, HealthChecks } from "./HealthChecks.ts"

/** @category models */
export interface Options {
  readonly namespace: string
  /** The Lease name: the add-on name (`cluster-proxy`). */
  readonly name: string
  /** Written as `leaseDurationSeconds` (whole seconds, rounded up); OCM uses 60 s. */
  readonly leaseDuration: Duration.Duration
  /** OCM uses 60 s. */
  readonly renewInterval: Duration.Duration
  /** Each wait is `renewInterval × (1 + jitter × random)`; default 0.25, as OCM. */
  readonly jitter?: number
  /**
   * The first period waits for this (at most one `renewInterval`): in hosted-agent the
   * provisioner's in-process hand-off of the managed token, which the token check reads. Without
   * it the first check runs before the hand-off, fails, and the first write comes one whole
   * period late.
   */
  readonly firstPeriodAfter?: Effect.Effect<unknown>
}

/** What one update period did. @category models */
export type Outcome =
  | { readonly _tag: "Renewed"; readonly renewTime: string }
  | { readonly _tag: "Unhealthy"; readonly failures: ReadonlyArray<Failure> }
  | { readonly _tag: "Failed"; readonly error: string }

/** @category services */
export class AddonLease extends Context.Service<AddonLease, {
  readonly lease: LeaseKey
  /** The outcome of the latest update period; None before the first one ends. */
  readonly last: Effect.Effect<Option.Option<Outcome>>
  /** Ends (with its cause) only if the heartbeat loop stops, which is a defect (a supervisor restarts it). */
  readonly failure: Effect.Effect<never>
}>()("tether/addonagent/AddonLease") {
  /**
   * The heartbeat, running in the layer's scope. Needs a {@link LeaseStore} and
   * {@link HealthChecks}; registers an `addon-lease` readiness check when {@link Probes} is
   * present (failing while the Lease cannot be written).
   */
  static readonly layer = (options: Options) => Layer.effect(AddonLease, make(options))
}

const describeFailures = (failures: ReadonlyArray<Failure>) => failures.map((f) => `${f.name}: ${f.reason}`).join("; ")
const failingNames = (failures: ReadonlyArray<Failure>) => failures.map((f) => f.name).sort().join(",")

/** Log only what changed since the previous period. */
const report = (previous: Option.Option<Outcome>, next: Outcome): Effect.Effect<void> => {
  const before = Option.getOrUndefined(previous)
  switch (next._tag) {
    case "Unhealthy":
      return before?._tag === "Unhealthy" && failingNames(before.failures) === failingNames(next.failures)
        ? Effect.void
        : Effect.logWarning("a health check failed; not renewing the add-on Lease until all pass", {
          failures: describeFailures(next.failures)
        })
    case "Failed":
      return before?._tag === "Failed" && before.error === next.error
        ? Effect.void
        : Effect.logWarning("cannot renew the add-on Lease; will retry next period", { error: next.error })
    case "Renewed":
      return before === undefined
        ? Effect.logInfo("add-on Lease renewed; renewing while the health checks pass")
        : before._tag === "Unhealthy"
        ? Effect.logInfo("the health checks pass again; renewing the add-on Lease")
        : before._tag === "Failed"
        ? Effect.logInfo("the add-on Lease is renewed again")
        : Effect.void
  }
}

/**
 * Start the heartbeat in the current scope.
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const store = yield* LeaseStore
  const checks = yield* HealthChecks
  const probes = yield* Effect.serviceOption(Probes)
  const key: LeaseKey = { namespace: options.namespace, name: options.name }
  const leaseDurationSeconds = LeaseState.toLeaseDurationSeconds(options.leaseDuration)
  const jitter = Math.min(1, Math.max(0, options.jitter ?? 0.25))
  const annotate = Effect.annotateLogs({ lease: `${key.namespace}/${key.name}`, cluster: store.cluster })
  const last = yield* Ref.make<Option.Option<Outcome>>(Option.none())

  const write = Effect.gen(function*() {
    const current = yield* store.get(key)
    const now = yield* Clock.currentTimeMillis
    const beat = { now, leaseDurationSeconds }
    const written = Option.isNone(current)
      ? yield* store.create(key, LeaseState.heartbeat(undefined, beat))
      : yield* store.replace(current.value, LeaseState.heartbeat(current.value.spec, beat))
    yield* Metric.update(Metrics.addonLeaseRenewTimestampSeconds, now / 1000)
    return written.spec.renewTime ?? ""
  }).pipe(
    // Someone else wrote in between (a second replica, kubectl): read again and write ours.
    Effect.retry({ times: 2, while: KubeError.isReason("Conflict") })
  )

  const update = Effect.gen(function*() {
    const failures = yield* checks.run
    for (const name of checks.names) {
      const passed = failures.every((f) => f.name !== name)
      yield* Metric.update(Metric.withAttributes(Metrics.addonHealthCheckStatus, { check: name }), passed ? 1 : 0)
    }
    if (failures.length > 0) return { _tag: "Unhealthy", failures } satisfies Outcome as Outcome
    return yield* write.pipe(
      Effect.timeout(options.renewInterval),
      Effect.match({
        onSuccess: (renewTime): Outcome => ({ _tag: "Renewed", renewTime }),
        onFailure: (error): Outcome => ({ _tag: "Failed", error: error.message })
      })
    )
  })

  const period = Effect.gen(function*() {
    const outcome = yield* update
    const previous = yield* Ref.getAndSet(last, Option.some(outcome))
    yield* report(previous, outcome).pipe(annotate)
    const result: Metrics.AddonLeaseResult = outcome._tag === "Renewed"
      ? "renewed"
      : outcome._tag === "Unhealthy"
      ? "unhealthy"
      : "error"
    yield* Metric.update(Metric.withAttributes(Metrics.addonLeaseUpdatesTotal, { result }), 1)
  })

  const pause = Effect.flatMap(
    Random.nextBetween(1, 1 + jitter),
    (factor) => Effect.sleep(Duration.millis(Duration.toMillis(options.renewInterval) * factor))
  )

  if (Option.isSome(probes)) {
    yield* probes.value.addReadinessCheck(
      "addon-lease",
      Effect.flatMap(Ref.get(last), (outcome) =>
        Option.isSome(outcome) && outcome.value._tag === "Failed"
          ? notReady(`cannot write the add-on Lease: ${outcome.value.error}`)
          : Effect.void)
    )
  }
  yield* Effect.logInfo("add-on Lease heartbeat started", {
    checks: checks.names.join(",") || "none",
    renewInterval: Duration.format(options.renewInterval),
    leaseDurationSeconds
  }).pipe(annotate)
  const first = options.firstPeriodAfter === undefined
    ? Effect.void
    : Effect.timeoutOption(options.firstPeriodAfter, options.renewInterval)
  const loop = yield* first.pipe(
    Effect.andThen(period.pipe(Effect.andThen(pause), Effect.forever)),
    Effect.forkScoped
  )

  return AddonLease.of({ lease: key, last: Ref.get(last), failure: Effect.andThen(Fiber.join(loop), Effect.never) })
})
