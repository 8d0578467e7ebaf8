/**
 * Kubernetes label selectors, parsed as strictly as the apiserver parses them, so a selector
 * flag the apiserver would refuse (or read differently: `a=b,,c`) is refused before anything
 * starts, with the position of the problem.
 *
 * The grammar: requirements separated by `,`, each one of `key`, `!key`, `key=value`,
 * `key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>n`, `key<n`; spaces,
 * tabs, CR and LF around tokens are ignored (other white space is part of a word, as for the
 * apiserver). Keys are qualified names (an optional DNS-subdomain prefix and `/`, then a name of at
 * most 63 characters); values are empty or such names. As in the apiserver, `in` and `notin` are
 * operators only after a key: as a key or a value they are plain words (`in=1`, `notin`,
 * `in in (in)`), and the integer of `>`/`<` is also a label value (so `k>-1` is refused).
 *
 * Stricter than the apiserver on purpose: an empty value in a set (`a in ()`, `a in (x,)`, which
 * the apiserver reads as the empty string) is refused.
 *
 * @since 0.1.0
 */
import { Result, Schema } from "effect"
import * as KubeNames from "./KubeNames.ts"

/** @category models */
export type Requirement =
  | { readonly _tag: "Exists"; readonly key: string }
  | { readonly _tag: "DoesNotExist"; readonly key: string }
  | { readonly _tag: "Equals" | "NotEquals"; readonly key: string; readonly value: string }
  | { readonly _tag: "In" | "NotIn"; readonly key: string; readonly values: ReadonlyArray<string> }
  | { readonly _tag: "GreaterThan" | "LessThan"; readonly key: string; readonly value: string }

/**
 * A selector that does not parse. Terminal: the same text fails the same way.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidLabelSelector extends Schema.TaggedError<InvalidLabelSelector>()("InvalidLabelSelector", {
  message: Schema.String
}) {}

type Token =
  | { readonly kind: "id"; readonly text: string; readonly at: number }
  | { readonly kind: "op"; readonly text: "!" | "=" | "==" | "!=" | "(" | ")" | "," | ">" | "<"; readonly at: number }
  | { readonly kind: "end"; readonly at: number }

/** The apiserver's lexer takes only these as white space; any other character is part of a word. */
const blank = /[ \t\r\n]/
const special = /[ \t\r\n!=(),<>]/

const tokenize = (input: string): ReadonlyArray<Token> => {
  const tokens: Array<Token> = []
  let i = 0
  while (i < input.length) {
    const c = input[i]!
    if (blank.test(c)) {
      i++
    } else if ((c === "=" || c === "!") && input[i + 1] === "=") {
      tokens.push({ kind: "op", text: c === "=" ? "==" : "!=", at: i })
      i += 2
    } else if (special.test(c)) {
      tokens.push({ kind: "op", text: c as "!" | "=" | "(" | ")" | "," | ">" | "<", at: i })
      i++
    } else {
      const start = i
      while (i < input.length && !special.test(input[i]!)) i++
      tokens.push({ kind: "id", text: input.slice(start, i), at: start })
    }
  }
  tokens.push({ kind: "end", at: input.length })
  return tokens
}

const namePart = /^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)$/

/** Why `key` is not a qualified name, or undefined. */
const badKey = (key: string): string | undefined => {
  const slash = key.indexOf("/")
  const prefix = slash === -1 ? undefined : key.slice(0, slash)
  const name = slash === -1 ? key : key.slice(slash + 1)
  if (prefix !== undefined && !KubeNames.isSubdomainName(prefix)) return "its prefix is not a DNS subdomain"
  if (name === "" || name.length > 63 || !namePart.test(name)) {
    return "a key is at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric (after an optional DNS-subdomain prefix and '/')"
  }
  return undefined
}

const badValue = (value: string): string | undefined =>
  value === "" || (value.length <= 63 && namePart.test(value))
    ? undefined
    : "a value is empty or at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"

const maxInt64 = 2n ** 63n - 1n

/** `>`/`<` take an int64 that is also a label value: digits only (no sign), at most 2^63 - 1. */
const isComparable = (text: string): boolean => /^\d{1,19}$/.test(text) && BigInt(text) <= maxInt64

const quote = (text: string) => JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text)

/**
 * Parse `input` (not empty: an empty selector selects everything, which a caller should ask for
 * by not giving one).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parse = (input: string): Result.Result<ReadonlyArray<Requirement>, InvalidLabelSelector> => {
  const tokens = tokenize(input)
  let i = 0
  const peek = () => tokens[i]!
  const next = () => tokens[i++]!
  const describe = (t: Token) => t.kind === "end" ? "the end" : `${quote(t.text)} at ${t.at + 1}`
  const failAt = (t: Token, why: string) =>
    Result.fail(new InvalidLabelSelector({ message: `label selector ${quote(input)}: ${why} (found ${describe(t)})` }))
  const requirements: Array<Requirement> = []
  if (peek().kind === "end") return failAt(peek(), "empty")
  for (;;) {
    let negated = false
    const first = peek()
    if (first.kind === "op" && first.text === "!") {
      negated = true
      next()
    }
    const keyToken = next()
    if (keyToken.kind !== "id") return failAt(keyToken, "expected a key")
    const key = keyToken.text
    const keyProblem = badKey(key)
    if (keyProblem !== undefined) return failAt(keyToken, `bad key: ${keyProblem}`)
    const after = peek()
    const ends = after.kind === "end" || (after.kind === "op" && after.text === ",")
    if (negated) {
      if (!ends) return failAt(after, "'!key' takes no operator")
      requirements.push({ _tag: "DoesNotExist", key })
    } else if (ends) {
      requirements.push({ _tag: "Exists", key })
    } else if (after.kind === "op" && (after.text === "=" || after.text === "==" || after.text === "!=")) {
      next()
      const value = peek()
      let text = ""
      if (value.kind === "id") {
        text = value.text
        next()
      } else if (!(value.kind === "end" || value.text === ",")) {
        return failAt(value, "expected a value")
      }
      const valueProblem = badValue(text)
      if (valueProblem !== undefined) return failAt(value, `bad value: ${valueProblem}`)
      requirements.push({ _tag: after.text === "!=" ? "NotEquals" : "Equals", key, value: text })
    } else if (after.kind === "op" && (after.text === ">" || after.text === "<")) {
      next()
      const value = next()
      if (value.kind !== "id" || !isComparable(value.text)) {
        return failAt(value, `'${after.text}' takes an integer of digits only, at most 9223372036854775807 (the apiserver reads it as a label value too)`)
      }
      requirements.push({ _tag: after.text === ">" ? "GreaterThan" : "LessThan", key, value: value.text })
    } else if (after.kind === "id" && (after.text === "in" || after.text === "notin")) {
      next()
      const open = next()
      if (open.kind !== "op" || open.text !== "(") return failAt(open, `expected '(' after '${after.text}'`)
      const values: Array<string> = []
      for (;;) {
        const value = next()
        if (value.kind !== "id") return failAt(value, `'${after.text}' takes a list of values, like (a,b)`)
        const valueProblem = badValue(value.text)
        if (valueProblem !== undefined) return failAt(value, `bad value: ${valueProblem}`)
        values.push(value.text)
        const sep = next()
        if (sep.kind === "op" && sep.text === ")") break
        if (sep.kind !== "op" || sep.text !== ",") return failAt(sep, "expected ',' or ')'")
      }
      requirements.push({ _tag: after.text === "in" ? "In" : "NotIn", key, values })
    } else {
      return failAt(after, "expected '=', '==', '!=', 'in', 'notin', '>', '<', ',' or the end after a key")
    }
    const sep = next()
    if (sep.kind === "end") return Result.succeed(requirements)
    if (sep.kind !== "op" || sep.text !== ",") return failAt(sep, "expected ',' or the end after a requirement")
    if (peek().kind === "end") return failAt(peek(), "a requirement after ','")
  }
}

/**
 * The selector as the apiserver takes it (spaces dropped, `==` written `=`).
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (requirements: ReadonlyArray<Requirement>): string =>
  requirements.map((r) => {
    switch (r._tag) {
      case "Exists":
        return r.key
      case "DoesNotExist":
        return `!${r.key}`
      case "Equals":
        return `${r.key}=${r.value}`
      case "NotEquals":
        return `${r.key}!=${r.value}`
      case "GreaterThan":
        return `${r.key}>${r.value}`
      case "LessThan":
        return `${r.key}<${r.value}`
      case "In":
        return `${r.key} in (${r.values.join(",")})`
      case "NotIn":
        return `${r.key} notin (${r.values.join(",")})`
    }
  }).join(",")
