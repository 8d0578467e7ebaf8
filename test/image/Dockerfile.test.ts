/**
 * CI cannot build the Dockerfile (it pulls base images), so these checks keep it in step with
 * what CI does build and test (`.ci/image/build`): the same version, entry point and user, and
 * a `.dockerignore` that lets every file the Dockerfile copies into the build context.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const read = (file: string) => Fs.readFileSync(Path.resolve(file), "utf8")
const dockerfile = read("Dockerfile")
const build = read(".ci/image/build")
const packageJson = JSON.parse(read("package.json")) as { version: string }

/** Instructions without comments, continuation lines joined. */
const instructions = dockerfile
  .split("\n")
  .filter((line) => !line.trimStart().startsWith("#"))
  .join("\n")
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((line) => line.trim())
  .filter((line) => line !== "")

const lastOf = (keyword: string): string => {
  const found = instructions.filter((line) => line.toUpperCase().startsWith(`${keyword} `)).at(-1)
  assert.isDefined(found, `the Dockerfile has no ${keyword}`)
  return found!.slice(keyword.length + 1).trim()
}

/** Whether a context path survives .dockerignore: the last matching pattern decides. */
const included = (path: string, patterns: ReadonlyArray<string>): boolean => {
  let keep = true
  for (const pattern of patterns) {
    const negated = pattern.startsWith("!")
    const body = negated ? pattern.slice(1) : pattern
    const regex = new RegExp(`^${body.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*")}(/.*)?$`)
    if (regex.test(path)) keep = negated
  }
  return keep
}

describe("Dockerfile", () => {
  it("builds the same version, entry point and user as .ci/image/build", () => {
    assert.match(dockerfile, new RegExp(`^ARG VERSION=${packageJson.version.replace(/\./g, "\\.")}$`, "m"))
    assert.deepStrictEqual(JSON.parse(lastOf("ENTRYPOINT")), ["/nodejs/bin/node", "/app/dist/tether.mjs"])
    assert.include(build, "--config.entrypoint /nodejs/bin/node --config.entrypoint /app/dist/tether.mjs")
    assert.strictEqual(lastOf("USER"), "65532:65532")
    assert.include(build, "--config.user 65532:65532")
  })

  it("copies only paths that .dockerignore lets into the context", () => {
    const patterns = read(".dockerignore").split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"))
    const sources = instructions
      .filter((line) => /^COPY /i.test(line) && !/--from=/i.test(line))
      .flatMap((line) => line.split(/\s+/).slice(1, -1).filter((word) => !word.startsWith("--")))
    assert.includeMembers(sources, ["package.json", "package-lock.json", "src", "layers", ".ci/build.ts", ".ci/image/tether"])
    for (const source of sources) {
      assert.isTrue(Fs.existsSync(Path.resolve(source)), `${source} does not exist`)
      assert.isTrue(included(source, patterns), `.dockerignore leaves ${source} out of the build context`)
    }
    assert.isFalse(included("node_modules", patterns), "node_modules is sent to the build")
    assert.isFalse(included(".git", patterns), ".git is sent to the build")
  })
})
