/**
 * Adaptive busy polling: after a request arrives, its answer comes or a response closes, the
 * event loop keeps polling its sockets (epoll with a zero timeout) instead of sleeping, so that
 * the next event (the upstream's answer, the client's next request) is picked up without a
 * wake-up from idle; for how long is adapted to how close together such events have been
 * coming, for each of the two waits on its own ({@link Awaiting}, {@link PollWindow}).
 *
 * Why: a process that sleeps in epoll is woken twice per request at one connection, and on a
 * virtual machine each wake-up from idle costs tens of microseconds (the vCPU halts and has to
 * be brought back). That was most of the service proxy's gap to Go at one connection; Go's
 * scheduler spins before it parks its threads.
 *
 * What it costs: CPU while events come within the maximum of each other (when the process is
 * serving a steady stream of requests anyway), nearly nothing when they come further apart, and
 * nothing while no requests come. The server touches it only while at most one request is open
 * (`Server.ts`): with more, its loop is seldom idle and a spin would only take CPU from others.
 *
 * @since 0.1.0
 */
import { performance } from "node:perf_hooks"
import * as PollWindow from "../domain/PollWindow.ts"

/**
 * What the event loop waits for after an event: the upstream's answer (after a request came in,
 * or an answer arrived while the response is being written), or a client's next request (after
 * a response closed). Each has its own window: with requests milliseconds apart the upstream
 * still answers within microseconds, and only the wait for the client is worth no polling.
 *
 * @category models
 */
export type Awaiting = "upstream" | "client"

/** @category models */
export interface BusyPoll {
  /**
   * Something happened, and now the loop awaits `awaiting`: adapt the window of what it awaited
   * before to the gap since the last touch, and poll for the window of `awaiting` from now.
   */
  readonly touch: (awaiting: Awaiting) => void
  /** Whether the loop is polling now (for tests and diagnostics). */
  readonly polling: () => boolean
  /** The window of `awaiting`, in microseconds (for tests and diagnostics). */
  readonly window: (awaiting: Awaiting) => number
  /** Stop polling now; later touches are ignored. */
  readonly stop: () => void
}

/**
 * No polling: the event loop sleeps whenever it has nothing to do.
 *
 * @category constructors
 */
export const off: BusyPoll = { touch: () => {}, polling: () => false, window: () => 0, stop: () => {} }

/**
 * The default maximum window: at one connection, 200us did best of 100, 200, 400 and 1000us
 * in hand-run bench rounds (then with a fixed window).
 */
export const defaultMaxMicros = 200

/** The longest window accepted; more is almost surely a unit mistake and would spend a core. */
export const maxBudgetMicros = 10_000

/**
 * Poll after every touch for the adapted window of what the loop awaits, at most `maxMicros`
 * ({@link off} for 0). One immediate is queued at a time; it re-queues itself until the
 * deadline has passed, and the touches in between only move the deadline.
 *
 * @category constructors
 */
export const make = (maxMicros: number): BusyPoll => {
  if (!(maxMicros > 0)) return off
  const max = Math.min(maxMicros, maxBudgetMicros)
  const windows: Record<Awaiting, number> = { upstream: 0, client: 0 }
  let awaited: Awaiting = "client"
  let lastTouch = Number.NEGATIVE_INFINITY
  let deadline = 0
  let active = false
  let stopped = false
  const spin = () => {
    active = !stopped && performance.now() < deadline
    if (active) setImmediate(spin)
  }
  return {
    touch: (awaiting) => {
      if (stopped) return
      const now = performance.now()
      windows[awaited] = PollWindow.next(windows[awaited], (now - lastTouch) * 1000, max)
      lastTouch = now
      awaited = awaiting
      deadline = now + windows[awaiting] / 1000
      if (!active && windows[awaiting] > 0) {
        active = true
        setImmediate(spin)
      }
    },
    polling: () => active,
    window: (awaiting) => windows[awaiting],
    stop: () => {
      stopped = true
    }
  }
}
