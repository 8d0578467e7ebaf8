/**
 * Secret and ConfigMap volumes as a kubelet writes them, for tests of what watches mounted
 * files: each version goes to a fresh `..<timestamp>` folder, `..data` is swapped to it
 * atomically (a `..data_tmp` symlink renamed over it), every key is a symlink
 * `<key> -> ..data/<key>`, and the previous version's folder is removed.
 */
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** The files of one volume version: relative path -> content. */
export type Payload = ReadonlyMap<string, Buffer>

/**
 * Write `payload` into `dir` as a kubelet's atomic writer does: a new timestamped folder, then
 * `..data` swapped to it by renaming a fresh symlink over it, then one symlink per top-level key.
 * Keys that are gone lose their symlink; the previous folder is removed last.
 */
export const atomicWrite = (dir: string, payload: Payload, mode: number): void => {
  Fs.mkdirSync(dir, { recursive: true })
  const dataLink = Path.join(dir, "..data")
  const previous = Fs.existsSync(dataLink) ? Fs.readlinkSync(dataLink) : undefined
  const stamp = new Date().toISOString().replace(/[-:T]/g, "_").replace(/\..*$/, "")
  const version = `..${stamp}.${Crypto.randomBytes(4).toString("hex")}`
  for (const [key, content] of payload) {
    const file = Path.join(dir, version, key)
    Fs.mkdirSync(Path.dirname(file), { recursive: true })
    Fs.writeFileSync(file, content, { mode })
  }
  Fs.mkdirSync(Path.join(dir, version), { recursive: true })
  const tmpLink = Path.join(dir, "..data_tmp")
  Fs.rmSync(tmpLink, { force: true })
  Fs.symlinkSync(version, tmpLink)
  Fs.renameSync(tmpLink, dataLink)
  const visible = new Set([...payload.keys()].map((key) => key.split("/")[0]!))
  for (const name of visible) {
    const link = Path.join(dir, name)
    if (!Fs.existsSync(link)) Fs.symlinkSync(Path.join("..data", name), link)
  }
  for (const entry of Fs.readdirSync(dir)) {
    if (!entry.startsWith("..") && !visible.has(entry)) Fs.rmSync(Path.join(dir, entry), { force: true })
  }
  if (previous !== undefined && previous !== version) Fs.rmSync(Path.join(dir, previous), { recursive: true, force: true })
}

/** {@link atomicWrite} of text files, readable by the owner only (as a Secret's default mode). */
export const publish = (dir: string, files: Readonly<Record<string, string>>): void =>
  atomicWrite(dir, new Map(Object.entries(files).map(([key, content]) => [key, Buffer.from(content)])), 0o600)
