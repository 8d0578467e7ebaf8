/**
 * The hostile-kubeconfig corpus (test/corpus/kubeconfigs.json) against the one kubeconfig reader
 * (src/domain/Kubeconfig.ts): bad YAML, wrong types, missing contexts, clusters and users, file
 * references, exec and auth-provider plugins, impersonation, huge and deeply nested documents.
 * Each case states, for each reader it names (default: all three), either success or the typed
 * error's reason tag and a fragment of its message; no error may quote a planted credential.
 *
 * Case fields: `yaml` (the document), or `generate` (`head` + `repeat` x `times`, `{{i}}` numbered,
 * + `tail`) for documents too large to keep; `readers` (parseSource, parseCluster,
 * readBearerToken); `expect`: `{ ok: true }` (with `server`: the server parseSource and parseCluster
 * must read) or `{ tag, message }`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as Fs from "node:fs"
import * as Kubeconfig from "../../src/domain/Kubeconfig.ts"

interface Case {
  readonly name: string
  readonly yaml?: string
  readonly generate?: { readonly head: string; readonly repeat: string; readonly times: number; readonly tail: string }
  readonly readers?: ReadonlyArray<keyof typeof readers>
  readonly expect: { readonly ok: true; readonly server?: string } | { readonly tag: string; readonly message: string }
}

const corpus = JSON.parse(Fs.readFileSync(new URL("../corpus/kubeconfigs.json", import.meta.url), "utf8")) as {
  readonly secrets: ReadonlyArray<string>
  readonly cases: ReadonlyArray<Case>
}

type Reader = (text: string) => Result.Result<unknown, Kubeconfig.KubeconfigError>

const readers: Readonly<Record<"parseSource" | "parseCluster" | "readBearerToken", Reader>> = {
  parseSource: Kubeconfig.parseSource,
  parseCluster: Kubeconfig.parseCluster,
  readBearerToken: Kubeconfig.readBearerToken
}

const documentOf = (c: Case): string => {
  if (c.generate === undefined) return c.yaml ?? ""
  const { head, repeat, tail, times } = c.generate
  const body = repeat.includes("{{i}}")
    ? Array.from({ length: times }, (_, i) => repeat.replaceAll("{{i}}", String(i))).join("")
    : repeat.repeat(times)
  return head + body + tail
}

describe("hostile kubeconfigs (corpus)", () => {
  it("has at least 100 cases, each with a stated answer", () => {
    assert.isAtLeast(corpus.cases.length, 100)
    for (const c of corpus.cases) assert.isDefined(c.expect, c.name)
  })

  it.each(corpus.cases.map((c) => [c.name, c] as const))("%s", (_, c) => {
    const text = documentOf(c)
    for (const name of c.readers ?? (Object.keys(readers) as Array<keyof typeof readers>)) {
      const result = readers[name](text)
      if ("ok" in c.expect) {
        assert.isTrue(Result.isSuccess(result), `${name}: ${Result.isFailure(result) ? result.failure.message : ""}`)
        if (c.expect.server !== undefined && Result.isSuccess(result) && name !== "readBearerToken") {
          const read = result.success as Kubeconfig.SourceKubeconfig | Kubeconfig.ClusterEntry
          assert.strictEqual("cluster" in read ? read.cluster.server : read.server, c.expect.server, name)
        }
        continue
      }
      assert.isTrue(Result.isFailure(result), `${name} accepted it`)
      if (Result.isSuccess(result)) continue
      const error = result.failure
      assert.strictEqual(error._tag, "KubeconfigError")
      assert.strictEqual(error.reason._tag, c.expect.tag, `${name}: ${error.message}`)
      assert.include(error.message, c.expect.message, name)
      assert.isFalse(error.retryable)
      for (const secret of corpus.secrets) assert.notInclude(error.message, secret, `${name} quoted a credential`)
    }
  })
})
