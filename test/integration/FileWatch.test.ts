import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as FileWatch from "../../src/kube/FileWatch.ts"
import { until } from "../support/eventually.ts"
import { publish } from "../support/volume.ts"

describe("FileWatch.concerns", () => {
  const watched = new Set(["tls.crt", "tls.key"])

  it("takes the watched files and a kubelet's volume entries", () => {
    for (const entry of ["tls.crt", "tls.key", "..data", "..data_tmp", "..2026_12_07_18_30_00.1a2b3c4d"]) {
      assert.isTrue(FileWatch.concerns(watched, entry), entry)
    }
  })

  it("leaves other files in the folder alone", () => {
    for (const entry of ["pauses.jsonl", "tls.crt.tmp", ".tls.crt.swp", "tls.crt~", "ca.crt"]) {
      assert.isFalse(FileWatch.concerns(watched, entry), entry)
    }
  })
})

describe("FileWatch.start", () => {
  /**
   * Watch `file` with a timer that never fires during the test; each reload records what the
   * file held. Writes `other` in the same folder five times (each far enough from the next for
   * a reload to run in between), then changes `file` with `change`, and waits for the reload
   * that sees it: any reload the other writes caused came before and saw the old content.
   */
  const reloadsAround = (folder: string, file: string, change: () => void) =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      yield* FileWatch.start({
        paths: [file],
        interval: "1 hour",
        reload: Effect.sync(() => void seen.push(Fs.readFileSync(file, "utf8"))),
        what: "test file"
      })
      for (let i = 0; i < 5; i++) {
        Fs.writeFileSync(Path.join(folder, "other.log"), `line ${i}\n`, { flag: "a" })
        yield* Effect.sleep("250 millis")
      }
      change()
      yield* until(Effect.sync(() => seen), (all) => all.includes("new"), "a reload sees the change", { timeout: "10 seconds" })
      return seen
    }).pipe(Effect.scoped, Effect.provide(NodeServices.layer))

  it.live("reloads when a file written in place changes, not when another file in its folder does", () =>
    Effect.gen(function*() {
      const folder = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-filewatch-"))
      const file = Path.join(folder, "kubeconfig")
      Fs.writeFileSync(file, "old")
      const seen = yield* reloadsAround(folder, file, () => Fs.writeFileSync(file, "new"))
      assert.deepStrictEqual(seen, ["new"])
      Fs.rmSync(folder, { recursive: true, force: true })
    }))

  it.live("reloads when a kubelet swaps the volume, not when another file in its folder changes", () =>
    Effect.gen(function*() {
      const folder = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-filewatch-"))
      const file = Path.join(folder, "tls.crt")
      publish(folder, { "tls.crt": "old" })
      const seen = yield* reloadsAround(folder, file, () => publish(folder, { "tls.crt": "new" }))
      assert.deepStrictEqual(seen, ["new"])
      Fs.rmSync(folder, { recursive: true, force: true })
    }))
})
