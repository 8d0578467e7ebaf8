/**
 * Bounded busy polling: after a request arrives or a response closes, the event loop keeps
 * polling its sockets (epoll with a zero timeout) for a short budget instead of sleeping, so
 * that the next event (the upstream's answer, the client's next request) is picked up without
 * a wake-up from idle.
 *
 * Why: a process that sleeps in epoll is woken twice per request at one connection, and on a
 * virtual machine each wake-up from idle costs tens of microseconds (the vCPU halts and has to
 * be brought back). That was most of the service proxy's gap to Go at one connection; Go's
 * scheduler spins before it parks its threads.
 *
 * What it costs: CPU, at most the budget after each such event, and nothing while no requests
 * come. It is off unless asked for, as busy polling is in HAProxy (`busy-polling`) and Linux
 * (`net.core.busy_poll`).
 *
 * @since 0.1.0
 */
import { performance } from "node:perf_hooks"

/** @category models */
export interface BusyPoll {
  /** Something happened: keep polling until the budget has passed since now. */
  readonly touch: () => void
  /** Whether the loop is polling now (for tests and diagnostics). */
  readonly polling: () => boolean
  /** Stop polling now; later touches are ignored. */
  readonly stop: () => void
}

/**
 * No polling: the event loop sleeps whenever it has nothing to do.
 *
 * @category constructors
 */
export const off: BusyPoll = { touch: () => {}, polling: () => false, stop: () => {} }

/** The longest budget accepted; more is almost surely a unit mistake and would spend a core. */
export const maxBudgetMicros = 10_000

/**
 * Poll for `budgetMicros` after every touch ({@link off} for 0). One immediate is queued at a
 * time; it re-queues itself until the deadline has passed, and the touches in between only
 * move the deadline.
 *
 * @category constructors
 */
export const make = (budgetMicros: number): BusyPoll => {
  if (!(budgetMicros > 0)) return off
  const budgetMs = Math.min(budgetMicros, maxBudgetMicros) / 1000
  let deadline = 0
  let active = false
  let stopped = false
  const spin = () => {
    active = !stopped && performance.now() < deadline
    if (active) setImmediate(spin)
  }
  return {
    touch: () => {
      if (stopped) return
      deadline = performance.now() + budgetMs
      if (!active) {
        active = true
        setImmediate(spin)
      }
    },
    polling: () => active,
    stop: () => {
      stopped = true
    }
  }
}
