import { describe, expect, it } from "@effect/vitest"
import * as Report from "../bench/Report.ts"

describe("bench Report histograms", () => {
  const histogram = (entries: ReadonlyArray<readonly [number, number]>): Report.Histogram => new Map(entries)

  it("a percentile is the smallest value with that share of the samples at or below it", () => {
    // 100 samples: 90 at 100 µs, 9 at 200 µs, 1 at 5000 µs.
    const samples = histogram([[200, 9], [100, 90], [5000, 1]])
    expect(Report.percentile(samples, 50)).toBe(100)
    expect(Report.percentile(samples, 90)).toBe(100)
    expect(Report.percentile(samples, 91)).toBe(200)
    expect(Report.percentile(samples, 99)).toBe(200)
    expect(Report.percentile(samples, 100)).toBe(5000)
    expect(Report.percentile(histogram([]), 99)).toBeNaN()
  })

  it("pooling adds the counts of equal values, so a slow run weighs by its requests", () => {
    const fast = histogram([[100, 980], [150, 20]])
    const slow = histogram([[150, 5], [3000, 5]])
    const all = Report.pooled([fast, slow])
    expect([...all.entries()].sort(([a], [b]) => a - b)).toEqual([[100, 980], [150, 25], [3000, 5]])
    // The slow run's own p99 is 3000 µs; over all 1010 requests the 1% tail reaches only 150 µs.
    expect(Report.percentile(slow, 99)).toBe(3000)
    expect(Report.percentile(all, 99)).toBe(150)
  })
})
