/**
 * Flag constructors shared by every subcommand, in the Go prototype's syntax (Go durations,
 * `host:port` listen addresses), so the Helm chart maps one to one.
 *
 * @since 0.1.0
 */
import { Result } from "effect"
import { Flag } from "effect/cli"
import * as GoDuration from "../domain/GoDuration.ts"
import * as ListenAddress from "../domain/ListenAddress.ts"

const fromResult = <A, E extends { readonly message: string }>(parse: (s: string) => Result.Result<A, E>) =>
  Flag.mapTryCatch((text: string) => Result.getOrThrowWith(parse(text), (e) => e), (e) => (e as E).message)

/** A string flag with a default (shown in `--help`). */
export const string = (name: string, description: string, fallback = "") =>
  Flag.String(name).pipe(Flag.withDescription(withDefault(description, fallback)), Flag.withDefault(fallback))

const withDefault = (description: string, fallback: string) =>
  fallback === "" ? description : `${description} (default "${fallback}")`

/** A Go duration (`24h`, `1h30m`, `90s`). */
export const duration = (name: string, description: string, fallback: string) =>
  Flag.String(name).pipe(
    Flag.withDescription(`${description}; a Go duration (default ${fallback})`),
    Flag.withDefault(fallback),
    fromResult(GoDuration.parse)
  )

/** A `host:port` listen address. */
export const listen = (name: string, description: string, fallback: string) =>
  Flag.String(name).pipe(
    Flag.withDescription(withDefault(description, fallback)),
    Flag.withDefault(fallback),
    fromResult(ListenAddress.parse)
  )

/** A boolean switch, false unless given. */
export const boolean = (name: string, description: string) =>
  Flag.Boolean(name).pipe(Flag.withDescription(description), Flag.withDefault(false))
