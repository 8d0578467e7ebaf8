/**
 * Gives V8's young generation back once the process has gone idle.
 *
 * Under load V8 grows the young generation (up to `--max-semi-space-size`, 16 MiB per
 * semi-space where tether ships) so that the objects of requests in flight die young instead of
 * being copied and promoted; afterwards it keeps that size, and the resident set with it.
 * Capping it at 1 MiB kept an idle process small but cost a busy proxy dearly: at 128 concurrent
 * requests the service proxy served 1.36-1.39x as many requests per second without that cap
 * (README, Benchmarks). So V8 sizes it under load, and when the event loop has been nearly idle
 * for a whole check period while the young generation is above its floor, one memory-reducing
 * collection shrinks it back. V8's own memory reducer does not do this for a process that is
 * merely idle.
 *
 * The period is minutes, not seconds: traffic that comes back after a trim finds a small young
 * generation, and until V8 has grown it again its objects are copied and promoted, which brings
 * full collections. With a 15 s period, a burst of 32 connections after 20 s of idleness had a
 * p99 of 20-29 ms against 12-14 ms without the trim (hand-run rounds, README, Benchmarks).
 * Shenandoah gives memory back after five idle minutes for the same reason.
 *
 * The collection is V8's `gc` function, obtained once by turning `--expose-gc` on for the
 * creation of one context and off again ({@link collector}): the flags' hash, which V8's code
 * cache is checked against, is the same before and after.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Layer, Schedule } from "effect"
import { performance, type EventLoopUtilization } from "node:perf_hooks"
import * as V8 from "node:v8"
import * as Vm from "node:vm"

/** @category models */
export interface Options {
  /** How often the process is looked at; a trim needs one whole period of idleness. */
  readonly period: Duration.Input
  /** Event-loop utilization (0-1) below which a period counts as idle. */
  readonly idleBelow: number
  /** The young generation's size (bytes) at or below which there is nothing to give back. */
  readonly floorBytes: number
}

/** @category models */
export const defaults: Options = { period: Duration.minutes(5), idleBelow: 0.02, floorBytes: 2 * 1024 * 1024 }

/** What one look at the process sees. @category models */
export interface Sample {
  /** Event-loop utilization over the last period, 0-1. */
  readonly utilization: number
  /** The young generation's current size, bytes. */
  readonly youngBytes: number
}

/**
 * Trim when the last period was idle and the young generation has grown past its floor: a busy
 * process keeps what it uses, and a trimmed one is not collected again until load grows it.
 *
 * @category policy
 */
export const shouldTrim = (sample: Sample, options: Options): boolean =>
  sample.utilization < options.idleBelow && sample.youngBytes > options.floorBytes

/** The young generation's size now, bytes. @category sampling */
export const youngBytes = (): number =>
  V8.getHeapSpaceStatistics().find((space) => space.space_name === "new_space")?.space_size ?? 0

type Gc = (options: { readonly type: "major"; readonly execution: "sync"; readonly flavor: "last-resort" }) => void

/**
 * A memory-reducing full collection (V8's "last resort" one, which also shrinks the young
 * generation), or undefined when V8 does not offer it. Uses the process's `gc` when it was
 * started with `--expose-gc`.
 *
 * @category constructors
 */
export const collector = (): (() => void) | undefined => {
  let gc = (globalThis as { gc?: Gc }).gc
  if (gc === undefined) {
    const tag = V8.cachedDataVersionTag()
    V8.setFlagsFromString("--expose-gc")
    try {
      gc = Vm.runInNewContext("gc") as Gc | undefined
    } finally {
      V8.setFlagsFromString("--no-expose-gc")
    }
    // Should turning the flag back off ever leave a different hash, the code cache would be
    // rejected from then on: do without the trim rather than pay that.
    if (V8.cachedDataVersionTag() !== tag) return undefined
  }
  if (typeof gc !== "function") return undefined
  const run = gc
  return () => run({ type: "major", execution: "sync", flavor: "last-resort" })
}

/** What the trim looks at and does; {@link layer} uses this process's. @category models */
export interface Target {
  /** Event-loop utilization since the previous call, 0-1. */
  readonly utilization: () => number
  /** The young generation's size now, bytes. */
  readonly youngBytes: () => number
  readonly trim: () => void
}

/**
 * Look at `target` every `period` (the first time one period after the start) and trim when
 * {@link shouldTrim} says so, until the scope closes.
 *
 * @category constructors
 */
export const start = (target: Target, options: Options = defaults) => {
  const look = Effect.suspend(() => {
    const before = target.youngBytes()
    if (!shouldTrim({ utilization: target.utilization(), youngBytes: before }, options)) return Effect.void
    target.trim()
    return Effect.logDebug("young generation given back", { fromMiB: mib(before), toMiB: mib(target.youngBytes()) })
  })
  const period = Duration.fromInputUnsafe(options.period)
  return Effect.forkScoped(Effect.andThen(Effect.sleep(period), Effect.repeat(look, Schedule.spaced(period))))
}

/** This process: event-loop utilization since the last sample, and its young generation. */
const thisProcess = (trim: () => void): Target => {
  let previous: EventLoopUtilization = performance.eventLoopUtilization()
  return {
    utilization: () => {
      const now = performance.eventLoopUtilization()
      const since = performance.eventLoopUtilization(now, previous).utilization
      previous = now
      return since
    },
    youngBytes,
    trim
  }
}

/**
 * Trim this process ({@link start}) for the life of the layer; nothing where V8 offers no
 * collector.
 *
 * @category layers
 */
export const layer = (options: Options = defaults): Layer.Layer<never> =>
  Layer.effectDiscard(Effect.gen(function*() {
    const trim = collector()
    if (trim === undefined) return yield* Effect.logDebug("heap trim unavailable: V8 offers no collector")
    yield* start(thisProcess(trim), options)
  }))

const mib = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10
