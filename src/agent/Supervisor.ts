/**
 * Several components in one process, each restarted on its own when it fails.
 *
 * A component is started in a scope of its own and then watched: `start` resolves once the
 * component serves (its listener bound, its loop forked) and returns the effect that fails when
 * it stops working (a lost listener, a defect in its loop). The supervisor then closes that
 * scope, logs why, counts a restart, waits a capped, jittered exponential backoff (reset after
 * the component has run for `resetAfter`) and starts it again. The other components keep
 * running. Only a component that cannot start at all the first time (a port in use, credentials
 * that cannot be read), or whose restart fails with a terminal error (`retryable: false`, such as
 * its port taken meanwhile), fails the whole run, after stopping the others, so that the pod
 * restarts with a clear error instead of serving half of its components.
 *
 * Each component shows on `/readyz` under its own name (failing while it starts or waits to
 * restart, with the reason) and in `tether_component_up` and `tether_component_restarts_total`.
 * On interruption (SIGTERM) the components stop one after the other in reverse order of the
 * list, so that the listeners close and the relays drain before the Lease is released and the
 * provisioner stops.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Metric, Random, Schema, type Scope } from "effect"
import * as Backoff from "../domain/Backoff.ts"
import * as Metrics from "../observability/Metrics.ts"
import { notReady, Probes } from "../observability/Probes.ts"

/** @category models */
export interface Component<R> {
  /** Name on `/readyz`, in logs and in metrics. */
  readonly name: string
  /**
   * Start in the given scope and resolve once serving; the returned effect fails (or dies) when
   * the component stops working. It should never succeed; if it does, that counts as a failure.
   */
  readonly start: Effect.Effect<Effect.Effect<unknown, unknown>, unknown, R | Scope.Scope>
}

/** @category models */
export interface Options {
  /** Delays between restarts; default 1 s doubling up to 1 min, ±20%. */
  readonly backoff?: Backoff.Policy
  /** A component that ran this long before failing restarts after the first delay again; default 2 min. */
  readonly resetAfter?: Duration.Input
}

/**
 * A component could not start at all; the process should exit non-zero.
 *
 * @category errors
 */
export class ComponentStartError extends Schema.TaggedError<ComponentStartError>()("ComponentStartError", {
  component: Schema.String,
  message: Schema.String
}) {}

/** What a supervised component is doing. @category models */
export type Status =
  | { readonly _tag: "Starting" }
  | { readonly _tag: "Running"; readonly since: number }
  | { readonly _tag: "Restarting"; readonly reason: string; readonly attempt: number; readonly at: number }

/**
 * Whether a failure says retrying cannot help: its error has `retryable: false` (a port taken
 * by another process, an address not on this host).
 */
export const isTerminal = (cause: Cause.Cause<unknown>): boolean => {
  if (Cause.hasInterruptsOnly(cause)) return false
  const error = Cause.squash(cause)
  return typeof error === "object" && error !== null && (error as { readonly retryable?: unknown }).retryable === false
}

/** A readable reason from a failure: the error's message, never a stack. */
export const describeCause = (cause: Cause.Cause<unknown>): string => {
  if (Cause.hasInterruptsOnly(cause)) return "interrupted"
  const error = Cause.squash(cause)
  if (typeof error === "object" && error !== null && typeof (error as { message?: unknown }).message === "string") {
    return (error as { message: string }).message
  }
  return String(error)
}

const defaultBackoff = Backoff.policy("1 second", "1 minute")

/**
 * Run `components` until interrupted; fails only when one cannot start the first time. Needs
 * {@link Probes} for the per-component readiness checks.
 *
 * @category running
 */
export const run = <R>(components: ReadonlyArray<Component<R>>, options: Options = {}) =>
  Effect.gen(function*() {
    const probes = yield* Probes
    const backoff = options.backoff ?? defaultBackoff
    const resetAfter = Duration.toMillis(Duration.fromInputUnsafe(options.resetAfter ?? "2 minutes"))
    const fatal = yield* Deferred.make<never, ComponentStartError>()
    const statuses = new Map<string, Status>()
    const scope = yield* Effect.scope

    const supervise = (component: Component<R>) => {
      const { name } = component
      const up = Metric.withAttributes(Metrics.componentUp, { component: name })
      const restarts = Metric.withAttributes(Metrics.componentRestartsTotal, { component: name })
      const setStatus = (status: Status) =>
        Effect.andThen(Effect.sync(() => void statuses.set(name, status)), Metric.update(up, status._tag === "Running" ? 1 : 0))

      /** One life of the component, in a scope of its own: start, watch, stop; why it ended. */
      const life = Effect.scoped(Effect.gen(function*() {
        const started = yield* Effect.exit(component.start)
        if (Exit.isFailure(started)) {
          return { _tag: "StartFailed", reason: describeCause(started.cause), terminal: isTerminal(started.cause) } as const
        }
        const since = yield* Clock.currentTimeMillis
        yield* setStatus({ _tag: "Running", since })
        const ended = yield* Effect.exit(started.value)
        const ranFor = (yield* Clock.currentTimeMillis) - since
        const reason = Exit.isSuccess(ended) ? "stopped unexpectedly" : describeCause(ended.cause)
        return { _tag: "Failed", reason, ranFor } as const
      }))

      return Effect.gen(function*() {
        yield* setStatus({ _tag: "Starting" })
        let everStarted = false
        let attempt = 0
        while (true) {
          const ended = yield* life
          // A restart that fails for good (the port taken meanwhile) ends the run like a first start.
          if (ended._tag === "StartFailed" && (!everStarted || ended.terminal)) {
            yield* Effect.logError("component cannot start", { component: name, error: ended.reason })
            yield* Deferred.fail(fatal, new ComponentStartError({ component: name, message: ended.reason }))
            return
          }
          if (ended._tag === "Failed") {
            everStarted = true
            if (ended.ranFor >= resetAfter) attempt = 0
          }
          const delay = Backoff.delay(backoff, attempt, yield* Random.next)
          attempt++
          yield* setStatus({ _tag: "Restarting", reason: ended.reason, attempt, at: yield* Clock.currentTimeMillis })
          yield* Metric.update(restarts, 1)
          yield* Effect.logError(ended._tag === "Failed" ? "component failed; restarting it" : "component failed to restart; retrying", {
            component: name,
            error: ended.reason,
            restartIn: Duration.format(delay)
          })
          yield* Effect.sleep(delay)
          yield* Effect.logInfo("restarting component", { component: name, attempt })
        }
      }).pipe(Effect.annotateLogs({ component: name }))
    }

    for (const { name } of components) {
      yield* probes.addReadinessCheck(name, Effect.suspend(() => {
        const status = statuses.get(name)
        if (status === undefined || status._tag === "Starting") return notReady("starting")
        if (status._tag === "Restarting") return notReady(`restarting after a failure (attempt ${status.attempt}): ${status.reason}`)
        return Effect.void
      }))
    }

    const running: Array<readonly [string, Fiber.Fiber<void>]> = []
    for (const component of components) running.push([component.name, yield* Effect.forkIn(supervise(component), scope)])
    // Stop in reverse order: front doors first, the provisioner last.
    const stopAll = Effect.forEach(running.toReversed(), ([name, fiber]) =>
      Effect.andThen(
        Effect.logInfo("stopping component", { component: name }),
        Fiber.interrupt(fiber)
      ), { discard: true })
    return yield* Deferred.await(fatal).pipe(Effect.ensuring(stopAll))
  })

/**
 * A component given as a scoped effect that runs until it fails, such as a controller loop: it
 * counts as started once forked.
 *
 * @category constructors
 */
export const fromLoop = <R>(name: string, loop: Effect.Effect<unknown, unknown, R | Scope.Scope>): Component<R> => ({
  name,
  start: Effect.map(Effect.forkScoped(loop), (fiber) => Fiber.join(fiber))
})
