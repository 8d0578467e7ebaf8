/**
 * Adaptive busy polling on the real event loop: off does nothing; on, touches that come close
 * together open the window (to the maximum after four), the loop stays out of epoll's sleep
 * from a touch until the window has passed since the last touch and no longer, touches that
 * come far apart close it again, and the wait for an upstream and the wait for a client adapt
 * each on its own.
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

/** A touch, then four back to back: the window at its maximum. */
const steady = (poll: BusyPoll.BusyPoll) => {
  for (let i = 0; i < 5; i++) poll.touch("client")
}

describe("BusyPoll", () => {
  it("is off for a zero or negative maximum", () => {
    for (const budget of [0, -5, Number.NaN]) {
      const poll = BusyPoll.make(budget)
      steady(poll)
      assert.isFalse(poll.polling(), `budget ${budget}`)
    }
  })

  it("does not poll after a touch out of the blue; opens the window as touches come close together", () => {
    const poll = BusyPoll.make(BusyPoll.maxBudgetMicros)
    poll.touch("client")
    assert.isFalse(poll.polling(), "the first touch after idle")
    assert.strictEqual(poll.window("client"), 0)
    poll.touch("client")
    assert.isTrue(poll.polling())
    assert.strictEqual(poll.window("client"), BusyPoll.maxBudgetMicros / 8)
    poll.touch("client")
    poll.touch("client")
    poll.touch("client")
    assert.strictEqual(poll.window("client"), BusyPoll.maxBudgetMicros)
    poll.stop()
  })

  it("polls from a touch until the window has passed since the last touch", async () => {
    const poll = BusyPoll.make(BusyPoll.maxBudgetMicros)
    steady(poll)
    const firstTouch = performance.now()
    poll.touch("client")
    // Another touch 5 ms later (within the 10 ms window) moves the deadline.
    while (performance.now() - firstTouch < 5) await nextTurn()
    const lastTouch = performance.now()
    poll.touch("client")
    const end = await stopped(poll)
    assert.isAtLeast(end - lastTouch, 10, "not before the window has passed since the last touch")
    assert.isAtLeast(end - firstTouch, 15, "past the first touch's window")
  })

  it("keeps the event loop out of its sleep while polling, and only then", async () => {
    const utilization = async (poll: BusyPoll.BusyPoll) => {
      const before = performance.eventLoopUtilization()
      steady(poll)
      await wait(5)
      return performance.eventLoopUtilization(before).utilization
    }
    // The wait (5 ms) is within the window (10 ms).
    const busy = BusyPoll.make(BusyPoll.maxBudgetMicros)
    const polled = await utilization(busy)
    await stopped(busy)
    const slept = await utilization(BusyPoll.off)
    assert.isAbove(polled, 0.5, `utilization while polling ${polled.toFixed(2)}`)
    assert.isBelow(slept, 0.5, `utilization while sleeping ${slept.toFixed(2)}`)
  })

  it("closes the window as touches come further apart than the maximum", async () => {
    const poll = BusyPoll.make(1000)
    steady(poll)
    const windows: Array<number> = []
    for (let i = 0; i < 4; i++) {
      await stopped(poll)
      await wait(3) // three times the 1 ms maximum
      poll.touch("client")
      windows.push(poll.window("client"))
    }
    assert.deepStrictEqual(windows, [500, 250, 125, 0])
    assert.isFalse(poll.polling(), "no polling with the window closed")
  })

  it("adapts the wait for the upstream and the wait for a client each on its own", async () => {
    // Requests 3 ms apart on one connection, answered at once: each request comes in (the loop
    // awaits the upstream), its answer comes right after (the response closes next), it closes
    // (the loop awaits the client's next request, 3 ms away).
    const poll = BusyPoll.make(1000)
    for (let i = 0; i < 6; i++) {
      poll.touch("upstream")
      poll.touch("upstream")
      poll.touch("client")
      await wait(3)
    }
    assert.strictEqual(poll.window("upstream"), 1000, "the upstream answers within the window: polled for")
    assert.strictEqual(poll.window("client"), 0, "the next request comes 3 ms later: not polled for")
    poll.touch("upstream")
    assert.isTrue(poll.polling(), "polling while the upstream is awaited")
    poll.touch("client")
    await stopped(poll, 10)
    poll.stop()
  })

  it("stops at once when stopped and ignores later touches", async () => {
    const poll = BusyPoll.make(BusyPoll.maxBudgetMicros)
    steady(poll)
    poll.stop()
    await stopped(poll)
    steady(poll)
    assert.isFalse(poll.polling())
  })

  it("caps the window at 10 ms", async () => {
    const poll = BusyPoll.make(60_000_000)
    steady(poll)
    assert.strictEqual(poll.window("client"), BusyPoll.maxBudgetMicros)
    const touched = performance.now()
    poll.touch("client")
    const end = await stopped(poll)
    assert.isAtLeast(end - touched, 10)
    assert.isBelow(end - touched, 1000, "a minute's maximum was capped")
  })
})
