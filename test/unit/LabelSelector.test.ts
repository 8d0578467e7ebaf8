import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as LabelSelector from "../../src/domain/LabelSelector.ts"

const parsed = (input: string) => {
  const result = LabelSelector.parse(input)
  return Result.isSuccess(result) ? LabelSelector.format(result.success) : `error: ${result.failure.message}`
}

describe("label selectors", () => {
  it.each([
    ["a=b", "a=b"],
    ["a==b", "a=b"],
    [" a != b ", "a!=b"],
    ["a=", "a="],
    ["a", "a"],
    ["!a", "!a"],
    ["a in (x, y),b notin (z)", "a in (x,y),b notin (z)"],
    ["open-cluster-management.io/cluster-name=c1,tier", "open-cluster-management.io/cluster-name=c1,tier"],
    ["k>3,k<-2", "k>3,k<-2"],
    ["a.b_c-d=E.f_g-9", "a.b_c-d=E.f_g-9"]
  ])("reads %j as %j", (input, expected) => {
    assert.strictEqual(parsed(input), expected)
  })

  it.each([
    ["a=b,,c", "expected a key"],
    ["a=b,", "a requirement after ','"],
    [",a", "expected a key"],
    ["", "empty"],
    ["   ", "empty"],
    ["a=b c", "expected ',' or the end"],
    ["a b", "expected '='"],
    ["!a=b", "'!key' takes no operator"],
    ["a in ()", "takes a list of values"],
    ["a in (x,)", "takes a list of values"],
    ["a in x", "expected '('"],
    ["a in (x y)", "expected ',' or ')'"],
    ["a in (x", "expected ',' or ')'"],
    ["a=(b)", "expected a value"],
    ["a>b", "takes an integer"],
    ["-a=b", "bad key"],
    ["a_=b", "bad key"],
    ["Bad_Prefix/a=b", "its prefix is not a DNS subdomain"],
    ["/a=b", "its prefix is not a DNS subdomain"],
    ["a/=b", "bad key"],
    [`${"k".repeat(64)}=b`, "bad key"],
    [`a=${"v".repeat(64)}`, "bad value"],
    ["a=b/c", "bad value"],
    ["a=-b", "bad value"],
    ["a=b\u0000", "bad value"],
    ["a===b", "expected a value"]
  ])("refuses %j (%s)", (input, reason) => {
    const out = parsed(input)
    assert.isTrue(out.startsWith("error: "), `${JSON.stringify(input)} was accepted as ${out}`)
    assert.include(out, reason)
    assert.notInclude(out, "\n")
  })
})
