/**
 * tether's label-selector parser against the parser it must agree with: a real kube-apiserver's,
 * asked through `GET /api/v1/namespaces/<ns>/secrets?labelSelector=` (400 when it refuses).
 *
 * - Every selector tether accepts, the apiserver accepts too, and reads the same way: the
 *   selector tether sends (its `format`) lists the same Secrets as the text the user gave.
 * - Every selector the apiserver refuses, tether refuses (`in`/`notin` as keys and values, white
 *   space the apiserver does not skip, comparison values that are not label values among them).
 * - The few that tether refuses on purpose although the apiserver takes them are listed as such.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api } from "@kubernetes/client-node"
import { Effect, Exit, Result, Scope } from "effect"
import * as LabelSelector from "../../src/domain/LabelSelector.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"

/** Both accept. */
const accepted = [
  "a=b",
  "a==b",
  " a != b ",
  "a=",
  "a",
  "!a",
  "a in (x, y),b notin (z)",
  "in=1",
  "in==1,notin!=2",
  "notin",
  "!in",
  "in in (a)",
  "notin notin (in,notin)",
  "a=in,b=notin",
  "in>1",
  "k>3,k<2",
  "k>9223372036854775807",
  "\ta=b\r\n"
]
/** Both refuse. */
const refused = [
  "a=b,,c",
  "a=b,",
  "a b",
  "!a=b",
  "a in x",
  "in in",
  "a notin",
  "in in in",
  "in (a)",
  "!notin=1",
  "k<-2",
  "k>+2",
  "k>9223372036854775808",
  "a=b\u00a0",
  "a=b\u000b",
  "a=b\u00a0,c=d",
  "\u2003a=b",
  "a=b/c",
  "a===b",
  "-a=b"
]
/** tether refuses on purpose what the apiserver reads as "everything" or as an empty value in a set. */
const stricter = ["", "a in ()", "a in (x,)"]

const labelSets: ReadonlyArray<Record<string, string>> = [
  { a: "b", in: "1" },
  { a: "in", b: "notin", notin: "in" },
  { in: "a", k: "3" },
  { notin: "x", k: "10" },
  { a: "", b: "z" }
]

describe.skipIf(noApiserver)("label selectors: tether's parser agrees with kube-apiserver's", () => {
  let scope: Scope.Closeable | undefined
  let server!: Apiserver.ApiserverInfo
  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    server = await Effect.runPromise(Apiserver.make({ name: "selectors" }).pipe(Scope.provide(scope)))
  }, 120_000)
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.live("accepted and refused alike, and read alike", () =>
    Effect.gen(function*() {
      const core = Apiserver.kubeConfig(server).makeApiClient(CoreV1Api)
      // Its own namespace: `default` is created by the apiserver's controller some time after
      // it answers, and a create into it could meet a 404 (seen once in CI).
      const namespace = "selectors"
      yield* Apiserver.createNamespace(server, namespace)
      yield* Effect.forEach(labelSets, (labels, i) =>
        Effect.promise(() => core.createNamespacedSecret({ namespace, body: { metadata: { name: `s${i}`, labels } } })), { discard: true })
      /** The names the apiserver lists for `selector`, or "refused" (400). */
      const list = (selector: string) =>
        Effect.promise(() =>
          core.listNamespacedSecret({ namespace, labelSelector: selector }).then(
            (l) => l.items.map((s) => s.metadata?.name ?? "").sort().join(","),
            (e: { code?: number }) => (e.code === 400 ? "refused" : Promise.reject(e))
          )
        )
      const problems: Array<string> = []
      for (const selector of [...accepted, ...refused, ...stricter]) {
        const ours = LabelSelector.parse(selector)
        const theirs = yield* list(selector)
        const shown = JSON.stringify(selector)
        const expected = accepted.includes(selector) ? "accept" : refused.includes(selector) ? "refuse" : "stricter"
        if (Result.isSuccess(ours)) {
          if (expected !== "accept") problems.push(`${shown}: tether accepts it`)
          if (theirs === "refused") problems.push(`${shown}: tether accepts what the apiserver refuses`)
          const sent = yield* list(LabelSelector.format(ours.success))
          if (sent !== theirs) problems.push(`${shown}: tether sends ${JSON.stringify(LabelSelector.format(ours.success))}, listing [${sent}] instead of [${theirs}]`)
        } else {
          if (expected === "accept") problems.push(`${shown}: tether refuses it (${ours.failure.message})`)
          if (expected === "refuse" && theirs !== "refused") problems.push(`${shown}: the apiserver accepts it, listing [${theirs}]`)
          if (expected === "stricter" && theirs === "refused") problems.push(`${shown}: the apiserver refuses it too; move it to the refused list`)
        }
      }
      assert.deepStrictEqual(problems, [])
    }), { timeout: 60_000 })
})
