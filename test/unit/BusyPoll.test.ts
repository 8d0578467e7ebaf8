/**
 * Bounded busy polling on the real event loop: off does nothing; on, the loop stays out of
 * epoll's sleep from a touch until the budget has passed since the last touch, and no longer.
 */
import { assert, describe, it } from "@effect/vitest"
import { performance } from "node:perf_hooks"
import * as BusyPoll from "../../src/http/BusyPoll.ts"

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))
const wait = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Resolves when `poll` stops polling (checked every loop turn), with the time it did; bounded. */
const stopped = async (poll: BusyPoll.BusyPoll, boundMs = 2000): Promise<number> => {
  const started = performance.now()
  while (poll.polling()) {
    if (performance.now() - started > boundMs) throw new Error(`still polling after ${boundMs} ms`)
    await nextTurn()
  }
  return performance.now()
}

describe("BusyPoll", () => {
  it("is off for a zero or negative budget", () => {
    for (const budget of [0, -5, Number.NaN]) {
      const poll = BusyPoll.make(budget)
      poll.touch()
      assert.isFalse(poll.polling(), `budget ${budget}`)
    }
  })

  it("polls from a touch until the budget has passed since the last touch", async () => {
    const poll = BusyPoll.make(BusyPoll.maxBudgetMicros)
    const firstTouch = performance.now()
    poll.touch()
    assert.isTrue(poll.polling())
    // A second touch 5 ms later (within the first one's 10 ms budget) moves the deadline.
    while (performance.now() - firstTouch < 5) await nextTurn()
    const lastTouch = performance.now()
    poll.touch()
    const end = await stopped(poll)
    assert.isAtLeast(end - lastTouch, 10, "not before the budget has passed since the last touch")
    assert.isAtLeast(end - firstTouch, 15, "past the first touch's budget")
  })

  it("keeps the event loop out of its sleep while polling, and only then", async () => {
    const utilization = async (poll: BusyPoll.BusyPoll) => {
      const before = performance.eventLoopUtilization()
      poll.touch()
      await wait(5)
      return performance.eventLoopUtilization(before).utilization
    }
    // The wait (5 ms) is within the budget (10 ms).
    const busy = BusyPoll.make(BusyPoll.maxBudgetMicros)
    const polled = await utilization(busy)
    await stopped(busy)
    const slept = await utilization(BusyPoll.off)
    assert.isAbove(polled, 0.5, `utilization while polling ${polled.toFixed(2)}`)
    assert.isBelow(slept, 0.5, `utilization while sleeping ${slept.toFixed(2)}`)
  })

  it("stops at once when stopped and ignores later touches", async () => {
    const poll = BusyPoll.make(BusyPoll.maxBudgetMicros)
    poll.touch()
    poll.stop()
    await stopped(poll)
    poll.touch()
    assert.isFalse(poll.polling())
  })

  it("caps the budget at 10 ms", async () => {
    const poll = BusyPoll.make(60_000_000)
    const touched = performance.now()
    poll.touch()
    const end = await stopped(poll)
    assert.isAtLeast(end - touched, 10)
    assert.isBelow(end - touched, 1000, "a minute's budget was capped")
  })
})
