/**
 * The `tether` command as it ships, for the tests, benchmarks and demo that run it as a process
 * (not exported by `tether/testing`: it builds this repository's sources).
 *
 * {@link tetherEntry} reads package.json's "bin" (the production build, dist/tether.mjs, made
 * by `npm run build`). When the build is missing or older than a source file under src/ or
 * layers/, it is rebuilt first (a few seconds; the build swaps its files in atomically, so
 * concurrent runs do not trip over each other): a test never runs a stale bundle, and a developer
 * need not remember the build step (CI builds once before the tests, so nothing is rebuilt there).
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const repo = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "../..")

/** Newest modification time (ms) of the files under `dirs`. */
const newest = (dirs: ReadonlyArray<string>): number => {
  let latest = 0
  const visit = (dir: string) => {
    for (const entry of Fs.readdirSync(dir, { withFileTypes: true })) {
      const path = Path.join(dir, entry.name)
      if (entry.isDirectory()) visit(path)
      else if (entry.isFile()) latest = Math.max(latest, Fs.statSync(path).mtimeMs)
    }
  }
  for (const dir of dirs) visit(dir)
  return latest
}

/** package.json's "bin" entry for `tether`, as an absolute path. */
export const binPath = (): string => {
  const manifest = JSON.parse(Fs.readFileSync(Path.join(repo, "package.json"), "utf8")) as { bin?: string | Record<string, string> }
  const bin = typeof manifest.bin === "string" ? manifest.bin : manifest.bin?.["tether"]
  if (bin === undefined) throw new Error("package.json has no \"bin\" entry for tether")
  return Path.join(repo, bin)
}

/**
 * The script to run with `process.execPath` to start `tether`: package.json's "bin", built
 * first when it is a build output that is missing or stale.
 */
export const tetherEntry = (): string => {
  const entry = binPath()
  if (!entry.startsWith(Path.join(repo, "dist") + Path.sep)) return entry
  const built = Fs.existsSync(entry) ? Fs.statSync(entry).mtimeMs : -1
  const sources = Math.max(newest([Path.join(repo, "src"), Path.join(repo, "layers")]), Fs.statSync(Path.join(repo, "package-lock.json")).mtimeMs)
  if (built >= sources) return entry
  ChildProcess.execFileSync(process.execPath, [Path.join(repo, ".ci/build.ts")], { cwd: repo, stdio: ["ignore", "ignore", "pipe"], timeout: 120_000 })
  return entry
}
