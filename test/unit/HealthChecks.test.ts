/**
 * The add-on health checks without a cluster: reading a JWT's expiry, the managed-token
 * freshness check over kubeconfig files on disk (inline token and tokenFile) on virtual time, and
 * the per-check timeout. No message ever contains the token.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Option, Redacted, Result, Schema } from "effect"
import { TestClock } from "effect/testing"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as HealthChecks from "../../src/addonagent/HealthChecks.ts"
import * as TokenExpiry from "../../src/domain/TokenExpiry.ts"

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
const jwt = (claims: Record<string, unknown>) => `${b64url({ alg: "RS256", kid: "k" })}.${b64url(claims)}.c2lnbmF0dXJl`
const NOW = Date.UTC(2026, 4, 1, 12, 0, 0)

const kubeconfig = (user: string) => `apiVersion: v1
kind: Config
clusters:
- name: managed
  cluster:
    server: https://managed.example:6443
users:
- name: cluster-proxy
  user:
${user}
contexts:
- name: managed
  context: { cluster: managed, user: cluster-proxy }
current-context: managed
`

const folder = () => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-health-"))

/** Run the freshness check for a kubeconfig file at NOW with a 5 minute margin. */
const freshness = (path: string) =>
  Effect.gen(function*() {
    yield* TestClock.setTime(NOW)
    const { check } = yield* HealthChecks.managedTokenFreshness("managed-token", path, Duration.minutes(5))
    return yield* Effect.result(check)
  }).pipe(Effect.provide(NodeServices.layer))

describe("TokenExpiry", () => {
  it("reads exp in seconds as epoch milliseconds; no exp is None", () => {
    assert.deepStrictEqual(TokenExpiry.readExpiry(Redacted.make(jwt({ exp: 1_800_000_000 }))), Result.succeed(Option.some(1_800_000_000_000)))
    assert.deepStrictEqual(TokenExpiry.readExpiry(Redacted.make(jwt({ exp: 1.5 }))), Result.succeed(Option.some(1500)))
    assert.deepStrictEqual(TokenExpiry.readExpiry(Redacted.make(jwt({ sub: "x" }))), Result.succeed(Option.none()))
  })

  it.each([
    { name: "an opaque token", token: "s3cr3t-opaque-token", reason: "NotAJwt" },
    { name: "two segments", token: "abc.def", reason: "NotAJwt" },
    { name: "four segments", token: "a.b.c.d", reason: "NotAJwt" },
    { name: "padding and other characters", token: "a.b=.c", reason: "NotAJwt" },
    { name: "claims that are not JSON", token: `x.${Buffer.from("not json").toString("base64url")}.y`, reason: "MalformedClaims" },
    { name: "claims that are an array", token: `x.${b64url([1])}.y`, reason: "MalformedClaims" },
    { name: "exp as a string", token: jwt({ exp: "1800000000" }), reason: "MalformedExp" }
  ])("refuses $name without quoting it", ({ reason, token }) => {
    const result = TokenExpiry.readExpiry(Redacted.make(token))
    assert.isTrue(Result.isFailure(result))
    if (Result.isFailure(result)) {
      assert.strictEqual(result.failure.reason, reason)
      for (const part of token.split(".")) if (part.length > 2) assert.notInclude(result.failure.message, part)
    }
  })

  it.prop(
    "freshness: expired from exp on, expiring within the margin, fresh with the margin left",
    { exp: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 ** 41 })), now: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 ** 41 })), margin: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 86_400_000 })) },
    ({ exp, margin, now }) => {
      const state = TokenExpiry.freshness(Option.some(exp), now, margin)
      const expected = exp <= now ? "Expired" : exp - now < margin ? "Expiring" : "Fresh"
      assert.strictEqual(state._tag, expected)
    }
  )
})

describe("managed token freshness check", () => {
  it.effect("passes with more than the margin left, inline or through tokenFile (relative to the kubeconfig)", () =>
    Effect.gen(function*() {
      const dir = folder()
      const token = jwt({ exp: (NOW + 3600_000) / 1000 })
      Fs.writeFileSync(Path.join(dir, "inline"), kubeconfig(`    token: ${token}`))
      assert.isTrue(Result.isSuccess(yield* freshness(Path.join(dir, "inline"))))
      Fs.writeFileSync(Path.join(dir, "token"), `${token}\n`)
      Fs.writeFileSync(Path.join(dir, "by-file"), kubeconfig("    tokenFile: token"))
      assert.isTrue(Result.isSuccess(yield* freshness(Path.join(dir, "by-file"))))
      Fs.rmSync(dir, { recursive: true })
    }))

  it.effect.each([
    { name: "expired", exp: NOW - 90_000, expected: "the managed token expired 1m30s ago" },
    { name: "expiring within the margin", exp: NOW + 240_000, expected: "the managed token expires in 4m, within the freshness margin of 5m" },
    { name: "expiring at this instant", exp: NOW, expected: "the managed token expired 0s ago" }
  ])("fails when $name, saying how long, never the token", ({ exp, expected }) =>
    Effect.gen(function*() {
      const dir = folder()
      const token = jwt({ exp: exp / 1000, sub: "system:serviceaccount:agent:cluster-proxy" })
      Fs.writeFileSync(Path.join(dir, "kubeconfig"), kubeconfig(`    token: ${token}`))
      const result = yield* freshness(Path.join(dir, "kubeconfig"))
      assert.deepStrictEqual(result, Result.fail(new HealthChecks.Unhealthy({ reason: expected })))
      Fs.rmSync(dir, { recursive: true })
    }))

  it.effect("fails on an unreadable file, a kubeconfig without a token, or a token that is not a JWT", () =>
    Effect.gen(function*() {
      const dir = folder()
      const missing = yield* freshness(Path.join(dir, "nope"))
      assert.include(Result.isFailure(missing) ? missing.failure.reason : "", `cannot read the managed kubeconfig ${Path.join(dir, "nope")}`)
      Fs.writeFileSync(Path.join(dir, "cert"), kubeconfig("    client-certificate-data: QQ==\n    client-key-data: QQ=="))
      const noToken = yield* freshness(Path.join(dir, "cert"))
      assert.include(Result.isFailure(noToken) ? noToken.failure.reason : "", "a bearer token is required")
      Fs.writeFileSync(Path.join(dir, "opaque"), kubeconfig("    token: opaque-secret-value"))
      const opaque = yield* freshness(Path.join(dir, "opaque"))
      assert.include(Result.isFailure(opaque) ? opaque.failure.reason : "", "is not a JWT")
      assert.notInclude(Result.isFailure(opaque) ? opaque.failure.reason : "", "opaque-secret-value")
      Fs.writeFileSync(Path.join(dir, "dangling"), kubeconfig("    tokenFile: gone"))
      const dangling = yield* freshness(Path.join(dir, "dangling"))
      assert.include(Result.isFailure(dangling) ? dangling.failure.reason : "", `cannot read the managed token file ${Path.join(dir, "gone")}`)
      Fs.rmSync(dir, { recursive: true })
    }))

  it.effect("re-reads the file on every run: a rotated token turns the check green", () =>
    Effect.gen(function*() {
      const dir = folder()
      const path = Path.join(dir, "kubeconfig")
      Fs.writeFileSync(path, kubeconfig(`    token: ${jwt({ exp: (NOW - 1000) / 1000 })}`))
      yield* TestClock.setTime(NOW)
      const { check } = yield* HealthChecks.managedTokenFreshness("managed-token", path, Duration.minutes(5))
      assert.isTrue(Result.isFailure(yield* Effect.result(check)))
      Fs.writeFileSync(path, kubeconfig(`    token: ${jwt({ exp: (NOW + 86_400_000) / 1000 })}`))
      assert.isTrue(Result.isSuccess(yield* Effect.result(check)))
      Fs.rmSync(dir, { recursive: true })
    }).pipe(Effect.provide(NodeServices.layer)))
})

describe("HealthChecks service", () => {
  it.effect("runs every check at once, reports the failures by name, and bounds each by the timeout", () =>
    Effect.gen(function*() {
      const service = HealthChecks.fromChecks([
        { name: "ok", check: Effect.void },
        { name: "down", check: Effect.fail("answered 503") },
        { name: "hung", check: Effect.never }
      ], "5 seconds")
      assert.deepStrictEqual(service.names, ["ok", "down", "hung"])
      const fiber = yield* Effect.forkChild(service.run)
      yield* TestClock.adjust("5 seconds")
      const failures = yield* Fiber.join(fiber)
      assert.deepStrictEqual(failures, [{ name: "down", reason: "answered 503" }, { name: "hung", reason: "no answer within 5s" }])
      assert.deepStrictEqual(yield* HealthChecks.fromChecks([]).run, [])
    }))
})
