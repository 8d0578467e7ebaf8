/**
 * A command line that cannot work (missing or conflicting flags). Printed without a stack
 * trace, exit code 2.
 *
 * @since 0.1.0
 */
import { Effect, Result, Schema } from "effect"
import { CliError } from "effect/cli"

export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", {
  message: Schema.String
}) {
  override get [CliError.userMessage](): string {
    return this.message
  }
}

/**
 * The options a component's `Options.resolve` checked, or its refusal as the usage error: the
 * one place a command turns a typed options error into what the user reads.
 */
export const checked = <A>(result: Result.Result<A, { readonly message: string }>): Effect.Effect<A, UsageError> =>
  Result.isSuccess(result) ? Effect.succeed(result.success) : Effect.fail(new UsageError({ message: result.failure.message }))
