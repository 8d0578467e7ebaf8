/**
 * Logging, probes and memory upkeep shared by every tether process.
 *
 * Logs are one JSON object per line on stdout (what log collectors expect from a pod). No
 * component logs a token or kubeconfig content: tokens travel as `Redacted`, and error messages
 * are built from the apiserver's Status message, never from request material.
 *
 * @since 0.1.0
 */
import { Layer, Logger } from "effect"
import type * as ListenAddress from "../src/domain/ListenAddress.ts"
import * as HeapTrim from "../src/observability/HeapTrim.ts"
import * as Probes from "../src/observability/Probes.ts"

/** JSON lines on stdout, replacing the default logger. @category layers */
export const layerJsonLogger = Logger.layer([Logger.consoleJson])

/**
 * JSON logs plus the probe server (`/healthz`, `/readyz`, `/metrics`) on `address`; exposes
 * {@link Probes.Probes} so components can register their checks. The process also gives its
 * young generation back when it goes idle ({@link HeapTrim}).
 *
 * @category layers
 */
export const layer = (address: ListenAddress.ListenAddress) =>
  Layer.merge(Probes.layer(address), HeapTrim.layer()).pipe(Layer.provideMerge(layerJsonLogger))
