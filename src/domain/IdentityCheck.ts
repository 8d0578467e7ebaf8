/**
 * When a pair's periodic identity check (one read of the managed ServiceAccount's UID) is due,
 * pure. Two rules:
 * - never two checks of one pair closer than the interval: the next is due between one and one
 *   and a half intervals after the last one (or after the mint that established the identity);
 * - spread: the extra half interval is a per-pair, per-check fraction from a hash, and the first
 *   check after a start lands anywhere in the first interval, so 1,000 pairs minted or started in
 *   the same second do not check in the same second.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"

/** The share of an interval the jitter adds at most after the interval itself. @category constants */
export const spread = 0.5

/**
 * A stable fraction in [0, 1) for a pair and an instant (the last check or mint).
 *
 * @category jitter
 */
export const fraction = (key: string, at: number): number =>
  Number.parseInt(createHash("sha256").update(`${key}@${at}`).digest("hex").slice(0, 8), 16) / 2 ** 32

/**
 * The first check after a start with no check remembered: somewhere in the first interval.
 *
 * @category schedule
 */
export const firstCheckAt = (startedAt: number, intervalMs: number, jitter: number): number =>
  startedAt + Math.floor(clamp(jitter) * intervalMs)

/**
 * The next check after one done (or a mint) at `last`: in [last + interval, last + 1.5 interval).
 *
 * @category schedule
 */
export const nextCheckAt = (last: number, intervalMs: number, jitter: number): number =>
  last + intervalMs + Math.floor(clamp(jitter) * spread * intervalMs)

const clamp = (x: number) => (Number.isFinite(x) ? Math.min(Math.max(x, 0), 0.999999) : 0)
