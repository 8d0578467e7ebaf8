/**
 * A command line that cannot work (missing or conflicting flags). Printed without a stack
 * trace, exit code 2.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"
import { CliError } from "effect/cli"

export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", {
  message: Schema.String
}) {
  override get [CliError.userMessage](): string {
    return this.message
  }
}
