/**
 * Lease arithmetic, pure: who may write a `coordination.k8s.io/v1` Lease now, and what to
 * write. Used by leader election (acquire, renew, release) and by the add-on health Lease (a
 * heartbeat that only moves `renewTime`).
 *
 * Validity of a Lease held by someone else ends at the earliest of two bounds:
 * - `observedAt + leaseDuration`: the time this candidate first saw the current record, on
 *   its own clock. It needs no agreement between clocks (client-go's rule), because the holder
 *   wrote the record before we saw it.
 * - `renewTime + leaseDuration + maxClockSkew`: the holder's own word, trusted within a bound
 *   on how far its clock may be behind ours. It lets a candidate take over a Lease abandoned
 *   long ago at once, instead of watching it for a full duration after start-up.
 * Leaving out `maxClockSkew` drops the second bound; leaving out `observedAt` drops the first;
 * with neither, the holder's word is taken with zero skew.
 *
 * Times are epoch milliseconds in, Kubernetes `MicroTime` strings (RFC 3339, six fraction
 * digits, UTC) out. The holder's own Lease is always renewable, and a Lease without a holder
 * is free.
 *
 * @since 0.1.0
 */
import { Duration } from "effect"

/**
 * The fields of a Lease spec this module reads and writes; other fields of the object are
 * kept by the edge.
 *
 * @since 0.1.0
 * @category models
 */
export interface LeaseSpec {
  readonly holderIdentity?: string | undefined
  readonly leaseDurationSeconds?: number | undefined
  /** MicroTime (RFC 3339). */
  readonly acquireTime?: string | undefined
  /** MicroTime (RFC 3339). */
  readonly renewTime?: string | undefined
  readonly leaseTransitions?: number | undefined
}

/**
 * What a candidate may do with the Lease now.
 *
 * @since 0.1.0
 * @category models
 */
export type Decision =
  /** Nobody holds it (`Free`: no object or no holder) or the holder's time ran out. */
  | { readonly _tag: "Acquire"; readonly reason: "Free" | "Expired" }
  /** It is ours: write a new `renewTime`. */
  | { readonly _tag: "Renew" }
  /** Someone else holds it until `until` (epoch ms, on our clock). */
  | { readonly _tag: "Wait"; readonly holder: string; readonly until: number }

/**
 * @since 0.1.0
 * @category models
 */
export interface DecideInput {
  /** The Lease's spec; undefined when there is no Lease object. */
  readonly spec: LeaseSpec | undefined
  /** Our clock, epoch ms. */
  readonly now: number
  readonly identity: string
  /** When we first saw this exact record ({@link recordKey}), on our clock. */
  readonly observedAt?: number | undefined
  /** How far (ms) the holder's clock may be behind ours; enables the holder's-word bound. */
  readonly maxClockSkew?: number | undefined
}

/**
 * The holder, when there is one (an empty `holderIdentity` means released).
 *
 * @since 0.1.0
 * @category getters
 */
export const holder = (spec: LeaseSpec | undefined): string | undefined => {
  const identity = spec?.holderIdentity
  return identity === undefined || identity === "" ? undefined : identity
}

/**
 * The lease duration in milliseconds; a missing or non-positive duration is zero (expired
 * as soon as written, as client-go reads it).
 *
 * @since 0.1.0
 * @category getters
 */
export const durationMillis = (spec: LeaseSpec): number => {
  const seconds = spec.leaseDurationSeconds
  return seconds === undefined || !Number.isFinite(seconds) || seconds <= 0 ? 0 : seconds * 1000
}

/**
 * A string identifying one written state of the Lease: it changes on every renewal and every
 * change of holder, so "when did I first see this key" is the observation time.
 *
 * @since 0.1.0
 * @category getters
 */
export const recordKey = (spec: LeaseSpec): string =>
  JSON.stringify([
    spec.holderIdentity ?? "",
    spec.renewTime ?? "",
    spec.acquireTime ?? "",
    spec.leaseDurationSeconds ?? 0,
    spec.leaseTransitions ?? 0
  ])

/**
 * When the current holder's claim ends on our clock (epoch ms); undefined when nobody holds
 * it. See the module comment for the two bounds.
 *
 * @since 0.1.0
 * @category getters
 */
export const validUntil = (
  spec: LeaseSpec | undefined,
  options: { readonly observedAt?: number | undefined; readonly maxClockSkew?: number | undefined } = {}
): number | undefined => {
  if (spec === undefined || holder(spec) === undefined) return undefined
  const duration = durationMillis(spec)
  const written = parseMicroTime(spec.renewTime ?? "") ?? parseMicroTime(spec.acquireTime ?? "")
  const useClaim = options.maxClockSkew !== undefined || options.observedAt === undefined
  const bounds: Array<number> = []
  if (options.observedAt !== undefined) bounds.push(options.observedAt + duration)
  if (useClaim) {
    // A holder that wrote no time at all makes no claim we can check.
    bounds.push(written === undefined ? Number.NEGATIVE_INFINITY : written + duration + Math.max(0, options.maxClockSkew ?? 0))
  }
  return Math.min(...bounds)
}

/**
 * Decide what `identity` may do with the Lease at `now`.
 *
 * @since 0.1.0
 * @category deciding
 */
export const decide = (input: DecideInput): Decision => {
  const current = holder(input.spec)
  if (current === undefined) return { _tag: "Acquire", reason: "Free" }
  if (current === input.identity) return { _tag: "Renew" }
  const until = validUntil(input.spec, input) ?? Number.NEGATIVE_INFINITY
  return input.now >= until ? { _tag: "Acquire", reason: "Expired" } : { _tag: "Wait", holder: current, until }
}

/**
 * What a candidate writes.
 *
 * @since 0.1.0
 * @category models
 */
export interface Claim {
  readonly identity: string
  /** Our clock, epoch ms. */
  readonly now: number
  readonly leaseDurationSeconds: number
}

/**
 * The spec that makes `claim.identity` the holder. Taking over an existing Lease from
 * anyone but ourselves counts a transition; a new Lease starts at zero.
 *
 * @since 0.1.0
 * @category building
 */
export const acquire = (current: LeaseSpec | undefined, claim: Claim): LeaseSpec => {
  const time = formatMicroTime(claim.now)
  const transitions = current?.leaseTransitions ?? 0
  return {
    ...current,
    holderIdentity: claim.identity,
    leaseDurationSeconds: claim.leaseDurationSeconds,
    acquireTime: time,
    renewTime: time,
    leaseTransitions: current === undefined || holder(current) === claim.identity ? transitions : transitions + 1
  }
}

/**
 * The spec that extends our hold: a new `renewTime`, everything else kept.
 *
 * @since 0.1.0
 * @category building
 */
export const renew = (current: LeaseSpec, claim: Claim): LeaseSpec => ({
  ...current,
  holderIdentity: claim.identity,
  leaseDurationSeconds: claim.leaseDurationSeconds,
  renewTime: formatMicroTime(claim.now)
})

/**
 * The spec that gives the Lease up: no holder, so any candidate may take it at once.
 *
 * @since 0.1.0
 * @category building
 */
export const release = (current: LeaseSpec): LeaseSpec => ({ ...current, holderIdentity: undefined })

/**
 * The add-on health heartbeat (OCM's lease updater): only `renewTime` and
 * `leaseDurationSeconds` matter to the reader; other fields are kept.
 *
 * @since 0.1.0
 * @category building
 */
export const heartbeat = (
  current: LeaseSpec | undefined,
  beat: { readonly now: number; readonly leaseDurationSeconds: number }
): LeaseSpec => ({
  ...current,
  leaseDurationSeconds: beat.leaseDurationSeconds,
  renewTime: formatMicroTime(beat.now)
})

/**
 * `leaseDurationSeconds` for a duration: whole seconds, rounded up, at least one.
 *
 * @since 0.1.0
 * @category building
 */
export const toLeaseDurationSeconds = (duration: Duration.Duration): number =>
  Math.max(1, Math.ceil(Duration.toMillis(duration) / 1000))

// ---------------------------------------------------------------------------------------------
// MicroTime
// ---------------------------------------------------------------------------------------------

/**
 * Kubernetes `MicroTime` for epoch ms: `2024-05-01T12:00:00.123000Z` (UTC, six fraction
 * digits; sub-millisecond input is truncated). Years 0–9999.
 *
 * @since 0.1.0
 * @category MicroTime
 */
export const formatMicroTime = (epochMillis: number): string => {
  const iso = new Date(Math.floor(epochMillis)).toISOString() // 2024-05-01T12:00:00.123Z
  return `${iso.slice(0, -1)}000Z`
}

const rfc3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/

/**
 * Epoch ms of an RFC 3339 time (any fraction length, `Z` or an offset; fractions below a
 * millisecond are truncated); undefined when it is not one.
 *
 * @since 0.1.0
 * @category MicroTime
 */
export const parseMicroTime = (text: string): number | undefined => {
  const match = rfc3339.exec(text)
  if (match === null) return undefined
  const [, year, month, day, hour, minute, second, fraction, zulu, sign, offsetHours, offsetMinutes] = match
  const n = (s: string | undefined) => Number(s ?? "0")
  if (n(month) < 1 || n(month) > 12 || n(day) < 1 || n(day) > 31 || n(hour) > 23 || n(minute) > 59 || n(second) > 59) {
    return undefined
  }
  const millis = Number((fraction ?? "").padEnd(3, "0").slice(0, 3))
  const base = Date.UTC(n(year), n(month) - 1, n(day), n(hour), n(minute), n(second), millis)
  // Date.UTC maps years 0–99 to 1900–1999; set the year explicitly.
  const utc = new Date(base)
  utc.setUTCFullYear(n(year))
  // No rolling over: 2024-02-30 is not a date.
  if (utc.getUTCMonth() + 1 !== n(month) || utc.getUTCDate() !== n(day)) return undefined
  const offset = zulu !== undefined ? 0 : (sign === "-" ? -1 : 1) * (n(offsetHours) * 60 + n(offsetMinutes)) * 60_000
  const result = utc.getTime() - offset
  return Number.isFinite(result) ? result : undefined
}
