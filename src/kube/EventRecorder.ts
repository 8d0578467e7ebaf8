/**
 * Kubernetes Events for state transitions.
 *
 * Callers record an event when something changed (a Secret created, a refresh that started
 * failing), never once per sync. A Normal event reports an action and is always emitted; a
 * Warning identical to the previous event about the same object is dropped, so a failure that
 * repeats on every retry is reported once until the state moves on. A failure to create an event
 * is logged and otherwise ignored.
 *
 * RBAC: `create` on `events` in the namespace of the object the events are about.
 *
 * @since 0.1.0
 */
import type { CoreV1Event } from "@kubernetes/client-node"
import { Clock, Context, Effect, Layer } from "effect"
import { HostingCluster } from "./KubeClient.ts"

/** The object an event is about. @category models */
export interface ObjectReference {
  readonly apiVersion: string
  readonly kind: string
  readonly namespace: string
  readonly name: string
}

/** @category models */
export interface EventInput {
  readonly type: "Normal" | "Warning"
  readonly reason: string
  readonly message: string
  readonly regarding: ObjectReference
}

/** @category services */
export class EventRecorder extends Context.Service<EventRecorder, {
  readonly record: (event: EventInput) => Effect.Effect<void>
}>()("tether/kube/EventRecorder") {
  /** Events on the hosting cluster, reported by `component`. */
  static readonly layer = (component: string) =>
    Layer.effect(
      EventRecorder,
      Effect.gen(function*() {
        const hosting = yield* HostingCluster
        const instance = process.env["HOSTNAME"] ?? component
        return make((event, now) => {
          const time = new Date(now).toISOString()
          const body: CoreV1Event = {
            metadata: { generateName: `${event.regarding.name}.`, namespace: event.regarding.namespace },
            involvedObject: { ...event.regarding },
            type: event.type,
            reason: event.reason,
            action: event.reason,
            message: event.message,
            source: { component },
            reportingComponent: component,
            reportingInstance: instance,
            count: 1,
            firstTimestamp: new Date(time),
            lastTimestamp: new Date(time)
          }
          return hosting.createEvent(event.regarding.namespace, body).pipe(
            Effect.asVoid,
            Effect.catch((error) => Effect.logWarning("could not record event", { reason: event.reason, error: error.message }))
          )
        })
      })
    )

  /** Keeps recorded events in memory (tests); `events` is appended to. */
  static readonly layerMemory = (events: Array<EventInput>) =>
    Layer.sync(EventRecorder, () =>
      make((event) =>
        Effect.sync(() => {
          events.push(event)
        })
      ))
}

const keyOf = (ref: ObjectReference) => `${ref.apiVersion}/${ref.kind}/${ref.namespace}/${ref.name}`

const make = (emit: (event: EventInput, now: number) => Effect.Effect<void>) => {
  const last = new Map<string, string>()
  return EventRecorder.of({
    record: (event) =>
      Effect.gen(function*() {
        const key = keyOf(event.regarding)
        const fingerprint = `${event.type}/${event.reason}/${event.message}`
        if (event.type === "Warning" && last.get(key) === fingerprint) return
        last.set(key, fingerprint)
        yield* emit(event, yield* Clock.currentTimeMillis)
      })
  })
}
