/**
 * The service relay's options, pure: trusted caller usernames given repeated or comma-separated
 * are normalised, and a relay that would trust nobody is refused, naming the flag.
 */
import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as Options from "../../src/relay/ServiceRelayOptions.ts"

const given = (trustedCallerUsernames: ReadonlyArray<string>): Options.Options => ({
  listen: { host: undefined, port: 7444 },
  additionalServiceCa: undefined,
  trustedCallerUsernames,
  tokenReviewCacheTtl: "10 seconds",
  kubeconfig: undefined
})

describe("service relay options", () => {
  it("splits, trims and deduplicates the trusted caller usernames", () => {
    const options = Result.getOrThrow(Options.resolve(given(["a, b", "c", "a", " "])))
    assert.deepStrictEqual(options.trustedCallerUsernames, ["a", "b", "c"])
  })

  it.each([[[]], [[" ", ","]], [[""]]])("refuses to trust nobody (%j), naming the flag", (names) => {
    const result = Options.resolve(given(names))
    assert.isTrue(Result.isFailure(result))
    const message = Result.isFailure(result) ? result.failure.message : ""
    assert.include(message, "--trusted-caller-username is required")
    assert.include(message, "it does not run open")
    assert.strictEqual(Result.isFailure(result) ? result.failure._tag : "", "InvalidOptions")
  })
})
