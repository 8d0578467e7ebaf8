/**
 * A routine rotation on demand: the generated Secret's lifetime annotations moved back so that
 * the token in place is due (issued 55 minutes ago, expiring in 5), nothing else changed. With
 * 1-hour tokens and any refresh margin up to 48 minutes, the next reconcile rotates it exactly as
 * it would at its real refresh point, without waiting out a token's lifetime (10 minutes at the
 * least on a real apiserver).
 */
import type { V1Secret } from "@kubernetes/client-node"
import * as Conditions from "../../src/domain/Conditions.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"

export const dueSoon = (secret: V1Secret, now = Date.now()): V1Secret => ({
  ...secret,
  metadata: {
    ...secret.metadata,
    annotations: {
      ...secret.metadata?.annotations,
      [ManagedKubeconfigSecret.issuedAtAnnotation]: Conditions.formatTime(now - 55 * 60_000),
      [ManagedKubeconfigSecret.expirationAnnotation]: Conditions.formatTime(now + 5 * 60_000)
    }
  }
})
