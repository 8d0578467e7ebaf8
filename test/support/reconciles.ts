/**
 * Reconciles a controller in this process has finished so far, whatever their result, read from
 * its `tether_reconcile_total` series. A test that changed something waits for the count to pass
 * what it was before reading the audit logs: by then all that the reconcile sent is logged.
 */
import { Effect, Metric } from "effect"
import * as Metrics from "../../src/observability/Metrics.ts"

export const reconcilesFinished = (controller: string): Effect.Effect<number> =>
  Effect.map(
    Effect.forEach(["success", "requeue_after", "error"] as const, (result) =>
      Metric.value(Metric.withAttributes(Metrics.reconcileTotal, { controller, result }))),
    (states) => states.reduce((sum, state) => sum + state.count, 0)
  )
