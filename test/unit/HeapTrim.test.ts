import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { TestClock } from "effect/testing"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as HeapTrim from "../../src/observability/HeapTrim.ts"

const MiB = 1024 * 1024
const options: HeapTrim.Options = { period: Duration.seconds(15), idleBelow: 0.02, floorBytes: 2 * MiB }

describe("HeapTrim policy", () => {
  it("trims an idle process whose young generation grew, and nothing else", () => {
    assert.isTrue(HeapTrim.shouldTrim({ utilization: 0.001, youngBytes: 16 * MiB }, options))
    // Busy: the young generation is in use.
    assert.isFalse(HeapTrim.shouldTrim({ utilization: 0.5, youngBytes: 16 * MiB }, options))
    assert.isFalse(HeapTrim.shouldTrim({ utilization: 0.02, youngBytes: 16 * MiB }, options))
    // Already at its floor: nothing to give back (so an idle process is collected once, not every period).
    assert.isFalse(HeapTrim.shouldTrim({ utilization: 0, youngBytes: 2 * MiB }, options))
    assert.isFalse(HeapTrim.shouldTrim({ utilization: 0, youngBytes: MiB }, options))
  })
})

describe("HeapTrim schedule", () => {
  /** A scripted process: its utilization per look, a young generation that a trim empties. */
  const scripted = (utilizations: ReadonlyArray<number>, grown: number) => {
    const seen: Array<number> = []
    let young = grown
    let looks = 0
    const target: HeapTrim.Target = {
      utilization: () => utilizations[Math.min(looks++, utilizations.length - 1)]!,
      youngBytes: () => young,
      trim: () => {
        seen.push(looks)
        young = MiB
      }
    }
    return { target, trims: seen, grow: () => void (young = grown), looks: () => looks }
  }

  it.effect("looks once a period, first one period after the start, and trims after an idle one", () =>
    Effect.gen(function*() {
      const proc = scripted([0.4, 0.3, 0.001, 0.001, 0.6, 0.001], 16 * MiB)
      yield* HeapTrim.start(proc.target, options)
      yield* TestClock.adjust(Duration.seconds(14))
      assert.strictEqual(proc.looks(), 0)
      // Two busy periods: nothing.
      yield* TestClock.adjust(Duration.seconds(1))
      yield* TestClock.adjust(Duration.seconds(15))
      assert.deepStrictEqual(proc.trims, [])
      // The third period was idle: one trim.
      yield* TestClock.adjust(Duration.seconds(15))
      assert.deepStrictEqual(proc.trims, [3])
      // Idle again but already at the floor: no second collection.
      yield* TestClock.adjust(Duration.seconds(15))
      assert.deepStrictEqual(proc.trims, [3])
      // Load grows it again (a busy period), then an idle one trims again.
      proc.grow()
      yield* TestClock.adjust(Duration.seconds(15))
      yield* TestClock.adjust(Duration.seconds(15))
      assert.deepStrictEqual(proc.trims, [3, 6])
      assert.strictEqual(proc.looks(), 6)
    }).pipe(Effect.scoped))
})

describe("HeapTrim collector", () => {
  const here = Path.dirname(fileURLToPath(import.meta.url))
  const module = Path.resolve(here, "../../src/observability/HeapTrim.ts")

  it("gives a grown young generation back without --expose-gc, leaving the flags' hash and the global object as they were", () => {
    // In a child process, so that the test runner's own V8 flags are never touched.
    const script = `
      import * as HeapTrim from ${JSON.stringify(module)}
      import * as V8 from "node:v8"
      const tag = V8.cachedDataVersionTag()
      let keep = []
      for (let i = 0; i < 300000; i++) { keep.push({ a: i, b: "x" + i, c: [i, i] }); if (keep.length > 60000) keep = [] }
      keep = []
      const grown = HeapTrim.youngBytes()
      const trim = HeapTrim.collector()
      const sameTag = V8.cachedDataVersionTag() === tag
      trim?.()
      console.log(JSON.stringify({ grown, trimmed: HeapTrim.youngBytes(), hasCollector: trim !== undefined, sameTag, globalGc: typeof globalThis.gc }))
    `
    const output = ChildProcess.execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 60_000 })
    const result = JSON.parse(output.trim().split("\n").at(-1)!) as {
      readonly grown: number
      readonly trimmed: number
      readonly hasCollector: boolean
      readonly sameTag: boolean
      readonly globalGc: string
    }
    assert.isTrue(result.hasCollector)
    assert.isTrue(result.sameTag, "the flags' hash (V8's code cache key) changed")
    assert.strictEqual(result.globalGc, "undefined")
    assert.isAbove(result.grown, 8 * MiB, "the allocations should have grown the young generation")
    assert.isAtMost(result.trimmed, 2 * MiB)
  })
})
