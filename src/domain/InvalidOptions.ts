/**
 * A component's options that cannot work (a required value missing, a value out of range, two
 * that exclude each other), found by that component's `Options.resolve` before anything
 * starts. The message names the flag, so the CLI prints it as the one-line usage error as is.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"

/**
 * Terminal: retrying the same options fails the same way.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidOptions extends Schema.TaggedError<InvalidOptions>()("InvalidOptions", {
  message: Schema.String
}) {}

/**
 * @since 0.1.0
 * @category constructors
 */
export const fail = (message: string): Result.Result<never, InvalidOptions> => Result.fail(new InvalidOptions({ message }))
