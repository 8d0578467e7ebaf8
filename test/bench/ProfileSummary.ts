/**
 * Summarise a V8 CPU profile (`node --cpu-prof`, as written by `npm run bench -- --profile=<dir>`):
 * self time by function and by package or source area, so a profile can be read without a
 * browser.
 *
 * ```sh
 * npx node test/bench/ProfileSummary.ts <file.cpuprofile> [top=30]   # Node 24 (the devDependency)
 * ```
 *
 * @since 0.1.0
 */
import * as Fs from "node:fs"

interface Node {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}

interface Profile {
  readonly nodes: ReadonlyArray<Node>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write("usage: npx node test/bench/ProfileSummary.ts <file.cpuprofile> [top]\n")
  process.exit(2)
}
const top = Number(topArg ?? 30)
const profile = JSON.parse(Fs.readFileSync(file, "utf8")) as Profile
const byId = new Map(profile.nodes.map((node) => [node.id, node]))

const selfMicros = new Map<number, number>()
profile.samples.forEach((id, i) => selfMicros.set(id, (selfMicros.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
const total = [...selfMicros.values()].reduce((a, b) => a + b, 0)

/** Where a frame's code lives: a package, a tether source area, node internals or V8. */
const area = (url: string, name: string): string => {
  if (url === "") return name.startsWith("(") ? name : "(native)"
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
  if (pkg) return pkg[1]!
  if (url.startsWith("node:")) return url.replace(/^node:(internal\/)?/, "node:").split("/").slice(0, 2).join("/")
  const own = /\/(src|layers|test)\/(.+)$/.exec(url)
  return own ? `${own[1]}/${own[2]}` : url
}

const functions = new Map<string, number>()
const areas = new Map<string, number>()
for (const [id, micros] of selfMicros) {
  const node = byId.get(id)
  if (node === undefined) continue
  const { functionName, lineNumber, url } = node.callFrame
  const where = area(url, functionName)
  const key = `${functionName || "(anonymous)"}  ${where}${url === "" ? "" : `:${lineNumber + 1}`}`
  functions.set(key, (functions.get(key) ?? 0) + micros)
  areas.set(where, (areas.get(where) ?? 0) + micros)
}

const print = (title: string, entries: Map<string, number>) => {
  process.stdout.write(`\n${title}\n`)
  for (const [key, micros] of [...entries].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${((100 * micros) / total).toFixed(1).padStart(5)}%  ${key}\n`)
  }
}

process.stdout.write(`${file}: ${(total / 1e6).toFixed(1)} s sampled\n`)
print("self time by area", areas)
print("self time by function", functions)
