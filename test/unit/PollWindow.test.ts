/**
 * The adaptive busy-polling window: within bounds whatever the gaps, growing only on gaps polling
 * would have caught and shrinking only on the others, at the maximum after four close events and
 * off after four far-apart ones, and one outlier costing half the window.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import * as PollWindow from "../../src/domain/PollWindow.ts"

const Max = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10_000 }))
/** Gaps between events in microseconds: from back to back to a minute. */
const Gap = Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 60_000_000 }))
const Gaps = Schema.Array(Gap).check(Schema.isMaxLength(64))

const run = (max: number, gaps: ReadonlyArray<number>, from = 0): number =>
  gaps.reduce((window, gap) => PollWindow.next(window, gap, max), from)

describe("PollWindow", () => {
  it.prop("stays within [0, max] whatever the gaps", [Max, Gaps], ([max, gaps]) => {
    let window = 0
    for (const gap of gaps) {
      window = PollWindow.next(window, gap, max)
      assert.isAtLeast(window, 0)
      assert.isAtMost(window, max)
    }
  })

  it.prop("grows (or stays at the maximum) after a gap polling would have caught, shrinks after one it would not", [Max, Gaps, Gap], ([max, gaps, gap]) => {
    const before = run(max, gaps)
    const after = PollWindow.next(before, gap, max)
    if (gap <= max) {
      assert.isTrue(after > before || after === max, `${before} -> ${after} after a gap of ${gap} (max ${max})`)
    } else {
      assert.isTrue(after < before || after === 0, `${before} -> ${after} after a gap of ${gap} (max ${max})`)
    }
  })

  it.prop("reaches the maximum after four close events and is off after four far-apart ones, from any window", [Max, Gaps], ([max, gaps]) => {
    const from = run(max, gaps)
    assert.strictEqual(run(max, [0, max, max / 2, 1], from), max)
    assert.strictEqual(run(max, [max + 1, 1e6, max * 2, 60e6], from), 0)
  })

  it.prop("one far-apart event after a steady stream costs half the window", [Max], ([max]) => {
    const steady = run(max, [0, 0, 0, 0])
    assert.strictEqual(PollWindow.next(steady, max * 10, max), max / 2)
  })

  it("is off for a zero or invalid maximum", () => {
    for (const max of [0, -1, Number.NaN]) assert.strictEqual(PollWindow.next(100, 0, max), 0)
  })
})
