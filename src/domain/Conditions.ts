/**
 * `metav1.Condition` list semantics (apimachinery's `meta.SetStatusCondition`), pure: the
 * time is a parameter. Used for `ManagedKubeconfigReady` on the hub ManagedClusterAddOn,
 * which other controllers write as well, so foreign conditions are kept untouched and in order.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 * @category models
 */
export type ConditionStatus = "True" | "False" | "Unknown"

/**
 * @since 0.1.0
 * @category models
 */
export interface Condition {
  readonly type: string
  readonly status: ConditionStatus
  readonly reason: string
  readonly message: string
  /** RFC3339, second precision, UTC. */
  readonly lastTransitionTime: string
  readonly observedGeneration?: number
}

/**
 * A condition to set; `lastTransitionTime` is derived.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConditionUpdate {
  readonly type: string
  readonly status: ConditionStatus
  readonly reason: string
  readonly message: string
  readonly observedGeneration?: number
}

/**
 * Formats epoch milliseconds as Kubernetes writes times: `2026-01-02T03:04:05Z`
 * (milliseconds truncated).
 *
 * @since 0.1.0
 * @category time
 */
export const formatTime = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z")

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/

/**
 * Parses an RFC3339 timestamp (any offset, optional fraction) into epoch milliseconds;
 * `undefined` when the text is not one, including impossible dates such as February 30th
 * (which `Date.parse` would silently roll over).
 *
 * @since 0.1.0
 * @category time
 */
export const parseTime = (text: string): number | undefined => {
  const m = RFC3339.exec(text)
  if (m === null) return undefined
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number
  ]
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return undefined
  const base = Date.UTC(year, month - 1, day, hour, minute, second)
  if (new Date(base).getUTCDate() !== day || day < 1) return undefined
  const fraction = m[7] === undefined ? 0 : Math.floor(Number(`0${m[7]}`) * 1000)
  const offsetMinutes = m[8] !== undefined ? 0 : (m[9] === "-" ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11]))
  return base + fraction - offsetMinutes * 60_000
}

/**
 * @since 0.1.0
 * @category getters
 */
export const findCondition = (conditions: ReadonlyArray<Condition>, type: string): Condition | undefined =>
  conditions.find((condition) => condition.type === type)

/**
 * Sets `next` in `conditions`, replacing the condition of the same type in place or appending
 * a new one.
 *
 * - `lastTransitionTime` becomes `formatTime(now)` only when the condition is new or its
 *   status flips; a changed reason or message keeps the old time.
 * - `changed` is false when status, reason, message and observedGeneration are all equal; then
 *   the input array itself is returned, so the caller can skip the status write.
 *
 * @since 0.1.0
 * @category combinators
 */
export const setCondition = (
  conditions: ReadonlyArray<Condition>,
  next: ConditionUpdate,
  now: number
): { readonly conditions: ReadonlyArray<Condition>; readonly changed: boolean } => {
  const index = conditions.findIndex((condition) => condition.type === next.type)
  const existing = conditions[index]
  const build = (lastTransitionTime: string): Condition => ({
    type: next.type,
    status: next.status,
    reason: next.reason,
    message: next.message,
    lastTransitionTime,
    ...(next.observedGeneration === undefined ? {} : { observedGeneration: next.observedGeneration })
  })
  if (existing === undefined) {
    return { conditions: [...conditions, build(formatTime(now))], changed: true }
  }
  const unchanged = existing.status === next.status &&
    existing.reason === next.reason &&
    existing.message === next.message &&
    existing.observedGeneration === next.observedGeneration
  if (unchanged) return { conditions, changed: false }
  const updated = build(existing.status === next.status ? existing.lastTransitionTime : formatTime(now))
  return { conditions: conditions.map((condition, i) => (i === index ? updated : condition)), changed: true }
}
