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

describe("bench Report targets", () => {
  /** A report with only the service proxy's parts. */
  const render = (parts: Pick<Report.Report, "serviceProxy" | "serviceProxyPaced">) =>
    Report.render({ date: "2026-12-07", command: "npm run bench", machine: [], settings: [], quick: false, notes: [], ...parts })
  const row = (key: string, conns: number, perSecond: number, p99us: number): Report.HttpResult => ({
    path: { key, label: key },
    conns,
    perSecond,
    p50us: p99us / 4,
    p99us,
    cpuUs: 100,
    errors: 0
  })

  it("the service proxy is held against the Go proxy's row, not against a variant or the floor listed first", () => {
    const rendered = render({
      serviceProxy: [{
        scenario: { label: "kube-apiserver request" },
        pauses: [],
        rows: [
          row("direct", 1, 10_000, 1000),
          row("tether", 1, 2_000, 2000),
          row("tether-no-runtime-env", 1, 4_000, 1000),
          row("node-floor", 1, 8_000, 500),
          row("tether-no-busy-poll", 1, 3_000, 2200),
          row("go-tuned", 1, 2_500, 2000)
        ]
      }]
    })
    expect(rendered).toContain("- Service proxy, kube-apiserver request: req/s ≥ the Go proxy with p99 ≤ 1.2× of it: c=1: 0.80× req/s, 1.00× p99 (**not met**).")
    expect(rendered).toContain("- Service proxy without busy polling, kube-apiserver request: req/s ≥ the Go proxy with p99 ≤ 1.2× of it: c=1: 1.20× req/s, 1.10× p99 (met).")
  })
  it("shows the paced rows' CPU against tether as shipped, at each rate", () => {
    const paced = (key: string, rate: number, cpuMsPerSecond: number): Report.Paced => ({
      path: { key, label: key },
      rate,
      perSecond: rate * 0.98,
      cpuMsPerSecond
    })
    const rendered = render({
      serviceProxy: [],
      serviceProxyPaced: [paced("tether", 50, 40), paced("tether", 200, 100), paced("tether-no-busy-poll", 50, 60), paced("tether-no-busy-poll", 200, 150)]
    })
    expect(rendered).toContain("| path | 50 req/s | 200 req/s | ÷ tether at 50 | ÷ tether at 200 |")
    expect(rendered).toContain("| tether | 40 ms/s (49) | 100 ms/s (196) | 1.00× | 1.00× |")
    expect(rendered).toContain("| tether-no-busy-poll | 60 ms/s (49) | 150 ms/s (196) | 1.50× | 1.50× |")
  })
})
