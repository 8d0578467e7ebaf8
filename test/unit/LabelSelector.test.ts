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
    ["k>3,k<2", "k>3,k<2"],
    ["k>9223372036854775807", "k>9223372036854775807"],
    ["a.b_c-d=E.f_g-9", "a.b_c-d=E.f_g-9"],
    // As in the apiserver's parser, `in` and `notin` are operators only after a key.
    ["in=1", "in=1"],
    ["in==1,notin!=2", "in=1,notin!=2"],
    ["notin", "notin"],
    ["!in", "!in"],
    ["in in (a)", "in in (a)"],
    ["notin notin (in,notin)", "notin notin (in,notin)"],
    ["a=in,b=notin", "a=in,b=notin"],
    ["in>1", "in>1"],
    ["\ta=b\r\n", "a=b"]
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
    ["a===b", "expected a value"],
    ["k<-2", "takes an integer of digits only"],
    ["k>+2", "takes an integer of digits only"],
    ["k>9223372036854775808", "takes an integer of digits only"],
    // White space the apiserver does not skip is part of a word, so it makes a bad value or key.
    ["a=b\u00a0", "bad value"],
    ["a=b\u000b", "bad value"],
    ["a=b\u00a0,c=d", "bad value"],
    ["\u2003a=b", "bad key"],
    ["in in", "expected '(' after 'in'"],
    ["a notin", "expected '(' after 'notin'"],
    ["in in in", "expected '(' after 'in'"],
    ["in (a)", "expected '='"],
    ["!notin=1", "'!key' takes no operator"]
  ])("refuses %j (%s)", (input, reason) => {
    const out = parsed(input)
    assert.isTrue(out.startsWith("error: "), `${JSON.stringify(input)} was accepted as ${out}`)
    assert.include(out, reason)
    assert.notInclude(out, "\n")
  })
})
