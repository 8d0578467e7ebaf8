/**
 * What a proxy decides about a request before a byte goes upstream: admitted (where to, with
 * which headers) or refused (the status and body to answer with). A proxy is an admission
 * {@link Policy} over {@link Server}: authentication, routing and header building live in the
 * policy; listening, forwarding and shutdown are shared.
 *
 * An admission is decided at once when every answer it needs is cached (nearly always: the
 * caller's TokenReview, a Service's address), and then the request is forwarded without a
 * fiber; otherwise it is an Effect that waits for them.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import type * as Http from "node:http"
import type * as Forwarder from "./Forwarder.ts"

/**
 * The proxy answers itself. `body` is safe to send back; `label` is the request's metric label.
 *
 * @category models
 */
export interface Refusal<L> {
  readonly _tag: "Refusal"
  readonly status: number
  readonly body: string
  readonly label: L
}

/**
 * The request goes on.
 *
 * @category models
 */
export interface Admitted<L> {
  readonly _tag: "Admitted"
  readonly label: L
  readonly destination: Forwarder.Destination
  /** Path and query to send. */
  readonly path: string
  readonly headers: Forwarder.HeaderList
  /** For the log when the upstream fails: where the request went, never a path or credential. */
  readonly upstream: Readonly<Record<string, string>>
}

/**
 * An admission decided now, or one that has to wait.
 *
 * @category models
 */
export type Admission<L> = Admitted<L> | Refusal<L> | Effect.Effect<Admitted<L>, Refusal<L>>

/**
 * How a proxy treats its requests.
 *
 * @category models
 */
export interface Policy<L> {
  /** Authenticate, route and build the upstream headers; `upgrade` for an `Upgrade` request. */
  readonly admit: (req: Http.IncomingMessage, upgrade: boolean) => Admission<L>
  /**
   * Count and time one answered request: the status the client got, when the request started
   * and when the answer's head was written (milliseconds).
   */
  readonly record: (label: L, status: number, startedAt: number, headAt: number) => void
}

/** @category constructors */
export const refusal = <L>(status: number, body: string, label: L): Refusal<L> => ({ _tag: "Refusal", status, body, label })

/** @category constructors */
export const admitted = <L>(fields: Omit<Admitted<L>, "_tag">): Admitted<L> => ({ _tag: "Admitted", ...fields })

/**
 * The waiting form of any admission.
 *
 * @category combinators
 */
export const awaitAdmission = <L>(admission: Admission<L>): Effect.Effect<Admitted<L>, Refusal<L>> =>
  Effect.isEffect(admission) ? admission : admission._tag === "Admitted" ? Effect.succeed(admission) : Effect.fail(admission)
